package keyset

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"time"
	"unsafe"

	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// A Redis store's cache file is a snapshot of the key set in force, in a
// binary form of this plugin's own that a store reads in one pass (a
// million keys in a few hundred milliseconds, where the key file's JSON
// takes seconds), and the place in the key set's history it stands at: the
// version and the log's last entry. A store that starts reads its head
// first and, if the log can bring it up to date, its keys, which it puts
// in force and catches up from the log (see the Redis store's open).
// `caddy apikey import --file <cache_file>` restores a key set from it.
//
// The form (integers little-endian; "uvarint" and "varint" as
// encoding/binary writes them; each string a uvarint length and its bytes):
//
//	magic     snapshotMagic (32 bytes)
//	of        string: the key set, as its store names it
//	version   varint: the key set's version in force
//	log       string: the id of the log's last entry applied
//	written   varint: when the file was written, unix nanoseconds
//	keys      uvarint: how many keys follow
//	text      uvarint: the length of all the keys' strings together
//	each key  32 bytes: its SHA-256 (key_hash)
//	          1 byte: flags, 1 expires_at, 2 revoked_at, 4 created_at, 8 rate_limits
//	          8 bytes (int64, unix nanoseconds) for each of the first three flags set, in that order
//	          with rate_limits: uvarint, how many limits (0: the record says none);
//	            for each, uvarint requests and uvarint window in seconds
//	          strings: id, label, key_prefix, scopes (comma-joined)
//	checksum  4 bytes: CRC-32C of every byte before it
//
// Version 1, written before rate limits, is the same without the
// rate_limits flag: it is still read.
//
// A file that is cut short, or whose checksum does not match, is refused
// whole: none of its keys is put in force.

// snapshotMagic opens a cache file; its last digit is the form's version.
const snapshotMagic = "caddy-apikey key set snapshot 2\n"

// snapshotMagicV1 opens a cache file of version 1, without rate limits.
const snapshotMagicV1 = "caddy-apikey key set snapshot 1\n"

// SnapshotMagicLen is how many bytes open a snapshot (see IsSnapshot).
const SnapshotMagicLen = len(snapshotMagic)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Flags of a key in a snapshot.
const (
	snapExpires = 1 << iota
	snapRevoked
	snapCreated
	snapLimits
)

// snapshotMinKey is the fewest bytes a key takes in a snapshot: its hash,
// its flags and four empty strings.
const snapshotMinKey = sha256.Size + 1 + 4

// Snapshot is a key set as a store's cache file (see above): what it holds
// and where it stood. Written with WriteTo; read with DecodeSnapshot.
type Snapshot struct {
	KeySet  *KeySet // nil when only the head was read
	Of      string  // the key set's name, as its store names it
	Version int64   // the key set's version in force
	LogID   string  // the id of the change log's last entry applied
	Written time.Time
	Size    int // how many keys it holds
}

