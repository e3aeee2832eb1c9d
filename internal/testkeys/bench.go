package testkeys

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// BenchRawKey returns the i-th raw key of a generated key set: "sk_" and 43
// base64url characters, as the reference application makes them, but
// derived from i so that a million of them are quick to make.
func BenchRawKey(i int) string {
	var seed [8]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(i))
	sum := sha256.Sum256(seed[:])
	return "sk_" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// BenchID is a UUID-shaped id derived from i.
func BenchID(i int) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], uint64(i))
	b[0], b[6] = 0xb3, 0x40
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// BenchKeyFile renders n records as the reference application writes its
// key file: {"api_keys": [...]} indented by two spaces. It appends by hand
// because json.MarshalIndent of a million records is slow to set up.
func BenchKeyFile(n int) []byte { return BenchKeyFileLabeled(n, "Key %d") }

// BenchKeyFileLabeled is BenchKeyFile with labels made by the format
// label (a JSON string's contents, escapes allowed) from the key's number.
func BenchKeyFileLabeled(n int, label string) []byte {
	var buf bytes.Buffer
	buf.Grow(n * 290)
	buf.WriteString("{\n  \"api_keys\": [")
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		raw := BenchRawKey(i)
		lastUsed := "null"
		if i%4 == 0 {
			lastUsed = `"2026-11-26T08:02:11.654321+00:00"`
		}
		fmt.Fprintf(&buf, `
    {
      "id": "%s",
      "label": "`+label+`",
      "key_hash": "%s",
      "key_prefix": "%s",
      "created_at": "2026-11-25T20:14:31.123456+00:00",
      "last_used_at": %s
    }`, BenchID(i), i, keyset.HashKey(raw), raw[:11], lastUsed)
	}
	buf.WriteString("\n  ]\n}\n")
	return buf.Bytes()
}

// BenchRecords returns n records in the reference application's shape
// (every fourth one already used, none with lifecycle members).
func BenchRecords(n int) []keyfile.Record {
	recs := make([]keyfile.Record, n)
	created := "2026-11-25T20:14:31.123456+00:00"
	used := "2026-11-26T08:02:11.654321+00:00"
	for i := range recs {
		raw := BenchRawKey(i)
		recs[i].Record = keyset.Record{
			ID:        BenchID(i),
			Label:     "Key " + strconv.Itoa(i),
			KeyHash:   keyset.HashKey(raw),
			KeyPrefix: raw[:11],
			CreatedAt: &created,
		}
		if i%4 == 0 {
			recs[i].LastUsedAt = &used
		}
	}
	return recs
}

// benchKeySets caches the in-memory key sets by size: a million keys take a
// few seconds to build and are shared by the sub-benchmarks.
var benchKeySets = map[int]*keyset.KeySet{}

// BenchKeySet is the key set of BenchRecords(n), built once per size.
func BenchKeySet(tb testing.TB, n int) *keyset.KeySet {
	if ks := benchKeySets[n]; ks != nil {
		return ks
	}
	ks, err := keyfile.BuildKeySet(BenchRecords(n))
	if err != nil {
		tb.Fatal(err)
	}
	benchKeySets[n] = ks
	return ks
}
