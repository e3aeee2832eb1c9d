package keyfile

import (
	"bytes"
	"io"
	"slices"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// Doc is a whole key file as writers edit it (the usage writer and the
// `caddy apikey` commands). It keeps everything this plugin does not change
// as the bytes it was: a record that no edit touched is written back
// verbatim; an edited one is written with its members in their order,
// unknown members and their values (escapes, number spellings) as found.
type Doc struct {
	bare    bool     // the file is a bare JSON array of records
	top     []Member // the top-level object's members; "api_keys" has no value: it is rendered from records
	Records []Record // the key records, in file order
}

// Member is one name/value pair of a JSON object, its value verbatim.
type Member struct {
	Name  string
	Value []byte
}

// Record is one record of a Doc: decoded, and as JSON.
type Record struct {
	keyset.Record
	raw     []byte   // the record as read, while no edit has touched it
	members []Member // its members, once an edit has split it
}

// NewDoc is the document of a key file that does not exist yet, holding
// records: a JSON object whose "api_keys" member lists them.
func NewDoc(records ...Record) *Doc {
	return &Doc{top: []Member{{Name: "api_keys"}}, Records: records}
}

// IsList reports whether the document is a bare JSON array of records
// rather than an object with an "api_keys" member.
func (d *Doc) IsList() bool { return d.bare }

// TopMembers returns the top-level object's members in their order, their
// values as found; "api_keys" has no value there (the records are Records).
func (d *Doc) TopMembers() []Member { return slices.Clone(d.top) }

// HasMember reports whether the document is a JSON object with the
// top-level member name.
func (d *Doc) HasMember(name string) bool {
	return slices.ContainsFunc(d.top, func(m Member) bool { return m.Name == name })
}

// NewList is a bare list of records: a JSON array, as a store that is no
// key file (Redis) hands its records to an edit.
func NewList(records ...Record) *Doc {
	return &Doc{bare: true, Records: records}
}

// NewRecord makes the record to add for rec.
func NewRecord(rec keyset.Record) (Record, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return Record{}, err
	}
	r := Record{Record: rec, raw: raw}
	r.Split()
	return r, nil
}

// Raw is the record's JSON as it was read, or nil once an edit touched it.
func (r *Record) Raw() []byte { return r.raw }

// Edited reports whether an edit touched the record (or made it): it is no
// longer held as the bytes it was read as.
func (r *Record) Edited() bool { return r.raw == nil }

// UnknownMembers returns the members this plugin does not read, in their
// order, their values as found.
func (r *Record) UnknownMembers() []Member {
	from := *r
	from.Split() // a copy: r stays as its bytes
	var out []Member
	for _, m := range from.members {
		if !IsKnownMember(m.Name) {
			out = append(out, Member{Name: m.Name, Value: slices.Clone(m.Value)})
		}
	}
	return out
}

// Members returns the record's members in their order, their values as
// found.
func (r *Record) Members() []Member {
	from := *r
	from.Split() // a copy: r stays as its bytes
	return from.members
}

// AddMembers appends members to the record, after those it has.
func (r *Record) AddMembers(ms ...Member) {
	r.Split()
	r.members = append(r.members, ms...)
}

