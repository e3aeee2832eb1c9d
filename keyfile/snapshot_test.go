package keyfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// A snapshot is not a key file: the key file's reader says what it is and
// how to restore from it; SnapshotDoc makes its records a document.
func TestSnapshotIsNoKeyFile(t *testing.T) {
	ks, err := keyset.New([]keyset.Record{{ID: "a", KeyHash: keyset.HashKey("sk_a"), KeyPrefix: "sk_a"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cache")
	if _, err := WriteAtomic(path, keyset.Snapshot{KeySet: ks, Of: "redis:x#apikey:", Version: 3, LogID: "1-0", Written: time.Now()}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeySet(path); err == nil || !strings.Contains(err.Error(), "cache_file") || !strings.Contains(err.Error(), "import") {
		t.Errorf("a snapshot read as a key file: %v, want an error saying what it is", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := SnapshotDoc(data)
	if err != nil || len(doc.Records) != 1 || doc.Records[0].ID != "a" {
		t.Fatalf("SnapshotDoc: %v, %v", doc, err)
	}
	if snap, err := ReadSnapshotIf(path, false); err != nil || snap == nil || snap.Version != 3 || snap.KeySet != nil {
		t.Errorf("head: %+v, %v", snap, err)
	}
	if snap, err := ReadSnapshotIf(filepath.Join(t.TempDir(), "none"), true); snap != nil || err != nil {
		t.Errorf("no file: %v, %v", snap, err)
	}
}
