package apikey

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"strings"
	"time"
	"unsafe"

	"github.com/go-json-experiment/json/jsontext"
)

// The key file is the reference application's (SoulSync's) API-key store: a
// JSON object whose "api_keys" member lists the key records, or a bare JSON
// array of them. This file reads it in one pass with jsontext: the JSON is
// checked, each record's members are decoded, and where each record and
// top-level member lies is noted, so that a writer keeps what it does not
// change as the bytes it was (see keydoc.go).

// Record is one API key as the key file stores it. The members are those of
// the reference application's records, plus the optional lifecycle members
// expires_at, revoked_at and scopes (absent means "no limit"), and
// rotated_from, the id of the key that `caddy apikey rotate` made this one
// to replace (for people and scripts: the handler does not use it). Members
// it does not know stay in the file: keyDoc keeps them.
type Record struct {
	ID          string   `json:"id"`
	Label       string   `json:"label"`
	KeyHash     string   `json:"key_hash"`
	KeyPrefix   string   `json:"key_prefix"`
	CreatedAt   *string  `json:"created_at"`
	LastUsedAt  *string  `json:"last_used_at"`
	ExpiresAt   *string  `json:"expires_at,omitempty"`
	RevokedAt   *string  `json:"revoked_at,omitempty"`
	Scopes      []string `json:"scopes,omitempty"`
	RotatedFrom *string  `json:"rotated_from,omitempty"`
}

// The known members of a record, as the key file names them.
var recordFields = [...]string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "scopes", "rotated_from"}

const (
	unknownField    = -1 // a member this plugin does not read
	misspelledField = -2 // a known member's name but for case
)

// recordField returns the index in recordFields of a quoted member name,
// without allocating for the names the file format uses.
func recordField(quoted []byte) int {
	name := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(name, '\\') >= 0 {
		name = []byte(unquote(quoted))
	}
	for i, known := range recordFields {
		if string(name) == known {
			return i
		}
	}
	for _, known := range recordFields {
		if strings.EqualFold(string(name), known) {
			return misspelledField
		}
	}
	return unknownField
}

// keyFileError is a problem with a key file: it names the file and, where it
// can, the record and the position in the file.
type keyFileError struct {
	path string
	err  error
}

func (e *keyFileError) Error() string {
	err := e.err
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == e.path {
		err = pe.Err // the path once is enough
	}
	return "key file " + e.path + ": " + err.Error()
}
func (e *keyFileError) Unwrap() error { return e.err }

const wantShape = `want a JSON object with an "api_keys" list or a JSON array of key records`

// parseKeyDoc reads a key file's contents: the document that writers edit,
// with each record decoded. It refuses what is not JSON or not a key file;
// buildKeySet checks the records' values.
func parseKeyDoc(data []byte) (*keyDoc, error) {
	if isSnapshot(data) {
		return nil, errors.New("a Redis store's cache_file (a binary snapshot of a key set), not a key file; to restore a key set from it, use caddy apikey import --file")
	}
	d := newKeyFileDecoder(data)
	// Records take about 250 bytes of a file: guess their count, to save
	// most of the slice's regrowth.
	doc := &keyDoc{records: make([]docRecord, 0, len(data)/256+1)}
	bare, err := d.walk(
		func(name string, value []byte) { doc.top = append(doc.top, member{name: name, value: value}) },
		func(n int) error {
			doc.records = append(doc.records, docRecord{})
			return d.record(&doc.records[len(doc.records)-1], n)
		})
	if err != nil {
		return nil, err
	}
	doc.bare = bare
	return doc, nil
}

// decodeKeySet reads a key file's contents from r as a stream, straight
// into a key set: the file is never whole in memory, and each record only
// until its key is made. sizeHint (the file's size) sizes the key set. Its
// errors name no position: readKeySet reads a refused file again with
// parseKeyDoc for that.
func decodeKeySet(r io.Reader, sizeHint int64) (*KeySet, error) {
	d := &keyFileDecoder{dec: jsontext.NewDecoder(r, decoderOptions...)}
	b := newKeySetBuilder(int(sizeHint / 300))
	// One decoder for the records, reset for each; their strings are views
	// of buf until add has copied what it keeps.
	var buf bytes.Buffer
	in := &keyFileDecoder{dec: jsontext.NewDecoder(&buf, decoderOptions...)}
	var rec docRecord
	_, err := d.walk(
		func(string, []byte) {},
		func(n int) error {
			raw, err := d.value() // the whole record, valid until the next read
			if err != nil {
				return err
			}
			buf.Reset()
			buf.Write(raw)
			in.data = buf.Bytes()
			in.dec.Reset(&buf, decoderOptions...)
			rec = docRecord{}
			if err := in.record(&rec, n); err != nil {
				return err
			}
			return b.add(&rec.Record, n)
		})
	if err != nil {
		return nil, err
	}
	return b.ks, nil
}

