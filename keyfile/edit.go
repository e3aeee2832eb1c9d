package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Everything that writes a key file (the usage writer and the `caddy apikey`
// commands) goes through Edit: take the lock, read the file as it
// is on disk now, change only what the caller means to change, and replace
// the file atomically.

// MaxSize bounds what is read of a key file: some two million keys.
// A larger file, or one that grows without end, is refused.
const MaxSize = 512 << 20

// readKeyFile reads a key file, which must be a regular file of at most
// MaxSize bytes. It opens the file without blocking and checks what
// it opened before it reads: a FIFO or a device put in the file's place must
// not hang the reader (and with it a config load, the usage writer holding
// the lock, or Caddy's shutdown).
func ReadFile(path string) ([]byte, fs.FileInfo, error) {
	f, fi, err := openKeyFile(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
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
		if len(data) > MaxSize {
			return nil, nil, fmt.Errorf("grew past the %d MiB a key file may hold while it was read", MaxSize>>20)
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)] // the file grew while being read
		}
	}
}

// openKeyFile opens a key file for reading (see readKeyFile).
func openKeyFile(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|openNonBlocking, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("not a regular file but %s; the key file must be a regular file", describeMode(fi.Mode()))
	case fi.Size() > MaxSize:
		err = fmt.Errorf("%d MiB is more than the %d MiB a key file may hold", fi.Size()>>20, MaxSize>>20)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
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

// ErrNoChange tells Edit that the edit changed nothing, so there is
// nothing to write.
var ErrNoChange = errors.New("no change")

// lockTimeout bounds how long a writer waits for another writer's lock.
// A usage write of a large key file can hold it for seconds.
const lockTimeout = 60 * time.Second

// Write tells what an edit of the key file read and wrote.
type Write struct {
	Read    fs.FileInfo // the version of the file that was edited; nil if it did not exist
	Written fs.FileInfo // the version written; nil if nothing was
}

// ErrChangedMeanwhile is returned when the key file was replaced, by a
// program that does not take the lock, between the read and the rename.
var ErrChangedMeanwhile = errors.New("the key file changed while it was being written; its new version was left as it is")

// EditOptions is one change to a key file.
type EditOptions struct {
	Edit    func(*Doc) error // the change; ErrNoChange if there is none to make
	Create  bool             // edit a missing file as an empty one
	Checked fs.FileInfo      // a version of the file already checked whole (the one in force): not checked again
	Waiting func()           // called once if the lock is held by another writer, to say so
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
		w, err := editKeyFileLocked(path, e)
		switch {
		case !errors.Is(err, ErrChangedMeanwhile):
			return w, err
		case attempt == 3:
			return w, fmt.Errorf("writing key file %s: %w", path, err)
		}
	}
}

// editKeyFileLocked takes the lock of the file path names and edits it once.
// It writes through a symbolic link to its target rather than replace the
// link; a link pointed elsewhere while it waited for the lock (an `ln -sfn`
// deploy) is ErrChangedMeanwhile, as is a file replaced during the edit.
func editKeyFileLocked(path string, e EditOptions) (Write, error) {
	target := resolveLinks(path)
	unlock, err := lockKeyFile(target, lockTimeout, e.Waiting)
	if err != nil {
		return Write{}, err
	}
	defer unlock()
	if resolveLinks(path) != target {
		return Write{}, ErrChangedMeanwhile
	}
	removeStaleTemporaries(target)
	return editKeyFileOnce(target, e)
}

// resolveLinks returns path through its symbolic links, or path itself if
// they cannot be followed (a missing file).
func resolveLinks(path string) string {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		return target
	}
	return path
}

// editKeyFileOnce reads, edits and replaces the key file once; the caller
// holds the lock.
func editKeyFileOnce(path string, e EditOptions) (Write, error) {
	var w Write
	var doc *Doc
	data, fi, err := ReadFile(path)
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
		now, err := os.Stat(path)
		switch {
		case w.Read == nil && errors.Is(err, fs.ErrNotExist):
			return nil
		case w.Read == nil || err != nil || !SameVersion(now, w.Read):
			return ErrChangedMeanwhile
		}
		return nil
	}
	w.Written, err = WriteAtomic(path, doc, w.Read, unchanged)
	return w, err
}

// tempPattern is the name pattern of writeFileAtomic's temporary files.
func tempPattern(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".tmp-*")
}

// removeStaleTemporaries removes the temporary files that a writer killed in
// the middle of a write left behind. It must be called with the lock held:
// every writer makes its temporary file only while holding it, so any that
// exists then belongs to no live writer.
func removeStaleTemporaries(path string) {
	stale, _ := filepath.Glob(tempPattern(path))
	for _, name := range stale {
		_ = os.Remove(name)
	}
}

// writeFileAtomic replaces path with content so that a reader, or a crash at any
// moment, sees either the old file or the new one whole: write a temporary
// file in the same folder, flush it to disk, rename it over path, then flush
// the folder so that the rename itself survives a power cut. The new file
// gets the mode and, where it can, the owner of like (the file it replaces;
// nil for a new file: mode 0600, owned by this process). beforeRename, if
// not nil, may still cancel the write. It returns the stat of the new file.
func WriteAtomic(path string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (written fs.FileInfo, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(tempPattern(path)))
	if err != nil {
		return nil, fmt.Errorf("writing key file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
			if !errors.Is(err, ErrChangedMeanwhile) {
				err = fmt.Errorf("writing key file %s: %w", path, err)
			}
		}
	}()
	mode := fs.FileMode(0o600)
	if like != nil {
		mode = like.Mode().Perm()
		if err = keepOwner(tmp, like); err != nil {
			return nil, err
		}
	}
	if _, err = content.WriteTo(tmp); err != nil {
		return nil, err
	}
	if err = tmp.Chmod(mode); err != nil {
		return nil, err
	}
	if err = tmp.Sync(); err != nil {
		return nil, err
	}
	if written, err = tmp.Stat(); err != nil {
		return nil, err
	}
	if err = tmp.Close(); err != nil {
		return nil, err
	}
	if beforeRename != nil {
		if err = beforeRename(); err != nil {
			return nil, err
		}
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // not supported everywhere; the rename is done either way
		_ = d.Close()
	}
	return written, nil
}

// keepOwner gives f, the new version of a key file, the owner and group of
// like, the version it replaces, so that `sudo caddy apikey ...` does not
// leave a key file that the user Caddy runs as can no longer read. Only
// root can give a file away: anyone else becomes the owner of the new
// version (as with any program that saves by rename) and keeps the group
// where the system allows, which with the mode kept (0660, say) keeps the
// file usable by its group.
func keepOwner(f *os.File, like fs.FileInfo) error {
	uid, gid, ok := fileOwner(like)
	if !ok {
		return nil
	}
	if os.Geteuid() == 0 {
		return f.Chown(uid, gid)
	}
	_ = f.Chown(-1, gid)
	return nil
}

// SameVersion reports whether two stats of the key file show the same
// version of it: same file (a rename over it makes a new one), size and
// modification time.
func SameVersion(a, b fs.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
