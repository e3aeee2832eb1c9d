//go:build !unix

package safefile

import (
	"errors"
	"fmt"
	"os"
)

// openCompanionIn opens the companion file fileName in dir to read (see
// ReadCompanionIn): a symbolic link or a file that is not a regular one is
// refused before it is opened.
func openCompanionIn(dir *os.Root, fileName string) (*os.File, error) {
	fi, err := dir.Lstat(fileName)
	switch {
	case err != nil:
		return nil, err
	case fi.Mode()&os.ModeSymlink != 0:
		return nil, errors.New("it is a symbolic link, which caddy-apikey never makes there")
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("not a regular file but %s", describeMode(fi.Mode()))
	}
	f, err := dir.OpenFile(fileName, os.O_RDONLY|openNonBlocking, 0)
	if err != nil {
		return nil, err
	}
	if now, err := f.Stat(); err != nil || !os.SameFile(fi, now) {
		f.Close()
		return nil, errors.New("it was replaced while it was opened")
	}
	return f, nil
}
