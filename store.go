package apikey

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"
)

// Record is one API key as the key file stores it. The members are those
// of the reference application's records, plus the optional lifecycle
// members expires_at, revoked_at and scopes (absent means "no limit").
// Members this type does not know are kept by the document type (keyDoc)
// whenever the file is written back.
type Record struct {
	ID         string   `json:"id"`
	Label      string   `json:"label"`
	KeyHash    string   `json:"key_hash"`
	KeyPrefix  string   `json:"key_prefix"`
	CreatedAt  *string  `json:"created_at"`
	LastUsedAt *string  `json:"last_used_at"`
	ExpiresAt  *string  `json:"expires_at,omitempty"`
	RevokedAt  *string  `json:"revoked_at,omitempty"`
	Scopes     []string `json:"scopes,omitempty"`
}

// Key is the in-memory form of one usable record: what the request path
// needs and nothing more, so that a million keys stay small.
type Key struct {
	ID     string
	Label  string
	Prefix string
	Scopes []string

	scopesJoined string
	expires      bool  // the key has an expires_at
	expiresAt    int64 // unix nanoseconds, clamped to int64 (see unixNanoClamped)
	revoked      bool

	// usage is created on first use, so keys that are never used cost
	// nothing, and is carried over to the next key set when the file is
	// reloaded.
	usage atomic.Pointer[usageCell]
}

// expired reports whether the key is past its expires_at at time now
// (unix nanoseconds).
func (k *Key) expired(now int64) bool {
	return k.expires && now >= k.expiresAt
}

// hasScope reports whether the key holds scope s.
func (k *Key) hasScope(s string) bool {
	for _, have := range k.Scopes {
		if have == s {
			return true
		}
	}
	return false
}

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

// keySet is an immutable snapshot of a key file. Requests read it through an
// atomic pointer, so a reload swaps all keys at once.
type keySet struct {
	byHash map[[sha256.Size]byte]*Key
	keys   []Key
}

// lookup finds the key whose SHA-256 matches the presented raw key: one hash
// and one map probe, whatever the number of keys.
func (ks *keySet) lookup(raw string) (*Key, [sha256.Size]byte) {
	// Hash the string's bytes in place: Sum256 neither keeps nor changes
	// them, and copying a header-sized key would cost an allocation.
	sum := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	return ks.byHash[sum], sum
}

// hashKey returns the key_hash of a raw key: lowercase SHA-256 hex.
func hashKey(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(sum[:])
}

// KeyFileError is a problem with a key file's contents. It names the file
// and, where it can, the record and the position in the file.
type KeyFileError struct {
	Path string
	Err  error
}

func (e *KeyFileError) Error() string { return "key file " + e.Path + ": " + e.Err.Error() }
func (e *KeyFileError) Unwrap() error { return e.Err }

// readKeySet reads and validates a key file.
func readKeySet(path string) (*keySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	ks, err := parseKeySet(data)
	if err != nil {
		return nil, &KeyFileError{Path: path, Err: err}
	}
	return ks, nil
}

// parseKeySet decodes and validates the contents of a key file.
func parseKeySet(data []byte) (*keySet, error) {
	records, err := parseRecords(data)
	if err != nil {
		return nil, err
	}
	return buildKeySet(records)
}

// parseRecords decodes the records of a key file: the "api_keys" member of a
// JSON object, or a bare JSON array of records.
func parseRecords(data []byte) ([]Record, error) {
	if records, ok := decodeRecordsFast(data); ok {
		return records, nil
	}
	return parseRecordsChecked(data)
}

// parseRecordsChecked is parseRecords the slow way: it splits the file into
// raw records first, so that any problem is reported with its record number.
func parseRecordsChecked(data []byte) ([]Record, error) {
	rawRecords, err := splitRecords(data)
	if err != nil {
		return nil, err
	}
	records := make([]Record, len(rawRecords))
	for i, raw := range rawRecords {
		members := splitObject(raw) // raw is valid JSON: splitRecords checked it
		if err := checkMemberNames(members, recordFields...); err != nil {
			if id := members.getString("id"); id != "" {
				return nil, fmt.Errorf("record %d (id %q): %w", i+1, id, err)
			}
			return nil, fmt.Errorf("record %d: %w", i+1, err)
		}
		if err := json.Unmarshal(raw, &records[i]); err != nil {
			// Unmarshal fills what it can, so the id is known unless it
			// is itself the member of the wrong type.
			if id := records[i].ID; id != "" {
				return nil, fmt.Errorf("record %d (id %q): %w", i+1, id, describeJSONError(data, err))
			}
			return nil, fmt.Errorf("record %d: %w", i+1, describeJSONError(data, err))
		}
	}
	return records, nil
}