// Compact is the record's JSON on one line, its strings and numbers
// spelled as they were (as a Redis key set holds it).
func (r *Record) Compact() ([]byte, error) {
	var whole []byte
	if r.raw != nil {
		whole = r.raw
	} else {
		whole = []byte{'{'}
		for i, m := range r.members {
			if i > 0 {
				whole = append(whole, ',')
			}
			whole, _ = jsontext.AppendQuote(whole, m.Name)
			whole = append(append(whole, ':'), m.Value...)
		}
		whole = append(whole, '}')
	}
	return jsontext.AppendFormat(nil, whole, jsontext.PreserveRawStrings(true), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
}

// Split turns the record's raw JSON into members, to be edited.
func (r *Record) Split() {
	if r.raw == nil {
		return
	}
	d := newKeyFileDecoder(r.raw) // valid JSON: parseKeyDoc or Marshal made it
	r.members = []Member{}
	_ = d.delim()
	for d.dec.PeekKind() == '"' {
		name, _ := d.name()
		value, _ := d.value()
		r.members = append(r.members, Member{Name: name, Value: value})
	}
	r.raw = nil
}

// set gives member name the string value s, in place or as a new last
// member.
func (r *Record) Set(name, s string) error {
	value, err := jsontext.AppendQuote(nil, s)
	if err != nil {
		return err
	}
	r.Split()
	i := 0
	for i < len(r.members) && r.members[i].Name != name {
		i++
	}
	if i == len(r.members) {
		r.members = append(r.members, Member{Name: name})
	}
	r.members[i].Value = value
	if !IsKnownMember(name) {
		return nil
	}
	return setField(&r.Record, name, value)
}

// WriteTo writes the document as JSON indented by two spaces, with a final
// newline: the records untouched by edits as they were read, the rest
// re-indented. It writes in chunks, so that a large file is never whole in
// memory twice.
func (d *Doc) WriteTo(w io.Writer) (int64, error) {
	out := chunkWriter{w: w, b: make([]byte, 0, 2*chunkSize)}
	if d.bare {
		d.writeRecords(&out, "")
	} else {
		wroteList := false
		out.b = append(out.b, '{')
		for i, m := range d.top {
			if i > 0 {
				out.b = append(out.b, ',')
			}
			out.b = appendName(append(out.b, "\n  "...), m.Name)
			if m.Value == nil && m.Name == "api_keys" {
				d.writeRecords(&out, "  ")
				wroteList = true
			} else {
				out.b = appendValue(out.b, m.Value, "  ")
			}
		}
		if !wroteList {
			if len(d.top) > 0 {
				out.b = append(out.b, ',')
			}
			out.b = appendName(append(out.b, "\n  "...), "api_keys")
			d.writeRecords(&out, "  ")
		}
		out.b = append(out.b, "\n}"...)
	}
	out.b = append(out.b, '\n')
	out.flush()
	return out.n, out.err
}

// chunkSize is how much WriteTo gathers before it writes.
const chunkSize = 64 << 10

// chunkWriter gathers output in b and writes it to w in chunks.
type chunkWriter struct {
	w   io.Writer
	b   []byte
	n   int64
	err error
}

func (c *chunkWriter) flush() {
	if c.err == nil && len(c.b) > 0 {
		var n int
		n, c.err = c.w.Write(c.b)
		c.n += int64(n)
	}
	c.b = c.b[:0]
}

// writeRecords writes the list of records, at the given indentation.
func (d *Doc) writeRecords(out *chunkWriter, indent string) {
	if len(d.Records) == 0 {
		out.b = append(out.b, "[]"...)
		return
	}
	inner := indent + "  "
	out.b = append(out.b, '[')
	for i := range d.Records {
		if len(out.b) >= chunkSize {
			out.flush()
		}
		if i > 0 {
			out.b = append(out.b, ',')
		}
		out.b = append(append(out.b, '\n'), inner...)
		r := &d.Records[i]
		if r.raw != nil {
			out.b = append(out.b, r.raw...)
			continue
		}
		if len(r.members) == 0 {
			out.b = append(out.b, "{}"...)
			continue
		}
		out.b = append(out.b, '{')
		for j, m := range r.members {
			if j > 0 {
				out.b = append(out.b, ',')
			}
			out.b = appendName(append(append(out.b, '\n'), inner+"  "...), m.Name)
			out.b = appendValue(out.b, m.Value, inner+"  ")
		}
		out.b = append(append(append(out.b, '\n'), inner...), '}')
	}
	out.b = append(append(append(out.b, '\n'), indent...), ']')
}

// appendName appends a member name and its colon.
func appendName(b []byte, name string) []byte {
	b, _ = jsontext.AppendQuote(b, name) // a name read from valid JSON quotes
	return append(b, ": "...)
}

// appendValue appends a raw JSON value, objects and arrays re-indented, with
// strings and numbers spelled as they were.
func appendValue(b, v []byte, indent string) []byte {
	if len(v) == 0 || (v[0] != '{' && v[0] != '[') {
		return append(b, v...)
	}
	out, err := jsontext.AppendFormat(b, v,
		jsontext.Multiline(true), jsontext.WithIndentPrefix(indent), jsontext.WithIndent("  "),
		jsontext.PreserveRawStrings(true), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	if err != nil {
		return append(b, bytes.TrimSpace(v)...) // cannot happen: v was read as valid JSON
	}
	return out
}
