//go:build unix

package file

import (
	"bytes"
	"context"
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
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
	"golang.org/x/sys/unix"
)

// A state file that is not a regular file of its own (a FIFO, a
// directory, a symbolic link, even to a good state file, a hard link) is
// refused by every call without blocking, with an error naming it and
// saying what to do, and left in place.
func TestStateFileSpecial(t *testing.T) {
	good := filepath.Join(t.TempDir(), "elsewhere.state")
	testkeys.WriteFile(t, good, `{"version":1,"quotas":{"k":{"period":"2026-12","used":3}}}`)
	for _, c := range []struct {
		name, says string
		put        func(path string) error
	}{
		{"FIFO", "named pipe (FIFO)", func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{"directory", "a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"link to a state file", "symbolic link", func(p string) error { return os.Symlink(good, p) }},
		{"link to a device", "symbolic link", func(p string) error { return os.Symlink("/dev/zero", p) }},
		{"hard link", "2 hard links", func(p string) error { return os.Link(good, p) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs, path := stateRecords(t, dec3)
			statePath := StatePath(path)
			if err := c.put(statePath); err != nil {
				t.Skip("cannot make one here:", err)
			}
			before, err := os.Lstat(statePath)
			if err != nil {
				t.Fatal(err)
			}
			goodBefore := testkeys.ReadFile(t, good)
			testkeys.NoHang(t, "using a state file that is a "+c.name, func() {
				checkStateRefused(t, rs, statePath, c.says, true, func() {
					now, err := os.Lstat(statePath)
					if err != nil || !os.SameFile(before, now) || now.Mode() != before.Mode() {
						t.Fatalf("the state file was replaced or removed: %v", err)
					}
					if testkeys.ReadFile(t, good) != goodBefore {
						t.Fatal("the file linked to was changed")
					}
				})
			})
		})
	}
}

// A state file made by root (sudo caddy apikey quota) gets the key file's
// owner, so that the user Caddy runs as can read it; one made by the
// writes after keeps it.
func TestStateFileKeepsTheOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: only root can give files away")
	}
	const uid, gid = 65534, 65534 // nobody, nogroup
	rs, path := stateRecords(t, dec3)
	for _, p := range []string{path, filepath.Dir(path)} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) {
		t.Helper()
		fi, err := os.Stat(StatePath(path))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: state file owned by %d:%d mode %v, want %d:%d 0600", when, st.Uid, st.Gid, fi.Mode().Perm(), uid, gid)
		}
	}
	if _, err := rs.GrantQuota("k", "2026-12", 10, time.Time{}); err != nil {
		t.Fatal(err)
	}
	check("made")
	if _, err := rs.TakeQuota(context.Background(), []quota.Take{monthTake("k", 10, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	check("rewritten")
}

// runStateFullDiskChild is the child process of TestStateWriteOnFullDisk:
// with a file size limit below the state file's size, every write fails
// and leaves the state file as it was, with no temporary file; once the
// limit is lifted, writes work.
func runStateFullDiskChild(path string) {
	fail := func(format string, args ...any) {
		fmt.Printf("state full-disk child: "+format+"\n", args...)
		os.Exit(1)
	}
	rs := Records{Path: path}
	before, err := os.ReadFile(StatePath(path))
	if err != nil {
		fail("%v", err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fail("getrlimit: %v", err)
	}
	limited := syscall.Rlimit{Cur: uint64(len(before) / 2), Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		fail("setrlimit: %v", err)
	}
	ctx := context.Background()
	period, _, ends := quota.Month.At(time.Now())
	take := []quota.Take{{ID: "k", Period: period, Allowance: 100, Want: 10, Ends: ends}}
	if got, err := rs.TakeQuota(ctx, take); err == nil || !errors.Is(err, quota.ErrUnavailable) || !strings.Contains(err.Error(), "writing state file") {
		fail("a take past the size limit: %+v, %v", got, err)
	}
	if err := rs.AddUsageCounts(ctx, []usagecount.Row{{ID: "k", Hour: time.Now(), Result: "admitted", N: 1}}, 0); err == nil {
		fail("a usage write past the size limit worked")
	}
	if after, _ := os.ReadFile(StatePath(path)); !bytes.Equal(before, after) {
		fail("the state file changed on a failed write")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp-*")); len(left) > 0 {
		fail("temporary files left behind: %v", left)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fail("setrlimit: %v", err)
	}
	if got, err := rs.TakeQuota(ctx, take); err != nil || got[0].Got != 10 {
		fail("a take once the disk had room: %+v, %v", got, err)
	}
	fmt.Println("state full-disk child: ok")
}

// TestStateWriteOnFullDisk runs writes of the state file in a child
// process whose file size limit (RLIMIT_FSIZE) is below the state file's
// size: they fail with an error, and the state file stays as it was.
func TestStateWriteOnFullDisk(t *testing.T) {
	testkeys.Slow(t, "a child process")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, path := stateRecords(t, dec3)
	var sb strings.Builder
	sb.WriteString(`{"version":1,"usage":{"k":{`)
	for h := range 500 {
		if h > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"%s":{"admitted":%d}`, dec3.Truncate(time.Hour).Add(-time.Duration(h)*time.Hour).Format(hourLayout), h)
	}
	sb.WriteString("}}}\n")
	testkeys.WriteFile(t, StatePath(path), sb.String())
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), stateFullDiskEnv+"="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "state full-disk child: ok") {
		t.Fatalf("child did not finish its checks:\n%s", out)
	}
}

// A take waits for the key file's lock no longer than its context allows,
// and writes nothing then.
func TestStateTakeWaitsForTheLockAsLongAsItsContext(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	_, _, unlock, err := keyfile.LockFolder(path, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var got []quota.Taken
	testkeys.NoHang(t, "a take while another writer holds the lock", func() {
		got, err = rs.TakeQuota(ctx, []quota.Take{monthTake("k", 10, 1, 0)})
	})
	if err == nil || !errors.Is(err, quota.ErrUnavailable) || !strings.Contains(err.Error(), "still held by another writer") {
		t.Fatalf("take under another writer's lock: %+v, %v", got, err)
	}
	if _, err := os.Stat(StatePath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a take that failed wrote the state file: %v", err)
	}
}
