package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	return readOpenKeyFile(f, fi)
}

// readOpenKeyFile reads the key file f, whose stat is fi.
func readOpenKeyFile(f *os.File, fi fs.FileInfo) ([]byte, fs.FileInfo, error) {
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
	return checkKeyFile(os.OpenFile(path, os.O_RDONLY|openNonBlocking, 0))
}

// readKeyFileIn reads the key file name in the folder dir, as readKeyFile
// does.
func readKeyFileIn(dir *os.Root, name string) ([]byte, fs.FileInfo, error) {
	f, fi, err := checkKeyFile(dir.OpenFile(name, os.O_RDONLY|openNonBlocking, 0))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return readOpenKeyFile(f, fi)
}

// checkKeyFile checks a key file just opened: a regular file, not too
// large. It closes the file if it refuses it.
func checkKeyFile(f *os.File, err error) (*os.File, fs.FileInfo, error) {
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
var ErrChangedMeanwhile = errors.New("the key file changed while it was being written; its new version was left as it is")

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
	target := resolveLinks(path)
	dir, err := openKeyDir(target)
	if err != nil {
		return Write{}, err
	}
	defer dir.Close()
	name := filepath.Base(target)
	unlock, err := lockKeyFileIn(dir, name, LockTimeout, e.Waiting)
	if err != nil {
		return Write{}, err
	}
	defer unlock()
	if resolveLinks(path) != target || !isFolder(dir, filepath.Dir(target)) {
		return Write{}, ErrChangedMeanwhile
	}
	removeStaleTemporaries(dir, name)
	return EditOnce(dir, name, e)
}

// openKeyDir opens the folder of the key file at path, for the steps of one
// edit.
func openKeyDir(path string) (*os.Root, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, &Error{Path: path, Err: fmt.Errorf("opening its folder: %w", err)}
	}
	return dir, nil
}

// isFolder reports whether dir, opened earlier, is still the folder at
// path.
func isFolder(dir *os.Root, path string) bool {
	opened, err := dir.Stat(".")
	if err != nil {
		return false
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(opened, now)
}

// Lock takes the lock of the key file at path (see lockKeyFileIn),
// for a caller that does not edit it through Edit.
func Lock(path string, timeout time.Duration, waiting func()) (unlock func(), err error) {
	dir, err := openKeyDir(path)
	if err != nil {
		return nil, err
	}
	unlockFile, err := lockKeyFileIn(dir, filepath.Base(path), timeout, waiting)
	if err != nil {
		_ = dir.Close()
		return nil, err
	}
	return func() { unlockFile(); _ = dir.Close() }, nil
}

// errLockBusy is what a lock attempt returns while another writer holds
// the lock.
var errLockBusy = errors.New("lock held by another writer")

// pollLock calls try until it takes the lock (nil) or fails otherwise,
// every few milliseconds, for at most timeout; waiting, if not nil, is
// called once if the lock is held. lockPath names the lock file in errors.
//
// The lock file itself is opened by the caller, not by a library such as
// github.com/gofrs/flock, which opens the path it is given following links
// and never checks what it opened: see openLockFile in atomicfile_unix.go.
func pollLock(lockPath string, timeout time.Duration, waiting func(), try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, errLockBusy):
			return fmt.Errorf("locking %s: %w", lockPath, err)
		case time.Now().After(deadline):
			return fmt.Errorf("locking %s: still held by another writer after %s", lockPath, timeout)
		}
		if waiting != nil {
			waiting()
			waiting = nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// resolveLinks returns path through its symbolic links, or path itself if
// they cannot be followed (a missing file).
func resolveLinks(path string) string {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		return target
	}
	return path
}

// EditOnce reads, edits and replaces the key file name in dir once;
// the caller holds the lock.
func EditOnce(dir *os.Root, name string, e EditOptions) (Write, error) {
	path := filepath.Join(dir.Name(), name)
	var w Write
	var doc *Doc
	data, fi, err := readKeyFileIn(dir, name)
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
	w.Written, err = writeFileAtomicIn(dir, name, doc, w.Read, unchanged)
	return w, err
}

// tempPattern is the name pattern of writeFileAtomic's temporary files.
func tempPattern(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, tempPrefix(base)+"*")
}

// tempPrefix is how the names of the temporary files of the file name start.
func tempPrefix(name string) string { return "." + name + ".tmp-" }

// removeStaleTemporaries removes the temporary files of the file name in dir
// that a writer killed in the middle of a write left behind. It must be
// called with the lock held: every writer makes its temporary file only
// while holding it, so any that exists then belongs to no live writer.
// Names are removed in dir, never through a link (a link named like a
// temporary file is removed itself, not what it points to).
func removeStaleTemporaries(dir *os.Root, name string) {
	d, err := dir.Open(".")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	_ = d.Close()
	for _, n := range names {
		if strings.HasPrefix(n, tempPrefix(name)) {
			_ = dir.Remove(n)
		}
	}
}

// writeFileAtomic replaces path with content (see writeFileAtomicIn).
func WriteAtomic(path string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (fs.FileInfo, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("writing key file %s: %w", path, err)
	}
	defer dir.Close()
	return writeFileAtomicIn(dir, filepath.Base(path), content, like, beforeRename)
}

// writeFileAtomicIn replaces the file name in dir with content so that a
// reader, or a crash at any moment, sees either the old file or the new one
// whole: write a temporary file in the same folder, flush it to disk,
// rename it over name, then flush the folder so that the rename itself
// survives a power cut. The new file gets the mode and, where it can, the
// owner of like (the file it replaces; nil for a new file: mode 0600, owned
// by this process). beforeRename, if not nil, may still cancel the write.
// It returns the stat of the new file.
//
// The temporary file is made new (O_EXCL: never an existing file, nor
// through a link), so only a file this process made is ever given an owner;
// the rename replaces the name itself, a link included, never what a link
// points to.
func writeFileAtomicIn(dir *os.Root, name string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (written fs.FileInfo, err error) {
	return replaceIn(dir, name, "key file", content, like, beforeRename)
}

// replaceIn is writeFileAtomicIn for a file its errors call what.
func replaceIn(dir *os.Root, name, what string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (written fs.FileInfo, err error) {
	path := filepath.Join(dir.Name(), name)
	tmp, tmpName, err := createTemp(dir, tempPrefix(name))
	if err != nil {
		return nil, fmt.Errorf("writing %s %s: %w", what, path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = dir.Remove(tmpName)
			if !errors.Is(err, ErrChangedMeanwhile) {
				err = fmt.Errorf("writing %s %s: %w", what, path, err)
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
	if err = dir.Rename(tmpName, name); err != nil {
		return nil, err
	}
	if d, derr := dir.Open("."); derr == nil {
		_ = d.Sync() // not supported everywhere; the rename is done either way
		_ = d.Close()
	}
	return written, nil
}

// createTemp makes a new file in dir whose name is prefix and a random
// number, as os.CreateTemp does, with mode 0600.
func createTemp(dir *os.Root, prefix string) (*os.File, string, error) {
	for try := 0; ; try++ {
		name := prefix + strconv.FormatUint(uint64(rand.Uint32()), 10)
		f, err := dir.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) && try < 100 {
			continue
		}
		return f, name, err
	}
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