// WriteTo writes the snapshot.
func (s Snapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(cw, crc), 64<<10)
	text := 0
	s.KeySet.Each(func(_ [sha256.Size]byte, k *Key) {
		text += len(k.ID) + len(k.Label) + len(k.Prefix) + len(k.scopesJoined)
	})
	buf := make([]byte, 0, 256)
	buf = append(buf, snapshotMagic...)
	buf = appendString(buf, s.Of)
	buf = binary.AppendVarint(buf, s.Version)
	buf = appendString(buf, s.LogID)
	buf = binary.AppendVarint(buf, s.Written.UnixNano())
	buf = binary.AppendUvarint(buf, uint64(s.KeySet.Len()))
	buf = binary.AppendUvarint(buf, uint64(text))
	bw.Write(buf)
	s.KeySet.Each(func(sum [sha256.Size]byte, k *Key) {
		buf = append(buf[:0], sum[:]...)
		flags := byte(0)
		if k.expires {
			flags |= snapExpires
		}
		if k.revoked {
			flags |= snapRevoked
		}
		if k.created {
			flags |= snapCreated
		}
		if k.limits != nil {
			flags |= snapLimits
		}
		buf = append(buf, flags)
		if k.expires {
			buf = binary.LittleEndian.AppendUint64(buf, uint64(k.expiresAt))
		}
		if k.revoked {
			buf = binary.LittleEndian.AppendUint64(buf, uint64(k.revokedAt))
		}
		if k.created {
			buf = binary.LittleEndian.AppendUint64(buf, uint64(k.createdAt))
		}
		if k.limits != nil {
			buf = binary.AppendUvarint(buf, uint64(len(k.limits.list)))
			for _, l := range k.limits.list {
				buf = binary.AppendUvarint(buf, uint64(l.Requests))
				buf = binary.AppendUvarint(buf, uint64(l.Window/time.Second))
			}
		}
		buf = appendString(buf, k.ID)
		buf = appendString(buf, k.Label)
		buf = appendString(buf, k.Prefix)
		buf = appendString(buf, k.scopesJoined)
		bw.Write(buf)
	})
	if err := bw.Flush(); err != nil {
		return cw.n, err
	}
	_, err := cw.Write(binary.LittleEndian.AppendUint32(nil, crc.Sum32()))
	return cw.n, err
}

func appendString(buf []byte, s string) []byte {
	return append(binary.AppendUvarint(buf, uint64(len(s))), s...)
}

// IsSnapshot reports whether data, the start of a file, is that of a
// snapshot (and not of a key file).
func IsSnapshot(data []byte) bool {
	return bytes.HasPrefix(data, []byte(snapshotMagic[:len(snapshotMagic)-2]))
}

// errSnapshotShort: a snapshot that ends before its end (a cut copy, a full
// disk).
var errSnapshotShort = errors.New("the file is cut short (it ends before its last key)")

// DecodeSnapshot reads a snapshot of size bytes from r, in one pass,
// straight into a key set: every key's strings share one block of memory,
// and the file is never whole in memory. Each key is checked as a key
// file's record is (a unique hash, an id, well-formed scopes; not that its
// id is unique: the snapshot was written from a key set, whose ids are, and
// a damaged one fails its checksum), and the checksum last: a snapshot is
// used whole or not at all.
func DecodeSnapshot(r io.Reader, size int64) (*Snapshot, error) {
	return decodeSnapshotPart(r, size, true)
}

// DecodeSnapshotHead reads what the snapshot of size bytes from r says of
// itself (the key set it is of, its version and log entry, when it was
// written), not its keys, and so without the checksum, which covers the
// whole file.
func DecodeSnapshotHead(r io.Reader, size int64) (*Snapshot, error) {
	return decodeSnapshotPart(r, size, false)
}

