//go:build !unix

package safefile

import (
	"fmt"
	"os"
)

// OpenAppendIn opens the file fileName in dir, beside the key file keyName,
// to append to it, making it (mode 0600) if it is missing; it must be a
// regular file.
func OpenAppendIn(dir *os.Root, keyName, fileName string) (*os.File, error) {
	f, err := dir.OpenFile(fileName, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s in %s is not a regular file", fileName, dir.Name())
	}
	return f, nil
}
