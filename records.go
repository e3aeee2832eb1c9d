package apikey

import (
	"errors"
	"os"
)

// recordStore is the write side of a key store: what `caddy apikey` and the
// admin API read and change. Its edits are safe against every other writer
// (a running Caddy's usage writes, other commands, other servers): a key
// file's under its lock, a Redis key set's by a version check.
type recordStore interface {
	// String names the store in messages: a key file's path, or a Redis
	// key set's URL (without its password) and prefix.
	String() string
	// flags are the command-line flags that name the store, for hints
	// such as "see caddy apikey list --file keys.json".
	flags() string
	// read returns the records and their key set (in the same order),
	// checked as the handler checks them.
	read() ([]docRecord, *KeySet, error)
	// edit applies e.edit to the records and saves what it changed, in one
	// atomic step. Without e.create, the store must exist.
	edit(e recordEdit) error
}

// recordEdit is one change to a record store.
type recordEdit struct {
	edit    func(*keyDoc) error // the change; errNoChange if there is none to make
	create  bool                // a store that does not exist yet starts empty
	waiting func()              // called once if the edit must wait for another writer, to say so
}

// fileRecords is a key file as a record store.
type fileRecords struct{ path string }

func (f fileRecords) String() string { return f.path }
func (f fileRecords) flags() string  { return "--file " + f.path }

// read reads and validates a key file without taking its lock: the file is
// always replaced whole, so a reader sees one version or another.
func (f fileRecords) read() ([]docRecord, *KeySet, error) {
	data, _, err := readKeyFile(f.path)
	if err != nil {
		return nil, nil, &keyFileError{path: f.path, err: err}
	}
	doc, ks, err := parseKeyFile(data)
	if err != nil {
		return nil, nil, &keyFileError{path: f.path, err: err}
	}
	return doc.records, ks, nil
}

func (f fileRecords) edit(e recordEdit) error {
	if !e.create {
		// Say the file is missing before taking its lock (which would
		// leave a lock file behind).
		if _, err := os.Stat(f.path); err != nil {
			return &keyFileError{path: f.path, err: err}
		}
	}
	_, err := editKeyFile(f.path, keyFileEdit{edit: e.edit, create: e.create, waiting: e.waiting})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return err
}