// decodeSnapshotPart is DecodeSnapshot, or, if not keys, the head alone.
func decodeSnapshotPart(r io.Reader, size int64, keys bool) (*Snapshot, error) {
	if size < int64(len(snapshotMagic))+4 {
		return nil, errSnapshotShort
	}
	crc := crc32.New(castagnoli)
	d := &snapDecoder{r: io.TeeReader(io.LimitReader(r, size-4), crc), buf: make([]byte, snapBuffer)}
	if !keys {
		d.buf = make([]byte, 4<<10)
	}
	magic := d.fixed(len(snapshotMagic))
	flagsKnown := byte(snapExpires | snapRevoked | snapCreated | snapLimits)
	if d.err == nil && string(magic) == snapshotMagicV1 {
		flagsKnown &^= snapLimits
	} else if d.err == nil && string(magic) != snapshotMagic {
		if IsSnapshot(magic) {
			return nil, fmt.Errorf("a snapshot in a form this version does not read (%q; written by a newer version?)", magic[len(magic)-2:])
		}
		return nil, errors.New("not a snapshot of a key set")
	}
	snap := &Snapshot{}
	snap.Of = string(d.header())
	snap.Version = d.varint()
	snap.LogID = string(d.header())
	snap.Written = time.Unix(0, d.varint())
	n, text := d.uvarint(), d.uvarint()
	if d.err != nil {
		return nil, d.err
	}
	// Bounded by the file's size before anything is made that large: a
	// damaged count must not ask for the memory of a billion keys.
	if n > uint64(size)/snapshotMinKey || text > uint64(size) {
		return nil, errors.New("damaged: it counts more keys than it can hold")
	}
	snap.Size = int(n)
	if !keys {
		return snap, nil
	}
	d.arena = make([]byte, text)
	ks := &KeySet{
		byHash: make(map[[sha256.Size]byte]int32, n),
		keys:   make([]Key, n, n+n/8+64), // room for changes, as loadRedisKeySet leaves
	}
	// The index is made by a goroutine of its own as the keys are read:
	// its inserts, each a miss of the CPU's caches, are half the work, and
	// on two cores they no longer wait on the reading, nor it on them.
	x := startSnapIndexer(ks)
	defer x.finish()
	for i := range ks.keys {
		k := &ks.keys[i]
		// The fixed part of a key and its strings' lengths, at most.
		d.ensure(sha256.Size + 1 + 3*8 + 4*binary.MaxVarintLen64)
		sum := [sha256.Size]byte(d.fixed(sha256.Size))
		f := d.fixed(1)[0]
		if f&^flagsKnown != 0 {
			d.damaged("key %d has unknown flags", i+1)
		}
		if f&snapExpires != 0 {
			k.expires, k.expiresAt = true, d.int64()
		}
		if f&snapRevoked != 0 {
			k.revoked, k.revokedAt = true, d.int64()
		}
		if f&snapCreated != 0 {
			k.created, k.createdAt = true, d.int64()
		}
		var limits []ratelimit.Limit
		if f&snapLimits != 0 {
			limits = d.limits(i + 1)
		}
		k.ID, k.Label, k.Prefix, k.scopesJoined = d.str(), d.str(), d.str(), d.str()
		if d.err != nil {
			return nil, d.err
		}
		if k.ID == "" {
			return nil, fmt.Errorf("damaged: key %d has no id", i+1)
		}
		if limits != nil {
			if err := ratelimit.CheckLimits(limits); err != nil {
				return nil, fmt.Errorf("damaged: key %d (id %q): %v", i+1, k.ID, err)
			}
			k.limits = d.limitsOf(limits)
		}
		if k.scopesJoined != "" {
			k.Scopes = strings.Split(k.scopesJoined, ",")
			for _, s := range k.Scopes {
				if err := CheckScope(s); err != nil {
					return nil, fmt.Errorf("damaged: key %d (id %q): %v", i+1, k.ID, err)
				}
			}
		}
		x.add(sum)
	}
	if err := x.finish(); err != nil {
		return nil, err
	}
	if d.ensure(1); d.err != nil {
		return nil, d.err
	}
	if d.p < d.n || d.used != len(d.arena) {
		return nil, errors.New("damaged: it holds more than its keys")
	}
	var tail [4]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		return nil, errSnapshotShort
	}
	if binary.LittleEndian.Uint32(tail[:]) != crc.Sum32() {
		return nil, errors.New("damaged: its checksum does not match its contents")
	}
	snap.KeySet = ks
	return snap, nil
}

// snapIndexer indexes a snapshot's keys by hash, in batches handed to a
// goroutine of its own.
type snapIndexer struct {
	ks    *KeySet
	sums  [][sha256.Size]byte // the batch being filled
	next  int                 // the index of its first key
	todo  chan snapBatch
	spare chan [][sha256.Size]byte
	done  chan error
	err   error
	ended bool
}

type snapBatch struct {
	sums  [][sha256.Size]byte
	first int
}

const snapBatchSize = 4096