// decodeRecordsFast decodes the records of a key file in the plain form
// that the reference application and this plugin write, by hand and in one
// pass: about five times faster than encoding/json, which matters for files
// of 100 000 keys and more. It gives up (false) at the first thing outside
// that plain form (escapes, control or non-UTF-8 bytes in strings, nested
// values in unknown members, anything malformed), and parseRecords then
// takes the checked path, which decodes with encoding/json and describes any
// problem. Both paths return the same records for what the fast one accepts
// (FuzzParseKeySet checks this).
func decodeRecordsFast(data []byte) ([]Record, bool) {
	d := plainDecoder{data: data}
	var records []Record
	d.space()
	switch d.peek() {
	case '[':
		var ok bool
		if records, ok = d.recordList(); !ok {
			return nil, false
		}
	case '{':
		d.pos++
		d.space()
		if d.peek() == '}' {
			d.pos++
			break
		}
		sawList := false
		for {
			name, ok := d.name()
			if !ok {
				return nil, false
			}
			// A name that is "api_keys" but for case, or a second
			// "api_keys", is an error: the checked path reports it.
			if name != "api_keys" && strings.EqualFold(name, "api_keys") {
				return nil, false
			}
			if name == "api_keys" {
				if sawList {
					return nil, false
				}
				sawList = true
			}
			switch {
			case name != "api_keys":
				if !d.skipValue() {
					return nil, false
				}
			case d.peek() == 'n':
				if !d.literal("null") {
					return nil, false
				}
				records = nil
			default:
				if records, ok = d.recordList(); !ok {
					return nil, false
				}
			}
			if !d.next('}') {
				if d.done {
					break
				}
				return nil, false
			}
		}
	default:
		return nil, false
	}
	d.space()
	if d.pos != len(data) {
		return nil, false
	}
	if records == nil {
		records = []Record{}
	}
	return records, true
}

// plainDecoder reads the plain JSON of decodeRecordsFast.
type plainDecoder struct {
	data []byte
	pos  int
	done bool // next met the closing bracket
}

func (d *plainDecoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *plainDecoder) space() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\r', '\n':
			d.pos++
		default:
			return
		}
	}
}

// next reads what follows a member or element: a comma (true, more to
// come) or the closing bracket (false with done set). Anything else is
// false with done unset.
func (d *plainDecoder) next(closing byte) bool {
	d.space()
	d.done = false
	switch d.peek() {
	case ',':
		d.pos++
		d.space()
		return true
	case closing:
		d.pos++
		d.done = true
	}
	return false
}

func (d *plainDecoder) literal(lit string) bool {
	if !bytes.HasPrefix(d.data[d.pos:], []byte(lit)) {
		return false
	}
	d.pos += len(lit)
	return true
}

