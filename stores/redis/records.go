package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddyserver/caddy/v2"
	"github.com/redis/rueidis"
)

// Records is a key set in Redis as a record store. Its edits are
// optimistic: read at a version, written only if the version is still the
// same (one script, in one atomic step), done again otherwise.
type Records struct {
	client rueidis.Client
	keys   keyspace.Layout
	shown  string // the URL, without its password
	// timeout is how long the client waits for Redis to answer
	// (keyspace.AnswerTimeout), for messages; 0: keyspace.DefaultTimeout.
	timeout time.Duration

	// mayCreate lets an edit that may create a key set (add, import)
	// create one at a prefix that holds none. Off, such an edit is
	// refused: after a wipe, an add must not make a one-key set that every
	// server would put in force, refusing all other keys.
	mayCreate bool
}

// Target names a Redis key set outside a Caddy config: what the `caddy
// apikey` commands and other tools open with Open.
type Target struct {
	// URL is the Redis server's, as in the Caddyfile; {env.*} placeholders
	// are replaced.
	URL string
	// Prefix is the key set's (DefaultPrefix if empty); {env.*}
	// placeholders are replaced.
	Prefix string
	// Password, if not empty, is the password read from elsewhere than the
	// URL (PasswordFrom names where, for messages); the URL must then hold
	// none.
	Password, PasswordFrom string
	// FallbackPassword is used when neither the URL nor Password gives one.
	FallbackPassword string
	// Create lets an edit that may make the key set (add, import) make one
	// at a prefix that holds none.
	Create bool
}

// DefaultPrefix is the prefix of a key set when none is given: apikey:.
const DefaultPrefix = keyspace.DefaultPrefix

// Open connects to the Redis server that t names, for its key set. No
// message ever shows the password. Close the Records when done.
func Open(t Target) (Records, error) {
	repl := caddy.NewReplacer()
	opt, shown, err := parseURL(repl.ReplaceAll(t.URL, ""))
	if err != nil {
		return Records{}, err
	}
	switch {
	case t.Password != "":
		if opt.Password != "" {
			return Records{}, fmt.Errorf("redis %s: the URL holds a password and %s gives one too; give it once", shown, t.PasswordFrom)
		}
		opt.Password = t.Password
	case opt.Password == "":
		opt.Password = t.FallbackPassword
	}
	keys, err := keyspace.New(repl.ReplaceAll(t.Prefix, ""))
	if err != nil {
		return Records{}, err
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return Records{}, fmt.Errorf("redis %s: %v", shown, keyspace.ExplainTimeout(nil, err, keyspace.AnswerTimeout(opt), 0))
	}
	return Records{client: c, keys: keys, shown: shown, timeout: keyspace.AnswerTimeout(opt), mayCreate: t.Create}, nil
}

// Close closes the connection to Redis.
func (r Records) Close() {
	if r.client != nil {
		r.client.Close()
	}
}

func (r Records) String() string { return r.shown + " (prefix " + r.keys.Prefix + ")" }
func (r Records) Flags() string  { return "--redis " + r.shown + " --prefix " + r.keys.Prefix }

func (r Records) Read() ([]keyfile.Record, *keyset.KeySet, error) {
	if r.client == nil {
		return nil, nil, r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	doc, _, err := keyspace.ReadRecords(ctx, r.client, r.keys, true)
	if err != nil {
		return nil, nil, r.fail(ctx, err)
	}
	used, err := keyspace.UsedTimes(ctx, r.client, r.keys)
	if err != nil {
		return nil, nil, r.fail(ctx, err)
	}
	keyspace.MergeUsed(doc.Records, used)
	ks, err := keyfile.BuildKeySet(doc.Records)
	if err != nil {
		return nil, nil, r.wrap(err)
	}
	return doc.Records, ks, nil
}

func (r Records) Edit(e stores.Edit) error {
	if r.client == nil {
		return r.wrap(keyspace.ErrNotConnected)
	}
	e.Create = e.Create && r.mayCreate
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		doc, version, err := r.readFor(ctx, e)
		switch {
		case errors.Is(err, keyspace.ErrNoKeySet) && e.Create:
			// version is 0, or the version of a key set whose records
			// are gone, which this edit may make anew.
			doc = keyfile.NewList()
		case err != nil:
			return r.fail(ctx, err)
		}
		// An edit of one named record conflicts only with changes of the
		// records it changes: it is checked against their values as read,
		// not against the version, which every add moves.
		var before []readValue
		if e.OnlyID != "" {
			before = readValues(doc)
		}
		if err := e.Change(doc); err != nil {
			if errors.Is(err, keyfile.ErrNoChange) {
				return nil
			}
			return err
		}
		var read map[string]string
		if e.OnlyID != "" {
			read = changedValues(doc, before)
		}
		_, err = keyspace.WriteRecords(ctx, r.client, r.keys, doc, version, e.Create, read, e.AuditEntries(time.Now()))
		conflict := errors.Is(err, keyspace.ErrVersionMoved) || errors.Is(err, keyspace.ErrRecordMoved) || errors.Is(err, keyspace.ErrIDTaken)
		switch {
		case conflict && attempt < maxEditTries:
			if attempt == 1 && e.Waiting != nil && !errors.Is(err, keyspace.ErrIDTaken) {
				e.Waiting()
			}
			continue
		case conflict:
			return r.wrap(fmt.Errorf("%w (%v, %d times); nothing was changed: try again", stores.ErrConflict, err, attempt))
		case err != nil:
			return r.fail(ctx, err)
		}
		return nil
	}
}

