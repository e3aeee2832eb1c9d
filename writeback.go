package apikey

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Everything that writes a key file (the usage writer and the `caddy apikey`
// commands) goes through updateKeyFile: take the lock, read the file as it
// is on disk now, change only what the caller means to change, and replace
// the file atomically. Members this plugin does not know, at the top level
// and inside records, are carried through as raw JSON in their order.

// member is one name/value pair of a JSON object, value kept verbatim.
type member struct {
	Name  string
	Value json.RawMessage
}

// object is a JSON object that keeps its members' order and unknown members.
type object []member

func (o *object) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	var out object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return err
		}
		out = append(out, member{Name: tok.(string), Value: value})
	}
	*o = out
	return nil
}

func (o object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		name, err := json.Marshal(m.Name)
		if err != nil {
			return nil, err
		}
		buf.Write(name)
		buf.WriteByte(':')
		buf.Write(m.Value)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// get returns the raw value of member name, or nil.
func (o object) get(name string) json.RawMessage {
	for _, m := range o {
		if m.Name == name {
			return m.Value
		}
	}
	return nil
}

// getString returns member name as a string, or "" when it is absent, null
// or not a string.
func (o object) getString(name string) string {
	var s string
	if raw := o.get(name); raw != nil {
		_ = json.Unmarshal(raw, &s)
	}
	return s
}

// set replaces member name in place, or appends it.
func (o *object) set(name string, value any) error {
	raw, err := json.Marshal(value)
	if err != nil {
		return err
	}
	for i := range *o {
		if (*o)[i].Name == name {
			(*o)[i].Value = raw
			return nil
		}
	}
	*o = append(*o, member{Name: name, Value: raw})
	return nil
}

// keyDoc is a whole key file, kept with full fidelity for writing back.
type keyDoc struct {
	top     object   // the top-level object; nil when the file is a bare array
	records []object // the key records, in file order
}

// newKeyDoc is the document of a key file that does not exist yet.
func newKeyDoc() *keyDoc {
	return &keyDoc{top: object{{Name: "api_keys", Value: json.RawMessage("[]")}}}
}

// parseKeyDoc reads a key file for writing back. It validates the file as
// the handler would, so that no writer ever writes back a file that the
// handler refuses: a broken file stays as it is until a person mends it.
func parseKeyDoc(data []byte) (*keyDoc, error) {
	if _, err := parseKeySet(data); err != nil {
		return nil, err
	}
	raws, err := splitRecords(data)
	if err != nil {
		return nil, err
	}
	doc := &keyDoc{records: make([]object, len(raws))}
	if t := bytes.TrimSpace(data); t[0] == '{' {
		if err := json.Unmarshal(data, &doc.top); err != nil {
			return nil, err
		}
	}
	for i, raw := range raws {
		if err := json.Unmarshal(raw, &doc.records[i]); err != nil {
			return nil, fmt.Errorf("record %d: %v", i+1, err)
		}
	}
	return doc, nil
}

// marshal renders the document as indented JSON with a final newline.
func (d *keyDoc) marshal() ([]byte, error) {
	records := d.records
	if records == nil {
		records = []object{}
	}
	list, err := json.Marshal(records)
	if err != nil {
		return nil, err
	}
	var compact []byte
	if d.top == nil {
		compact = list
	} else {
		top := append(object(nil), d.top...)
		if err := top.set("api_keys", json.RawMessage(list)); err != nil {
			return nil, err
		}
		if compact, err = json.Marshal(top); err != nil {
			return nil, err
		}
	}
	var out bytes.Buffer
	out.Grow(len(compact) + len(compact)/4)
	if err := json.Indent(&out, compact, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// errNoChange tells updateKeyFile that the edit changed nothing, so there is
// nothing to write.
var errNoChange = errors.New("no change")

// lockTimeout bounds how long a writer waits for another writer's lock.
const lockTimeout = 10 * time.Second

// updateKeyFile applies edit to the key file at path under the key file's
// lock and replaces the file atomically. If create is true, a missing file
// is edited as an empty one; otherwise it is an error. If edit returns
// errNoChange, nothing is written and updateKeyFile returns nil.
func updateKeyFile(path string, create bool, edit func(*keyDoc) error) error {
	_, err := updateKeyFileStat(path, create, edit)
	return err
}

// updateKeyFileStat is updateKeyFile that also returns the stat of the file
// it wrote (nil if it wrote none), taken before the lock is released, so
// that no other writer's version can be mistaken for it.
func updateKeyFileStat(path string, create bool, edit func(*keyDoc) error) (fs.FileInfo, error) {
	// Write through a symbolic link to its target rather than replace the link.
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	unlock, err := lockKeyFile(path, lockTimeout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	removeStaleTemporaries(path)

	var doc *keyDoc
	mode := fs.FileMode(0o600)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if fi, err := os.Stat(path); err == nil {
			mode = fi.Mode().Perm()
		}
		if doc, err = parseKeyDoc(data); err != nil {
			return nil, &KeyFileError{Path: path, Err: err}
		}
	case errors.Is(err, fs.ErrNotExist) && create:
		doc = newKeyDoc()
	default:
		return nil, fmt.Errorf("reading key file: %w", err)
	}

	if err := edit(doc); err != nil {
		if errors.Is(err, errNoChange) {
			return nil, nil
		}
		return nil, err
	}
	out, err := doc.marshal()
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, out, mode); err != nil {
		return nil, err
	}
	return os.Stat(path)
}

// tempPattern is the name pattern of writeFileAtomic's temporary files.
func tempPattern(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".tmp-*")
}

// removeStaleTemporaries removes the temporary files that a writer killed in
// the middle of a write left behind. It must be called with the lock held:
// every writer makes its temporary file only while holding it, so any that
// exists then belongs to no live writer.
func removeStaleTemporaries(path string) {
	stale, _ := filepath.Glob(tempPattern(path))
	for _, name := range stale {
		_ = os.Remove(name)
	}
}

// writeFileAtomic replaces path with data so that a reader, or a crash at any
// moment, sees either the old file or the new one whole: write a temporary
// file in the same folder, flush it to disk, rename it over path, then flush
// the folder so that the rename itself survives a power cut.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(tempPattern(path)))
	if err != nil {
		return fmt.Errorf("writing key file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
			err = fmt.Errorf("writing key file %s: %w", path, err)
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Chmod(mode); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // not supported everywhere; the rename is done either way
		_ = d.Close()
	}
	return nil
}
