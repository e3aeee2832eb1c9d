package keyfile

import (
	"os"
	"path/filepath"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/safefile"
)

// A companion file lies beside a key file and is kept under its lock: the
// file store's state file (keys.json.state) and audit log
// (keys.json.audit.jsonl). Its writers take the key file's lock as Edit
// does, then read, replace or append to the companion in the folder the
// lock was taken in (internal/safefile's ReadCompanionIn, ReplaceIn,
// OpenAppendIn).

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