// maxEditTries is how many times an edit is done again on what another
// writer left, before it gives up (stores.ErrConflict).
const maxEditTries = 10

// readValue is a record's id and value as an edit read them.
type readValue struct {
	id  string
	raw []byte
}

// readValues notes the values of doc's records, before an edit.
func readValues(doc *keyfile.Doc) []readValue {
	out := make([]readValue, len(doc.Records))
	for i := range doc.Records {
		out[i] = readValue{doc.Records[i].ID, doc.Records[i].Raw()}
	}
	return out
}

// changedValues returns the values read (before) of the records that the
// edit of doc changed, by id: what the write expects to replace.
func changedValues(doc *keyfile.Doc, before []readValue) map[string]string {
	read := make(map[string]string)
	changed := make(map[string]bool)
	for i := range doc.Records {
		if doc.Records[i].Edited() {
			changed[doc.Records[i].ID] = true
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
// edit that only adds, nothing (keyspace.AnyVersion); for one of a single
// record named by its id, that record; otherwise the whole key set, which
// must be one the handler would load.
func (r Records) readFor(ctx context.Context, e stores.Edit) (*keyfile.Doc, int64, error) {
	if e.OnlyAdds {
		if !e.Create {
			if _, err := keyspace.ReadState(ctx, r.client, r.keys); err != nil {
				return nil, 0, err
			}
		}
		return keyfile.NewList(), keyspace.AnyVersion, nil
	}
	if e.OnlyID != "" {
		version, err := keyspace.ReadState(ctx, r.client, r.keys)
		if err != nil {
			return nil, version, err
		}
		doc, err := keyspace.ReadRecord(ctx, r.client, r.keys, e.OnlyID)
		switch {
		case err != nil:
			return nil, 0, err
		case doc != nil:
			if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
				return nil, 0, err
			}
			return doc, version, nil
		}
		// Not an id: a key_prefix, or the start of an id. Read all.
	}
	doc, version, err := keyspace.ReadRecords(ctx, r.client, r.keys, false)
	if err != nil {
		return nil, version, err
	}
	// Never build on a key set the handler would refuse.
	if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
		return nil, 0, err
	}
	return doc, version, nil
}

// fail is wrap, for an error of a Redis call made with ctx: a time-out
// says what gave up after how long.
func (r Records) fail(ctx context.Context, err error) error {
	return r.wrap(keyspace.ExplainTimeout(ctx, err, cmp.Or(r.timeout, keyspace.DefaultTimeout), keyspace.EditTimeout))
}

// wrap names the key set in an error.
func (r Records) wrap(err error) error {
	if errors.Is(err, keyspace.ErrRecordsGone) {
		return fmt.Errorf("key set %s: %w. The servers keep the keys they hold. Restore it with caddy apikey import %s --file <keys.json>, from an export or a server's cache_file (then, on Redis, set maxmemory-policy to noeviction); caddy apikey add %s --create would start it anew with that one key", r, err, r.Flags(), r.Flags())
	}
	if errors.Is(err, keyspace.ErrNoKeySet) {
		return fmt.Errorf("%s holds no key set: make one with caddy apikey import %s --file <keys.json>, or caddy apikey add %s --create (if Redis lost it, restore it with import from an export or a server's cache_file)", r, r.Flags(), r.Flags())
	}
	return fmt.Errorf("key set %s: %w", r, err)
}

// DefaultAuditMaxEntries is about how many entries a key set's audit
// stream keeps (XADD MAXLEN ~), 1 000 000, unless its
// {prefix}audit:max_entries key says otherwise (caddy apikey audit
// --set-max-entries).
const DefaultAuditMaxEntries = keyspace.DefaultAuditMaxEntries

// ReadAudit reads the entries of the key set's audit stream that f keeps,
// oldest first.
func (r Records) ReadAudit(f audit.Filter) ([]audit.Entry, error) {
	if r.client == nil {
		return nil, r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	out, err := keyspace.ReadAudit(ctx, r.client, r.keys, f)
	if err != nil {
		return out, r.fail(ctx, err)
	}
	return out, nil
}

// SetAuditMaxEntries sets about how many entries the key set's audit
// stream keeps, for every writer (0: DefaultAuditMaxEntries); the stream
// is trimmed at the next change.
func (r Records) SetAuditMaxEntries(n int64) error {
	if r.client == nil {
		return r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	if err := keyspace.SetAuditMaxEntries(ctx, r.client, r.keys, n); err != nil {
		return r.fail(ctx, err)
	}
	return nil
}

// AuditMaxEntries returns the retention of the key set's audit stream.
func (r Records) AuditMaxEntries() (int64, error) {
	if r.client == nil {
		return 0, r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	n, err := keyspace.AuditMaxEntries(ctx, r.client, r.keys)
	if err != nil {
		return 0, r.fail(ctx, err)
	}
	return n, nil
}

// WriteAudit appends entries to the key set's audit stream, trimmed as
// the edits trim it (stores.AuditWriter: a quota grant's, which is no edit
// of a record).
func (r Records) WriteAudit(entries []audit.Entry) error {
	if r.client == nil {
		return r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	keep, err := r.AuditMaxEntries()
	if err != nil {
		return err
	}
	lines := make([]string, 0, len(entries))
	for _, e := range entries {
		line, err := keyspace.AuditLine(e)
		if err != nil {
			return err
		}
		lines = append(lines, line)
	}
	if err := keyspace.WriteAudit(ctx, r.client, r.keys, keep, lines); err != nil {
		return r.fail(ctx, err)
	}
	return nil
}
