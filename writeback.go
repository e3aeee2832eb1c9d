package apikey

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
// Once the file is known to be valid JSON, it is split into members in one
// pass, without decoding the values: they are written back verbatim.
func parseKeyDoc(data []byte) (*keyDoc, error) {
	if _, err := parseKeySet(data); err != nil {
		return nil, err
	}
	doc := &keyDoc{}
	list := data
	if i := skipSpace(data, 0); i < len(data) && data[i] == '{' {
		doc.top = splitObject(data[i:])
		list = doc.top.get("api_keys")
	}
	for _, raw := range splitArray(list) {
		doc.records = append(doc.records, splitObject(raw))
	}
	return doc, nil
}

// The splitters below take JSON that is known to be valid (parseKeySet has
// accepted it); on anything else they stop early rather than fail, and
// they never index out of bounds.

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string that starts at i.
func stringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(data)
}

// valueEnd returns the index just past the JSON value that starts at i.
func valueEnd(data []byte, i int) int {
	if i >= len(data) {
		return len(data)
	}
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(data)
	}
	j := i // a number, true, false or null
	for j < len(data) && !strings.ContainsRune(",}] \t\r\n", rune(data[j])) {
		j++
	}
	return j
}

// splitObject splits a JSON object into its members, values verbatim.
func splitObject(data []byte) object {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil
	}
	var o object
	for i = skipSpace(data, i+1); i < len(data) && data[i] == '"'; {
		end := stringEnd(data, i)
		name := memberName(data[i:end])
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			break
		}
		i = skipSpace(data, i+1)
		vend := valueEnd(data, i)
		o = append(o, member{Name: name, Value: json.RawMessage(data[i:vend])})
		if i = skipSpace(data, vend); i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return o
}

