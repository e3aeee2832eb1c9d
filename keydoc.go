package apikey

import (
	"bytes"
	"slices"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// keyDoc is a whole key file as writers edit it (the usage writer and the
// `caddy apikey` commands). It keeps everything this plugin does not change
// as the bytes it was: a record that no edit touched is written back
// verbatim; an edited one is written with its members in their order,
// unknown members and their values (escapes, number spellings) as found.
type keyDoc struct {
	bare    bool        // the file is a bare JSON array of records
	top     []member    // the top-level object's members; "api_keys" has no value: it is rendered from records
	records []docRecord // the key records, in file order
}

// member is one name/value pair of a JSON object, its value verbatim.
type member struct {
	name  string
	value []byte
}

// docRecord is one record of a keyDoc: decoded, and as JSON.
type docRecord struct {
	record
	raw     []byte   // the record as read, while no edit has touched it
	members []member // its members, once an edit has split it
}

// newKeyDoc is the document of a key file that does not exist yet.
func newKeyDoc() *keyDoc {
	return &keyDoc{top: []member{{name: "api_keys"}}}
}

// newDocRecord makes the record to add for rec.
func newDocRecord(rec record) (docRecord, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return docRecord{}, err
	}
	r := docRecord{record: rec, raw: raw}
	r.split()
	return r, nil
}

// split turns the record's raw JSON into members, to be edited.
func (r *docRecord) split() {
	if r.raw == nil {
		return
	}
	d := newKeyFileDecoder(r.raw) // valid JSON: parseKeyDoc or Marshal made it
	r.members = []member{}
	_ = d.delim()
	for d.dec.PeekKind() == '"' {
		name, _ := d.name()
		value, _ := d.value()
		r.members = append(r.members, member{name: name, value: value})
	}
	r.raw = nil
}

// set gives member name the string value s, in place or as a new last
// member.
func (r *docRecord) set(name, s string) error {
	value, err := jsontext.AppendQuote(nil, s)
	if err != nil {
		return err
	}
	r.split()
	i := 0
	for i < len(r.members) && r.members[i].name != name {
		i++
	}
	if i == len(r.members) {
		r.members = append(r.members, member{name: name})
	}
	r.members[i].value = value
	if !slices.Contains(recordFields[:], name) {
		return nil
	}
	return r.setField(name, value)
}

// marshal renders the document as JSON indented by two spaces, with a final
// newline: the records untouched by edits as they were read, the rest
// re-indented.
func (d *keyDoc) marshal() []byte {
	size := 64
	for i := range d.records {
		size += len(d.records[i].raw) + 256
	}
	b := make([]byte, 0, size)
	if d.bare {
		b = d.appendRecords(b, "")
	} else {
		wroteList := false
		b = append(b, '{')
		for i, m := range d.top {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendName(append(b, "\n  "...), m.name)
			if m.value == nil && m.name == "api_keys" {
				b = d.appendRecords(b, "  ")
				wroteList = true
			} else {
				b = appendValue(b, m.value, "  ")
			}
		}
		if !wroteList {
			if len(d.top) > 0 {
				b = append(b, ',')
			}
			b = d.appendRecords(appendName(append(b, "\n  "...), "api_keys"), "  ")
		}
		b = append(b, "\n}"...)
	}
	return append(b, '\n')
}

// appendRecords appends the list of records, at the given indentation.
func (d *keyDoc) appendRecords(b []byte, indent string) []byte {
	if len(d.records) == 0 {
		return append(b, "[]"...)
	}
	inner := indent + "  "
	b = append(b, '[')
	for i := range d.records {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(append(b, '\n'), inner...)
		r := &d.records[i]
		if r.raw != nil {
			b = append(b, r.raw...)
			continue
		}
		if len(r.members) == 0 {
			b = append(b, "{}"...)
			continue
		}
		b = append(b, '{')
		for j, m := range r.members {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendName(append(append(b, '\n'), inner+"  "...), m.name)
			b = appendValue(b, m.value, inner+"  ")
		}
		b = append(append(append(b, '\n'), inner...), '}')
	}
	return append(append(append(b, '\n'), indent...), ']')
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
