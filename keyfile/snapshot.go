package keyfile

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// SnapshotOf returns the key set that a cache file in the key file's form
// (as versions before the binary snapshot wrote it) names in its first
// member, "snapshot", or "" if it names none.
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

// ReadSnapshot reads the cache file at path, which is a snapshot of a key
// set (see keyset.IsSnapshot), with every check. Its errors do not name the
// file.
func ReadSnapshot(path string) (*keyset.Snapshot, error) {
	f, fi, err := openKeyFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return keyset.DecodeSnapshot(f, fi.Size())
}

// SnapshotDoc makes the records of a snapshot (data, a whole cache file) a
// key file's document, for `caddy apikey import`.
func SnapshotDoc(data []byte) (*Doc, error) {
	snap, err := keyset.DecodeSnapshot(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	doc := NewList(make([]Record, 0, snap.KeySet.Len())...)
	for sum, k := range snap.KeySet.All() {
		r, err := NewRecord(k.Record(sum))
		if err != nil {
			return nil, err
		}
		doc.Records = append(doc.Records, r)
	}
	return doc, nil
}

// ReadSnapshotIf reads the file at path if it is a snapshot of a key set:
// its keys too if keys, its head alone otherwise. It returns nil and no
// error if there is no file at path, or if it is no snapshot (a key file).
// Its errors do not name the file.
func ReadSnapshotIf(path string, keys bool) (*keyset.Snapshot, error) {
	f, fi, err := openKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	magic := make([]byte, keyset.SnapshotMagicLen)
	if n, _ := io.ReadFull(f, magic); !keyset.IsSnapshot(magic[:n]) {
		return nil, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if keys {
		return keyset.DecodeSnapshot(f, fi.Size())
	}
	return keyset.DecodeSnapshotHead(f, fi.Size())
}
