//go:build unix

package cli

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// caddy apikey add waits for a lock held by another writer (a server
// writing usage), says so once on stderr, and then succeeds.
func TestCommandWaitsForTheLockAndSaysSo(t *testing.T) {
	path := testkeys.WriteKeys(t, "", testkeys.New("k", nil))
	unlock, err := keyfile.Lock(path, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- addKey(&stdout, &stderr, filestore.Records{Path: path, MayCreate: true}, keyops.AddOptions{Label: "waited"}, time.Now())
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "Waiting for the lock on "+path) {
		if time.Now().After(deadline) {
			t.Fatalf("add did not say it waits; stderr %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("add after the wait: %v", err)
	}
	if n := strings.Count(stderr.String(), "Waiting for the lock"); n != 1 {
		t.Errorf("said it waits %d times, want once", n)
	}
	if len(testkeys.ReadDoc(t, path).Records) != 2 {
		t.Error("the key was not added")
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
