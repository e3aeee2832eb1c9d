//go:build unix

package safefile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hangLimit bounds how long an open that must not block may take before
// the test calls it a hang. It is not a performance bound.
const hangLimit = 10 * time.Second

// noHang runs f and fails the test if it does not return within hangLimit.
// (testkeys.NoHang, which the other packages call, cannot be imported
// here: testkeys imports keyfile, which imports this package.)
func noHang(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s hangs", what)
	}
}

func openRoot(t *testing.T, dir string) *os.Root {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return root
}

// planted is what someone who may write the key file's folder can put in
// place of a file the writers make there, and what the refusal says of it.
// Opening to append refuses a FIFO (no reader: ENXIO) and a directory
// (EISDIR) at the open itself: appendErr.
var planted = []struct {
	kind, says string
	put        func(path, victim string) error
	appendErr  error
}{
	{"link to a file", "it is a symbolic link", func(path, victim string) error { return os.Symlink(victim, path) }, nil},
	{"dangling link", "it is a symbolic link", func(path, victim string) error { return os.Symlink(victim+".missing", path) }, nil},
	{"FIFO", "it is not a regular file but a named pipe (FIFO)", func(path, _ string) error { return unix.Mkfifo(path, 0o600) }, unix.ENXIO},
	{"directory", "it is not a regular file but a directory", func(path, _ string) error { return os.Mkdir(path, 0o700) }, unix.EISDIR},
	{"hard link", "it has 2 hard links, so it may be another file's name too", func(path, victim string) error { return os.Link(victim, path) }, nil},
}

