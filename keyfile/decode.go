package keyfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// The key file is the reference application's (SoulSync's) API-key store: a
// JSON object whose "api_keys" member lists the key records, or a bare JSON
// array of them. This file reads it in one pass with jsontext: the JSON is
// checked, each record's members are decoded, and where each record and
// top-level member lies is noted, so that a writer keeps what it does not
// change as the bytes it was (see doc.go).

// The known members of a record, as the key file names them.
var recordFields = [...]string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "scopes", "rate_limits", "rotated_from", "quota"}

// IsKnownMember reports whether a record member is one this plugin reads.
func IsKnownMember(name string) bool { return slices.Contains(recordFields[:], name) }

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

// Error is a problem with a key file: it names the file and, where it
// can, the record and the position in the file.
type Error struct {
	Path string
	Err  error
}

func (e *Error) Error() string {
	err := e.Err
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == e.Path {
		err = pe.Err // the path once is enough
	}
	return "key file " + e.Path + ": " + err.Error()
}
func (e *Error) Unwrap() error { return e.Err }

const wantShape = `want a JSON object with an "api_keys" list or a JSON array of key records`

// ParseDoc reads a key file's contents: the document that writers edit,
// with each record decoded. It refuses what is not JSON or not a key file;
// BuildKeySet checks the records' values.
func ParseDoc(data []byte) (*Doc, error) {
	if keyset.IsSnapshot(data) {
		return nil, errors.New("a Redis store's cache_file (a binary snapshot of a key set), not a key file; to restore a key set from it, use caddy apikey import --file")
	}
	d := newKeyFileDecoder(data)
	// Records take about 250 bytes of a file: guess their count, to save
	// most of the slice's regrowth.
	doc := &Doc{Records: make([]Record, 0, len(data)/256+1)}
	bare, err := d.walk(
		func(name string, value []byte) { doc.top = append(doc.top, Member{Name: name, Value: value}) },
		func(n int) error {
			doc.Records = append(doc.Records, Record{})
			return d.record(&doc.Records[len(doc.Records)-1], n)
		})
	if err != nil {
		return nil, err
	}
	doc.bare = bare
	return doc, nil
}

// DecodeKeySet reads a key file's contents from r as a stream, straight
// into a key set: the file is never whole in memory, and each record only
// until its key is made. sizeHint (the file's size) sizes the key set. Its
// errors name no position: ReadKeySet reads a refused file again with
// ParseDoc for that.
func DecodeKeySet(r io.Reader, sizeHint int64) (*keyset.KeySet, error) {
	d := &keyFileDecoder{dec: jsontext.NewDecoder(r, decoderOptions...)}
	b := keyset.NewBuilder(int(sizeHint / 300))
	// One decoder for the records, reset for each; their strings are views
	// of buf until add has copied what it keeps.
	var buf bytes.Buffer
	in := &keyFileDecoder{dec: jsontext.NewDecoder(&buf, decoderOptions...)}
	var rec Record
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
			rec = Record{}
			if err := in.record(&rec, n); err != nil {
				return err
			}
			return b.Add(&rec.Record, n)
		})
	if err != nil {
		return nil, err
	}
	return b.KeySet(), nil
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
				err = fmt.Errorf(`"api_keys" must be a list of key records, not a JSON %s`, KindName(jsontext.Value(v).Kind()))
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
			return fmt.Errorf("record %d: want a JSON object, got a JSON %s", n, KindName(k))
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
func (d *keyFileDecoder) record(r *Record, n int) error {
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
			if err := setField(&r.Record, recordFields[field], v); err != nil {
				note(err)
			}
		}
	}
	if err := d.delim(); err != nil {
		return err
	}
	r.raw = d.data[start:d.dec.InputOffset():d.dec.InputOffset()]
	if problem != nil {
		return keyset.RecordError(n, r.ID, problem)
	}
	return nil
}

