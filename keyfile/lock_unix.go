//go:build unix

package keyfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// openNonBlocking opens a file without waiting for a writer (a FIFO) or a
// device to be ready.
const openNonBlocking = unix.O_NONBLOCK

// lockKeyFile takes an exclusive advisory lock (flock) that every writer of
// the key file at path holds while it reads, edits and replaces the file.
// The lock lives on a companion file, path + ".lock": the key file itself
// is replaced by rename on every write, so a lock on it would be lost.
// The companion file is left in place on purpose; removing it would let two
// writers lock two different files.
func lockKeyFile(path string, timeout time.Duration, waiting func()) (unlock func(), err error) {
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
		if uid, gid, ok := fileOwner(keyFile); ok {
			_ = f.Chown(uid, gid)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", lockPath, err)
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
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		_ = f.Close()
	}, nil
}

// fileOwner returns the owner and group of a file.
func fileOwner(fi fs.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}
