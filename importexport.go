package apikey

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// importResult is what an import did.
type importResult struct {
	added, present int
	conflicts      []string // one line per record not imported

	// The records revoked in the key set whose copy in the file is
	// active, and otherwise the same (last_used_at aside): one line each.
	// Without importOptions.reactivate they stay revoked (keptRevoked);
	// with it they take the file's copy, active again (reactivated).
	keptRevoked, reactivated []string

	// The key set held no records (it did not exist, or it was emptied):
	// every record was taken from the file as it is, and import cannot
	// tell which of its active keys were revoked after the file was
	// written. activeAdded counts those the file holds active.
	targetEmpty bool
	activeAdded int

	// The file is a server's cache_file (a snapshot, or a key file with
	// a top-level "snapshot" member), not an export.
	snapshot bool
}

// importOptions are the flags of `caddy apikey import`.
type importOptions struct {
	reactivate bool      // re-activate the records revoked in the key set but active in the file
	waiting    func()    // called once if the edit must wait for another writer
	progress   *progress // nil: no progress shown
}

// importKeys copies the records of a key file into a record store (a Redis
// key set), in one atomic edit (see importKeysWith).
func importKeys(from fileRecords, to recordStore, waiting func()) (importResult, error) {
	return importKeysWith(from, to, importOptions{waiting: waiting})
}

// importKeysWith copies the records of a key file into a record store (a
// Redis key set), in one atomic edit. It is idempotent: a record already
// there with the same content (last_used_at aside) is left as it is, so
// running it twice adds nothing. A record whose id or key_hash is already
// there with other content is reported, never overwritten; but for one
// that is revoked in the key set and active in the file, all else the same
// (an older export imported after a revoke): it stays revoked and is
// reported, unless opts.reactivate, which puts the file's copy in its place.
func importKeysWith(from fileRecords, to recordStore, opts importOptions) (importResult, error) {
	p := opts.progress
	if fi, err := os.Stat(from.path); err == nil {
		p.step("Reading %s (%d MiB)", from.path, fi.Size()>>20)
	}
	data, _, err := readKeyFile(from.path)
	if err != nil {
		p.end("")
		return importResult{}, &keyFileError{path: from.path, err: err}
	}
	var file *keyDoc
	snapshot := isSnapshot(data) // a server's cache_file
	if snapshot {
		file, err = snapshotDoc(data)
	} else {
		file, _, err = parseKeyFile(data)
	}
	data = nil
	if err != nil {
		p.end("")
		return importResult{}, &keyFileError{path: from.path, err: err}
	}
	records := file.records
	p.end(fmt.Sprintf("%d keys", len(records)))
	// A cache_file as versions before its binary form wrote it.
	snapshot = snapshot || slices.ContainsFunc(file.top, func(m member) bool { return m.name == "snapshot" })

	var res importResult
	waiting := opts.waiting
	if waiting != nil {
		waiting = func() { p.interrupt(opts.waiting) }
	}
	p.step("Reading the key set %s", to)
	err = to.edit(recordEdit{create: true, waiting: waiting, edit: func(doc *keyDoc) error {
		p.end(fmt.Sprintf("%d keys", len(doc.records)))
		res = importResult{snapshot: snapshot, targetEmpty: len(doc.records) == 0}
		byID := make(map[string]*docRecord, len(doc.records))
		byHash := make(map[string]*docRecord, len(doc.records))
		for i := range doc.records {
			r := &doc.records[i]
			byID[r.ID] = r
			byHash[strings.ToLower(r.KeyHash)] = r
		}
		var add []docRecord
		for i := range records {
			r := &records[i]
			there := byID[r.ID]
			if there == nil {
				there = byHash[strings.ToLower(r.KeyHash)]
			}
			switch {
			case there == nil:
				n := *r
				n.split() // a new record: written, not taken as read
				add = append(add, n)
				res.added++
				if r.RevokedAt == nil {
					res.activeAdded++
				}
			case sameRecord(&there.Record, &r.Record):
				res.present++
			case there.ID == r.ID && revokedOnlyThere(&there.Record, &r.Record):
				line := fmt.Sprintf("id %s (%s, %q), revoked at %s", printable(r.ID), printable(r.KeyPrefix), printable(r.Label), printable(*there.RevokedAt))
				if !opts.reactivate {
					res.keptRevoked = append(res.keptRevoked, line)
					continue
				}
				n := *r
				n.split() // the file's copy, active: written in its place
				*there = n
				res.reactivated = append(res.reactivated, line)
			case there.ID == r.ID:
				res.conflicts = append(res.conflicts, fmt.Sprintf("id %s (%s, %q): a record with this id and other content is already there", printable(r.ID), printable(r.KeyPrefix), printable(r.Label)))
			default:
				res.conflicts = append(res.conflicts, fmt.Sprintf("id %s (%s, %q): its key_hash is already that of id %s", printable(r.ID), printable(r.KeyPrefix), printable(r.Label), printable(there.ID)))
			}
		}
		if len(add) == 0 && len(res.reactivated) == 0 {
			return errNoChange
		}
		doc.records = append(doc.records, add...)
		p.step("Writing %d keys to %s", len(add)+len(res.reactivated), to)
		return nil
	}})
	p.end("")
	return res, err
}

