package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/safefile"
)

// Everything that writes a key file (the usage writer and the `caddy apikey`
// commands) goes through Edit: take the lock, read the file as it
// is on disk now, change only what the caller means to change, and replace
// the file atomically.

// MaxSize bounds what is read of a key file: some two million keys.
// A larger file, or one that grows without end, is refused.
const MaxSize = 512 << 20

// ReadFile reads a key file, which must be a regular file of at most
// MaxSize bytes, without blocking (a FIFO or a device put in the file's
// place must not hang the reader): see safefile.ReadKeyFile.
func ReadFile(path string) ([]byte, fs.FileInfo, error) {
	return safefile.ReadKeyFile(path, MaxSize)
}

// openKeyFile opens a key file for reading (see ReadFile).
func openKeyFile(path string) (*os.File, fs.FileInfo, error) {
	return safefile.OpenKeyFile(path, MaxSize)
}

// ErrNoChange tells Edit that the edit changed nothing, so there is
// nothing to write.
var ErrNoChange = errors.New("no change")

// LockTimeout bounds how long a writer waits for another writer's lock.
// A usage write of a large key file can hold it for seconds.
const LockTimeout = 60 * time.Second

// Write tells what an edit of the key file read and wrote.
type Write struct {
	Read    fs.FileInfo // the version of the file that was edited; nil if it did not exist
	Written fs.FileInfo // the version written; nil if nothing was
}

// ErrChangedMeanwhile is returned when the key file was replaced, by a
// program that does not take the lock, between the read and the rename.
var ErrChangedMeanwhile = safefile.ErrChangedMeanwhile

// EditOptions is one change to a key file.
type EditOptions struct {
	Edit    func(*Doc) error // the change; ErrNoChange if there is none to make
	Create  bool             // edit a missing file as an empty one
	Checked fs.FileInfo      // a version of the file already checked whole (the one in force): not checked again
	Waiting func()           // called once if the lock is held by another writer, to say so
	// BeforeRename, if set, is called under the lock once the new version
	// is written and flushed and the file checked unchanged, just before
	// the rename that puts the new version in place, with the key file's
	// folder and name (the file store appends its audit entries there):
	// an error cancels the edit, the file staying as it was.
	BeforeRename func(dir *os.Root, name string) error
}

// Edit applies e to the key file at path under the key file's lock
// and replaces the file atomically; it tells which version of the file it
// read and which it wrote. It never writes back a file that the handler
// would refuse: the file is checked whole first, unless it is the version
// e.Checked.
//
// A program that does not take the lock (an editor, `mv`, config
// management) can replace the file while it is edited here: the rename
// would then undo that change. So the file is checked just before the
// rename, and if it changed, the edit is done again on the new version (a
// few times, then it gives up with ErrChangedMeanwhile).
func Edit(path string, e EditOptions) (Write, error) {
	for attempt := 1; ; attempt++ {
		w, err := EditLocked(path, e)
		switch {
		case !errors.Is(err, ErrChangedMeanwhile):
			return w, err
		case attempt == 3:
			return w, fmt.Errorf("writing key file %s: %w", path, err)
		}
	}
}

// EditLocked takes the lock of the file path names and edits it once.
// It writes through a symbolic link to its target rather than replace the
// link; a link pointed elsewhere while it waited for the lock (an `ln -sfn`
// deploy) is ErrChangedMeanwhile, as is a file replaced during the edit.
//
// Every step works in the target's folder opened once (an os.Root): the
// lock file, the key file, the temporary file and the rename are names in
// that very folder, so that a folder on the way that is replaced by a link
// meanwhile cannot send one of them elsewhere, and a link in the folder is
// followed only within it.
func EditLocked(path string, e EditOptions) (Write, error) {
	target := safefile.ResolveLinks(path)
	dir, unlock, err := lockIn(target, LockTimeout, e.Waiting)
	if err != nil {
		return Write{}, err
	}
	defer unlock()
	name := filepath.Base(target)
	if safefile.ResolveLinks(path) != target || !safefile.IsFolder(dir, filepath.Dir(target)) {
		return Write{}, ErrChangedMeanwhile
	}
	safefile.RemoveStaleTemporaries(dir, name)
	return EditOnce(dir, name, e)
}

// Lock takes the lock of the key file at path (see safefile.LockIn),
// for a caller that does not edit it through Edit.
func Lock(path string, timeout time.Duration, waiting func()) (unlock func(), err error) {
	_, unlock, err = lockIn(path, timeout, waiting)
	return unlock, err
}

// lockIn opens the folder of the key file at path, once for the steps of
// one edit, and takes the key file's lock there; unlock closes the folder
// too.
func lockIn(path string, timeout time.Duration, waiting func()) (dir *os.Root, unlock func(), err error) {
	dir, err = os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, nil, &Error{Path: path, Err: fmt.Errorf("opening its folder: %w", err)}
	}
	unlockFile, err := safefile.LockIn(dir, filepath.Base(path), timeout, waiting)
	if err != nil {
		_ = dir.Close()
		return nil, nil, err
	}
	return dir, func() { unlockFile(); _ = dir.Close() }, nil
}

// EditOnce reads, edits and replaces the key file name in dir once;
// the caller holds the lock.
func EditOnce(dir *os.Root, name string, e EditOptions) (Write, error) {
	path := filepath.Join(dir.Name(), name)
	var w Write
	var doc *Doc
	data, fi, err := safefile.ReadKeyFileIn(dir, name, MaxSize)
	switch {
	case err == nil && SameVersion(fi, e.Checked):
		w.Read = fi
		doc, err = ParseDoc(data)
	case err == nil:
		w.Read = fi
		doc, _, err = Parse(data)
	case errors.Is(err, fs.ErrNotExist) && e.Create:
		doc, err = NewDoc(), nil
	}
	if err != nil {
		return w, &Error{Path: path, Err: err}
	}

	if err := e.Edit(doc); err != nil {
		if errors.Is(err, ErrNoChange) {
			return w, nil
		}
		return w, err
	}
	unchanged := func() error {
		now, err := dir.Stat(name)
		switch {
		case w.Read == nil && errors.Is(err, fs.ErrNotExist):
			return nil
		case w.Read == nil || err != nil || !SameVersion(now, w.Read):
			return ErrChangedMeanwhile
		}
		return nil
	}
	if e.BeforeRename != nil {
		check := unchanged
		unchanged = func() error {
			if err := check(); err != nil {
				return err
			}
			return e.BeforeRename(dir, name)
		}
	}
	w.Written, err = safefile.ReplaceIn(dir, name, "key file", doc, w.Read, unchanged)
	return w, err
}

// WriteAtomic replaces path with content, atomically and durably, as an
// edit replaces the key file (see safefile.ReplaceIn); the new file gets
// the mode and, where it can, the owner of like (nil: mode 0600).
// beforeRename, if not nil, may still cancel the write.
func WriteAtomic(path string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (fs.FileInfo, error) {
	return safefile.Replace(path, "key file", content, like, beforeRename)
}

// SameVersion reports whether two stats of the key file show the same
// version of it: same file (a rename over it makes a new one), size and
// modification time.
func SameVersion(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
