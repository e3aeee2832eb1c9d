package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Key is the in-memory form of one usable record: what the request path
// needs and nothing more, so that a million keys stay small.
type Key struct {
	ID     string
	Label  string
	Prefix string
	Scopes []string

	scopesJoined string
	expiresAt    int64 // unix nanoseconds, clamped to int64 (see unixNanoClamped)
	revokedAt    int64 // unix nanoseconds, clamped, when revoked
	createdAt    int64 // unix nanoseconds, clamped: for a Redis store's cache file, which a restore reads
	expires      bool  // the key has an expires_at
	revoked      bool  // the key has a revoked_at
	created      bool  // the key has a created_at that reads as a time

	// usage is created on first use, so keys that are never used cost
	// nothing, and is carried over to the next key set when the file is
	// reloaded.
	usage atomic.Pointer[usageCell]
}

// copyTo makes c, a zero key of another key set, a copy of k that shares
// its usage cell.
func (k *Key) copyTo(c *Key) {
	c.ID, c.Label, c.Prefix, c.Scopes = k.ID, k.Label, k.Prefix, k.Scopes
	c.scopesJoined, c.expiresAt, c.revokedAt, c.createdAt = k.scopesJoined, k.expiresAt, k.revokedAt, k.createdAt
	c.expires, c.revoked, c.created = k.expires, k.revoked, k.created
	c.usage.Store(k.usage.Load())
}

// expired reports whether the key is past its expires_at at time now
// (unix nanoseconds).
func (k *Key) expired(now int64) bool {
	return k.expires && now >= k.expiresAt
}

// hasScope reports whether the key holds scope s.
func (k *Key) hasScope(s string) bool { return slices.Contains(k.Scopes, s) }

// placeholder provides the {http.auth.user.*} placeholders of a request
// authenticated with this key. Registering one provider per request (rather
// than four replacer.Set calls) keeps the hot path to a single allocation.
func (k *Key) placeholder(name string) (any, bool) {
	switch name {
	case "http.auth.user.id":
		return k.ID, true
	case "http.auth.user.label":
		return k.Label, true
	case "http.auth.user.key_prefix":
		return k.Prefix, true
	case "http.auth.user.scopes":
		return k.scopesJoined, true
	}
	return nil, false
}

// KeySet is an immutable snapshot of a key file. Requests read it through an
// atomic pointer, so a reload swaps all keys at once.
type KeySet struct {
	byHash map[[sha256.Size]byte]int32 // index in keys: no pointers for the GC to scan
	keys   []Key
}

// lookup finds the key whose SHA-256 matches the presented raw key: one hash
// and one map probe, whatever the number of keys.
func (ks *KeySet) lookup(raw string) (*Key, [sha256.Size]byte) {
	// Hash the string's bytes in place: Sum256 neither keeps nor changes
	// them, and copying a header-sized key would cost an allocation.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	return ks.find(sum), sum
}

// find returns the key whose hash is sum, or nil.
func (ks *KeySet) find(sum [sha256.Size]byte) *Key {
	if i, ok := ks.byHash[sum]; ok {
		return &ks.keys[i]
	}
	return nil
}

// hashKey returns the key_hash of a raw key: lowercase SHA-256 hex.
func hashKey(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(sum[:])
}

// readKeySet reads and checks a key file, as a stream (see decodeKeySet).
// A file it refuses is read again whole, for an error that names the place
// of the problem.
func readKeySet(path string) (*KeySet, error) {
	f, fi, err := openKeyFile(path)
	if err != nil {
		return nil, &keyFileError{path: path, err: err}
	}
	ks, err := decodeKeySet(io.LimitReader(f, maxKeyFileSize+1), fi.Size())
	f.Close()
	if err == nil {
		return ks, nil
	}
	data, _, err := readKeyFile(path)
	if err == nil {
		ks, err = parseKeySet(data)
	}
	if err != nil {
		return nil, &keyFileError{path: path, err: err}
	}
	return ks, nil
}

// parseKeySet decodes and checks the contents of a key file.
func parseKeySet(data []byte) (*KeySet, error) {
	_, ks, err := parseKeyFile(data)
	return ks, err
}

