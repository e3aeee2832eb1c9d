package apikey

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/redis/rueidis"
)

// redisRecords is a key set in Redis as a record store. Its edits are
// optimistic: read at a version, written only if the version is still the
// same (editScript), done again otherwise.
type redisRecords struct {
	client rueidis.Client
	keys   redisKeys
	shown  string // the URL, without its password

	// mayCreate lets an edit that may create a key set (add, import)
	// create one at a prefix that holds none. Off, such an edit is
	// refused: after a wipe, an add must not make a one-key set that every
	// server would put in force, refusing all other keys.
	mayCreate bool
}

func (r redisRecords) String() string { return r.shown + " (prefix " + r.keys.prefix + ")" }
func (r redisRecords) Flags() string  { return "--redis " + r.shown + " --prefix " + r.keys.prefix }

// redisEditTimeout bounds one read or edit of a key set in Redis, which
// scans the whole set.
const redisEditTimeout = 2 * time.Minute

// errNotConnected: a store that started from its cache file has not
// reached Redis yet.
var errNotConnected = errors.New("not connected to Redis yet (the server started from its cache file)")

func (r redisRecords) Read() ([]keyfile.Record, *keyset.KeySet, error) {
	if r.client == nil {
		return nil, nil, r.wrap(errNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisEditTimeout)
	defer cancel()
	doc, _, err := readRedisRecords(ctx, r.client, r.keys, true)
	if err != nil {
		return nil, nil, r.wrap(err)
	}
	used, err := usedTimes(ctx, r.client, r.keys)
	if err != nil {
		return nil, nil, r.wrap(err)
	}
	mergeUsed(doc.Records, used)
	ks, err := keyfile.BuildKeySet(doc.Records)
	if err != nil {
		return nil, nil, r.wrap(err)
	}
	return doc.Records, ks, nil
}

func (r redisRecords) Edit(e stores.Edit) error {
	if r.client == nil {
		return r.wrap(errNotConnected)
	}
	e.Create = e.Create && r.mayCreate
	ctx, cancel := context.WithTimeout(context.Background(), redisEditTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		doc, version, err := r.readFor(ctx, e)
		switch {
		case errors.Is(err, errNoKeySet) && e.Create:
			doc, version = keyfile.NewList(), 0
		case err != nil:
			return r.wrap(err)
		}
		if err := e.Change(doc); err != nil {
			if errors.Is(err, keyfile.ErrNoChange) {
				return nil
			}
			return err
		}
		_, err = writeChanged(ctx, r.client, r.keys, doc, version, e.Create)
		if (errors.Is(err, errVersionMoved) || errors.Is(err, errIDTaken)) && attempt < 10 {
			if attempt == 1 && e.Waiting != nil && errors.Is(err, errVersionMoved) {
				e.Waiting()
			}
			continue
		}
		if err != nil {
			return r.wrap(err)
		}
		return nil
	}
}

// readFor reads what edit e needs, and the version it was read at: for an
// edit that only adds, nothing (anyVersion); for one of a single record
// named by its id, that record; otherwise the whole key set, which must
// be one the handler would load.
func (r redisRecords) readFor(ctx context.Context, e stores.Edit) (*keyfile.Doc, int64, error) {
	if e.OnlyAdds {
		if !e.Create {
			if v, err := readVersion(ctx, r.client, r.keys); err != nil || v == 0 {
				return nil, 0, cmp.Or(err, errNoKeySet)
			}
		}
		return keyfile.NewList(), anyVersion, nil
	}
	if e.OnlyID != "" {
		version, err := readVersion(ctx, r.client, r.keys)
		if err != nil || version == 0 {
			return nil, 0, cmp.Or(err, errNoKeySet)
		}
		js, err := r.client.Do(ctx, r.client.B().Hget().Key(r.keys.records).Field(e.OnlyID).Build()).ToString()
		if err == nil {
			var arr recordArray
			arr.add(e.OnlyID, js)
			doc, err := arr.parse()
			if err != nil {
				return nil, 0, err
			}
			if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
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
		return nil, 0, err
	}
	// Never build on a key set the handler would refuse.
	if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
		return nil, 0, err
	}
	return doc, version, nil
}

// wrap names the key set in an error.
func (r redisRecords) wrap(err error) error {
	if errors.Is(err, errNoKeySet) {
		return fmt.Errorf("%s holds no key set: make one with caddy apikey import %s --file <keys.json>, or caddy apikey add %s --create (if Redis lost it, restore it with import from an export or a server's cache_file)", r, r.Flags(), r.Flags())
	}
	return fmt.Errorf("key set %s: %w", r, err)
}
