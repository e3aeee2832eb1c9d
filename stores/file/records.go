package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

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
	_, err := keyfile.Edit(f.Path, keyfile.EditOptions{Edit: e.Change, Create: e.Create, Waiting: e.Waiting})
	if errors.Is(err, keyfile.ErrNoChange) {
		return nil
	}
	return err
}
