package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
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
	expires      bool  // the key has an expires_at
	revoked      bool  // the key has a revoked_at

	// usage is created on first use, so keys that are never used cost
	// nothing, and is carried over to the next key set when the file is
	// reloaded.
	usage atomic.Pointer[usageCell]
}

// copyTo makes c, a zero key of another key set, a copy of k that shares
// its usage cell.
func (k *Key) copyTo(c *Key) {
	c.ID, c.Label, c.Prefix, c.Scopes = k.ID, k.Label, k.Prefix, k.Scopes
	c.scopesJoined, c.expiresAt, c.revokedAt = k.scopesJoined, k.expiresAt, k.revokedAt
	c.expires, c.revoked = k.expires, k.revoked
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
	if err != nil {
		return recordError(n, rec.ID, err)
	}
	if other := b.ks.find(sum); other != nil {
		return recordError(n, rec.ID, fmt.Errorf("key_hash is the same as that of id %q", other.ID))
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
// are in changes are replaced by their new versions, removed when nil. Kept
// keys are copied, not checked again; a key that stays the same (same id and
// hash) keeps its usage cell.
func (ks *KeySet) with(changes map[string]*Record) (*KeySet, error) {
	b := newKeySetBuilder(len(ks.keys) + len(changes))
	n := 0
	for sum, i := range ks.byHash {
		k := &ks.keys[i]
		if _, changed := changes[k.ID]; changed {
			continue
		}
		n++
		b.ks.keys = append(b.ks.keys, Key{})
		k.copyTo(&b.ks.keys[len(b.ks.keys)-1])
		b.ks.byHash[sum] = int32(len(b.ks.keys) - 1)
		b.ids[k.ID] = n
	}
	for _, rec := range changes {
		if rec == nil {
			continue
		}
		n++
		if err := b.add(rec, n); err != nil {
			return nil, err
		}
		k := &b.ks.keys[len(b.ks.keys)-1]
		sum, _ := decodeKeyHash(rec.KeyHash) // add checked it
		if prev := ks.find(sum); prev != nil && prev.ID == k.ID {
			k.usage.Store(prev.usage.Load())
		}
	}
	return b.ks, nil
}
