//go:build unix

package file

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/quota"
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
			noHang(t, "using a state file that is a "+c.name, func() {
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
