package keyfile

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/safefile"
)

// A companion file lies beside a key file and is kept under its lock: the
// file store's state file (keys.json.state) and audit log
// (keys.json.audit.jsonl). These are the steps its writers share with
// Edit: the lock taken in the folder of the file the key file's links lead
// to, opened once; the companion read there without following a link or
// waiting; and replaced there atomically and durably, or appended to.

// LockFolder takes the lock of the key file at path, as Edit does: through
// its symbolic links, in the folder of the file they lead to. It returns
// that folder, opened once, and the key file's name in it; the caller
// reads and writes its companion files in dir, then calls unlock (which
// closes dir too).
func LockFolder(path string, timeout time.Duration, waiting func()) (dir *os.Root, name string, unlock func(), err error) {
	target := safefile.ResolveLinks(path)
	if dir, unlock, err = lockIn(target, timeout, waiting); err != nil {
		return nil, "", nil, err
	}
	return dir, filepath.Base(target), unlock, nil
}

// ReadCompanionIn reads the companion file fileName in dir, of at most max
// bytes, never through a symbolic link nor waiting on a FIFO; a missing
// file is fs.ErrNotExist (see safefile.ReadCompanionIn).
func ReadCompanionIn(dir *os.Root, fileName string, max int64) ([]byte, fs.FileInfo, error) {
	return safefile.ReadCompanionIn(dir, fileName, max)
}

// WriteCompanionIn replaces the file fileName in dir with content as Edit
// replaces a key file (see safefile.ReplaceIn), first removing the
// temporary files a writer killed mid-write left; the caller holds the key
// file's lock. The new file gets the mode and, where it can, the owner of
// like (nil: 0600); its errors call the file what ("state file").
func WriteCompanionIn(dir *os.Root, fileName, what string, content io.WriterTo, like fs.FileInfo) (fs.FileInfo, error) {
	safefile.RemoveStaleTemporaries(dir, fileName)
	return safefile.ReplaceIn(dir, fileName, what, content, like, nil)
}

// OpenAppendIn opens the file fileName in dir, beside the key file
// keyName, to append to it (an audit log), making it (mode 0600) if it is
// missing; a link, a special file or a hard link there is refused (see
// safefile.OpenAppendIn).
func OpenAppendIn(dir *os.Root, keyName, fileName string) (*os.File, error) {
	return safefile.OpenAppendIn(dir, keyName, fileName)
}