// revokedOnlyThere reports whether there, a record in the key set, is
// revoked and file, its copy in the file, is not, and they are otherwise
// the same record (last_used_at aside).
func revokedOnlyThere(there, file *Record) bool {
	if there.RevokedAt == nil || file.RevokedAt != nil {
		return false
	}
	x := *there
	x.RevokedAt = nil
	return sameRecord(&x, file)
}

// reportImport writes what an import did beyond its counts: to stdout the
// keys it re-activated, to stderr the revoked keys it left revoked, what it
// cannot know when the key set was empty, and a warning for a cache file as
// its source. It returns the error for the records it could not import.
func reportImport(stdout, stderr io.Writer, res importResult, file string, to recordStore) error {
	if res.snapshot {
		fmt.Fprintf(stderr, "Warning: %s is a server's cache_file, not an export: its records lack last_used_at, rotated_from and the members this plugin does not know, and their times may be spelled otherwise than in the key set (then reported as conflicts below). Prefer an export (caddy apikey export); use a cache_file only when nothing else is left.\n", file)
	}
	if len(res.reactivated) > 0 {
		fmt.Fprintf(stdout, "Re-activated %d keys revoked in %s, as --reactivate asked (their copies in %s are active):\n  %s\n", len(res.reactivated), to, file, strings.Join(res.reactivated, "\n  "))
	}
	if len(res.keptRevoked) > 0 {
		fmt.Fprintf(stderr, "%d keys revoked in %s are active in %s (an older export?); they stay revoked. To make them active again, run import again with --reactivate:\n  %s\n", len(res.keptRevoked), to, file, strings.Join(res.keptRevoked, "\n  "))
	}
	if res.targetEmpty && res.activeAdded > 0 {
		fmt.Fprintf(stderr, "Note: %s held no keys, so import cannot tell which keys were revoked since %s was written: its %d active keys are all active now. If it is an older export or backup, revoke again every key revoked after it was made (caddy apikey revoke %s <id>).\n", to, file, res.activeAdded, to.flags())
	}
	if len(res.conflicts) > 0 {
		return fmt.Errorf("%d keys not imported:\n  %s", len(res.conflicts), strings.Join(res.conflicts, "\n  "))
	}
	return nil
}

// sameRecord reports whether two records hold the same key, the same way:
// every known member equal but last_used_at, which usage changes.
func sameRecord(a, b *Record) bool {
	x, y := *a, *b
	x.LastUsedAt, y.LastUsedAt = nil, nil
	x.KeyHash, y.KeyHash = strings.ToLower(x.KeyHash), strings.ToLower(y.KeyHash)
	return reflect.DeepEqual(x, y)
}

// exportKeys writes the records of a store as a key file in today's format
// (hashes only, as always), each with its latest last_used_at: to the file
// at path, which must not exist yet, or to w if path is "".
func exportKeys(from recordStore, path string, w io.Writer) (int, error) {
	records, _, err := from.read()
	if err != nil {
		return 0, err
	}
	for i := range records {
		records[i].split() // written indented, one member a line
	}
	doc := &keyDoc{top: []member{{name: "api_keys"}}, records: records}
	if path == "" {
		_, err = doc.WriteTo(w)
		return len(records), err
	}
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("%s already exists; export writes a new file (remove it, or give another --file)", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	_, err = writeFileAtomic(path, doc, nil, func() error {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s was made while the export was written; it was left as it is", path)
		}
		return nil
	})
	return len(records), err
}

// progress shows, on a terminal, what a long command is doing: a status
// line for each step, redrawn every progressEvery with the time the step
// has taken, and left with its result when the step ends. Anywhere else
// (a pipe, a file, a log) it shows nothing. A nil *progress shows nothing.
type progress struct {
	w io.Writer // a terminal; nil: show nothing

	mu    sync.Mutex
	what  string        // the step under way; "" for none
	start time.Time     // when it began
	stop  chan struct{} // closed to stop its redraws
	wg    sync.WaitGroup
}

// progressEvery is how often a step's status line is redrawn.
const progressEvery = 250 * time.Millisecond

// newProgress returns the progress of a command whose messages go to w:
// shown if w is a terminal.
func newProgress(w io.Writer) *progress {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &progress{w: w}
	}
	return nil
}

// step begins a step, ending the one under way.
func (p *progress) step(format string, args ...any) {
	if p == nil {
		return
	}
	p.end("")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.what, p.start, p.stop = fmt.Sprintf(format, args...), time.Now(), make(chan struct{})
	p.draw()
	stop := p.stop
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.mu.Lock()
				p.draw()
				p.mu.Unlock()
			}
		}
	}()
}

// draw redraws the status line; p.mu is held.
func (p *progress) draw() {
	if p.what != "" {
		fmt.Fprintf(p.w, "\r\x1b[K%s... %s", p.what, time.Since(p.start).Truncate(time.Second))
	}
}

// end ends the step under way, if any, leaving its line with result (if
// not "") and the time it took.
func (p *progress) end(result string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.what == "" {
		p.mu.Unlock()
		return
	}
	close(p.stop)
	took := time.Since(p.start).Round(100 * time.Millisecond)
	if result != "" {
		result = ": " + result
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s%s (%s)\n", p.what, result, took)
	p.what = ""
	p.mu.Unlock()
	p.wg.Wait()
}

// interrupt runs f, which writes lines of its own, with the status line
// cleared, and draws it again after.
func (p *progress) interrupt(f func()) {
	if p == nil {
		f()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.what != "" {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	f()
	p.draw()
}
