//go:build windows

package keyfile

import (
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/windows"
)

// openNonBlocking is nothing on Windows, where opening a named pipe or a
// device by a file's path does not wait.
const openNonBlocking = 0

// lockKeyFile takes an exclusive lock that every writer of the key file at
// path holds while it reads, edits and replaces the file. See atomicfile_unix.go.
func lockKeyFile(path string, timeout time.Duration, waiting func()) (unlock func(), err error) {
	lockPath := path + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	h := windows.Handle(f.Fd())
	deadline := time.Now().Add(timeout)
	for {
		ol := new(windows.Overlapped)
		err = windows.LockFileEx(h, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: still held by another writer after %s", lockPath, timeout)
		}
		if waiting != nil {
			waiting()
			waiting = nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return func() {
		_ = windows.UnlockFileEx(h, 0, 1, 0, new(windows.Overlapped))
		_ = f.Close()
	}, nil
}

// fileOwner has nothing to tell on Windows, where a new file inherits the
// folder's permissions.
func fileOwner(fs.FileInfo) (uid, gid int, ok bool) { return 0, 0, false }