func startSnapIndexer(ks *KeySet) *snapIndexer {
	x := &snapIndexer{ks: ks, todo: make(chan snapBatch, 4), spare: make(chan [][sha256.Size]byte, 6), done: make(chan error, 1)}
	x.sums = make([][sha256.Size]byte, 0, snapBatchSize)
	go x.run()
	return x
}

func (x *snapIndexer) run() {
	var err error
	for b := range x.todo {
		for j := 0; err == nil && j < len(b.sums); j++ {
			i := b.first + j
			x.ks.byHash[b.sums[j]] = int32(i)
			if len(x.ks.byHash) != i+1 {
				// The key is read whole before its hash is handed over.
				err = fmt.Errorf("damaged: key %d (id %q) has the hash of another", i+1, x.ks.keys[i].ID)
			}
		}
		select {
		case x.spare <- b.sums[:0]:
		default:
		}
	}
	x.done <- err
}

// add hands over the hash of the next key, which is read whole.
func (x *snapIndexer) add(sum [sha256.Size]byte) {
	x.sums = append(x.sums, sum)
	if len(x.sums) < snapBatchSize {
		return
	}
	x.todo <- snapBatch{sums: x.sums, first: x.next}
	x.next += len(x.sums)
	select {
	case x.sums = <-x.spare:
	default:
		x.sums = make([][sha256.Size]byte, 0, snapBatchSize)
	}
}

// finish hands over the last batch and waits for the index; it returns
// the index's problem, if any. Called again, it returns the same.
func (x *snapIndexer) finish() error {
	if !x.ended {
		x.ended = true
		if len(x.sums) > 0 {
			x.todo <- snapBatch{sums: x.sums, first: x.next}
		}
		close(x.todo)
		x.err = <-x.done
	}
	return x.err
}

// snapBuffer is how much of a snapshot is read at a time.
const snapBuffer = 256 << 10

// snapDecoder reads the parts of a snapshot from a buffer it refills; the
// first problem stops it (err), and every later read returns zero.
type snapDecoder struct {
	r    io.Reader
	buf  []byte
	p, n int  // buf[p:n] is read and not yet taken
	eof  bool // r is at its end
	err  error

	arena []byte // the keys' strings
	used  int    // arena[:used] holds strings

	limitArena []ratelimit.Limit // the block the keys' rate limits are read into
	limitLists []ownLimits       // the block the keys' lists of rate limits are in
}

// ensure reads on until k bytes (at most len(buf)) are buffered, or r ends.
func (d *snapDecoder) ensure(k int) {
	if d.n-d.p >= k || d.eof || d.err != nil {
		return
	}
	d.n = copy(d.buf, d.buf[d.p:d.n])
	d.p = 0
	for d.n < k && !d.eof {
		m, err := d.r.Read(d.buf[d.n:])
		d.n += m
		switch {
		case err == io.EOF:
			d.eof = true
		case err != nil:
			d.err = err
			return
		}
	}
}

func (d *snapDecoder) short() {
	if d.err == nil {
		d.err = errSnapshotShort
	}
}

func (d *snapDecoder) damaged(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("damaged: "+format, args...)
	}
}

var zeros [len(snapshotMagic)]byte

// fixed takes the next k bytes (k at most len(zeros)), valid until the next
// call.
func (d *snapDecoder) fixed(k int) []byte {
	if d.ensure(k); d.err != nil || d.n-d.p < k {
		d.short()
		return zeros[:k]
	}
	b := d.buf[d.p : d.p+k]
	d.p += k
	return b
}

func (d *snapDecoder) int64() int64 { return int64(binary.LittleEndian.Uint64(d.fixed(8))) }

func (d *snapDecoder) uvarint() uint64 {
	if d.ensure(binary.MaxVarintLen64); d.err != nil {
		return 0
	}
	v, k := binary.Uvarint(d.buf[d.p:d.n])
	if k <= 0 {
		if k == 0 && d.eof {
			d.short()
		} else {
			d.damaged("a number is out of range")
		}
		return 0
	}
	d.p += k
	return v
}

