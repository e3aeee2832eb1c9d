package keyset

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"strings"
	"testing"
	"time"
)

// snapshotKeys is a small key set with every member a snapshot keeps:
// times, a revoked key, scopes, labels with escapes and non-ASCII text, an
// empty label, rate limits of a key's own and a key with none.
func snapshotKeys(t testing.TB) (*KeySet, []Record) {
	t.Helper()
	str := func(s string) *string { return &s }
	rec := func(id, label string) Record {
		raw := "sk_snapshot_test_" + id
		return Record{ID: id, Label: label, KeyHash: HashKey(raw), KeyPrefix: raw[:11], CreatedAt: str("2026-11-25T20:14:31.123456+00:00")}
	}
	a, b, c, d := rec("a", "plain"), rec("b", `R&D "Käse" ünïcødé`), rec("c", ""), rec("d", "far")
	b.Scopes, b.ExpiresAt = []string{"read", "write"}, str("2031-01-02T03:04:05.123456+00:00")
	c.RevokedAt, c.CreatedAt = str("2026-12-01T10:00:00+00:00"), nil
	d.ExpiresAt, d.CreatedAt = str("9999-12-31T23:59:59+00:00"), str("1601-01-01T00:00:00+00:00")
	a.RateLimits = []RateLimit{{100, "1m"}, {10, "1s"}, {1000000000, "366d"}}
	c.RateLimits = []RateLimit{} // none for this key
	records := []Record{a, b, c, d}
	ks, err := New(records)
	if err != nil {
		t.Fatal(err)
	}
	return ks, records
}

func encodeSnapshot(t testing.TB, s Snapshot) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d bytes of %d, %v", n, buf.Len(), err)
	}
	return buf.Bytes()
}

// A snapshot reads back as the key set it was written from, every member
// of every key, and the place in the key set's history it names.
func TestSnapshotRoundTrip(t *testing.T) {
	ks, _ := snapshotKeys(t)
	written := time.Date(2026, 12, 3, 10, 0, 0, 123, time.UTC)
	data := encodeSnapshot(t, Snapshot{KeySet: ks, Of: "redis:redis://h:6379/0#apikey:", Version: 42, LogID: "1764756000000-3", Written: written})
	snap, err := DecodeSnapshot(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Of != "redis:redis://h:6379/0#apikey:" || snap.Version != 42 || snap.LogID != "1764756000000-3" || !snap.Written.Equal(written) {
		t.Errorf("header read back as %q, %d, %q, %s", snap.Of, snap.Version, snap.LogID, snap.Written)
	}
	if snap.KeySet.Len() != ks.Len() {
		t.Fatalf("%d keys read back, want %d", snap.KeySet.Len(), ks.Len())
	}
	ks.Each(func(sum [sha256.Size]byte, want *Key) {
		got := snap.KeySet.Find(sum)
		if got == nil {
			t.Errorf("key %s lost", want.ID)
			return
		}
		if got.ID != want.ID || got.Label != want.Label || got.Prefix != want.Prefix || got.scopesJoined != want.scopesJoined ||
			strings.Join(got.Scopes, "|") != strings.Join(want.Scopes, "|") ||
			got.expires != want.expires || got.expiresAt != want.expiresAt ||
			got.Revoked() != want.Revoked() || got.revokedAt != want.revokedAt ||
			got.created != want.created || got.createdAt != want.createdAt || !sameLimits(got, want) {
			t.Errorf("key %s read back as %+v, want %+v", want.ID, got, want)
		}
	})
	// Room for changes behind the keys, as a full read leaves.
	if cap(snap.KeySet.keys) <= len(snap.KeySet.keys) {
		t.Errorf("no room behind the keys: cap %d, len %d", cap(snap.KeySet.keys), len(snap.KeySet.keys))
	}
}

// A snapshot cut short anywhere, or with any one byte changed, is refused
// whole with an error that says so; never a panic, never part of it.
func TestSnapshotDamagedIsRefused(t *testing.T) {
	ks, _ := snapshotKeys(t)
	data := encodeSnapshot(t, Snapshot{KeySet: ks, Of: "redis:x#apikey:", Version: 7, LogID: "1-0", Written: time.Now()})
	for n := range len(data) {
		_, err := DecodeSnapshot(bytes.NewReader(data[:n]), int64(n))
		if err == nil {
			t.Fatalf("cut to %d of %d bytes: read", n, len(data))
		}
		if n > len(snapshotMagic) && !strings.Contains(err.Error(), "cut short") && !strings.Contains(err.Error(), "damaged") {
			t.Errorf("cut to %d of %d bytes: %v, want it to say so", n, len(data), err)
		}
	}
	for i := range data {
		for _, flip := range []byte{0x01, 0x80} {
			bad := bytes.Clone(data)
			bad[i] ^= flip
			_, err := DecodeSnapshot(bytes.NewReader(bad), int64(len(bad)))
			if err == nil {
				t.Fatalf("byte %d of %d changed: read", i, len(data))
			}
			if i >= len(snapshotMagic) && !strings.Contains(err.Error(), "damaged") && !strings.Contains(err.Error(), "cut short") {
				t.Errorf("byte %d of %d changed: %v, want it to say the file is damaged", i, len(data), err)
			}
		}
	}
	// A snapshot with more after its end.
	long := append(bytes.Clone(data), 0)
	if _, err := DecodeSnapshot(bytes.NewReader(long), int64(len(long))); err == nil {
		t.Error("a snapshot with a byte after its end: read")
	}
	// A key file is not a snapshot, and a snapshot not a key file: each
	// reader says what the file is.
	if IsSnapshot([]byte(`{"api_keys": []}`)) {
		t.Error("a key file taken for a snapshot")
	}
	newer := bytes.Clone(data)
	newer[len(snapshotMagic)-2] = snapshotMagic[len(snapshotMagic)-2] + 1
	if _, err := DecodeSnapshot(bytes.NewReader(newer), int64(len(newer))); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("a snapshot of a later form: %v, want it to say so", err)
	}
}

