//go:build unix

package apikey

import (
	"errors"
	"fmt"
	"io/fs"
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
	// The lock file gets the key file's permissions, so that whoever may
	// write the key file may take its lock.
	keyFile, statErr := os.Stat(path)
	perm := fs.FileMode(0o600)
	if statErr == nil {
		perm = keyFile.Mode().Perm()
	}
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, perm)
	if errors.Is(err, fs.ErrPermission) {
		f, err = os.Open(lockPath) // flock needs no write access
	}
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	// A lock file made by root (sudo caddy apikey ...) must stay usable by
	// the user Caddy runs as: give it the key file's owner.
	if statErr == nil && os.Geteuid() == 0 {
		if st, ok := keyFile.Sys().(*syscall.Stat_t); ok {
			_ = f.Chown(int(st.Uid), int(st.Gid))
		}
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

// keepOwner gives f, the new version of a key file, the owner and group of
// like, the version it replaces, so that `sudo caddy apikey ...` does not
// leave a key file that the user Caddy runs as can no longer read. Only
// root can give a file away: anyone else becomes the owner of the new
// version (as with any program that saves by rename) and keeps the group
// where the system allows, which with the mode kept (0660, say) keeps the
// file usable by its group.
func keepOwner(f *os.File, like fs.FileInfo) error {
	st, ok := like.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if os.Geteuid() == 0 {
		return f.Chown(int(st.Uid), int(st.Gid))
	}
	_ = f.Chown(-1, int(st.Gid))
	return nil
}
