//go:build unix

package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// companionOpenFlags open a companion file to read: never through a
// symbolic link, not inherited by a child process, without waiting (a
// FIFO), never as the controlling terminal (a device).
const companionOpenFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY

// openCompanionIn opens the companion file fileName in dir to read (see
// ReadCompanionIn).
func openCompanionIn(dir *os.Root, fileName string) (*os.File, error) {
	path := filepath.Join(dir.Name(), fileName)
	d, err := dir.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fd, err := openat(int(d.Fd()), fileName, companionOpenFlags, 0)
	switch {
	case errors.Is(err, unix.ELOOP):
		return nil, errors.New("it is a symbolic link, which caddy-apikey never makes there")
	case err != nil:
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	switch {
	case err != nil:
		err = &fs.PathError{Op: "stat", Path: path, Err: err}
	case uint32(st.Mode)&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("not a regular file but %s", describeMode(fileType(uint32(st.Mode))))
	case st.Nlink > 1:
		err = fmt.Errorf("it has %d hard links, so it may be another file's name too", st.Nlink)
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}
