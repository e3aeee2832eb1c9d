package keyfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// A companion file lies beside a key file and is kept under its lock: the
// file store's state file (keys.json.state). These are the steps its
// writers share with Edit: the lock taken in the folder of the file the
// key file's links lead to, opened once; the companion read there without
// following a link or waiting; and replaced there atomically and durably.

// LockFolder takes the lock of the key file at path, as Edit does: through
// its symbolic links, in the folder of the file they lead to. It returns
// that folder, opened once, and the key file's name in it; the caller
// reads and writes its companion files in dir, then calls unlock (which
// closes dir too).
func LockFolder(path string, timeout time.Duration, waiting func()) (dir *os.Root, name string, unlock func(), err error) {
	target := resolveLinks(path)
	if dir, err = openKeyDir(target); err != nil {
		return nil, "", nil, err
	}
	name = filepath.Base(target)
	unlockFile, err := lockKeyFileIn(dir, name, timeout, waiting)
	if err != nil {
		_ = dir.Close()
		return nil, "", nil, err
	}
	return dir, name, func() { unlockFile(); _ = dir.Close() }, nil
}

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
	data := make([]byte, 0, fi.Size()+512)
	for {
		n, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, fi, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if int64(len(data)) > max {
			return nil, nil, fmt.Errorf("grew past the %d MiB it may hold while it was read", max>>20)
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)] // the file grew while being read
		}
	}
}

// WriteCompanionIn replaces the file fileName in dir with content as Edit
// replaces a key file: a temporary file in dir, flushed to disk, renamed
// over fileName, the folder flushed; a crash at any moment leaves the old
// file or the new one whole. It first removes the temporary files of
// fileName that a writer killed mid-write left. The caller holds the key
// file's lock. like is the file replaced (or the key file, for a new
// one), whose mode and, where it can, owner the new file gets; nil: mode
// 0600. It returns the stat of the new file; its errors call the file
// what ("state file").
func WriteCompanionIn(dir *os.Root, fileName, what string, content io.WriterTo, like fs.FileInfo) (fs.FileInfo, error) {
	removeStaleTemporaries(dir, fileName)
	return replaceIn(dir, fileName, what, content, like, nil)
}