func (d *snapDecoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

// header reads a string of the header (at most 64 KiB).
func (d *snapDecoder) header() []byte {
	l := d.uvarint()
	if d.err == nil && l > 64<<10 {
		d.damaged("its header is too long")
	}
	if d.err != nil {
		return nil
	}
	b := make([]byte, l)
	d.take(b)
	return b
}

// take fills b with the next len(b) bytes.
func (d *snapDecoder) take(b []byte) {
	c := copy(b, d.buf[d.p:d.n])
	d.p += c
	if c == len(b) {
		return
	}
	// Longer than what is buffered: the rest straight from r.
	if _, err := io.ReadFull(d.r, b[c:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			d.short()
		} else if d.err == nil {
			d.err = err
		}
	}
}

// limits reads the rate limits of the n-th key: in memory that the keys
// share, in blocks (no allocation for each key).
func (d *snapDecoder) limits(n int) []ratelimit.Limit {
	count := d.uvarint()
	if d.err == nil && count > ratelimit.MaxLimits {
		d.damaged("key %d has %d rate limits", n, count)
	}
	if d.err != nil {
		return nil
	}
	if count == 0 {
		return noLimits.list
	}
	if len(d.limitArena)+int(count) > cap(d.limitArena) {
		d.limitArena = make([]ratelimit.Limit, 0, 4096)
	}
	start := len(d.limitArena)
	for range count {
		reqs, secs := d.uvarint(), d.uvarint()
		if d.err == nil && (reqs > ratelimit.MaxRequests || secs > uint64(ratelimit.MaxWindow/time.Second)) {
			d.damaged("key %d has a rate limit out of bounds", n)
		}
		d.limitArena = append(d.limitArena, ratelimit.Limit{Requests: int64(reqs), Window: time.Duration(secs) * time.Second})
	}
	return d.limitArena[start:len(d.limitArena):len(d.limitArena)]
}

// limitsOf is what a key holds of its limits: a pointer to them, from a
// block of such the keys share.
func (d *snapDecoder) limitsOf(limits []ratelimit.Limit) *ownLimits {
	if len(limits) == 0 {
		return noLimits
	}
	if len(d.limitLists) == cap(d.limitLists) {
		d.limitLists = make([]ownLimits, 0, 1024)
	}
	d.limitLists = d.limitLists[:len(d.limitLists)+1]
	own := &d.limitLists[len(d.limitLists)-1]
	own.list = limits
	return own
}

// str reads a key's string into the arena and returns it: a view of bytes
// that are never written again, as the keys share the one block.
func (d *snapDecoder) str() string {
	l := d.uvarint()
	if d.err == nil && l > uint64(len(d.arena)-d.used) {
		d.damaged("its keys hold more text than it says")
	}
	if d.err != nil || l == 0 {
		return ""
	}
	b := d.arena[d.used : d.used+int(l)]
	d.take(b)
	d.used += int(l)
	return unsafe.String(&b[0], len(b))
}

// Record is k, whose hash is sum, as a key file's record: what a
// snapshot holds of it (never last_used_at, rotated_from, nor members this
// plugin does not know), its times written as the commands write them.
func (k *Key) Record(sum [sha256.Size]byte) Record {
	rec := Record{ID: k.ID, Label: k.Label, KeyHash: hex.EncodeToString(sum[:]), KeyPrefix: k.Prefix, Scopes: k.Scopes}
	if k.limits != nil {
		rec.RateLimits = RateLimitsOf(k.limits.list)
	}
	if k.expires {
		rec.ExpiresAt = Timestamp(new(time.Unix(0, k.expiresAt)))
	}
	if k.revoked {
		rec.RevokedAt = Timestamp(new(time.Unix(0, k.revokedAt)))
	}
	if k.created {
		rec.CreatedAt = Timestamp(new(time.Unix(0, k.createdAt)))
	}
	return rec
}

// countWriter counts what it writes.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