// walk reads a whole key file: a JSON object, whose members it hands to top
// in order (the "api_keys" one without a value), or a bare JSON array. For
// each record of the list, it calls record with the record's number, the
// decoder positioned at the record's '{'.
func (d *keyFileDecoder) walk(top func(name string, value []byte), record func(n int) error) (bare bool, err error) {
	switch d.dec.PeekKind() {
	case '[':
		bare = true
		err = d.recordList(record)
	case '{':
		err = d.topObject(top, record)
	default:
		if _, err := d.dec.ReadValue(); err != nil {
			if errors.Is(err, io.EOF) {
				return false, errors.New("file is empty; " + wantShape)
			}
			return false, d.syntaxError(err)
		}
		return false, errors.New(wantShape)
	}
	if err != nil {
		return false, err
	}
	if _, err := d.dec.ReadToken(); err != io.EOF {
		if err == nil {
			return false, d.syntaxError(&jsontext.SyntacticError{ByteOffset: d.dec.InputOffset() - 1, Err: errors.New("more than one JSON value")})
		}
		return false, d.syntaxError(err)
	}
	return bare, nil
}

// keyFileDecoder reads key file JSON.
type keyFileDecoder struct {
	data []byte // the whole input, when the caller has it: values are then views of it
	dec  *jsontext.Decoder
}

// decoderOptions: duplicate names are checked for the known members only,
// and invalid UTF-8 is kept as it is, as encoding/json always allowed.
var decoderOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

func newKeyFileDecoder(data []byte) *keyFileDecoder {
	return &keyFileDecoder{data: data, dec: jsontext.NewDecoder(bytes.NewBuffer(data), decoderOptions...)}
}

// value reads the next value: a view of the input when the decoder has it
// whole, otherwise bytes that are valid until the next read.
func (d *keyFileDecoder) value() (v []byte, err error) {
	raw, err := d.dec.ReadValue()
	if err != nil {
		return nil, d.syntaxError(err)
	}
	if d.data == nil {
		return raw, nil
	}
	end := int(d.dec.InputOffset())
	return d.data[end-len(raw) : end : end], nil
}

// delim reads a bracket that PeekKind has announced.
func (d *keyFileDecoder) delim() error {
	if _, err := d.dec.ReadToken(); err != nil {
		return d.syntaxError(err)
	}
	return nil
}

// topObject reads a key file that is a JSON object. Its members other than
// "api_keys" are kept verbatim; "api_keys" (null or a list) gives the records.
func (d *keyFileDecoder) topObject(top func(name string, value []byte), record func(n int) error) error {
	if err := d.delim(); err != nil {
		return err
	}
	sawList := false
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return err
		}
		if err := checkName(name, "api_keys", &sawList); err != nil {
			return err
		}
		if name != "api_keys" {
			v, err := d.value()
			if err != nil {
				return err
			}
			top(name, v)
			continue
		}
		top(name, nil) // where the list stands
		switch k := d.dec.PeekKind(); k {
		case '[':
			if err = d.recordList(record); err != nil {
				return err
			}
		case 'n':
			_, err = d.value()
		default:
			var v []byte
			if v, err = d.value(); err == nil {
				err = fmt.Errorf(`"api_keys" must be a list of key records, not a JSON %s`, kindName(jsontext.Value(v).Kind()))
			}
		}
		if err != nil {
			return err
		}
	}
	return d.delim()
}

// name reads a member name.
func (d *keyFileDecoder) name() (string, error) {
	raw, err := d.value()
	if err != nil {
		return "", err
	}
	return unquote(raw), nil
}

// checkName refuses a member name that the reference application would read
// differently: names are case-sensitive there (Python dictionaries), and a
// repeated member is ambiguous. So a known member must be spelled exactly
// and appear once; *seen records that it has appeared.
func checkName(name, known string, seen *bool) error {
	switch {
	case name == known:
		if *seen {
			return fmt.Errorf("member %q appears twice", known)
		}
		*seen = true
	case strings.EqualFold(name, known):
		return fmt.Errorf("member %q must be spelled %q (names are case-sensitive)", name, known)
	}
	return nil
}

