package keyset

import (
	"crypto/sha256"
	"fmt"
	"iter"
	"maps"
	"time"
	"unsafe"
)

// KeySet is an immutable snapshot of a store's keys. Requests read it
// through an atomic pointer, so a reload swaps all keys at once.
type KeySet struct {
	byHash map[[sha256.Size]byte]int32 // index in keys: no pointers for the GC to scan
	keys   []Key
}

// New checks records as a key file's are checked (unique ids and key
// hashes, well-formed times and scopes) and builds their key set, its keys
// in the records' order (see At).
func New(records []Record) (*KeySet, error) {
	b := NewBuilder(len(records))
	for i := range records {
		if err := b.Add(&records[i], i+1); err != nil {
			return nil, err
		}
	}
	return b.KeySet(), nil
}

// Lookup finds the key whose SHA-256 matches the presented raw key: one
// hash and one map probe, whatever the number of keys.
func (ks *KeySet) Lookup(raw string) (*Key, [sha256.Size]byte) {
	// Hash the string's bytes in place: Sum256 neither keeps nor changes
	// them, and copying a header-sized key would cost an allocation.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	return ks.Find(sum), sum
}

// Find returns the key whose hash is sum, or nil.
func (ks *KeySet) Find(sum [sha256.Size]byte) *Key {
	if i, ok := ks.byHash[sum]; ok {
		return &ks.keys[i]
	}
	return nil
}

// At returns the key of the i-th record of a key set made by New or a
// Builder, before any With: its keys are in the records' order.
func (ks *KeySet) At(i int) *Key { return &ks.keys[i] }

// Counts returns the number of keys in each state at time now.
func (ks *KeySet) Counts(now time.Time) [NumStates]int {
	var n [NumStates]int
	for _, i := range ks.byHash {
		n[ks.keys[i].State(now)]++
	}
	return n
}

// Builder makes a key set record by record, checking that every
// record has a unique id and a unique, well-formed key_hash, ISO 8601 times
// and well-formed scopes.
type Builder struct {
	ks  *KeySet
	ids map[string]int // record number by id
}

// NewBuilder returns a builder for about sizeHint keys.
func NewBuilder(sizeHint int) *Builder {
	return &Builder{
		ks:  &KeySet{byHash: make(map[[sha256.Size]byte]int32, sizeHint), keys: make([]Key, 0, sizeHint)},
		ids: make(map[string]int, sizeHint),
	}
}

// Add checks the n-th record and adds its key. The record's strings may be
// views of bytes that change after Add returns: the key keeps copies.
func (b *Builder) Add(rec *Record, n int) error {
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
		if other := b.ks.Find(sum); other != nil {
			err = fmt.Errorf("key_hash is the same as that of id %q", other.ID)
		}
	}
	if err != nil {
		b.ks.keys = b.ks.keys[:len(b.ks.keys)-1] // a caller may go on without it
		return RecordError(n, rec.ID, err)
	}
	b.ids[k.ID] = n
	b.ks.byHash[sum] = int32(len(b.ks.keys) - 1)
	return nil
}

// NewBuilderWithRoom returns a builder for about sizeHint keys, with room
// for extra keys more, so that the first changes a store applies with With
// need not copy the key set.
func NewBuilderWithRoom(sizeHint, extra int) *Builder {
	b := NewBuilder(0)
	b.ks.byHash = make(map[[sha256.Size]byte]int32, sizeHint)
	b.ks.keys = make([]Key, 0, sizeHint+extra)
	b.ids = make(map[string]int, sizeHint)
	return b
}

// Has reports whether a record with this id was added.
func (b *Builder) Has(id string) bool {
	_, ok := b.ids[id]
	return ok
}

// KeySet returns the key set built so far.
func (b *Builder) KeySet() *KeySet { return b.ks }

// With returns a new key set: ks, in which the keys of the records whose ids
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
func (ks *KeySet) With(changes map[string]*Record, was map[string]string) (next *KeySet, problems []error) {
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
		sum, err := DecodeKeyHash(h)
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
			switch other := next.Find(sum); {
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
			k.counts.Store(ks.keys[ks.byHash[sum]].counts.Load())
			k.meter.Store(ks.keys[ks.byHash[sum]].meter.Load())
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

// Len is the number of keys in the set.
func (ks *KeySet) Len() int { return len(ks.byHash) }

// All yields every key of the set and its hash, in no order.
func (ks *KeySet) All() iter.Seq2[[sha256.Size]byte, *Key] {
	return func(yield func([sha256.Size]byte, *Key) bool) {
		for sum, i := range ks.byHash {
			if !yield(sum, &ks.keys[i]) {
				return
			}
		}
	}
}

// Each calls fn for every key of the set, in no order.
func (ks *KeySet) Each(fn func(sum [sha256.Size]byte, k *Key)) {
	for sum, i := range ks.byHash {
		fn(sum, &ks.keys[i])
	}
}