// str reads a string without escapes, control bytes or invalid UTF-8.
func (d *plainDecoder) str() (string, bool) {
	if d.peek() != '"' {
		return "", false
	}
	start := d.pos + 1
	ascii := true
	for i := start; i < len(d.data); i++ {
		switch c := d.data[i]; {
		case c == '"':
			s := d.data[start:i]
			if !ascii && !utf8.Valid(s) {
				return "", false
			}
			d.pos = i + 1
			return string(s), true
		case c < 0x20 || c == '\\':
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// name reads a member name and its colon.
func (d *plainDecoder) name() (string, bool) {
	name, ok := d.str()
	if !ok {
		return "", false
	}
	d.space()
	if d.peek() != ':' {
		return "", false
	}
	d.pos++
	d.space()
	return name, true
}

// strList reads a JSON array of strings; [] is an empty, non-nil list.
func (d *plainDecoder) strList() ([]string, bool) {
	d.pos++ // '['
	d.space()
	list := []string{}
	if d.peek() == ']' {
		d.pos++
		return list, true
	}
	for {
		s, ok := d.str()
		if !ok {
			return nil, false
		}
		list = append(list, s)
		if !d.next(']') {
			return list, d.done
		}
	}
}

// skipValue skips the value of a member this plugin does not read: a string,
// null, true, false, a number or a list of strings. Anything else makes the
// caller give up.
func (d *plainDecoder) skipValue() bool {
	switch c := d.peek(); {
	case c == '"':
		_, ok := d.str()
		return ok
	case c == '[':
		_, ok := d.strList()
		return ok
	case c == 'n':
		return d.literal("null")
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == '-' || ('0' <= c && c <= '9'):
		return d.number()
	}
	return false
}

// number skips a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *plainDecoder) number() bool {
	if d.peek() == '-' {
		d.pos++
	}
	switch c := d.peek(); {
	case c == '0':
		d.pos++
	case '1' <= c && c <= '9':
		d.digits()
	default:
		return false
	}
	if d.peek() == '.' {
		d.pos++
		if !d.digits() {
			return false
		}
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.pos++
		if c := d.peek(); c == '+' || c == '-' {
			d.pos++
		}
		if !d.digits() {
			return false
		}
	}
	return true
}

func (d *plainDecoder) digits() bool {
	start := d.pos
	for d.pos < len(d.data) && '0' <= d.data[d.pos] && d.data[d.pos] <= '9' {
		d.pos++
	}
	return d.pos > start
}

// recordList reads a JSON array of record objects.
func (d *plainDecoder) recordList() ([]Record, bool) {
	if d.peek() != '[' {
		return nil, false
	}
	d.pos++
	d.space()
	// Records take about 250 bytes of a file: guess the count from the
	// rest of it, to save most of the slice's regrowth.
	records := make([]Record, 0, min((len(d.data)-d.pos)/256+1, 1<<16))
	if d.peek() == ']' {
		d.pos++
		return records, true
	}
	for {
		records = append(records, Record{})
		if !d.record(&records[len(records)-1]) {
			return nil, false
		}
		if !d.next(']') {
			return records, d.done
		}
	}
}

// record reads one record object into rec, which is zero.
func (d *plainDecoder) record(rec *Record) bool {
	if d.peek() != '{' {
		return false
	}
	d.pos++
	d.space()
	if d.peek() == '}' {
		d.pos++
		return true
	}
	var seen uint16 // the known members read so far, by recordFields index
	for {
		name, ok := d.name()
		if !ok {
			return false
		}
		field := recordField(name)
		if field < 0 {
			return false // a known name but for case: the checked path reports it
		}
		if field < len(recordFields) {
			if seen&(1<<field) != 0 {
				return false // repeated: the checked path reports it
			}
			seen |= 1 << field
		}
		var str *string  // a string member
		var ptr **string // a member that may be null
		switch recordFieldName(field) {
		case "id":
			str = &rec.ID
		case "label":
			str = &rec.Label
		case "key_hash":
			str = &rec.KeyHash
		case "key_prefix":
			str = &rec.KeyPrefix
		case "created_at":
			ptr = &rec.CreatedAt
		case "last_used_at":
			ptr = &rec.LastUsedAt
		case "expires_at":
			ptr = &rec.ExpiresAt
		case "revoked_at":
			ptr = &rec.RevokedAt
		case "scopes":
			switch d.peek() {
			case 'n':
				if !d.literal("null") {
					return false
				}
				rec.Scopes = nil
			case '[':
				if rec.Scopes, ok = d.strList(); !ok {
					return false
				}
			default:
				return false
			}
		default:
			if !d.skipValue() {
				return false
			}
		}
		switch {
		case str != nil:
			// A null would leave the member as it was: rare enough
			// to leave to encoding/json.
			if *str, ok = d.str(); !ok {
				return false
			}
		case ptr != nil:
			if d.peek() == 'n' {
				if !d.literal("null") {
					return false
				}
				*ptr = nil
				break
			}
			s, ok := d.str()
			if !ok {
				return false
			}
			*ptr = &s
		}
		if !d.next('}') {
			return d.done
		}
	}
}

// recordFields are the members of Record, as the key file names them.
var recordFields = []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "expires_at", "revoked_at", "scopes"}

// recordField returns the index in recordFields of a member name;
// len(recordFields) for an unknown member; -1 for a name that differs from a
// known one only in case.
func recordField(name string) int {
	for i, f := range recordFields {
		if name == f {
			return i
		}
	}
	for _, f := range recordFields {
		if strings.EqualFold(name, f) {
			return -1
		}
	}
	return len(recordFields)
}

func recordFieldName(i int) string {
	if i >= 0 && i < len(recordFields) {
		return recordFields[i]
	}
	return ""
}

// checkMemberNames rejects an object whose member names would be read
// differently here and by the reference application: member names are
// case-sensitive there (Python dictionaries) but not in encoding/json, and
// a repeated member is ambiguous. So a known member must be spelled exactly
// and appear once.
func checkMemberNames(o object, known ...string) error {
	seen := make(map[string]bool, len(known))
	for _, m := range o {
		for _, k := range known {
			switch {
			case m.Name == k:
				if seen[k] {
					return fmt.Errorf("member %q appears twice", k)
				}
				seen[k] = true
			case strings.EqualFold(m.Name, k):
				return fmt.Errorf("member %q must be spelled %q (names are case-sensitive)", m.Name, k)
			}
		}
	}
	return nil
}

// splitRecords returns the raw JSON of each record in a key file.
func splitRecords(data []byte) ([]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("file is empty; want a JSON object with an \"api_keys\" list or a JSON array of key records")
	}
	var raws []json.RawMessage
	switch trimmed[0] {
	case '[':
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, describeJSONError(data, err)
		}
	case '{':
		if err := json.Unmarshal(data, new(any)); err != nil {
			return nil, describeJSONError(data, err) // with line and column
		}
		top := splitObject(data) // valid JSON, just checked
		if err := checkMemberNames(top, "api_keys"); err != nil {
			return nil, err
		}
		if list := top.get("api_keys"); list != nil {
			if err := json.Unmarshal(list, &raws); err != nil {
				var typeErr *json.UnmarshalTypeError
				if errors.As(err, &typeErr) {
					return nil, fmt.Errorf("\"api_keys\" must be a list of key records, not a JSON %s", typeErr.Value)
				}
				return nil, describeJSONError(data, err)
			}
		}
	default:
		if err := json.Unmarshal(data, new(any)); err != nil {
			return nil, describeJSONError(data, err)
		}
		return nil, errors.New("want a JSON object with an \"api_keys\" list or a JSON array of key records")
	}
	for i, raw := range raws {
		if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
			return nil, fmt.Errorf("record %d: want a JSON object, got %.40s", i+1, t)
		}
	}
	return raws, nil
}

