//go:build unix

package safefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// appendOpenFlags open a companion file to append to (an audit log): never
// through a symbolic link, not inherited by a child process, without
// waiting (a FIFO), never as the controlling terminal (a device).
const appendOpenFlags = unix.O_WRONLY | unix.O_APPEND | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY

// OpenAppendIn opens the file fileName in dir, beside the key file keyName,
// to append to it, making it (mode 0600) if it is missing. It takes the
// same care as the lock file (openLockFile): opened by name in the folder
// without following a link, and refused when it is not a regular file or
// has more than one hard link; only a file made here and now is given an
// owner (when root makes it: the key file's, as far as lockOwner allows,
// so that the user Caddy runs as can append to it after a sudo caddy
// apikey).
func OpenAppendIn(dir *os.Root, keyName, fileName string) (*os.File, error) {
	path := filepath.Join(dir.Name(), fileName)
	d, err := dir.Open(".")
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer d.Close()
	dirfd := int(d.Fd())

	for attempt := 1; ; attempt++ {
		fd, err := openat(dirfd, fileName, appendOpenFlags|unix.O_CREAT|unix.O_EXCL, 0o600)
		if err == nil {
			var key unix.Stat_t
			if os.Geteuid() == 0 && unix.Fstatat(dirfd, keyName, &key, unix.AT_SYMLINK_NOFOLLOW) == nil && uint32(key.Mode)&unix.S_IFMT == unix.S_IFREG {
				uid, gid := lockOwner(dirfd, &key)
				if uid >= 0 || gid >= 0 {
					_ = unix.Fchown(fd, uid, gid)
				}
				if uid < 0 && gid >= 0 {
					_ = unix.Fchmod(fd, 0o660)
				}
			}
			return os.NewFile(uintptr(fd), path), nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("making %s: %w", path, err)
		}
		fd, err = openat(dirfd, fileName, appendOpenFlags, 0)
		switch {
		case errors.Is(err, unix.ENOENT) && attempt < 3:
			continue // removed between the two opens: make it
		case errors.Is(err, unix.ELOOP):
			return nil, plantedFile(path, "it is a symbolic link")
		case err != nil:
			return nil, fmt.Errorf("opening %s: %w", path, err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		switch {
		case err != nil:
			err = fmt.Errorf("%s: %w", path, err)
		case uint32(st.Mode)&unix.S_IFMT != unix.S_IFREG:
			err = plantedFile(path, "it is not a regular file but "+describeMode(fileType(uint32(st.Mode))))
		case st.Nlink > 1:
			err = plantedFile(path, fmt.Sprintf("it has %d hard links, so it may be another file's name too", st.Nlink))
		}
		if err != nil {
			_ = unix.Close(fd)
			return nil, err
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}

// plantedFile is the error for a companion file that is not what a writer
// of the key file makes.
func plantedFile(path, what string) error {
	return fmt.Errorf("refusing %s: %s; Caddy and caddy apikey only ever make a plain file there, so something else put it in place: check who can write that folder, move it away, and try again", path, what)
}
