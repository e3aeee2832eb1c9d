package redis

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Values that other programs (or people) may write into a key set in
// Redis: whatever they hold, no reader panics, a bad record refuses only its
// own key, and the follower goes on applying changes.

// openLoggedRedisStore is openRedisStore with the store's log kept for the
// test to read.
func openLoggedRedisStore(t testing.TB, r *testredis.Server, prefix, cacheFile string) (*live.Set, *observer.ObservedLogs, error) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := openRedisStoreWith(t, r, prefix, cacheFile, time.Hour, zap.New(core))
	return s, logs, err
}

// logEntry appends a change to the key set's log by hand, as another
// program might: the version is bumped, and the entry holds ids and was as
// given (raw JSON, or anything).
func logEntry(r *testredis.Server, k keyspace.Layout, ids, was string) {
	r.T.Helper()
	v, err := r.Do("INCR", k.Version).AsInt64()
	if err != nil {
		r.T.Fatal(err)
	}
	if err := r.Do("XADD", k.Log, "*", "v", fmt.Sprint(v), "ids", ids, "was", was).Error(); err != nil {
		r.T.Fatal(err)
	}
}

// recordJSON is a record as the commands write it into Redis.
func recordJSON(t testing.TB, k testkeys.Key) string {
	t.Helper()
	js, err := json.Marshal(k.Record)
	if err != nil {
		t.Fatal(err)
	}
	return string(js)
}

// problemLogs counts the log lines that say a record cannot be used.
func problemLogs(logs *observer.ObservedLogs, id string) int {
	n := 0
	for _, e := range logs.FilterMessageSnippet("cannot be used").All() {
		for _, f := range e.Context {
			if f.Key == "error" && strings.Contains(fmt.Sprint(f.Interface), id) {
				n++
			}
		}
	}
	return n
}

// A value holding two records ({…},{…}) made the readers find more records
// than hash fields: the follower, and the full read at every start,
// panicked. It now refuses that one key (both of the records it holds), and
// is logged once.
func TestRedisValueHoldingTwoRecords(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "two:")
	k, _ := keyspace.New("two:")
	rawA, _ := teststores.AddKey(t, rs, "a")
	_, recB := teststores.AddKey(t, rs, "b")
	victim, other := testkeys.New("victim", nil), testkeys.New("smuggled", nil)
	id := victim.Record["id"].(string)
	r.Do("HSET", k.Records, id, recordJSON(t, victim)+","+recordJSON(t, other))

	// At start (the full read).
	s, logs, err := openLoggedRedisStore(t, r, "two:", "")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if !admits(s, rawA) {
		t.Fatal("a good key is not in force")
	}
	if admits(s, victim.Raw) || admits(s, other.Raw) {
		t.Fatal("a key of the value holding two records is admitted")
	}
	if n := problemLogs(logs, id); n != 1 {
		t.Errorf("the bad record was logged %d times, want 1", n)
	}

	// In the follower: a change to a record that holds two.
	second, third := testkeys.New("second", nil), testkeys.New("third", nil)
	id2 := second.Record["id"].(string)
	r.Do("HSET", k.Records, id2, recordJSON(t, second)+","+recordJSON(t, third))
	logEntry(r, k, `["`+id2+`"]`, `[""]`)
	rawC, _ := teststores.AddKey(t, rs, "after")
	testredis.Eventually(t, 5*time.Second, "a change after the bad one did not reach the store", func() bool { return admits(s, rawC) })
	if admits(s, second.Raw) || admits(s, third.Raw) {
		t.Fatal("a key of a changed value holding two records is admitted")
	}
	if err := s.Refresh(); err != nil {
		t.Fatalf("version check: %v", err)
	}
	if n := problemLogs(logs, id2); n != 1 {
		t.Errorf("the changed bad record was logged %d times, want 1", n)
	}

	// The commands: revoke by id reads that one record; list reads all.
	if _, _, err := keyops.Revoke(rs, id, time.Now(), nil); err == nil || !strings.Contains(err.Error(), id) {
		t.Errorf("revoke of the bad record: %v, want an error naming it", err)
	}
	if _, _, err := rs.Read(); err == nil || !strings.Contains(err.Error(), id) && !strings.Contains(err.Error(), id2) {
		t.Errorf("list: %v, want an error naming a bad record", err)
	}
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Errorf("revoke of a good record by id: %v", err)
	}

	// A restart reads the whole set again.
	s2, _, err := openLoggedRedisStore(t, r, "two:", "")
	if err != nil || !admits(s2, rawA) || admits(s2, victim.Raw) || admits(s2, second.Raw) || admits(s2, other.Raw) {
		t.Fatalf("restart: %v", err)
	}
}