// A snapshot whose checksum holds but whose keys could not be a key set's
// (two with one hash, one without an id, a scope with a space) is refused
// as a key file with them would be.
func TestSnapshotOfAnImpossibleKeySetIsRefused(t *testing.T) {
	sumA, sumB := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
	reseal := func(data []byte) []byte {
		body := data[:len(data)-4]
		return binary.LittleEndian.AppendUint32(bytes.Clone(body), crc32.Checksum(body, castagnoli))
	}
	for _, tc := range []struct {
		name  string
		b     func(k *Key)
		patch func([]byte) []byte
		says  string
	}{
		{"one hash twice", func(k *Key) { k.ID = "b" }, func(data []byte) []byte {
			i := bytes.Index(data, sumB[:])
			copy(data[i:], sumA[:])
			return data
		}, "the hash of another"},
		{"no id", func(k *Key) {}, nil, "has no id"},
		{"a scope with a space", func(k *Key) { k.ID, k.scopesJoined = "b", "read,a b" }, nil, "scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks := &KeySet{byHash: map[[sha256.Size]byte]int32{sumA: 0, sumB: 1}, keys: make([]Key, 2)}
			ks.keys[0].ID = "a"
			tc.b(ks.At(1))
			data := encodeSnapshot(t, Snapshot{KeySet: ks, Of: "redis:x#apikey:", Version: 1, LogID: "1-0", Written: time.Now()})
			if tc.patch != nil {
				data = tc.patch(data)
			}
			_, err := DecodeSnapshot(bytes.NewReader(reseal(data)), int64(len(data)))
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("%v, want an error saying %q", err, tc.says)
			}
		})
	}
}

// FuzzSnapshot: no input makes decodeSnapshot panic or ask for memory far
// beyond the input's size.
func FuzzSnapshot(f *testing.F) {
	ks, _ := snapshotKeys(f)
	data := encodeSnapshot(f, Snapshot{KeySet: ks, Of: "redis:x#apikey:", Version: 7, LogID: "1-0", Written: time.Now()})
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte(snapshotMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := DecodeSnapshot(bytes.NewReader(data), int64(len(data)))
		if err == nil && snap.KeySet.Len() > len(data)/snapshotMinKey {
			t.Fatalf("%d keys from %d bytes", snap.KeySet.Len(), len(data))
		}
	})
}
