//go:build unix

package apikey

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockKeyFile takes an exclusive advisory lock (flock) that every writer of
// the key file at path holds while it reads, edits and replaces the file.
// The lock lives on a companion file, path + ".lock": the key file itself
// is replaced by rename on every write, so a lock on it would be lost.
// The companion file is left in place on purpose; removing it would let two
// writers lock two different files.
func lockKeyFile(path string, timeout time.Duration) (unlock func(), err error) {
	lockPath := path + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", lockPath, err)
		}
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: still held by another writer after %s", lockPath, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}