// Every hostile value, at start, in the follower and in the commands: no
// panic; the good key stays in force and the follower alive; the value's
// key is refused, or admitted if the value is one good record after all.
func TestRedisHostileValues(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	for i, tc := range []struct {
		name  string
		value func(v testkeys.Key) string
		ok    bool // the value is one good record
	}{
		{"two objects", func(v testkeys.Key) string { return recordJSON(t, v) + "," + recordJSON(t, testkeys.New("x", nil)) }, false},
		{"two objects, no comma", func(v testkeys.Key) string { return recordJSON(t, v) + recordJSON(t, testkeys.New("x", nil)) }, false},
		{"array", func(v testkeys.Key) string { return "[" + recordJSON(t, v) + "]" }, false},
		{"closes the page's array", func(v testkeys.Key) string { return recordJSON(t, v) + `],[` + recordJSON(t, testkeys.New("x", nil)) }, false},
		{"null", func(testkeys.Key) string { return "null" }, false},
		{"empty", func(testkeys.Key) string { return "" }, false},
		{"string", func(testkeys.Key) string { return `"x"` }, false},
		{"number", func(testkeys.Key) string { return `1` }, false},
		{"truncated", func(v testkeys.Key) string { js := recordJSON(t, v); return js[:len(js)/2] }, false},
		{"open string", func(v testkeys.Key) string { js := recordJSON(t, v); return js[:len(js)-1] + `,"z":"` }, false},
		{"trailing garbage", func(v testkeys.Key) string { return recordJSON(t, v) + " x" }, false},
		{"deep nesting", func(testkeys.Key) string { return strings.Repeat("[", 200000) }, false},
		{"another id", func(v testkeys.Key) string { return recordJSON(t, testkeys.New("x", nil)) }, false},
		{"bad hash", func(v testkeys.Key) string {
			return strings.Replace(recordJSON(t, v), `"key_hash":"`, `"key_hash":"z`, 1)
		}, false},
		{"invalid UTF-8", func(v testkeys.Key) string {
			return strings.Replace(recordJSON(t, v), `"label":"`, "\"label\":\"\xff\xfe", 1)
		}, true},
		{"white space around", func(v testkeys.Key) string { return " \n" + recordJSON(t, v) + "\t " }, true},
		{"huge", func(v testkeys.Key) string {
			js := recordJSON(t, v)
			return js[:len(js)-1] + `,"x-big":"` + strings.Repeat("a", 8<<20) + `"}`
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("h%d:", i)
			k, _ := keyspace.New(prefix)
			rs := records(t, r, prefix)
			rawA, recA := teststores.AddKey(t, rs, "a")
			victim := testkeys.New("victim", nil)
			id := victim.Record["id"].(string)
			r.Do("HSET", k.Records, id, tc.value(victim))

			s, _, err := openLoggedRedisStore(t, r, prefix, "")
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if !admits(s, rawA) || admits(s, victim.Raw) != tc.ok {
				t.Fatalf("at start: good key admitted %v, the value's key admitted %v (want %v)", admits(s, rawA), admits(s, victim.Raw), tc.ok)
			}

			// The follower reads it as a change, then goes on.
			victim2 := testkeys.New("victim 2", nil)
			id2 := victim2.Record["id"].(string)
			r.Do("HSET", k.Records, id2, tc.value(victim2))
			logEntry(r, k, `["`+id2+`"]`, `[""]`)
			_ = s.Refresh() // the follower reads the entry alone
			rawB, _ := teststores.AddKey(t, rs, "after")
			testredis.Eventually(t, 5*time.Second, "a change after the hostile one did not reach the store", func() bool { return admits(s, rawB) })
			if !admits(s, rawA) || admits(s, victim2.Raw) != tc.ok {
				t.Fatalf("in the follower: good key admitted %v, the value's key admitted %v (want %v)", admits(s, rawA), admits(s, victim2.Raw), tc.ok)
			}

			// The commands answer with errors, not panics.
			_, _, _ = keyops.Revoke(rs, id, time.Now(), nil)
			_, _, _ = keyops.Revoke(rs, id2, time.Now(), nil)
			if _, _, err := rs.Read(); (err == nil) != tc.ok {
				t.Errorf("list: %v", err)
			}
			if _, _, err := keyops.Revoke(rs, recA.ID, time.Now(), nil); err != nil {
				t.Errorf("revoke of the good key by id: %v", err)
			}
			testredis.Eventually(t, 5*time.Second, "the revoke did not reach the store", func() bool { return !admits(s, rawA) })
		})
	}
}

