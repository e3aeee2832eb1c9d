package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/safefile"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// Records is a key file as a record store: what `caddy apikey` and the
// admin API read and change. Its edits are made under the key file's lock,
// so that they and a running Caddy's usage writes never lose each other's
// changes.
type Records struct {
	// Path is the key file's path, named as is in messages: give it
	// absolute.
	Path string
	// MayCreate lets an edit that may make the store (add, import) make a
	// missing key file. Off, such an edit is refused: a typo (keys.jsn) or
	// the wrong working folder must not make a key file that no Caddy
	// reads, and the admin API must not make a one-key file in place of
	// one that went away.
	MayCreate bool

	now func() time.Time // the clock of the state file's changes; nil: time.Now
	// seen, for a running Caddy's store, notes that its state file was
	// there: once it was, a missing one is an error, not an empty state,
	// for the quotas' use must not start afresh unnoticed.
	seen *atomic.Bool
}

// String names the key file in messages: its path.
func (f Records) String() string { return f.Path }

// Flags are the command-line flags that name the key file.
func (f Records) Flags() string { return "--file " + f.Path }

// Read reads and validates a key file without taking its lock: the file is
// always replaced whole, so a reader sees one version or another.
func (f Records) Read() ([]keyfile.Record, *keyset.KeySet, error) {
	data, _, err := keyfile.ReadFile(f.Path)
	if err != nil {
		return nil, nil, &keyfile.Error{Path: f.Path, Err: err}
	}
	doc, ks, err := keyfile.Parse(data)
	if err != nil {
		return nil, nil, &keyfile.Error{Path: f.Path, Err: err}
	}
	return doc.Records, ks, nil
}

// Edit applies e under the key file's lock and replaces the file
// atomically. A missing key file is made only if both e and f allow it.
func (f Records) Edit(e stores.Edit) error {
	mayMake := e.Create
	e.Create = e.Create && f.MayCreate
	if !e.Create {
		// Say the file is missing before taking its lock (which would
		// leave a lock file behind).
		_, err := os.Stat(f.Path)
		switch {
		case mayMake && errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("key file %s does not exist; check the path (a relative one is taken from the folder the command runs in), or give --create to make a new key file there", f.Path)
		case err != nil:
			return &keyfile.Error{Path: f.Path, Err: err}
		}
	}
	opts := keyfile.EditOptions{Edit: e.Change, Create: e.Create, Waiting: e.Waiting}
	if e.Audit != nil {
		opts.BeforeRename = func(dir *os.Root, name string) error {
			return appendAudit(dir, name, e.AuditEntries(time.Now()))
		}
	}
	_, err := keyfile.Edit(f.Path, opts)
	if errors.Is(err, keyfile.ErrNoChange) {
		return nil
	}
	return err
}

// AuditSuffix is what the audit log's name adds to the key file's:
// keys.json's is keys.json.audit.jsonl, in the same folder.
const AuditSuffix = ".audit.jsonl"

// AuditPath is the path of the audit log of the key file at path (through
// its symbolic links: the log lies beside the file they lead to, where
// its lock is).
func AuditPath(path string) string {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	return path + AuditSuffix
}

// WriteAudit appends entries to the key file's audit log under the key
// file's lock, so that they lie in order with the edits' entries
// (stores.AuditWriter: a quota grant's, which is no edit of a record).
func (f Records) WriteAudit(entries []audit.Entry) error {
	target := f.Path
	if t, err := filepath.EvalSymlinks(f.Path); err == nil {
		target = t
	}
	unlock, err := keyfile.Lock(target, keyfile.LockTimeout, nil)
	if err != nil {
		return err
	}
	defer unlock()
	dir, err := os.OpenRoot(filepath.Dir(target))
	if err != nil {
		return err
	}
	defer dir.Close()
	return appendAudit(dir, filepath.Base(target), entries)
}

// appendAudit appends entries to the audit log of the key file name in dir
// and flushes it to disk; the caller holds the key file's lock, so the
// entries lie in the order of the changes.
func appendAudit(dir *os.Root, name string, entries []audit.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	var buf []byte
	for _, e := range entries {
		var err error
		if buf, err = audit.Append(buf, e); err != nil {
			return err
		}
	}
	f, err := safefile.OpenAppendIn(dir, name, name+AuditSuffix)
	if err != nil {
		return fmt.Errorf("audit log: %w; nothing was changed", err)
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("audit log %s: %w; nothing was changed", f.Name(), err)
	}
	return nil
}

// ReadAudit reads the entries of the key file's audit log that flt keeps;
// none if it has none yet (the key file must exist then).
func (f Records) ReadAudit(flt audit.Filter) ([]audit.Entry, error) {
	path := AuditPath(f.Path)
	// Checked before it is opened: a FIFO put in its place must not hang
	// the reader.
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// No change logged yet; but a mistyped path must not read as
		// an empty log.
		if _, kerr := os.Stat(f.Path); kerr != nil {
			return nil, &keyfile.Error{Path: f.Path, Err: kerr}
		}
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("audit log: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("audit log %s: not a regular file", path)
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer file.Close()
	entries, err := audit.Read(file, flt)
	if err != nil {
		return entries, fmt.Errorf("audit log %s: %w", path, err)
	}
	return entries, nil
}