// describeJSONError turns a decoding error into one that gives the line and
// column of the problem in data.
func describeJSONError(data []byte, err error) error {
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		line, col := lineCol(data, syntaxErr.Offset)
		return fmt.Errorf("invalid JSON at line %d, column %d: %v", line, col, syntaxErr)
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		what := typeErr.Field
		if what == "" {
			what = "value"
		}
		if what == "api_keys" {
			return fmt.Errorf("\"api_keys\" must be a list of key records, not a JSON %s", typeErr.Value)
		}
		return fmt.Errorf("member %q must be a %s, not a JSON %s", what, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	}
	return err
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string", "ptr":
		return "string"
	case "slice":
		return "list"
	}
	return goKind
}

// lineCol converts a byte offset in data into a 1-based line and column.
func lineCol(data []byte, offset int64) (line, col int) {
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	before := data[:offset]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1)
	if col < 1 {
		col = 1
	}
	return line, col
}

// buildKeySet validates records and indexes them by hash.
func buildKeySet(records []Record) (*keySet, error) {
	ks := &keySet{
		byHash: make(map[[sha256.Size]byte]*Key, len(records)),
		keys:   make([]Key, len(records)),
	}
	ids := make(map[string]int, len(records))
	for i := range records {
		rec := &records[i]
		n := i + 1
		if rec.ID == "" {
			return nil, fmt.Errorf("record %d: \"id\" is missing or empty", n)
		}
		if first, dup := ids[rec.ID]; dup {
			return nil, fmt.Errorf("record %d: id %q is already used by record %d", n, rec.ID, first)
		}
		ids[rec.ID] = n
		sum, err := decodeKeyHash(rec.KeyHash)
		if err != nil {
			return nil, fmt.Errorf("record %d (id %q): %v", n, rec.ID, err)
		}
		if other, dup := ks.byHash[sum]; dup {
			return nil, fmt.Errorf("record %d (id %q): key_hash is the same as that of id %q", n, rec.ID, other.ID)
		}
		k := &ks.keys[i]
		k.ID, k.Label, k.Prefix = rec.ID, rec.Label, rec.KeyPrefix
		if rec.ExpiresAt != nil {
			t, err := parseTimestamp(*rec.ExpiresAt)
			if err != nil {
				return nil, fmt.Errorf("record %d (id %q): expires_at: %v", n, rec.ID, err)
			}
			k.expires, k.expiresAt = true, unixNanoClamped(t)
		}
		if rec.RevokedAt != nil {
			if _, err := parseTimestamp(*rec.RevokedAt); err != nil {
				return nil, fmt.Errorf("record %d (id %q): revoked_at: %v", n, rec.ID, err)
			}
			k.revoked = true
		}
		for _, s := range rec.Scopes {
			if err := checkScope(s); err != nil {
				return nil, fmt.Errorf("record %d (id %q): %v", n, rec.ID, err)
			}
		}
		if len(rec.Scopes) > 0 {
			k.Scopes = rec.Scopes
			k.scopesJoined = strings.Join(rec.Scopes, ",")
		}
		ks.byHash[sum] = k
	}
	return ks, nil
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
		return sum, errors.New("\"key_hash\" is missing or empty")
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
