package keyspace

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// editScript applies one change to a key set. It checks, first, the
// version the change was made from (ARGV[1]): the key set must still be at
// it (0: the key set does not exist yet, which only a change that may
// create it accepts, ARGV[2], as it alone may write into a key set whose
// records are gone while its version remains; "*": any version). Then,
// for each record (ARGV[6+n...]: id, expected, JSON), what the change
// expects to replace: nothing is checked (""), there must be no record
// with that id ("-": a new record), or the record must still be the value
// read ("=" and the value: a change of named records, which conflicts
// only with changes of the same records). It then writes the records,
// bumps the version and logs the change (ARGV[3]: the log's length): the
// ids (ARGV[4]), and the key_hash each record had before ("" for a new
// record, "?" if it could not be read), so that a follower drops a
// replaced key without searching for it. Before it writes the records, it
// adds the change's n (ARGV[5]) audit entries (ARGV[6...5+n], JSON) to the
// audit stream (KEYS[4]), trimmed to about KEYS[5]'s number of entries
// (DefaultAuditMaxEntries if unset): an entry that cannot be added fails
// the script before anything is written. It returns {1, new version}, or
// {0, version now} when another writer changed the version, {2, version}
// when a record to add is there already, {3, version} when a record to
// change is no longer the one read.
var editScript = rueidis.NewLuaScript(editLua)

//go:embed lua/edit.lua
var editLua string

// usageScript records last uses: for each (id, key_hash, unix
// microseconds), if the record with that id still exists and still has that
// key_hash, and its used entry is older, the entry is set. A deleted or
// replaced record is never recreated, and a newer time never overwritten.
var usageScript = rueidis.NewLuaScript(usageLua)

//go:embed lua/usage.lua
var usageLua string

// EditBatch is how many records one run of editScript writes. A change of
// more (an import) is written in batches, each atomic and logged, the first
// checked against the version the change was made from and each next one
// against the one before: a writer in between makes the rest fail with
// ErrVersionMoved, and the change is done again on what is there then.
// Batches keep any one script (and the log entry, and a follower's read)
// short, so Redis never stalls on a large import.
const EditBatch = 5000

// WriteChanged saves the records of doc that an edit made or changed (those
// no longer held as the bytes they were read as), if the key set is still
// at version from. It returns the new version, or ErrVersionMoved.
//
// With from AnyVersion, the change only adds records: it is written
// whatever the version, and refused (ErrIDTaken) if one of its ids is
// there already.
func WriteChanged(ctx context.Context, c rueidis.Client, k Layout, doc *keyfile.Doc, from int64, create bool) (int64, error) {
	return WriteRecords(ctx, c, k, doc, from, create, nil, nil)
}

// WriteRecords is WriteChanged, but for read not nil: the change is one of
// named records, written whatever the version if each record it changes is
// still the value it was read as (read[id]; none if read has no value for
// it), and refused otherwise (ErrRecordMoved, or ErrIDTaken for a record
// that was not there). Changes of other records do not hold it up.
//
// entries are the change's audit entries: each is added to the audit
// stream by the script that writes its key's record (the first for an
// entry of a key that the change writes no record of), in the same atomic
// step, before the records; a batch whose entries cannot be added writes
// nothing.
func WriteRecords(ctx context.Context, c rueidis.Client, k Layout, doc *keyfile.Doc, from int64, create bool, read map[string]string, entries []audit.Entry) (int64, error) {
	if read != nil {
		from = AnyVersion
	}
	var writes []string // id, expected, JSON, id, expected, JSON...
	for i := range doc.Records {
		r := &doc.Records[i]
		if !r.Edited() {
			continue
		}
		// The log names ids in JSON, which cannot carry invalid UTF-8:
		// such an id would reach the servers changed.
		if !utf8.ValidString(r.ID) {
			return 0, fmt.Errorf("record %q: a Redis key set needs ids that are valid UTF-8", r.ID)
		}
		js, err := r.Compact()
		if err != nil {
			return 0, fmt.Errorf("record %q: %v", r.ID, err)
		}
		expect := ""
		switch was, ok := read[r.ID]; {
		case ok:
			expect = "=" + was
		case from == AnyVersion:
			expect = "-"
		}
		writes = append(writes, r.ID, expect, string(js))
	}
	// The audit entries of each batch, in their order.
	batches := max(1, (len(writes)/3+EditBatch-1)/EditBatch)
	audited := make([][]string, batches)
	if len(entries) > 0 {
		batchOf := make(map[string]int, len(writes)/3)
		for i := 0; i < len(writes); i += 3 {
			if _, ok := batchOf[writes[i]]; !ok {
				batchOf[writes[i]] = i / 3 / EditBatch
			}
		}
		for _, e := range entries {
			line, err := AuditLine(e)
			if err != nil {
				return 0, err
			}
			b := batchOf[e.KeyID] // 0 if none
			audited[b] = append(audited[b], line)
		}
	}
	version := from
	for b := 0; len(writes) > 0; b++ {
		n := min(len(writes), 3*EditBatch)
		v, err := writeBatch(ctx, c, k, writes[:n], version, create, audited[b])
		if err != nil {
			return v, err
		}
		if version != AnyVersion {
			version = v
		}
		writes, create = writes[n:], false
	}
	return version, nil
}