// recordList reads a JSON array of records, calling record for each.
func (d *keyFileDecoder) recordList(record func(n int) error) error {
	if err := d.delim(); err != nil {
		return err
	}
	for n := 1; d.dec.PeekKind() != ']'; n++ {
		if k := d.dec.PeekKind(); k != '{' {
			if _, err := d.value(); err != nil {
				return err
			}
			// The kind, not the value: a key file replaced by a link to
			// another JSON file must not have its content quoted in logs.
			return fmt.Errorf("record %d: want a JSON object, got a JSON %s", n, kindName(k))
		}
		if err := record(n); err != nil {
			return err
		}
	}
	return d.delim()
}

// record reads the n-th record into r, which is zero. A problem with a
// member's value is reported once the whole record is read, so that the
// error can name the record's id.
func (d *keyFileDecoder) record(r *docRecord, n int) error {
	if err := d.delim(); err != nil {
		return err
	}
	start := int(d.dec.InputOffset()) - 1
	var seen [len(recordFields)]bool
	var problem error
	note := func(err error) {
		if problem == nil {
			problem = err
		}
	}
	for d.dec.PeekKind() != '}' {
		raw, err := d.value()
		if err != nil {
			return err
		}
		field := recordField(raw)
		v, err := d.value()
		if err != nil {
			return err
		}
		switch {
		case field == unknownField:
		case field == misspelledField:
			name := unquote(raw)
			for _, known := range recordFields {
				if strings.EqualFold(name, known) {
					note(fmt.Errorf("member %q must be spelled %q (names are case-sensitive)", name, known))
				}
			}
		case seen[field]:
			note(fmt.Errorf("member %q appears twice", recordFields[field]))
		default:
			seen[field] = true
			if err := r.setField(recordFields[field], v); err != nil {
				note(err)
			}
		}
	}
	if err := d.delim(); err != nil {
		return err
	}
	r.raw = d.data[start:d.dec.InputOffset():d.dec.InputOffset()]
	if problem != nil {
		return recordError(n, r.ID, problem)
	}
	return nil
}

// recordError is a problem with the n-th record, whose id is id ("" when
// not known).
func recordError(n int, id string, err error) error {
	if id != "" {
		return fmt.Errorf("record %d (id %q): %w", n, id, err)
	}
	return fmt.Errorf("record %d: %w", n, err)
}

// setField decodes the raw value v of the known member name into r.
func (r *Record) setField(name string, v jsontext.Value) error {
	var str *string  // a member that is a string (null reads as "")
	var ptr **string // a member that is a string or null
	switch name {
	case "id":
		str = &r.ID
	case "label":
		str = &r.Label
	case "key_hash":
		str = &r.KeyHash
	case "key_prefix":
		str = &r.KeyPrefix
	case "created_at":
		ptr = &r.CreatedAt
	case "last_used_at":
		ptr = &r.LastUsedAt
	case "expires_at":
		ptr = &r.ExpiresAt
	case "revoked_at":
		ptr = &r.RevokedAt
	case "rotated_from":
		ptr = &r.RotatedFrom
	case "scopes":
		scopes, err := decodeStrings(v)
		if err != nil {
			return fmt.Errorf("member %q must be a list of strings: %w", name, err)
		}
		r.Scopes = scopes
		return nil
	}
	switch k := v.Kind(); {
	case k == 'n':
		if ptr != nil {
			*ptr = nil
		} else {
			*str = ""
		}
	case k != '"':
		return fmt.Errorf("member %q must be a string, not a JSON %s", name, kindName(k))
	case ptr != nil:
		s := unquote(v)
		*ptr = &s
	default:
		*str = unquote(v)
	}
	return nil
}

// decodeStrings decodes null (nil) or a JSON array of strings (non-nil).
func decodeStrings(v jsontext.Value) ([]string, error) {
	switch k := v.Kind(); k {
	case 'n':
		return nil, nil
	case '[':
	default:
		return nil, fmt.Errorf("not a JSON %s", kindName(k))
	}
	d := newKeyFileDecoder(v)
	_ = d.delim() // v is valid JSON: no syntax error here
	list := []string{}
	for d.dec.PeekKind() != ']' {
		s, err := d.value()
		if err != nil {
			return nil, err
		}
		if k := jsontext.Value(s).Kind(); k != '"' {
			return nil, fmt.Errorf("not a JSON %s", kindName(k))
		}
		list = append(list, unquote(s))
	}
	return list, nil
}