// setField decodes the raw value v of the known member name into r.
func setField(r *keyset.Record, name string, v jsontext.Value) error {
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
	case "quota":
		q, err := decodeQuota(v)
		r.Quota = q
		return err
	case "rate_limits":
		limits, err := decodeRateLimits(v)
		r.RateLimits = limits
		if err == nil {
			// The values too, here: a record read on its own (a Redis
			// store's) is refused as soon as it is read.
			_, err = keyset.ParseRateLimits(limits)
		}
		return err
	}
	switch k := v.Kind(); {
	case k == 'n':
		if ptr != nil {
			*ptr = nil
		} else {
			*str = ""
		}
	case k != '"':
		return fmt.Errorf("member %q must be a string, not a JSON %s", name, KindName(k))
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
		return nil, fmt.Errorf("not a JSON %s", KindName(k))
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
			return nil, fmt.Errorf("not a JSON %s", KindName(k))
		}
		list = append(list, unquote(s))
	}
	return list, nil
}

// quotaExample is what a record's quota looks like, for errors.
const quotaExample = `{"requests": 10000, "period": "month"}`

// decodeQuota decodes and checks a record's quota: null (nil: none) or an
// object with exactly the members "requests", a whole number, and
// "period", "day", "month" or "none".
func decodeQuota(v jsontext.Value) (*keyset.QuotaSpec, error) {
	switch k := v.Kind(); k {
	case 'n':
		return nil, nil
	case '{':
	default:
		return nil, fmt.Errorf(`member "quota" must be an object such as %s, not a JSON %s`, quotaExample, KindName(k))
	}
	var q keyset.QuotaSpec
	var sawRequests, sawPeriod bool
	d := newKeyFileDecoder(v)
	_ = d.delim() // v is valid JSON: no syntax error here
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return nil, err
		}
		val, err := d.value()
		if err != nil {
			return nil, err
		}
		k := jsontext.Value(val).Kind()
		switch {
		case name == "requests":
			if err := checkName(name, "requests", &sawRequests); err != nil {
				return nil, fmt.Errorf("quota: %w", err)
			}
			n, err := strconv.ParseInt(string(val), 10, 64)
			if k != '0' || err != nil {
				return nil, fmt.Errorf(`quota: "requests" must be a whole number such as 10000, not %s`, val)
			}
			q.Requests = n
		case name == "period":
			if err := checkName(name, "period", &sawPeriod); err != nil {
				return nil, fmt.Errorf("quota: %w", err)
			}
			if k != '"' {
				return nil, fmt.Errorf(`quota: "period" must be "day", "month" or "none", not a JSON %s`, KindName(k))
			}
			q.Period = unquote(val)
		case strings.EqualFold(name, "requests"), strings.EqualFold(name, "period"):
			return nil, fmt.Errorf("quota: member %q must be spelled %q (names are case-sensitive)", name, strings.ToLower(name))
		default:
			return nil, fmt.Errorf(`quota: unknown member %q; a quota has "requests" and "period", as in %s`, name, quotaExample)
		}
	}
	if !sawRequests || !sawPeriod {
		return nil, fmt.Errorf(`member "quota" must have "requests" and "period", as in %s`, quotaExample)
	}
	if _, _, err := keyset.ParseQuota(&q); err != nil {
		return nil, err
	}
	q.Period = strings.Clone(q.Period)
	return &q, nil
}

// rateLimitExample is what a record's rate_limits looks like, for errors.
const rateLimitExample = `[{"requests": 100, "window": "1m"}]`

// decodeRateLimits decodes a record's rate_limits: null (nil: the
// handler's defaults) or a JSON array (non-nil) of objects with exactly the
// members "requests", a whole number, and "window", a string. It checks
// their form, not their values (keyset.ParseRateLimits does).
func decodeRateLimits(v jsontext.Value) ([]keyset.RateLimit, error) {
	switch k := v.Kind(); k {
	case 'n':
		return nil, nil
	case '[':
	default:
		return nil, fmt.Errorf(`member "rate_limits" must be a list of limits such as %s, not a JSON %s`, rateLimitExample, KindName(k))
	}
	d := newKeyFileDecoder(v)
	_ = d.delim() // v is valid JSON: no syntax error here
	list := []keyset.RateLimit{}
	for n := 1; d.dec.PeekKind() != ']'; n++ {
		if k := d.dec.PeekKind(); k != '{' {
			return nil, fmt.Errorf(`rate_limits: limit %d must be a JSON object such as {"requests": 100, "window": "1m"}, not a JSON %s`, n, KindName(k))
		}
		l, err := decodeRateLimit(d)
		if err != nil {
			return nil, fmt.Errorf("rate_limits: limit %d: %w", n, err)
		}
		list = append(list, l)
	}
	return list, nil
}

