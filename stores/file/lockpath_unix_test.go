//go:build unix

package file

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"golang.org/x/sys/unix"
)

// recipeLockPath is the lock file that the README's recipe for replacing a
// key file by hand locks: `flock "$(realpath keys.json).lock" mv ...`. It
// asks realpath(1), as the recipe does, where it is installed.
func recipeLockPath(t *testing.T, path string) string {
	t.Helper()
	if _, err := exec.LookPath("realpath"); err != nil {
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			t.Fatal(err)
		}
		return real + ".lock"
	}
	out, err := exec.Command("realpath", path).Output()
	if err != nil {
		t.Fatalf("realpath %s: %v", path, err)
	}
	return strings.TrimSuffix(string(out), "\n") + ".lock"
}

// keyFileLayouts lays a key file out as operators do, in dir, and returns
// the spellings by which Caddy or `caddy apikey` may be pointed at it.
var keyFileLayouts = map[string]func(t *testing.T, dir string) []string{
	"plain file": func(t *testing.T, dir string) []string {
		return []string{testkeys.WriteKeys(t, filepath.Join(dir, "keys.json"), testkeys.New("k", nil))}
	},
	// Two links to one file, and the file itself.
	"symbolic links": func(t *testing.T, dir string) []string {
		mkdir(t, filepath.Join(dir, "real"))
		target := testkeys.WriteKeys(t, filepath.Join(dir, "real", "keys.json"), testkeys.New("k", nil))
		symlink(t, "real/keys.json", filepath.Join(dir, "keys.json"))
		symlink(t, "keys.json", filepath.Join(dir, "link-to-link.json"))
		return []string{filepath.Join(dir, "keys.json"), filepath.Join(dir, "link-to-link.json"), target}
	},
	// A Kubernetes ConfigMap or an `ln -sfn` deploy: keys.json ->
	// ..data/keys.json, ..data -> a versioned folder.
	"ConfigMap": func(t *testing.T, dir string) []string {
		mkdir(t, filepath.Join(dir, "..2026_11_25"))
		target := testkeys.WriteKeys(t, filepath.Join(dir, "..2026_11_25", "keys.json"), testkeys.New("k", nil))
		symlink(t, "..2026_11_25", filepath.Join(dir, "..data"))
		symlink(t, "..data/keys.json", filepath.Join(dir, "keys.json"))
		return []string{filepath.Join(dir, "keys.json"), target}
	},
}

func mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// A writer (the usage writer, `caddy apikey`) and the README's recipe lock
// one and the same file, whichever spelling of the key file each is given:
// each waits for the other.
func TestWriterAndREADMERecipeShareOneLock(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a slow test (writers racing the flock(1) recipe); the full test command runs it")
	}
	_, flockErr := exec.LookPath("flock")
	for name, layout := range keyFileLayouts {
		t.Run(name, func(t *testing.T) {
			spellings := layout(t, t.TempDir())
			for _, writer := range spellings {
				for _, recipe := range spellings {
					lockPath := recipeLockPath(t, recipe)

					// The recipe holds its lock: the writer waits for it.
					f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
					if err != nil {
						t.Fatal(err)
					}
					if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
						t.Fatal(err)
					}
					done := make(chan error, 1)
					go func() {
						_, err := testkeys.Update(writer, func(*keyfile.Doc) error { return keyfile.ErrNoChange })
						done <- err
					}()
					select {
					case err := <-done:
						t.Fatalf("a writer of %s did not wait for the lock the recipe takes for %s (%s): %v", writer, recipe, lockPath, err)
					case <-time.After(200 * time.Millisecond):
					}
					f.Close() // releases the lock
					select {
					case err := <-done:
						if err != nil {
							t.Fatalf("writer of %s: %v", writer, err)
						}
					case <-time.After(testkeys.HangLimit):
						t.Fatalf("the writer of %s still waits after the recipe's lock was released", writer)
					}

					// The writer holds the lock: the recipe, run as the
					// README writes it, cannot take it.
					_, err = testkeys.Update(writer, func(*keyfile.Doc) error {
						if flockErr == nil {
							cmd := exec.Command("sh", "-c", `flock -n "$(realpath "$1").lock" true`, "sh", recipe)
							var exit *exec.ExitError
							if err := cmd.Run(); !errors.As(err, &exit) || exit.ExitCode() != 1 {
								t.Errorf("the README's recipe for %s took its lock while a writer of %s held the key file's lock (exit: %v)", recipe, writer, err)
							}
						}
						g, err := os.Open(lockPath)
						if err != nil {
							return err
						}
						defer g.Close()
						if err := unix.Flock(int(g.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
							t.Errorf("%s could be locked while a writer of %s held the key file's lock: %v", lockPath, writer, err)
						}
						return keyfile.ErrNoChange
					})
					if err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

// With the lock held at the recipe's path for longer than a writer waits,
// the writer gives up with a message that says why.
func TestWriterGivesUpOnTheRecipesLock(t *testing.T) {
	spellings := keyFileLayouts["ConfigMap"](t, t.TempDir())
	f, err := os.OpenFile(recipeLockPath(t, spellings[0]), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(spellings[0]) // what updateKeyFile locks
	if err != nil {
		t.Fatal(err)
	}
	_, err = keyfile.Lock(real, 50*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "still held by another writer") {
		t.Fatalf("lockKeyFile = %v, want it still held by another writer", err)
	}
}

// A symbolic link pointed at a new file (an `ln -sfn` deploy) while a writer
// waits for the old file's lock: the edit lands in the new file, the one in
// force, not in the old one.
func TestWriterFollowsALinkSwappedWhileItWaits(t *testing.T) {
	dir := t.TempDir()
	k := testkeys.New("k", nil)
	oldFile := testkeys.WriteKeys(t, filepath.Join(dir, "old.json"), k)
	newFile := testkeys.WriteKeys(t, filepath.Join(dir, "new.json"), k)
	link := filepath.Join(dir, "keys.json")
	if err := os.Symlink(oldFile, link); err != nil {
		t.Fatal(err)
	}
	unlock, err := keyfile.Lock(oldFile, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := keyfile.Edit(link, keyfile.EditOptions{
			Waiting: func() { close(waiting) },
			Edit:    func(doc *keyfile.Doc) error { return doc.Records[0].Set("note", "edited") },
		})
		done <- err
	}()
	<-waiting
	swap := filepath.Join(dir, "keys.json.swap")
	if err := os.Symlink(newFile, swap); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(swap, link); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(testkeys.ReadFile(t, newFile), `"note": "edited"`) {
		t.Error("the edit is not in the file the link points to now")
	}
	if strings.Contains(testkeys.ReadFile(t, oldFile), "edited") {
		t.Error("the edit went to the file the link pointed to before")
	}
}

// ownerOf returns the owner and group of the file at path, not following a
// link.
func ownerOf(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// A lock file planted by whoever can write the key file's folder (a
// symbolic link to a root-owned file, a link to a missing file in a
// root-only folder, a hard link, a FIFO, a lock file of another owner) is
// never chowned, followed or created through by a writer running as root:
// the lock, caddy apikey add and a usage write refuse it, saying what to do.
func TestPlantedLockFileIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the attack is on a writer running as root")
	}
	const attacker = 65534 // nobody: owns the key file and its folder
	type planted struct {
		name  string
		plant func(t *testing.T, lockPath, victim, secretDir string)
		want  string // in the error
	}
	cases := []planted{
		{"symbolic link to a root-owned file", func(t *testing.T, lockPath, victim, _ string) {
			symlink(t, victim, lockPath)
		}, "symbolic link"},
		{"symbolic link to a missing file in a root-only folder", func(t *testing.T, lockPath, _, secretDir string) {
			symlink(t, filepath.Join(secretDir, "made-by-root"), lockPath)
		}, "symbolic link"},
		{"hard link to a root-owned file", func(t *testing.T, lockPath, victim, _ string) {
			if err := os.Link(victim, lockPath); err != nil {
				t.Skip("cannot make a hard link here:", err)
			}
		}, "hard links"},
		{"FIFO", func(t *testing.T, lockPath, _, _ string) {
			if err := unix.Mkfifo(lockPath, 0o666); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			victim := filepath.Join(root, "victim")
			testkeys.WriteFile(t, victim, "root:secret\n")
			secretDir := filepath.Join(root, "secret")
			mkdir(t, secretDir)
			dir := filepath.Join(root, "caddy")
			mkdir(t, dir)
			k := testkeys.New("k", nil)
			path := testkeys.WriteKeys(t, filepath.Join(dir, "keys.json"), k)
			for _, p := range []string{dir, path} {
				if err := os.Chown(p, attacker, attacker); err != nil {
					t.Fatal(err)
				}
			}
			lockPath := path + ".lock"
			c.plant(t, lockPath, victim, secretDir)
			keyBefore := testkeys.ReadFile(t, path)

			check := func(what string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s: took a planted lock file (%s)", what, c.name)
				}
				for _, want := range []string{lockPath, c.want, "remove it"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s: error %q does not say %q", what, err, want)
					}
				}
			}
			var err error
			testkeys.NoHang(t, "lockKeyFile", func() {
				var unlock func()
				if unlock, err = keyfile.Lock(path, time.Second, nil); err == nil {
					unlock()
				}
			})
			check("lockKeyFile", err)
			testkeys.NoHang(t, "add", func() {
				err = addRecord(path)
			})
			check("add", err)

			s, clock, logs := newTestStore(t, path, time.Minute)
			use(t, s, clock, k.Raw)
			testkeys.NoHang(t, "a usage write", func() { s.writeUsage(true) })
			if s.writes.Load() != 0 {
				t.Error("the usage writer wrote through a planted lock file")
			}
			if logged := logs.FilterMessageSnippet("cannot write last-used times").All(); len(logged) != 1 {
				t.Errorf("the usage writer logged %d errors, want 1", len(logged))
			} else {
				check("usage write", errors.New(fmt.Sprint(logged[0].ContextMap()["error"])))
			}

			if uid, gid := ownerOf(t, victim); uid != 0 || gid != 0 {
				t.Errorf("the root-owned file the lock file leads to is now owned by %d:%d", uid, gid)
			}
			if got := testkeys.ReadFile(t, victim); got != "root:secret\n" {
				t.Errorf("the root-owned file was changed to %q", got)
			}
			if _, err := os.Lstat(filepath.Join(secretDir, "made-by-root")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a file was made in the root-only folder: %v", err)
			}
			if got := testkeys.ReadFile(t, path); got != keyBefore {
				t.Error("the key file was written through a planted lock file")
			}
		})
	}
}

// An existing lock file is taken as it is: a writer running as root never
// gives it (or anything) another owner. Only a lock file it has just made
// gets the key file's owner.
func TestExistingLockFileKeepsItsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: only root can give files away")
	}
	const keyOwner, lockOwner = 65534, 4242
	path := testkeys.WriteKeys(t, "", testkeys.New("k", nil))
	if err := os.Chown(path, keyOwner, keyOwner); err != nil {
		t.Fatal(err)
	}
	testkeys.WriteFile(t, path+".lock", "")
	if err := os.Chown(path+".lock", lockOwner, lockOwner); err != nil {
		t.Fatal(err)
	}
	if err := addRecord(path); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ownerOf(t, path+".lock"); uid != lockOwner || gid != lockOwner {
		t.Errorf("the existing lock file is now owned by %d:%d, want %d:%d as it was", uid, gid, lockOwner, lockOwner)
	}
	if uid, _ := ownerOf(t, path); uid != keyOwner {
		t.Errorf("the key file is now owned by %d, want %d as it was", uid, keyOwner)
	}
}

// A lock file made by root gets the key file's owner only where that user
// could have made it: in a folder it owns. A key file reached through a link
// into a folder only root may write (a file of the user's there) gets a
// lock file owned by root; a folder shared through its group gets the group.
func TestNewLockFileOwnerOnlyWhereItCouldHaveMadeIt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: only root can give files away")
	}
	const user, group = 65534, 4242
	root := t.TempDir()

	// keys.json, in the user's folder, links to a file of the user's in a
	// folder only root may write.
	rootOnly := filepath.Join(root, "root-only")
	mkdir(t, rootOnly)
	target := testkeys.WriteKeys(t, filepath.Join(rootOnly, "file"), testkeys.New("k", nil))
	if err := os.Chown(target, user, user); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(root, "own")
	mkdir(t, own)
	if err := os.Chown(own, user, user); err != nil {
		t.Fatal(err)
	}
	symlink(t, target, filepath.Join(own, "keys.json"))
	if err := addRecord(filepath.Join(own, "keys.json")); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ownerOf(t, target+".lock"); uid != 0 || gid != 0 {
		t.Errorf("root made a lock file owned by %d:%d in a folder only root may write", uid, gid)
	}

	// A folder root:group 0770, the key file user:group: the group.
	shared := filepath.Join(root, "shared")
	mkdir(t, shared)
	if err := os.Chown(shared, 0, group); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o770); err != nil {
		t.Fatal(err)
	}
	path := testkeys.WriteKeys(t, filepath.Join(shared, "keys.json"), testkeys.New("k", nil))
	if err := os.Chown(path, user, group); err != nil {
		t.Fatal(err)
	}
	if err := addRecord(path); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ownerOf(t, path+".lock"); uid != 0 || gid != group {
		t.Errorf("the lock file in a folder shared by group %d is owned by %d:%d, want 0:%d", group, uid, gid, group)
	}
	if fi, err := os.Stat(path + ".lock"); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm()&0o040 == 0 {
		t.Errorf("the lock file's mode is %v: its group cannot open it to take the lock", fi.Mode().Perm())
	}
}