// parseKeyFile decodes and checks the contents of a key file, and returns
// both its document (for writers) and its key set.
func parseKeyFile(data []byte) (*keyDoc, *KeySet, error) {
	doc, err := parseKeyDoc(data)
	if err != nil {
		return nil, nil, err
	}
	ks, err := buildKeySet(doc.records)
	if err != nil {
		return nil, nil, err
	}
	return doc, ks, nil
}

// buildKeySet checks the records' values and indexes them by hash.
func buildKeySet(records []docRecord) (*KeySet, error) {
	b := newKeySetBuilder(len(records))
	for i := range records {
		if err := b.add(&records[i].Record, i+1); err != nil {
			return nil, err
		}
	}
	return b.ks, nil
}

// keySetBuilder makes a key set record by record, checking that every
// record has a unique id and a unique, well-formed key_hash, ISO 8601 times
// and well-formed scopes.
type keySetBuilder struct {
	ks  *KeySet
	ids map[string]int // record number by id
}

func newKeySetBuilder(sizeHint int) *keySetBuilder {
	return &keySetBuilder{
		ks:  &KeySet{byHash: make(map[[sha256.Size]byte]int32, sizeHint), keys: make([]Key, 0, sizeHint)},
		ids: make(map[string]int, sizeHint),
	}
}

// add checks the n-th record and adds its key. The record's strings may be
// views of bytes that change after add returns: the key keeps copies.
func (b *keySetBuilder) add(rec *Record, n int) error {
	if rec.ID == "" {
		return fmt.Errorf(`record %d: "id" is missing or empty`, n)
	}
	if first, dup := b.ids[rec.ID]; dup {
		return fmt.Errorf("record %d: id %q is already used by record %d", n, rec.ID, first)
	}
	b.ks.keys = append(b.ks.keys, Key{})
	k := &b.ks.keys[len(b.ks.keys)-1]
	sum, err := k.fill(rec)
	if err == nil {
		if other := b.ks.find(sum); other != nil {
			err = fmt.Errorf("key_hash is the same as that of id %q", other.ID)
		}
	}
	if err != nil {
		b.ks.keys = b.ks.keys[:len(b.ks.keys)-1] // a caller may go on without it
		return recordError(n, rec.ID, err)
	}
	b.ids[k.ID] = n
	b.ks.byHash[sum] = int32(len(b.ks.keys) - 1)
	return nil
}

// fill checks one record's values and makes k its key; it returns the
// key's hash.
func (k *Key) fill(rec *Record) ([sha256.Size]byte, error) {
	// The record's strings may be views of the file's bytes (see unquote)
	// or of a reused buffer: the key keeps copies.
	k.ID, k.Label, k.Prefix = strings.Clone(rec.ID), strings.Clone(rec.Label), strings.Clone(rec.KeyPrefix)
	sum, err := decodeKeyHash(rec.KeyHash)
	if err != nil {
		return sum, err
	}
	if rec.ExpiresAt != nil {
		t, err := parseTimestamp(*rec.ExpiresAt)
		if err != nil {
			return sum, fmt.Errorf("expires_at: %v", err)
		}
		k.expires, k.expiresAt = true, unixNanoClamped(t)
	}
	if rec.RevokedAt != nil {
		t, err := parseTimestamp(*rec.RevokedAt)
		if err != nil {
			return sum, fmt.Errorf("revoked_at: %v", err)
		}
		k.revoked, k.revokedAt = true, unixNanoClamped(t)
	}
	if rec.CreatedAt != nil {
		// Kept, not checked: a created_at that is no time is left out.
		if t, err := parseTimestamp(*rec.CreatedAt); err == nil {
			k.created, k.createdAt = true, unixNanoClamped(t)
		}
	}
	for _, s := range rec.Scopes {
		if err := checkScope(s); err != nil {
			return sum, err
		}
	}
	if len(rec.Scopes) > 0 {
		// Clone: Join returns a lone scope as it is, a view.
		k.scopesJoined = strings.Clone(strings.Join(rec.Scopes, ","))
		k.Scopes = strings.Split(k.scopesJoined, ",") // copies, sharing one string
	}
	return sum, nil
}