// decodeRateLimit decodes one limit, d at its '{'.
func decodeRateLimit(d *keyFileDecoder) (keyset.RateLimit, error) {
	var l keyset.RateLimit
	var sawRequests, sawWindow bool
	if err := d.delim(); err != nil {
		return l, err
	}
	for d.dec.PeekKind() != '}' {
		name, err := d.name()
		if err != nil {
			return l, err
		}
		v, err := d.value()
		if err != nil {
			return l, err
		}
		k := jsontext.Value(v).Kind()
		switch {
		case name == "requests":
			if err := checkName(name, "requests", &sawRequests); err != nil {
				return l, err
			}
			if k != '0' {
				return l, fmt.Errorf(`"requests" must be a whole number, not a JSON %s`, KindName(k))
			}
			if l.Requests, err = ratelimit.ParseRequests(string(v)); err != nil {
				return l, err
			}
		case name == "window":
			if err := checkName(name, "window", &sawWindow); err != nil {
				return l, err
			}
			if k != '"' {
				return l, fmt.Errorf(`"window" must be a string such as "1m", not a JSON %s`, KindName(k))
			}
			l.Window = unquote(v)
		case strings.EqualFold(name, "requests"), strings.EqualFold(name, "window"):
			return l, fmt.Errorf("member %q must be spelled %q (names are case-sensitive)", name, strings.ToLower(name))
		default:
			return l, fmt.Errorf(`unknown member %q; a limit has "requests" and "window"`, name)
		}
	}
	if err := d.delim(); err != nil {
		return l, err
	}
	switch {
	case !sawRequests:
		return l, errors.New(`"requests" is missing`)
	case !sawWindow:
		return l, errors.New(`"window" is missing`)
	}
	return l, nil
}

// unquote decodes a JSON string known to be valid. A string without escapes
// is not copied: it is a view of the file's bytes, which nothing changes
// and which it keeps in memory; what outlives the document (the key set's
// strings) is cloned by BuildKeySet.
func unquote(quoted []byte) string {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return unsafe.String(unsafe.SliceData(quoted[1:]), len(quoted)-2)
	}
	// One allocation, which the string then owns. Invalid UTF-8 becomes
	// U+FFFD.
	s, _ := jsontext.AppendUnquote(make([]byte, 0, len(quoted)), quoted)
	return unsafe.String(unsafe.SliceData(s), len(s))
}

// KindName names a JSON kind in a message: bool, object, array, or as
// jsontext writes the others (string, number, null).
func KindName(k jsontext.Kind) string {
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

// ReadKeySet reads and checks a key file, as a stream (see DecodeKeySet).
// A file it refuses is read again whole, for an error that names the place
// of the problem.
func ReadKeySet(path string) (*keyset.KeySet, error) {
	f, fi, err := openKeyFile(path)
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	ks, err := DecodeKeySet(io.LimitReader(f, MaxSize+1), fi.Size())
	f.Close()
	if err == nil {
		return ks, nil
	}
	data, _, err := ReadFile(path)
	if err == nil {
		ks, err = ParseKeySet(data)
	}
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	return ks, nil
}

// ParseKeySet decodes and checks the contents of a key file.
func ParseKeySet(data []byte) (*keyset.KeySet, error) {
	_, ks, err := Parse(data)
	return ks, err
}

// Parse decodes and checks the contents of a key file, and returns
// both its document (for writers) and its key set.
func Parse(data []byte) (*Doc, *keyset.KeySet, error) {
	doc, err := ParseDoc(data)
	if err != nil {
		return nil, nil, err
	}
	ks, err := BuildKeySet(doc.Records)
	if err != nil {
		return nil, nil, err
	}
	return doc, ks, nil
}

// BuildKeySet checks the records' values and indexes them by hash.
func BuildKeySet(records []Record) (*keyset.KeySet, error) {
	b := keyset.NewBuilder(len(records))
	for i := range records {
		if err := b.Add(&records[i].Record, i+1); err != nil {
			return nil, err
		}
	}
	return b.KeySet(), nil
}
