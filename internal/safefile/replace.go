package safefile

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
)

// ErrChangedMeanwhile is returned when the key file was replaced, by a
// program that does not take the lock, between the read and the rename.
var ErrChangedMeanwhile = errors.New("the key file changed while it was being written; its new version was left as it is")

// tempPrefix is how the names of the temporary files of the file name start.
func tempPrefix(name string) string { return "." + name + ".tmp-" }

// RemoveStaleTemporaries removes the temporary files of the file name in dir
// that a writer killed in the middle of a write left behind. It must be
// called with the lock held: every writer makes its temporary file only
// while holding it, so any that exists then belongs to no live writer.
// Names are removed in dir, never through a link (a link named like a
// temporary file is removed itself, not what it points to).
func RemoveStaleTemporaries(dir *os.Root, name string) {
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

// Replace replaces path with content (see ReplaceIn); its errors call the
// file what ("key file").
func Replace(path, what string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (fs.FileInfo, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("writing %s %s: %w", what, path, err)
	}
	defer dir.Close()
	return ReplaceIn(dir, filepath.Base(path), what, content, like, beforeRename)
}

// ReplaceIn replaces the file name in dir with content so that a
// reader, or a crash at any moment, sees either the old file or the new one
// whole: write a temporary file in the same folder, flush it to disk,
// rename it over name, then flush the folder so that the rename itself
// survives a power cut. The new file gets the mode and, where it can, the
// owner of like (the file it replaces; nil for a new file: mode 0600, owned
// by this process). beforeRename, if not nil, may still cancel the write.
// It returns the stat of the new file; its errors call the file what ("key
// file", "state file"), except ErrChangedMeanwhile from beforeRename.
//
// The temporary file is made new (O_EXCL: never an existing file, nor
// through a link), so only a file this process made is ever given an owner;
// the rename replaces the name itself, a link included, never what a link
// points to.
func ReplaceIn(dir *os.Root, name, what string, content io.WriterTo, like fs.FileInfo, beforeRename func() error) (written fs.FileInfo, err error) {
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
