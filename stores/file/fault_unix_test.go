//go:build unix

package file

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"go.uber.org/zap"
)

const canLimitFileSize = true

// runFullDiskChild is the child process of TestUsageWriteOnFullDisk. The Go
// runtime ignores SIGXFSZ, so writes past the limit fail with EFBIG, as
// they would with ENOSPC on a full disk.
func runFullDiskChild(arg string) {
	path, raw, _ := strings.Cut(arg, "|")
	fail := func(format string, args ...any) {
		fmt.Printf("full-disk child: "+format+"\n", args...)
		os.Exit(1)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	s := newKeyFile(path, zap.NewNop())
	if err := s.load(); err != nil {
		fail("%v", err)
	}
	setUsageInterval(s, time.Minute)

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fail("getrlimit: %v", err)
	}
	limited := syscall.Rlimit{Cur: uint64(len(before) / 2), Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		fail("setrlimit: %v", err)
	}
	k, sum := s.KeySet().Lookup(raw)
	if k == nil {
		fail("key not found")
	}
	s.MarkUsed(k, sum, time.Now().UnixNano())
	s.writeUsage(true)
	if w := s.writes.Load(); w != 0 {
		fail("the write succeeded past the size limit")
	}
	if !s.writeFailing.On() {
		fail("the failed write was not noticed")
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		fail("the key file changed on a failed write")
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp-*"))
	if len(leftovers) > 0 {
		fail("temporary files left behind: %v", leftovers)
	}
	if k, _ := s.KeySet().Lookup(raw); k == nil {
		fail("authentication stopped with the disk full")
	}

	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fail("setrlimit: %v", err)
	}
	s.writeUsage(false)
	if w := s.writes.Load(); w != 1 {
		fail("%d writes once the disk had room, want 1", w)
	}
	fmt.Println("full-disk child: ok")
}

// A key file written by root (sudo caddy apikey ...) keeps its owner, and
// the lock file gets it too, so the user Caddy runs as can still read the
// file and take the lock.
func TestWritesKeepTheOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: only root can give files away; keepOwner then refuses other users' files")
	}
	const uid, gid = 65534, 65534 // nobody, nogroup
	k := testkeys.New("k", nil)
	path := testkeys.WriteKeys(t, "", k)
	// The user Caddy runs as owns the key file and its folder.
	for _, p := range []string{path, filepath.Dir(path)} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := testkeys.Update(path, func(doc *keyfile.Doc) error {
		return doc.Records[0].Set("revoked_at", keyset.FormatTimestamp(time.Now()))
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".lock"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d after a write as root, want %d:%d", filepath.Base(p), st.Uid, st.Gid, uid, gid)
		}
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode changed to %v", fi.Mode().Perm())
	}
}
