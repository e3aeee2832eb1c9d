package keyfile

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// Snapshot writes a key set as a key file, with what authentication needs
// of each record, and its created_at, so that a key set restored from it
// keeps them (never last-used times, rotated_from, nor members this plugin
// does not know, which the key set does not hold): a store's cache of keys
// it takes from elsewhere. Of names where
// the keys come from, in the file's "snapshot" member.
type Snapshot struct {
	KeySet *keyset.KeySet
	Of     string
}

// WriteTo writes the snapshot.
func (s Snapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriterSize(cw, chunkSize)
	of, _ := json.Marshal(snapshotLead + s.Of + snapshotTail)
	fmt.Fprintf(bw, "{\n  \"snapshot\": %s,\n  \"api_keys\": [", of)
	first := true
	var err error
	s.KeySet.Each(func(sum [sha256.Size]byte, k *keyset.Key) {
		if err != nil {
			return
		}
		rec := keyset.Record{ID: k.ID, Label: k.Label, KeyHash: hex.EncodeToString(sum[:]), KeyPrefix: k.Prefix, Scopes: k.Scopes}
		if at, ok := k.ExpiresAt(); ok {
			rec.ExpiresAt = keyset.Timestamp(new(time.Unix(0, at)))
		}
		if at, ok := k.RevokedAt(); ok {
			rec.RevokedAt = keyset.Timestamp(new(time.Unix(0, at)))
		}
		if at, ok := k.CreatedAt(); ok {
			rec.CreatedAt = keyset.Timestamp(new(time.Unix(0, at)))
		}
		var js []byte
		if js, err = jsonv2.Marshal(rec); err != nil {
			return
		}
		if !first {
			bw.WriteByte(',')
		}
		first = false
		bw.WriteString("\n    ")
		bw.Write(js)
	})
	if err != nil {
		return cw.n, err
	}
	bw.WriteString("\n  ]\n}\n")
	err = bw.Flush()
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// SnapshotOf returns the key set that the cache file at path names in its
// first member, "snapshot" (see Snapshot), or "" if it names none.
// It reads no further than that member.
func SnapshotOf(path string) (string, error) {
	f, _, err := openKeyFile(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	dec := jsontext.NewDecoder(bufio.NewReaderSize(io.LimitReader(f, 64<<10), 4096), decoderOptions...)
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' {
		return "", nil // not a key file object: readKeySet says what it is
	}
	if name, err := dec.ReadToken(); err != nil || name.Kind() != '"' || name.String() != "snapshot" {
		return "", nil
	}
	v, err := dec.ReadToken()
	if err != nil || v.Kind() != '"' {
		return "", nil
	}
	of := strings.TrimSuffix(strings.TrimPrefix(v.String(), snapshotLead), snapshotTail)
	if of == "" {
		of = v.String()
	}
	return of, nil
}

// How a cache file names its key set: snapshotLead + the store's name +
// snapshotTail.
const (
	snapshotLead = "a snapshot of "
	snapshotTail = ", written by caddy-apikey"
)
