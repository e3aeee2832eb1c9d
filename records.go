package apikey

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/redis/rueidis"
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

	// Hints that let a store that can read records one by one (Redis)
	// hand edit less than the whole key set; a key file is read whole
	// all the same.
	onlyAdds bool   // edit only appends records with new ids: it may get none of the others
	onlyID   string // edit changes at most the record with this id, if there is one: it may get that one alone
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

// redisRecords is a key set in Redis as a record store. Its edits are
// optimistic: read at a version, written only if the version is still the
// same (editScript), done again otherwise.
type redisRecords struct {
	client rueidis.Client
	keys   redisKeys
	shown  string // the URL, without its password
	// timeout is how long the client waits for Redis to answer
	// (answerTimeout), for messages; 0: redisTimeout.
	timeout time.Duration

	// mayCreate lets an edit that may create a key set (add, import)
	// create one at a prefix that holds none. Off, such an edit is
	// refused: after a wipe, an add must not make a one-key set that every
	// server would put in force, refusing all other keys.
	mayCreate bool
}

func (r redisRecords) String() string { return r.shown + " (prefix " + r.keys.prefix + ")" }
func (r redisRecords) flags() string  { return "--redis " + r.shown + " --prefix " + r.keys.prefix }

// redisEditTimeout bounds one read or edit of a key set in Redis, which
// scans the whole set.
const redisEditTimeout = 2 * time.Minute

// errNotConnected: a store that started from its cache file has not
// reached Redis yet.
var errNotConnected = errors.New("not connected to Redis yet (the server started from its cache file)")

func (r redisRecords) read() ([]docRecord, *KeySet, error) {
	if r.client == nil {
		return nil, nil, r.wrap(errNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisEditTimeout)
	defer cancel()
	doc, _, err := readRedisRecords(ctx, r.client, r.keys, true)
	if err != nil {
		return nil, nil, r.fail(ctx, err)
	}
	used, err := usedTimes(ctx, r.client, r.keys)
	if err != nil {
		return nil, nil, r.fail(ctx, err)
	}
	mergeUsed(doc.records, used)
	ks, err := buildKeySet(doc.records)
	if err != nil {
		return nil, nil, r.wrap(err)
	}
	return doc.records, ks, nil
}

func (r redisRecords) edit(e recordEdit) error {
	if r.client == nil {
		return r.wrap(errNotConnected)
	}
	e.create = e.create && r.mayCreate
	ctx, cancel := context.WithTimeout(context.Background(), redisEditTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		doc, version, err := r.readFor(ctx, e)
		switch {
		case errors.Is(err, errNoKeySet) && e.create:
			// version is 0, or the version of a key set whose records
			// are gone, which this edit may make anew.
			doc = &keyDoc{bare: true}
		case err != nil:
			return r.fail(ctx, err)
		}
		// An edit of one named record conflicts only with changes of the
		// records it changes: it is checked against their values as read,
		// not against the version, which every add moves.
		var before []readValue
		if e.onlyID != "" {
			before = readValues(doc)
		}
		if err := e.edit(doc); err != nil {
			if errors.Is(err, errNoChange) {
				return nil
			}
			return err
		}
		var read map[string]string
		if e.onlyID != "" {
			read = changedValues(doc, before)
		}
		_, err = writeRecords(ctx, r.client, r.keys, doc, version, e.create, read)
		conflict := errors.Is(err, errVersionMoved) || errors.Is(err, errRecordMoved) || errors.Is(err, errIDTaken)
		switch {
		case conflict && attempt < maxEditTries:
			if attempt == 1 && e.waiting != nil && !errors.Is(err, errIDTaken) {
				e.waiting()
			}
			continue
		case conflict:
			return r.wrap(fmt.Errorf("%w (%v, %d times); nothing was changed: try again", errConflict, err, attempt))
		case err != nil:
			return r.fail(ctx, err)
		}
		return nil
	}
}

// maxEditTries is how many times an edit is done again on what another
// writer left, before it gives up (errConflict).
const maxEditTries = 10

// readValue is a record's id and value as an edit read them.
type readValue struct {
	id  string
	raw []byte
}

// readValues notes the values of doc's records, before an edit.
func readValues(doc *keyDoc) []readValue {
	out := make([]readValue, len(doc.records))
	for i := range doc.records {
		out[i] = readValue{doc.records[i].ID, doc.records[i].raw}
	}
	return out
}

// changedValues returns the values read (before) of the records that the
// edit of doc changed, by id: what the write expects to replace.
func changedValues(doc *keyDoc, before []readValue) map[string]string {
	read := make(map[string]string)
	changed := make(map[string]bool)
	for i := range doc.records {
		if doc.records[i].raw == nil {
			changed[doc.records[i].ID] = true
		}
	}
	for _, v := range before {
		if changed[v.id] && v.raw != nil {
			read[v.id] = string(v.raw)
		}
	}
	return read
}

// readFor reads what edit e needs, and the version it was read at: for an
// edit that only adds, nothing (anyVersion); for one of a single record
// named by its id, that record; otherwise the whole key set, which must
// be one the handler would load.
func (r redisRecords) readFor(ctx context.Context, e recordEdit) (*keyDoc, int64, error) {
	if e.onlyAdds {
		if !e.create {
			if _, err := readState(ctx, r.client, r.keys); err != nil {
				return nil, 0, err
			}
		}
		return &keyDoc{bare: true}, anyVersion, nil
	}
	if e.onlyID != "" {
		version, err := readState(ctx, r.client, r.keys)
		if err != nil {
			return nil, version, err
		}
		js, err := r.client.Do(ctx, r.client.B().Hget().Key(r.keys.records).Field(e.onlyID).Build()).ToString()
		if err == nil {
			doc := &keyDoc{bare: true, records: make([]docRecord, 1)}
			var rd recordReader
			if err := rd.read(e.onlyID, js, &doc.records[0]); err != nil {
				return nil, 0, err
			}
			if _, err := buildKeySet(doc.records); err != nil {
				return nil, 0, err
			}
			return doc, version, nil
		}
		if !rueidis.IsRedisNil(err) {
			return nil, 0, err
		}
		// Not an id: a key_prefix, or the start of an id. Read all.
	}
	doc, version, err := readRedisRecords(ctx, r.client, r.keys, false)
	if err != nil {
		return nil, version, err
	}
	// Never build on a key set the handler would refuse.
	if _, err := buildKeySet(doc.records); err != nil {
		return nil, 0, err
	}
	return doc, version, nil
}

// fail is wrap, for an error of a Redis call made with ctx: a time-out
// says what gave up after how long.
func (r redisRecords) fail(ctx context.Context, err error) error {
	return r.wrap(explainTimeout(ctx, err, cmp.Or(r.timeout, redisTimeout), redisEditTimeout))
}

// wrap names the key set in an error.
func (r redisRecords) wrap(err error) error {
	if errors.Is(err, errRecordsGone) {
		return fmt.Errorf("key set %s: %w. The servers keep the keys they hold. Restore it with caddy apikey import %s --file <keys.json>, from an export or a server's cache_file (then, on Redis, set maxmemory-policy to noeviction or a volatile-* policy); caddy apikey add %s --create would start it anew with that one key", r, err, r.flags(), r.flags())
	}
	if errors.Is(err, errNoKeySet) {
		return fmt.Errorf("%s holds no key set: make one with caddy apikey import %s --file <keys.json>, or caddy apikey add %s --create (if Redis lost it, restore it with import from an export or a server's cache_file)", r, r.flags(), r.flags())
	}
	return fmt.Errorf("key set %s: %w", r, err)
}
