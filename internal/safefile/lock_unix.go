//go:build unix

package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// openNonBlocking opens a file without waiting for a writer (a FIFO) or a
// device to be ready.
const openNonBlocking = unix.O_NONBLOCK

// LockIn takes an exclusive advisory lock (flock) that every writer
// of the key file name in dir holds while it reads, edits and replaces the
// file. The lock lives on a companion file, name + ".lock": the key file
// itself is replaced by rename on every write, so a lock on it would be
// lost. The companion file is left in place on purpose; removing it would
// let two writers lock two different files.
func LockIn(dir *os.Root, name string, timeout time.Duration, waiting func()) (unlock func(), err error) {
	lockPath := filepath.Join(dir.Name(), name+".lock")
	fd, err := openLockFile(dir, name)
	if err != nil {
		return nil, err
	}
	err = pollLock(lockPath, timeout, waiting, func() error {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
			return errLockBusy
		}
		return err
	})
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return func() {
		_ = unix.Flock(fd, unix.LOCK_UN)
		_ = unix.Close(fd)
	}, nil
}

// lockOpenFlags open a lock file: never through a symbolic link, not
// inherited by a child process, without waiting (a FIFO), and never making
// it the controlling terminal (a device).
const lockOpenFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY

// openLockFile opens the lock file of the key file name in dir. Whoever
// may write the key file's folder (the user Caddy runs as) may have put
// anything in the lock file's place, and the writer may run as root (sudo
// caddy apikey, or Caddy itself): so the lock file is opened by name in
// that folder without following a link, made new (O_EXCL) when missing,
// and refused, with a message saying to remove it, when it is not a
// regular file or has more than one hard link (a link to another file).
// Only a lock file made here and now is given an owner (the key file's, so
// that the user Caddy runs as can take it later, as far as lockOwner
// allows); an existing one is never chowned, written or truncated: flock
// needs it open for reading only.
func openLockFile(dir *os.Root, name string) (int, error) {
	lockName := name + ".lock"
	lockPath := filepath.Join(dir.Name(), lockName)
	// The folder's own descriptor: openat on it stays in this folder.
	d, err := dir.Open(".")
	if err != nil {
		return -1, fmt.Errorf("opening lock file %s: %w", lockPath, err)
	}
	defer d.Close()
	dirfd := int(d.Fd())

	// The lock file gets the key file's permissions, so that whoever may
	// write the key file may take its lock.
	var key unix.Stat_t
	keyErr := unix.Fstatat(dirfd, name, &key, unix.AT_SYMLINK_NOFOLLOW)
	keyIsFile := keyErr == nil && uint32(key.Mode)&unix.S_IFMT == unix.S_IFREG
	perm := uint32(0o600)
	if keyIsFile {
		perm = uint32(key.Mode) & 0o777
	}

	for attempt := 1; ; attempt++ {
		fd, err := openat(dirfd, lockName, lockOpenFlags|unix.O_CREAT|unix.O_EXCL, perm)
		if err == nil {
			// Made here and now: ours to give away. A lock file made by
			// root must stay usable by the user Caddy runs as.
			if keyIsFile && os.Geteuid() == 0 {
				uid, gid := lockOwner(dirfd, &key)
				if uid >= 0 || gid >= 0 {
					_ = unix.Fchown(fd, uid, gid)
				}
				if uid < 0 && gid >= 0 {
					// The group's members (the user Caddy runs as) must
					// be able to open it to take the lock.
					_ = unix.Fchmod(fd, perm|0o040)
				}
			}
			return fd, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("making lock file %s: %w", lockPath, err)
		}
		fd, err = openat(dirfd, lockName, lockOpenFlags, 0)
		switch {
		case errors.Is(err, unix.ENOENT) && attempt < 3:
			continue // removed between the two opens: make it
		case errors.Is(err, unix.ELOOP):
			return -1, plantedLockFile(lockPath, "it is a symbolic link")
		case err != nil:
			return -1, fmt.Errorf("opening lock file %s: %w", lockPath, err)
		}
		if err := checkLockFile(fd, lockPath); err != nil {
			_ = unix.Close(fd)
			return -1, err
		}
		return fd, nil
	}
}

// lockOwner returns the owner and group (-1: unchanged) that a lock file
// made by root in the folder dirfd gets: the key file's (key), so that the
// user Caddy runs as can take the lock later, but only as far as that user
// or group could have made the lock file there itself. The key file's owner
// must own the folder; its group must be the folder's, and the folder
// writable by it (the lock file is then made readable by the group, which
// is all flock needs). So a key file reached through a link planted in another
// folder (keys.json -> a file of the attacker's in a folder only root may
// write) never has root hand its owner a file where it could not make one.
func lockOwner(dirfd int, key *unix.Stat_t) (uid, gid int) {
	var dir unix.Stat_t
	if unix.Fstat(dirfd, &dir) != nil {
		return -1, -1
	}
	uid, gid = -1, -1
	if key.Uid == dir.Uid {
		uid, gid = int(key.Uid), int(key.Gid)
	}
	if key.Gid == dir.Gid && uint32(dir.Mode)&0o020 != 0 {
		gid = int(key.Gid)
	}
	return uid, gid
}

// checkLockFile refuses an existing lock file that no writer of the key
// file would have made.
func checkLockFile(fd int, lockPath string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("lock file %s: %w", lockPath, err)
	}
	switch {
	case uint32(st.Mode)&unix.S_IFMT != unix.S_IFREG:
		return plantedLockFile(lockPath, "it is not a regular file but "+describeMode(fileType(uint32(st.Mode))))
	case st.Nlink > 1:
		return plantedLockFile(lockPath, fmt.Sprintf("it has %d hard links, so it may be another file's name too", st.Nlink))
	}
	return nil
}

// plantedLockFile is the error for a lock file that is not what a writer
// of the key file makes (a regular file with one name).
func plantedLockFile(lockPath, what string) error {
	return fmt.Errorf("refusing the lock file %s: %s; Caddy and caddy apikey only ever make a plain empty file there, so something else put it in place: check who can write that folder, remove it (rm %s), and try again", lockPath, what, lockPath)
}

// openat is unix.Openat, tried again when a signal interrupts it.
func openat(dirfd int, name string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, perm)
		if !errors.Is(err, unix.EINTR) {
			return fd, err
		}
	}
}

// fileType is the type bits of a stat's mode as an fs.FileMode, for
// describeMode.
func fileType(mode uint32) fs.FileMode {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	case unix.S_IFLNK:
		return fs.ModeSymlink
	}
	return fs.ModeIrregular
}

// fileOwner returns the owner and group of a file.
func fileOwner(fi fs.FileInfo) (uid, gid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return int(st.Uid), int(st.Gid), true
}