// unquote decodes a JSON string known to be valid. A string without escapes
// is not copied: it is a view of the file's bytes, which nothing changes
// and which it keeps in memory; what outlives the document (the key set's
// strings) is cloned by buildKeySet.
func unquote(quoted []byte) string {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return unsafe.String(unsafe.SliceData(quoted[1:]), len(quoted)-2)
	}
	// One allocation, which the string then owns. Invalid UTF-8 becomes
	// U+FFFD.
	s, _ := jsontext.AppendUnquote(make([]byte, 0, len(quoted)), quoted)
	return unsafe.String(unsafe.SliceData(s), len(s))
}

// kindName names a JSON kind in an error message.
func kindName(k jsontext.Kind) string {
	switch k {
	case 't', 'f':
		return "bool"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return k.String()
}

// syntaxError turns a decoding error into one that gives the line and
// column of the problem in the file.
func (d *keyFileDecoder) syntaxError(err error) error {
	var se *jsontext.SyntacticError
	if !errors.As(err, &se) {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return errors.New("invalid JSON: the file ends before its JSON does")
		}
		return fmt.Errorf("invalid JSON: %v", err)
	}
	if d.data == nil {
		return fmt.Errorf("invalid JSON: %v", se.Err)
	}
	line, col := lineCol(d.data, se.ByteOffset)
	if c := trailingComma(d.data, se.ByteOffset); c != 0 {
		return fmt.Errorf("invalid JSON at line %d, column %d: a comma before %q (JSON allows no trailing comma)", line, col, c)
	}
	return fmt.Errorf("invalid JSON at line %d, column %d: %v", line, col, se.Err)
}

// trailingComma returns the closing bracket that follows a comma at offset
// in data (jsontext reports such a comma as "invalid character ','"), or 0.
func trailingComma(data []byte, offset int64) byte {
	if offset < 0 || offset >= int64(len(data)) || data[offset] != ',' {
		return 0
	}
	if rest := bytes.TrimLeft(data[offset+1:], " \t\r\n"); len(rest) > 0 && (rest[0] == '}' || rest[0] == ']') {
		return rest[0]
	}
	return 0
}

// lineCol converts a byte offset in data into a 1-based line and column.
func lineCol(data []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(data))))
	before := data[:offset]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = len(before) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// checkScope rejects a scope that could not be told apart in
// {http.auth.user.scopes} (comma-joined) or in the Caddyfile: empty, or with
// a comma or white space.
func checkScope(s string) error {
	if s == "" || strings.ContainsAny(s, ", \t\r\n") {
		return fmt.Errorf("scope %q must be non-empty, without spaces or commas", s)
	}
	return nil
}

// decodeKeyHash parses a key_hash: 64 hexadecimal digits.
func decodeKeyHash(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if s == "" {
		return sum, errors.New(`"key_hash" is missing or empty`)
	}
	if len(s) != hex.EncodedLen(sha256.Size) {
		return sum, fmt.Errorf("key_hash must be 64 hexadecimal digits (a SHA-256), got %d characters", len(s))
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return sum, errors.New("key_hash must be 64 hexadecimal digits (a SHA-256)")
	}
	return sum, nil
}

// timestampLayout is how this plugin writes times: ISO 8601 with a numeric
// offset and microseconds, as Python's datetime.isoformat() writes them, so
// both programs read each other's files.
const timestampLayout = "2006-01-02T15:04:05.000000-07:00"

func formatTimestamp(t time.Time) string { return t.UTC().Format(timestampLayout) }

// parseTimestamp reads an ISO 8601 time as written by this plugin, by Python's
// isoformat() (with or without fraction, with or without offset; a time
// without an offset is taken as UTC) or as RFC 3339.
func parseTimestamp(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not an ISO 8601 time such as 2026-11-25T20:14:31+00:00", s)
}

// unixNanoClamped is t in unix nanoseconds, clamped to what an int64 holds
// (years 1678 to 2262), where t.UnixNano would overflow: a time before the
// range is long past, one after it is as good as never.
func unixNanoClamped(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}