// plantIn makes a folder holding a key file (mode 0640), and victim, a
// file of someone else's in another folder that must come out of what is
// planted untouched.
func plantIn(t *testing.T) (dir *os.Root, victim string) {
	t.Helper()
	folder := t.TempDir()
	victim = filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(folder, "keys.json"), []byte("[]\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	return openRoot(t, folder), victim
}

func checkVictim(t *testing.T, victim string) {
	t.Helper()
	if data, err := os.ReadFile(victim); err != nil || string(data) != "secret" {
		t.Errorf("the planted file's target now holds %q (%v), want it untouched", data, err)
	}
	if _, err := os.Lstat(victim + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a dangling link's target was made: %v", err)
	}
}

// The lock file, an appended log and a companion file read are each
// refused when something else was put in their place, with the message
// docs/security.md quotes, without blocking on a FIFO and without making,
// opening for writing or giving away the file a link leads to.
func TestPlantedFilesAreRefused(t *testing.T) {
	for _, p := range planted {
		t.Run(p.kind, func(t *testing.T) {
			t.Run("lock", func(t *testing.T) {
				dir, victim := plantIn(t)
				lockPath := filepath.Join(dir.Name(), "keys.json.lock")
				if err := p.put(lockPath, victim); err != nil {
					t.Fatal(err)
				}
				var err error
				noHang(t, "locking", func() { _, err = LockIn(dir, "keys.json", time.Second, nil) })
				want := "refusing the lock file " + lockPath + ": " + p.says + "; Caddy and caddy apikey only ever make a plain empty file there, so something else put it in place: check who can write that folder, remove it (rm " + lockPath + "), and try again"
				if err == nil || err.Error() != want {
					t.Errorf("LockIn = %v, want %s", err, want)
				}
				checkVictim(t, victim)
			})
			t.Run("append", func(t *testing.T) {
				dir, victim := plantIn(t)
				path := filepath.Join(dir.Name(), "keys.json.audit.jsonl")
				if err := p.put(path, victim); err != nil {
					t.Fatal(err)
				}
				var err error
				noHang(t, "opening to append", func() {
					var f *os.File
					if f, err = OpenAppendIn(dir, "keys.json", "keys.json.audit.jsonl"); err == nil {
						f.Close()
					}
				})
				want := "refusing " + path + ": " + p.says + "; Caddy and caddy apikey only ever make a plain file there, so something else put it in place: check who can write that folder, move it away, and try again"
				switch {
				case p.appendErr != nil:
					if !errors.Is(err, p.appendErr) || !strings.HasPrefix(err.Error(), "opening "+path+": ") {
						t.Errorf("OpenAppendIn = %v, want opening %s: %v", err, path, p.appendErr)
					}
				case err == nil || err.Error() != want:
					t.Errorf("OpenAppendIn = %v, want %s", err, want)
				}
				checkVictim(t, victim)
			})
			t.Run("read companion", func(t *testing.T) {
				dir, victim := plantIn(t)
				if err := p.put(filepath.Join(dir.Name(), "keys.json.state"), victim); err != nil {
					t.Fatal(err)
				}
				var data []byte
				var err error
				noHang(t, "reading", func() { data, _, err = ReadCompanionIn(dir, "keys.json.state", 1<<20) })
				want := strings.TrimPrefix(p.says, "it is ")
				if p.says == "it is a symbolic link" {
					want = "it is a symbolic link, which caddy-apikey never makes there"
				}
				if err == nil || err.Error() != want || data != nil {
					t.Errorf("ReadCompanionIn = %q, %v; want the error %s", data, err, want)
				}
				checkVictim(t, victim)
			})
		})
	}
}

// A lock file made new gets the key file's permissions; the lock excludes
// a second writer until it is released.
func TestLockInMakesTheLockFileAndExcludes(t *testing.T) {
	dir, _ := plantIn(t)
	unlock, err := LockIn(dir, "keys.json", time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := dir.Lstat("keys.json.lock")
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 || fi.Size() != 0 {
		t.Fatalf("lock file: %v, %v; want an empty regular file of mode 0640 (the key file's)", fi, err)
	}
	_, err = LockIn(dir, "keys.json", 0, nil)
	if err == nil || !strings.Contains(err.Error(), "still held by another writer after 0s") {
		t.Errorf("a second LockIn while held = %v, want it refused", err)
	}
	unlock()
	unlock2, err := LockIn(dir, "keys.json", 0, nil)
	if err != nil {
		t.Fatalf("LockIn once released: %v", err)
	}
	unlock2()
}

// OpenAppendIn makes a missing log with mode 0600 and appends to an
// existing one, never truncating it.
func TestOpenAppendInAppends(t *testing.T) {
	dir, _ := plantIn(t)
	for _, line := range []string{"one\n", "two\n"} {
		f, err := OpenAppendIn(dir, "keys.json", "log")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	data, fi, err := ReadCompanionIn(dir, "log", 1<<20)
	if err != nil || string(data) != "one\ntwo\n" || fi.Mode().Perm() != 0o600 {
		t.Errorf("log = %q, %v, %v; want both lines, mode 0600", data, fi, err)
	}
}

// ReadCompanionIn refuses a file larger than it may be, and a missing
// file is fs.ErrNotExist.
func TestReadCompanionInBounds(t *testing.T) {
	dir, _ := plantIn(t)
	if _, _, err := ReadCompanionIn(dir, "missing", 1<<20); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	if err := os.WriteFile(filepath.Join(dir.Name(), "big"), make([]byte, 2<<20+1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := ReadCompanionIn(dir, "big", 1<<20)
	if err == nil || err.Error() != "2 MiB is more than the 1 MiB it may hold" {
		t.Errorf("too large: %v", err)
	}
}

// A key file is read through a link (it is the operator's own), but a
// FIFO or a device in its place is refused without blocking, as is a file
// larger than it may be.
func TestReadKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(filepath.Join(dir, "real.json"), []byte("[]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real.json", path); err != nil {
		t.Fatal(err)
	}
	if data, _, err := ReadKeyFile(path, 1<<20); err != nil || string(data) != "[]\n" {
		t.Errorf("through a link: %q, %v", data, err)
	}
	os.Remove(path)
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	noHang(t, "reading a FIFO", func() { _, _, err = ReadKeyFile(path, 1<<20) })
	if err == nil || err.Error() != "not a regular file but a named pipe (FIFO); the key file must be a regular file" {
		t.Errorf("FIFO: %v", err)
	}
	if _, _, err := ReadKeyFileIn(openRoot(t, dir), "real.json", 1); err == nil || err.Error() != "0 MiB is more than the 0 MiB a key file may hold" {
		t.Errorf("too large: %v", err)
	}
}

// ReplaceIn writes the new version whole with the mode of the file it
// replaces; beforeRename can still cancel it, leaving the old version and
// no temporary file, its ErrChangedMeanwhile returned as it is and any
// other error naming the file.
func TestReplaceIn(t *testing.T) {
	dir, _ := plantIn(t)
	like, err := dir.Stat("keys.json")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir.Name(), "keys.json")
	for _, cancel := range []error{ErrChangedMeanwhile, errors.New("audit log full")} {
		_, err := ReplaceIn(dir, "keys.json", "key file", bytes.NewReader([]byte("new")), like, func() error { return cancel })
		want := "writing key file " + path + ": audit log full"
		if cancel == ErrChangedMeanwhile {
			want = ErrChangedMeanwhile.Error()
		}
		if err == nil || err.Error() != want || !errors.Is(err, cancel) {
			t.Errorf("cancelled by %v: %v, want %s", cancel, err, want)
		}
	}
	written, err := ReplaceIn(dir, "keys.json", "key file", bytes.NewReader([]byte("new")), like, nil)
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "new" || written.Mode().Perm() != 0o640 {
		t.Errorf("replaced: %q, mode %v; want new, 0640", data, written.Mode())
	}
	names, _ := os.ReadDir(dir.Name())
	for _, n := range names {
		if strings.HasPrefix(n.Name(), tempPrefix("keys.json")) {
			t.Errorf("temporary file %s left", n.Name())
		}
	}
}

// RemoveStaleTemporaries removes what a writer killed mid-write left, a
// link named like a temporary file itself rather than what it leads to,
// and nothing else.
func TestRemoveStaleTemporaries(t *testing.T) {
	dir, victim := plantIn(t)
	stale := []string{".keys.json.tmp-1", ".keys.json.tmp-link"}
	if err := os.WriteFile(filepath.Join(dir.Name(), stale[0]), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir.Name(), stale[1])); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir.Name(), ".other.tmp-1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	RemoveStaleTemporaries(dir, "keys.json")
	for _, n := range stale {
		if _, err := dir.Lstat(n); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want it removed", n, err)
		}
	}
	if _, err := dir.Lstat(".other.tmp-1"); err != nil {
		t.Errorf("another file's temporary file: %v, want it kept", err)
	}
	checkVictim(t, victim)
}
