//go:build unix

package file

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"golang.org/x/sys/unix"
)

// specialFiles puts each kind of file that is not a regular one in the key
// file's place, in turn, and calls check with its description.
func specialFiles(t *testing.T, path string, check func(kind string)) {
	t.Helper()
	put := func(make func() error) {
		t.Helper()
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := make(); err != nil {
			t.Fatal(err)
		}
	}
	put(func() error { return unix.Mkfifo(path, 0o600) })
	check("FIFO")
	put(func() error { return os.Symlink("/dev/zero", path) })
	check("device")
	put(func() error { return os.Mkdir(path, 0o700) })
	check("directory")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func TestReadKeyFileRefusesSpecialFilesWithoutBlocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	specialFiles(t, path, func(kind string) {
		var err error
		testkeys.NoHang(t, "reading a "+kind, func() { _, _, err = keyfile.ReadFile(path) })
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: error %v, want one saying it is not a regular file", kind, err)
		}
	})
}

func TestReadKeyFileRefusesAFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: no disk is used.
	if err := f.Truncate(keyfile.MaxSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, _, err = keyfile.ReadFile(path)
	if err == nil || !strings.Contains(err.Error(), "512 MiB") {
		t.Fatalf("error %v, want one naming the size limit", err)
	}
}

// A key file replaced by a FIFO, a device or a directory while Caddy runs:
// the keys in force stay, one error is logged, the usage writer and the CLI
// refuse at once, the store stops promptly, and the next good file is
// picked up.
func TestStoreSurvivesSpecialFiles(t *testing.T) {
	a := testkeys.New("a", nil)
	path := testkeys.WriteKeys(t, "", a)
	s, clock, logs := newTestStore(t, path, time.Minute)

	specialFiles(t, path, func(kind string) {
		testkeys.NoHang(t, "reloading a "+kind, func() { s.check(); s.check() })
		if k, _ := s.KeySet().Lookup(a.Raw); k == nil {
			t.Fatalf("%s: the keys in force were dropped", kind)
		}
		use(t, s, clock, a.Raw)
		testkeys.NoHang(t, "writing usage into a "+kind, func() { s.writeUsage(true) })
		var err error
		testkeys.NoHang(t, "caddy apikey revoke on a "+kind, func() { err = revokeRecord(path, a.Rec().ID) })
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: revoke error %v", kind, err)
		}
		testkeys.NoHang(t, "caddy apikey list on a "+kind, func() { err = readRecords(path) })
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: list error %v", kind, err)
		}
	})
	if n := logs.FilterMessageSnippet("key file").FilterMessageSnippet("stay in force").Len(); n != 3 {
		t.Errorf("%d errors logged for 3 special files, want 3 (one each)", n)
	}

	b := testkeys.New("b", nil)
	testkeys.WriteKeys(t, path, a, b)
	s.check()
	if k, _ := s.KeySet().Lookup(b.Raw); k == nil {
		t.Fatal("the good file that came back is not in force")
	}

	// Stopping with a use pending and a FIFO in the file's place.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	use(t, s, clock, b.Raw)
	s.start()
	testkeys.NoHang(t, "stopping the store", func() { _ = s.Destruct() })
}
