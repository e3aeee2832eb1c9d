//go:build windows

package safefile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/windows"
)

// openNonBlocking is nothing on Windows, where opening a named pipe or a
// device by a file's path does not wait.
const openNonBlocking = 0

// LockIn takes an exclusive lock that every writer of the key file
// name in dir holds while it reads, edits and replaces the file. See
// lock_unix.go. Windows gives no file away (see fileOwner), so a lock
// file put in place by another user cannot make this process hand anything
// over.
func LockIn(dir *os.Root, name string, timeout time.Duration, waiting func()) (unlock func(), err error) {
	lockPath := filepath.Join(dir.Name(), name+".lock")
	f, err := dir.OpenFile(name+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", lockPath, err)
	}
	h := windows.Handle(f.Fd())
	err = pollLock(lockPath, timeout, waiting, func() error {
		ol := new(windows.Overlapped)
		if windows.LockFileEx(h, windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol) != nil {
			return errLockBusy
		}
		return nil
	})
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() {
		_ = windows.UnlockFileEx(h, 0, 1, 0, new(windows.Overlapped))
		_ = f.Close()
	}, nil
}

// fileOwner has nothing to tell on Windows, where a new file inherits the
// folder's permissions.
func fileOwner(fs.FileInfo) (uid, gid int, ok bool) { return 0, 0, false }
