package safefile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// ReadKeyFile reads a key file, which must be a regular file of at most
// max bytes. It opens the file without blocking and checks what it opened
// before it reads: a FIFO or a device put in the file's place must not
// hang the reader (and with it a config load, the usage writer holding the
// lock, or Caddy's shutdown).
func ReadKeyFile(path string, max int64) ([]byte, fs.FileInfo, error) {
	f, fi, err := OpenKeyFile(path, max)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return readOpenKeyFile(f, fi, max)
}

// OpenKeyFile opens a key file for reading (see ReadKeyFile).
func OpenKeyFile(path string, max int64) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|openNonBlocking, 0)
	return checkKeyFile(f, err, max)
}

// ReadKeyFileIn reads the key file name in the folder dir, as ReadKeyFile
// does.
func ReadKeyFileIn(dir *os.Root, name string, max int64) ([]byte, fs.FileInfo, error) {
	f, err := dir.OpenFile(name, os.O_RDONLY|openNonBlocking, 0)
	f, fi, err := checkKeyFile(f, err, max)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return readOpenKeyFile(f, fi, max)
}

// readOpenKeyFile reads the key file f, whose stat is fi.
func readOpenKeyFile(f *os.File, fi fs.FileInfo, max int64) ([]byte, fs.FileInfo, error) {
	data, err := readAll(f, fi.Size(), max, "a key file")
	if err != nil {
		return nil, nil, err
	}
	return data, fi, nil
}

// checkKeyFile checks a key file just opened: a regular file, not too
// large (more than max bytes). It closes the file if it refuses it.
func checkKeyFile(f *os.File, err error, max int64) (*os.File, fs.FileInfo, error) {
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("not a regular file but %s; the key file must be a regular file", describeMode(fi.Mode()))
	case fi.Size() > max:
		err = fmt.Errorf("%d MiB is more than the %d MiB a key file may hold", fi.Size()>>20, max>>20)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// readAll reads f, size bytes when it was opened, to its end, refusing to
// read more than max bytes: a file that grows while it is read. holder
// names what may hold max bytes in that error ("a key file", "it").
func readAll(f *os.File, size, max int64, holder string) ([]byte, error) {
	data := make([]byte, 0, size+512)
	for {
		n, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
		if int64(len(data)) > max {
			return nil, fmt.Errorf("grew past the %d MiB %s may hold while it was read", max>>20, holder)
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)] // the file grew while being read
		}
	}
}

// describeMode names the kind of a file that is not a regular one.
func describeMode(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file (" + m.String() + ")"
}
