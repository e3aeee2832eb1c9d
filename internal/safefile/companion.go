package safefile

import (
	"fmt"
	"io/fs"
	"os"
)

// ReadCompanionIn reads the file fileName in dir, a key file's companion:
// opened by name in the folder without following a symbolic link and
// without waiting (a FIFO put in its place must not hang the reader), and
// refused unless it is a regular file with one name (not a hard link to
// another file's) of at most max bytes. A missing file is an error for
// which errors.Is(err, fs.ErrNotExist) holds. The errors of opening and
// reading are *fs.PathError; the others (a planted file, one too large)
// say what the file is, without its path.
func ReadCompanionIn(dir *os.Root, fileName string, max int64) ([]byte, fs.FileInfo, error) {
	f, err := openCompanionIn(dir, fileName)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if fi.Size() > max {
		return nil, nil, fmt.Errorf("%d MiB is more than the %d MiB it may hold", fi.Size()>>20, max>>20)
	}
	data, err := readAll(f, fi.Size(), max, "it")
	if err != nil {
		return nil, nil, err
	}
	return data, fi, nil
}