// splitArray splits a JSON array into its elements, verbatim.
func splitArray(data []byte) []json.RawMessage {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '[' {
		return nil
	}
	var out []json.RawMessage
	for i = skipSpace(data, i+1); i < len(data) && data[i] != ']'; {
		end := valueEnd(data, i)
		if end == i {
			break
		}
		out = append(out, json.RawMessage(data[i:end]))
		if i = skipSpace(data, end); i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return out
}

// memberName decodes a quoted member name; the names of a record's known
// members are shared rather than allocated once per record.
func memberName(quoted []byte) string {
	if len(quoted) >= 2 && bytes.IndexByte(quoted, '\\') < 0 {
		raw := quoted[1 : len(quoted)-1]
		for _, known := range recordFields {
			if string(raw) == known {
				return known
			}
		}
		return string(raw)
	}
	var name string
	_ = json.Unmarshal(quoted, &name)
	return name
}

// marshal renders the document as JSON indented by two spaces, with a final
// newline. Values are written as they were read (objects and arrays
// re-indented), so unknown members come back as found.
func (d *keyDoc) marshal() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(256 * (len(d.records) + 1))
	if d.top == nil {
		if err := writeRecords(&b, d.records, ""); err != nil {
			return nil, err
		}
	} else {
		b.WriteByte('{')
		wroteList := false
		for i, m := range d.top {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString("\n  ")
			writeName(&b, m.Name)
			var err error
			if m.Name == "api_keys" {
				err = writeRecords(&b, d.records, "  ")
				wroteList = true
			} else {
				err = writeValue(&b, m.Value, "  ")
			}
			if err != nil {
				return nil, err
			}
		}
		if !wroteList {
			if len(d.top) > 0 {
				b.WriteByte(',')
			}
			b.WriteString("\n  ")
			writeName(&b, "api_keys")
			if err := writeRecords(&b, d.records, "  "); err != nil {
				return nil, err
			}
		}
		b.WriteString("\n}")
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}

func writeRecords(b *bytes.Buffer, records []object, indent string) error {
	if len(records) == 0 {
		b.WriteString("[]")
		return nil
	}
	b.WriteByte('[')
	for i, rec := range records {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("\n" + indent + "  ")
		if len(rec) == 0 {
			b.WriteString("{}")
			continue
		}
		b.WriteByte('{')
		for j, m := range rec {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString("\n" + indent + "    ")
			writeName(b, m.Name)
			if err := writeValue(b, m.Value, indent+"    "); err != nil {
				return err
			}
		}
		b.WriteString("\n" + indent + "  }")
	}
	b.WriteString("\n" + indent + "]")
	return nil
}

// writeName writes a member name and its colon.
func writeName(b *bytes.Buffer, name string) {
	plain := true
	for i := 0; i < len(name) && plain; i++ {
		plain = name[i] >= 0x20 && name[i] != '"' && name[i] != '\\'
	}
	if plain {
		b.WriteByte('"')
		b.WriteString(name)
		b.WriteByte('"')
	} else {
		quoted, _ := json.Marshal(name) // a string always marshals
		b.Write(quoted)
	}
	b.WriteString(": ")
}

// writeValue writes a raw JSON value, re-indenting objects and arrays.
func writeValue(b *bytes.Buffer, v json.RawMessage, indent string) error {
	v = bytes.TrimSpace(v)
	if len(v) > 0 && (v[0] == '{' || v[0] == '[') {
		return json.Indent(b, v, indent, "  ")
	}
	b.Write(v)
	return nil
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

// keyFileWrite tells what updateKeyFileStat read and wrote.
type keyFileWrite struct {
	read    fs.FileInfo // the version of the file that was edited; nil if it did not exist
	written fs.FileInfo // the version written; nil if nothing was
}

// errChangedMeanwhile is returned when the key file was replaced, by a
// program that does not take the lock, between the read and the rename.
var errChangedMeanwhile = errors.New("the key file changed while it was being written; its new version was left as it is")

// updateKeyFileStat is updateKeyFile that also tells which version of the
// file it read and which it wrote. A program that does not take the lock
// (an editor, `mv`, config management) can replace the file while it is
// edited here: the rename would then undo that change. So the file is
// checked just before the rename, and if it changed, the edit is done again
// on the new version (a few times, then it gives up with
// errChangedMeanwhile).
func updateKeyFileStat(path string, create bool, edit func(*keyDoc) error) (keyFileWrite, error) {
	// Write through a symbolic link to its target rather than replace the link.
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	unlock, err := lockKeyFile(path, lockTimeout)
	if err != nil {
		return keyFileWrite{}, err
	}
	defer unlock()
	removeStaleTemporaries(path)

	for attempt := 1; ; attempt++ {
		w, err := editKeyFileOnce(path, create, edit)
		switch {
		case !errors.Is(err, errChangedMeanwhile):
			return w, err
		case attempt == 3:
			return w, fmt.Errorf("writing key file %s: %w", path, err)
		}
	}
}

// editKeyFileOnce reads, edits and replaces the key file once; the caller
// holds the lock.
func editKeyFileOnce(path string, create bool, edit func(*keyDoc) error) (keyFileWrite, error) {
	var w keyFileWrite
	var doc *keyDoc
	f, err := os.Open(path)
	switch {
	case err == nil:
		data, err := io.ReadAll(f)
		if err == nil {
			w.read, err = f.Stat()
		}
		_ = f.Close()
		if err != nil {
			return w, fmt.Errorf("reading key file: %w", err)
		}
		if doc, err = parseKeyDoc(data); err != nil {
			return w, &KeyFileError{Path: path, Err: err}
		}
	case errors.Is(err, fs.ErrNotExist) && create:
		doc = newKeyDoc()
	default:
		return w, fmt.Errorf("reading key file: %w", err)
	}

	if err := edit(doc); err != nil {
		if errors.Is(err, errNoChange) {
			return w, nil
		}
		return w, err
	}
	out, err := doc.marshal()
	if err != nil {
		return w, err
	}
	unchanged := func() error {
		now, err := os.Stat(path)
		switch {
		case w.read == nil && errors.Is(err, fs.ErrNotExist):
			return nil
		case w.read == nil || err != nil || !sameVersion(now, w.read):
			return errChangedMeanwhile
		}
		return nil
	}
	w.written, err = writeFileAtomic(path, out, w.read, unchanged)
	return w, err
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
// the folder so that the rename itself survives a power cut. The new file
// gets the mode and, where it can, the owner of like (the file it replaces;
// nil for a new file: mode 0600, owned by this process). beforeRename, if
// not nil, may still cancel the write. It returns the stat of the new file.
func writeFileAtomic(path string, data []byte, like fs.FileInfo, beforeRename func() error) (written fs.FileInfo, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(tempPattern(path)))
	if err != nil {
		return nil, fmt.Errorf("writing key file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
			if !errors.Is(err, errChangedMeanwhile) {
				err = fmt.Errorf("writing key file %s: %w", path, err)
			}
		}
	}()
	mode := fs.FileMode(0o600)
	if like != nil {
		mode = like.Mode().Perm()
		if err = keepOwner(tmp, like); err != nil {
			return nil, err
		}
	}
	if _, err = tmp.Write(data); err != nil {
		return nil, err
	}
	if err = tmp.Chmod(mode); err != nil {
		return nil, err
	}
	if err = tmp.Sync(); err != nil {
		return nil, err
	}
	if written, err = tmp.Stat(); err != nil {
		return nil, err
	}
	if err = tmp.Close(); err != nil {
		return nil, err
	}
	if beforeRename != nil {
		if err = beforeRename(); err != nil {
			return nil, err
		}
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // not supported everywhere; the rename is done either way
		_ = d.Close()
	}
	return written, nil
}