// with returns a new key set: ks, in which the keys of the records whose ids
// are in changes are replaced by their new versions, removed when nil. A key
// that stays the same (same id and hash) keeps its usage cell. was says,
// for each changed id, the key_hash (lowercase hex) its record had before
// ("" for a new record); an id whose key is not found there (a record
// changed by other means) is searched for, so that no replaced key stays.
//
// A changed record that cannot be used (a bad value, the key_hash of
// another key) leaves its id without a key, refused, and is returned among
// problems: one bad record never holds up the others' changes.
//
// It costs a copy of the hash index and nothing per unchanged key: the new
// set shares ks's keys and appends the new ones behind them, where ks does
// not look (its slice ends before them), so a Redis store puts a change in
// force in tens of milliseconds at a million keys. The keys a change
// replaces stay behind in the shared array, unreachable through the index,
// until a full copy (compact) drops them.
func (ks *KeySet) with(changes map[string]*Record, was map[string]string) (next *KeySet, problems []error) {
	next = &KeySet{byHash: maps.Clone(ks.byHash), keys: ks.keys}
	if next.byHash == nil {
		next.byHash = make(map[[sha256.Size]byte]int32)
	}
	prev := make(map[string][sha256.Size]byte, len(changes)) // the changed ids' keys now
	drop := func(id string, sum [sha256.Size]byte) bool {
		if i, ok := ks.byHash[sum]; ok && ks.keys[i].ID == id {
			prev[id] = sum
			delete(next.byHash, sum)
			return true
		}
		return false
	}
	search := false
	for id := range changes {
		h, known := was[id]
		if known && h == "" {
			// A new record: nothing to drop. Replayed after a full read
			// that saw it, it finds its own key below, and replaces it.
			continue
		}
		sum, err := decodeKeyHash(h)
		if !known || err != nil || !drop(id, sum) {
			search = true
		}
	}
	if search {
		for sum, i := range ks.byHash {
			if _, changed := changes[ks.keys[i].ID]; changed {
				drop(ks.keys[i].ID, sum)
			}
		}
	}
	added := 0
	for _, rec := range changes {
		if rec != nil {
			added++
		}
	}
	stale := len(ks.keys) - len(ks.byHash)
	if cap(ks.keys)-len(ks.keys) < added || stale > len(ks.byHash)/4 {
		next.compact(len(next.byHash) + added)
	}
	for id, rec := range changes {
		if rec == nil {
			continue
		}
		next.keys = next.keys[:len(next.keys)+1] // within the capacity
		k := &next.keys[len(next.keys)-1]
		*k = Key{} // a slot a failed record may have used
		sum, err := k.fill(rec)
		if err == nil {
			switch other := next.find(sum); {
			case other == nil:
			case other.ID == id: // its own key, replayed: replaced below
				prev[id] = sum
			default:
				err = fmt.Errorf("key_hash is the same as that of id %q", other.ID)
			}
		}
		if err != nil {
			next.keys = next.keys[:len(next.keys)-1]
			problems = append(problems, fmt.Errorf("record %q: %w", rec.ID, err))
			continue
		}
		next.byHash[sum] = int32(len(next.keys) - 1)
		if old, ok := prev[id]; ok && old == sum {
			k.usage.Store(ks.keys[ks.byHash[sum]].usage.Load())
		}
	}
	return next, problems
}

// compact gives ks a keys array of its own holding only the keys its index
// reaches, with room for more behind them.
func (ks *KeySet) compact(size int) {
	keys := make([]Key, 0, size+size/8+64)
	for sum, i := range ks.byHash {
		keys = append(keys, Key{})
		ks.keys[i].copyTo(&keys[len(keys)-1])
		ks.byHash[sum] = int32(len(keys) - 1)
	}
	ks.keys = keys
}

// size is the number of keys in the set.
func (ks *KeySet) size() int { return len(ks.byHash) }

// each calls fn for every key of the set.
func (ks *KeySet) each(fn func(sum [sha256.Size]byte, k *Key)) {
	for sum, i := range ks.byHash {
		fn(sum, &ks.keys[i])
	}
}