// Log entries that no writer of this plugin makes: the follower neither
// panics nor sticks on them; the next change is in force.
func TestRedisHostileLogEntries(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	rs := records(t, r, "log:")
	k, _ := keyspace.New("log:")
	rawA, recA := teststores.AddKey(t, rs, "a")
	s := mustOpenRedisStore(t, r, "log:")
	huge := `["` + strings.Repeat("x", 1<<20) + `"]`
	for _, e := range []struct{ ids, was string }{
		{`[]`, `[]`},
		{`null`, `null`},
		{`{}`, `{}`},
		{`[1,2]`, `[1]`},
		{`"` + recA.ID + `"`, `""`},
		{`["` + recA.ID + `"]`, `["` + strings.Repeat("f", 64) + `", "x"]`},
		{`["` + recA.ID + `"]`, `[{"a":1}]`},
		{"[\"\xff\xfe\"]", "[\"\xff\"]"},
		{huge, huge},
		{`["` + recA.ID + `"`, ``},
	} {
		logEntry(r, k, e.ids, e.was)
		_ = s.Refresh() // the follower reads the entry alone
		raw, _ := teststores.AddKey(t, rs, "after")
		testredis.Eventually(t, 5*time.Second, fmt.Sprintf("after a log entry with ids %.40q: the next change is not in force", e.ids), func() bool { return admits(s, raw) })
		if !admits(s, rawA) {
			t.Fatalf("after a log entry with ids %.40q: a good key was lost", e.ids)
		}
	}
	if err := s.Refresh(); err != nil {
		t.Fatalf("version check: %v", err)
	}
}

// Redis keys of the wrong type where the key set's keys should be: no
// panic, in the store (at start and running) or in the commands; a running
// store keeps its keys.
func TestRedisWrongTypes(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	for i, which := range []string{"records", "used", "version", "log"} {
		for _, as := range []string{"string", "hash", "bad number"} {
			if as == "bad number" && which != "version" {
				continue
			}
			t.Run(which+" as "+as, func(t *testing.T) {
				prefix := fmt.Sprintf("t%d%s:", i, strings.ReplaceAll(as, " ", ""))
				k, _ := keyspace.New(prefix)
				rs := records(t, r, prefix)
				raw, rec := teststores.AddKey(t, rs, "a")
				running := mustOpenRedisStore(t, r, prefix)
				key := map[string]string{"records": k.Records, "used": k.Used, "version": k.Version, "log": k.Log}[which]
				r.Do("DEL", key)
				switch as {
				case "string":
					r.Do("SET", key, "x")
				case "bad number":
					r.Do("SET", key, "12abc")
				case "hash":
					r.Do("HSET", key, "v", "x", "ids", "[]")
				}
				_ = running.Refresh()
				if !admits(running, raw) {
					t.Error("the running store lost its key")
				}
				_, _ = openRedisStore(t, r, prefix, "", time.Hour)
				_, _, _ = rs.Read()
				_, _, _ = keyops.Create(rs, keyops.AddOptions{Label: "b"}, time.Now(), nil)
				_, _, _ = keyops.Revoke(rs, rec.ID, time.Now(), nil)
				_, _, _ = keyops.Revoke(rs, rec.KeyPrefix, time.Now(), nil)
				_, _ = keyspace.UsedTimes(t.Context(), r.Client(), k)
				if key, sum := running.KeySet().Lookup(raw); key != nil {
					running.Usage().Mark(key, sum, time.Now().UnixNano())
					running.AskFlush()
				}
			})
		}
	}
}

// FuzzRedisRecord feeds arbitrary hash fields and values to the reader of
// a Redis key set's records: never a panic; a value is taken only if it is
// one JSON object whose id is its field, decoded as a key file's record
// is; a refusal names the field.
func FuzzRedisRecord(f *testing.F) {
	one := `{"id":"a","label":"A","key_hash":"` + keyset.HashKey("k") + `","key_prefix":"sk_kkkkkkkk","created_at":null,"last_used_at":null}`
	for _, v := range []string{one, one + "," + one, "[" + one + "]", "null", "", " " + one + " ", one + "]", `{"id":"a"`, "{\"id\":\"a\xff\"}"} {
		f.Add("a", v)
	}
	f.Fuzz(func(t *testing.T, field, value string) {
		var rd keyfile.RecordReader
		var rec keyfile.Record
		err := rd.Read(field, value, &rec)
		if err != nil {
			if want := fmt.Sprintf("record %q: ", field); !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "%!") {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			if !reflect.DeepEqual(rec, keyfile.Record{}) {
				t.Fatalf("a refused value left %+v", rec)
			}
			return
		}
		if rec.ID != field {
			t.Fatalf("id %q taken under field %q", rec.ID, field)
		}
		if string(rec.Raw()) != value {
			t.Fatalf("raw %q, want the whole value %q", rec.Raw(), value)
		}
		doc, err := keyfile.ParseDoc([]byte("[" + value + "]"))
		if err != nil || len(doc.Records) != 1 || !reflect.DeepEqual(doc.Records[0].Record, rec.Record) {
			t.Fatalf("as a key file: %v, %d records", err, len(doc.Records))
		}
	})
}