// writeBatch runs editScript once, for the records in writes (id,
// expected, JSON...).
func writeBatch(ctx context.Context, c rueidis.Client, k Layout, writes []string, from int64, create bool, entries []string) (int64, error) {
	args := make([]string, 5, 5+len(entries)+len(writes))
	args[0], args[1], args[2] = strconv.FormatInt(from, 10), "0", strconv.Itoa(logMaxLen)
	if create {
		args[1] = "1"
	}
	if from == AnyVersion {
		args[0] = "*"
	}
	ids := make([]string, 0, len(writes)/3)
	for i := 0; i < len(writes); i += 3 {
		ids = append(ids, writes[i])
	}
	idList, _ := json.Marshal(ids) // strings only: cannot fail
	args[3] = string(idList)
	args[4] = strconv.Itoa(len(entries))
	args = append(args, entries...)
	args = append(args, writes...)
	res, err := editScript.Exec(ctx, c, []string{k.Version, k.Records, k.Log, k.Audit, k.AuditMax}, args).AsIntSlice()
	if err != nil {
		switch msg := err.Error(); {
		case strings.HasPrefix(msg, "NOKEYSET"):
			return 0, ErrNoKeySet
		case strings.HasPrefix(msg, "NORECORDS"):
			return 0, ErrRecordsGone
		}
		return 0, err
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("redis: unexpected reply to the edit script: %v", res)
	}
	switch res[0] {
	case 0:
		return res[1], ErrVersionMoved
	case 2:
		return res[1], ErrIDTaken
	case 3:
		return res[1], ErrRecordMoved
	}
	return res[1], nil
}

// AnyVersion, as the version a change was made from, marks a change that
// only adds records (see WriteChanged).
const AnyVersion = -1

// usageBatchSize is how many keys one run of usageScript covers; a flush
// sends all its runs in one round trip.
const usageBatchSize = 500

// WriteLastUsed writes a usage writer's batch of last-used times to the
// used hash, through usageScript, in one round trip.
func WriteLastUsed(ctx context.Context, c rueidis.Client, k Layout, batch *keyset.UsageBatch) error {
	var execs []rueidis.LuaExec
	var args []string
	for key, at := range batch.Updates {
		args = append(args, key.ID, key.Hash, strconv.FormatInt(at.UnixMicro(), 10))
		if len(args) == 3*usageBatchSize {
			execs = append(execs, rueidis.LuaExec{Keys: []string{k.Records, k.Used}, Args: args})
			args = nil
		}
	}
	if len(args) > 0 {
		execs = append(execs, rueidis.LuaExec{Keys: []string{k.Records, k.Used}, Args: args})
	}
	for _, res := range usageScript.ExecMulti(ctx, c, execs...) {
		if err := res.Error(); err != nil {
			return err
		}
	}
	return nil
}
