package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// errLockBusy is what a lock attempt returns while another writer holds
// the lock.
var errLockBusy = errors.New("lock held by another writer")

// pollLock calls try until it takes the lock (nil) or fails otherwise,
// every few milliseconds, for at most timeout; waiting, if not nil, is
// called once if the lock is held. lockPath names the lock file in errors.
//
// The lock file itself is opened by the caller, not by a library such as
// github.com/gofrs/flock, which opens the path it is given following links
// and never checks what it opened: see openLockFile in lock_unix.go.
func pollLock(lockPath string, timeout time.Duration, waiting func(), try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, errLockBusy):
			return fmt.Errorf("locking %s: %w", lockPath, err)
		case time.Now().After(deadline):
			return fmt.Errorf("locking %s: still held by another writer after %s", lockPath, timeout)
		}
		if waiting != nil {
			waiting()
			waiting = nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ResolveLinks returns path through its symbolic links, or path itself if
// they cannot be followed (a missing file).
func ResolveLinks(path string) string {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		return target
	}
	return path
}

// IsFolder reports whether dir, opened earlier, is still the folder at
// path.
func IsFolder(dir *os.Root, path string) bool {
	opened, err := dir.Stat(".")
	if err != nil {
		return false
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(opened, now)
}
