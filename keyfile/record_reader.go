package keyfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"github.com/go-json-experiment/json/jsontext"
)

// RecordReader reads records stored one by one, each on its own (the
// values of a Redis key set's records hash): a value must be exactly one JSON object, the record of the id (the
// hash field) it is stored under, checked as a key file's record is. So a
// value that holds something else (two records, an array, null, half a
// record) is that one record's problem, and never shifts or swallows
// another. One reader serves many values: its decoder is reset for each,
// and reads the value's bytes in place.
type RecordReader struct {
	d  keyFileDecoder
	in bytes.Buffer
}

// Read reads value, stored under field, into r, which is zero. r's strings
// and raw JSON are views of value (Redis replies are never changed, and
// raw is the whole value, white space included). The error names field.
func (p *RecordReader) Read(field, value string, r *Record) error {
	data := unsafe.Slice(unsafe.StringData(value), len(value))
	p.in = *bytes.NewBuffer(data)
	if p.d.dec == nil {
		p.d.dec = jsontext.NewDecoder(&p.in, decoderOptions...)
	} else {
		p.d.dec.Reset(&p.in, decoderOptions...)
	}
	p.d.data = data
	err := p.readOne(r)
	switch {
	case err != nil:
		// The key file's "record 1 (id ...)" says less than the field.
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
	case r.ID != field:
		err = fmt.Errorf("its id %q is not the hash field it is stored under", r.ID)
	default:
		r.raw = data[:len(data):len(data)]
		return nil
	}
	*r = Record{} // nothing of a value that cannot be read is kept
	return fmt.Errorf("record %q: %w", field, err)
}

func (p *RecordReader) readOne(r *Record) error {
	switch k := p.d.dec.PeekKind(); k {
	case '{':
	case 0: // empty, or not JSON: the decoder says which
		_, err := p.d.dec.ReadValue()
		if errors.Is(err, io.EOF) {
			return errors.New("the value is empty; want a JSON object")
		}
		return p.d.syntaxError(err)
	default:
		v, err := p.d.value()
		if err != nil {
			return err
		}
		return fmt.Errorf("want a JSON object, got %.40s", v)
	}
	if err := p.d.record(r, 1); err != nil {
		return err
	}
	if _, err := p.d.dec.ReadToken(); !errors.Is(err, io.EOF) {
		if err == nil {
			return errors.New("the value holds more than one JSON value; want one record")
		}
		return p.d.syntaxError(err)
	}
	return nil
}
