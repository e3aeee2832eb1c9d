package keyfile

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// rec is a record's JSON with id, a key of its own, and more members.
func rec(id, more string) string {
	return fmt.Sprintf(`{"id": %q, "label": "L", "key_hash": %q, "key_prefix": "sk_%s", "created_at": null, "last_used_at": null%s}`,
		id, keyset.HashKey("sk_"+id), id, more)
}

func file(records ...string) []byte {
	return []byte("{\n  \"api_keys\": [\n    " + strings.Join(records, ",\n    ") + "\n  ]\n}\n")
}

func limitsOf(t *testing.T, ks *keyset.KeySet, id string) ([]ratelimit.Limit, bool) {
	t.Helper()
	k := ks.Find(sha256.Sum256([]byte("sk_" + id)))
	if k == nil {
		t.Fatalf("no key %s", id)
	}
	return k.RateLimits()
}

// A key file's rate_limits: absent and null mean the handler's defaults,
// [] none, a list the key's own; in the file read whole and as a stream,
// and in a record read on its own (a Redis store's).
func TestDecodeRateLimits(t *testing.T) {
	data := file(
		rec("absent", ""),
		rec("null", `, "rate_limits": null`),
		rec("none", `, "rate_limits": []`),
		rec("two", `, "rate_limits": [{"requests": 100, "window": "1m"}, {"window": "1s", "requests": 10}]`),
	)
	want := map[string]struct {
		limits []ratelimit.Limit
		own    bool
	}{
		"absent": {nil, false},
		"null":   {nil, false},
		"none":   {[]ratelimit.Limit{}, true},
		"two":    {[]ratelimit.Limit{{Requests: 100, Window: time.Minute}, {Requests: 10, Window: time.Second}}, true},
	}
	whole, err := ParseKeySet(data)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := DecodeKeySet(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	for id, w := range want {
		for _, ks := range []*keyset.KeySet{whole, stream} {
			got, own := limitsOf(t, ks, id)
			if own != w.own || !slices.Equal(got, w.limits) {
				t.Errorf("%s: %v, %v; want %v, %v", id, got, own, w.limits, w.own)
			}
		}
	}
	var rd RecordReader
	var r Record
	if err := rd.Read("two", rec("two", `, "rate_limits": [{"requests": 5, "window": "1d"}]`), &r); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.RateLimits, []keyset.RateLimit{{Requests: 5, Window: "1d"}}) {
		t.Errorf("read on its own: %v", r.RateLimits)
	}
}

// Every malformed rate_limits refuses its record with one error naming the
// record and its id, read from a key file whole or as a stream, or on its
// own as a Redis store reads it.
func TestDecodeRateLimitsRefused(t *testing.T) {
	nine := make([]string, 9)
	for i := range nine {
		nine[i] = fmt.Sprintf(`{"requests": 1, "window": "%ds"}`, i+1)
	}
	for _, c := range []struct {
		name, member, want string
	}{
		{"not a list", `"rate_limits": "100/1m"`, `member "rate_limits" must be a list of limits such as [{"requests": 100, "window": "1m"}], not a JSON string`},
		{"an object", `"rate_limits": {"requests": 100, "window": "1m"}`, `must be a list of limits`},
		{"a limit not an object", `"rate_limits": [{"requests": 1, "window": "1s"}, 100]`, `rate_limits: limit 2 must be a JSON object such as {"requests": 100, "window": "1m"}, not a JSON number`},
		{"requests a string", `"rate_limits": [{"requests": "100", "window": "1m"}]`, `rate_limits: limit 1: "requests" must be a whole number, not a JSON string`},
		{"requests zero", `"rate_limits": [{"requests": 0, "window": "1m"}]`, `rate_limits: limit 1: requests must be a whole number from 1 to 1000000000, not "0"`},
		{"requests negative", `"rate_limits": [{"requests": -3, "window": "1m"}]`, `not "-3"`},
		{"requests a fraction", `"rate_limits": [{"requests": 1.5, "window": "1m"}]`, `not "1.5"`},
		{"requests an exponent", `"rate_limits": [{"requests": 1e3, "window": "1m"}]`, `not "1e3"`},
		{"requests absurd", `"rate_limits": [{"requests": 123456789012345678901234567890, "window": "1m"}]`, `not "123456789012345678901234567890"`},
		{"requests over the bound", `"rate_limits": [{"requests": 1000000001, "window": "1m"}]`, `not "1000000001"`},
		{"requests missing", `"rate_limits": [{"window": "1m"}]`, `rate_limits: limit 1: "requests" is missing`},
		{"window missing", `"rate_limits": [{"requests": 5}]`, `rate_limits: limit 1: "window" is missing`},
		{"window a number", `"rate_limits": [{"requests": 5, "window": 60}]`, `"window" must be a string such as "1m", not a JSON number`},
		{"window unparsable", `"rate_limits": [{"requests": 5, "window": "a minute"}]`, `rate_limits: limit 1: window "a minute" is not a duration such as 1s, 1m, 1h or 1d`},
		{"window zero", `"rate_limits": [{"requests": 5, "window": "0s"}]`, `window must be from 1s to 366d, not 0s`},
		{"window too long", `"rate_limits": [{"requests": 5, "window": "1000d"}]`, `window must be from 1s to 366d, not 1000d`},
		{"window not whole seconds", `"rate_limits": [{"requests": 5, "window": "2500ms"}]`, `window must be a whole number of seconds, not 2.5s`},
		{"a member twice", `"rate_limits": [{"requests": 5, "requests": 6, "window": "1m"}]`, `rate_limits: limit 1: member "requests" appears twice`},
		{"an unknown member", `"rate_limits": [{"requests": 5, "window": "1m", "burst": 2}]`, `rate_limits: limit 1: unknown member "burst"; a limit has "requests" and "window"`},
		{"a misspelled member", `"rate_limits": [{"Requests": 5, "window": "1m"}]`, `member "Requests" must be spelled "requests"`},
		{"too many", `"rate_limits": [` + strings.Join(nine, ", ") + `]`, `rate_limits: at most 8 limits, not 9`},
		{"same window", `"rate_limits": [{"requests": 5, "window": "1m"}, {"requests": 50, "window": "60s"}]`, `rate_limits: rate limits 1 and 2 have the same window, 1m`},
		{"the member twice", `"rate_limits": [], "rate_limits": []`, `member "rate_limits" appears twice`},
		{"the member misspelled", `"Rate_Limits": []`, `member "Rate_Limits" must be spelled "rate_limits"`},
	} {
		bad := rec("bad", ", "+c.member)
		data := file(rec("good", `, "rate_limits": [{"requests": 1, "window": "1s"}]`), bad)
		_, err := ParseKeySet(data)
		if err == nil || !strings.HasPrefix(err.Error(), `record 2 (id "bad"): `) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\n want record 2 (id \"bad\") and %q", c.name, err, c.want)
			continue
		}
		if strings.Count(err.Error(), "rate_limits")+strings.Count(err.Error(), "Rate_Limits") > 2 {
			t.Errorf("%s: %q says rate_limits too often", c.name, err)
		}
		if _, err := DecodeKeySet(bytes.NewReader(data), int64(len(data))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s, as a stream: %v", c.name, err)
		}
		var rd RecordReader
		var r Record
		if err := rd.Read("bad", bad, &r); err == nil || !strings.HasPrefix(err.Error(), `record "bad": `) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s, on its own: %v", c.name, err)
		}
	}
}

// A Redis store reads records one by one and applies them with With: a
// broken limit in one record refuses that record alone, and every other
// key keeps its limits, none looser nor tighter.
func TestBrokenLimitAlone(t *testing.T) {
	base, err := ParseKeySet(file(
		rec("a", `, "rate_limits": [{"requests": 100, "window": "1m"}]`),
		rec("b", ""),
		rec("c", `, "rate_limits": []`),
	))
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{
		"a": rec("a", `, "rate_limits": [{"requests": 0, "window": "1m"}]`), // broken
		"b": rec("b", `, "rate_limits": [{"requests": 7, "window": "1s"}]`),
		"c": rec("c", `, "expires_at": "2099-01-01T00:00:00Z", "rate_limits": []`),
	}
	changes := map[string]*keyset.Record{}
	var problems []error
	var rd RecordReader
	for id, v := range values {
		var r Record
		changes[id] = nil
		if err := rd.Read(id, v, &r); err != nil {
			problems = append(problems, err)
			continue
		}
		changes[id] = &r.Record
	}
	next, bad := base.With(changes, nil)
	problems = append(problems, bad...)
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), `record "a": rate_limits: limit 1: requests must be`) {
		t.Fatalf("problems %v, want one, naming a", problems)
	}
	if k := next.Find(sha256.Sum256([]byte("sk_a"))); k != nil {
		t.Error("a's key is still in force with its old limits")
	}
	if l, own := limitsOf(t, next, "b"); !own || !slices.Equal(l, []ratelimit.Limit{{Requests: 7, Window: time.Second}}) {
		t.Errorf("b: %v, %v", l, own)
	}
	if l, own := limitsOf(t, next, "c"); !own || len(l) != 0 {
		t.Errorf("c: %v, %v", l, own)
	}
}

// An edit keeps rate_limits as it was written (spelling, member order,
// numbers) in the records it touches and those it does not; SetRateLimits
// sets, clears and empties the member, and refuses what a record may not
// hold.
func TestRateLimitsThroughEdits(t *testing.T) {
	spelled := `"rate_limits": [{"window": "60s", "requests": 100}, {"requests": 10, "window": "1s"}]`
	data := file(rec("edited", ", "+spelled+`, "team": "x"`), rec("untouched", ", "+spelled))
	doc, err := ParseDoc(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Records[0].Set("label", "new label"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := doc.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte(`"rate_limits": [{"window": "60s", "requests": 100}, {"requests": 10, "window": "1s"}]`)) {
		t.Errorf("the untouched record changed:\n%s", out.Bytes())
	}
	again, ks, err := Parse(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := []keyset.RateLimit{{Requests: 100, Window: "60s"}, {Requests: 10, Window: "1s"}}
	for i, r := range again.Records {
		if !slices.Equal(r.RateLimits, want) {
			t.Errorf("record %d: %v, want %v", i+1, r.RateLimits, want)
		}
	}
	names := func(r *Record) []string {
		var n []string
		for _, m := range r.Members() {
			n = append(n, m.Name)
		}
		return n
	}
	if got := names(&again.Records[0]); !slices.Equal(got, []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "rate_limits", "team"}) {
		t.Errorf("members of the edited record: %v", got)
	}
	if l, _ := limitsOf(t, ks, "edited"); !slices.Equal(l, []ratelimit.Limit{{Requests: 100, Window: time.Minute}, {Requests: 10, Window: time.Second}}) {
		t.Errorf("limits after the edit: %v", l)
	}
	// The one-line form a Redis store holds keeps it too.
	if c, err := again.Records[0].Compact(); err != nil || !bytes.Contains(c, []byte(`"rate_limits":[{"window":"60s","requests":100},{"requests":10,"window":"1s"}]`)) {
		t.Errorf("Compact: %s, %v", c, err)
	}

	// SetRateLimits: change, refuse, empty, clear.
	r := &again.Records[1]
	if err := r.SetRateLimits([]keyset.RateLimit{{Requests: 5, Window: "1h"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRateLimits([]keyset.RateLimit{{Requests: 0, Window: "1h"}}); err == nil || !strings.Contains(err.Error(), "requests must be") {
		t.Errorf("a limit of 0 set: %v", err)
	}
	check := func(what string, want []keyset.RateLimit, wantJSON string) {
		t.Helper()
		var out bytes.Buffer
		if _, err := again.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		back, ks, err := Parse(out.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := back.Records[1].RateLimits
		if !slices.Equal(got, want) || (got == nil) != (want == nil) || !slices.Equal(r.RateLimits, want) {
			t.Errorf("%s: read back %#v (record says %#v), want %#v", what, got, r.RateLimits, want)
		}
		c, _ := back.Records[1].Compact()
		if (wantJSON == "") == bytes.Contains(c, []byte(`"rate_limits"`)) || !bytes.Contains(c, []byte(wantJSON)) {
			t.Errorf("%s: %s, want %s", what, c, wantJSON)
		}
		if _, own := limitsOf(t, ks, "untouched"); own != (want != nil) {
			t.Errorf("%s: key has own limits %v", what, own)
		}
	}
	check("set", []keyset.RateLimit{{Requests: 5, Window: "1h"}}, `"rate_limits":[{"requests":5,"window":"1h"}]`)
	if err := r.SetRateLimits([]keyset.RateLimit{}); err != nil {
		t.Fatal(err)
	}
	check("emptied", []keyset.RateLimit{}, `"rate_limits":[]`)
	if err := r.SetRateLimits(nil); err != nil {
		t.Fatal(err)
	}
	check("cleared", nil, "")

	// A record made new writes the member only when it has limits.
	for _, c := range []struct {
		limits []keyset.RateLimit
		want   string
	}{{nil, ""}, {[]keyset.RateLimit{}, `"rate_limits":[]`}, {[]keyset.RateLimit{{Requests: 3, Window: "1d"}}, `"rate_limits":[{"requests":3,"window":"1d"}]`}} {
		nr, err := NewRecord(keyset.Record{ID: "n", KeyHash: keyset.HashKey("sk_n"), KeyPrefix: "sk_n", Scopes: []string{"s"}, RateLimits: c.limits})
		if err != nil {
			t.Fatal(err)
		}
		js, _ := nr.Compact()
		if (c.want == "") == bytes.Contains(js, []byte("rate_limits")) || !bytes.Contains(js, []byte(c.want)) {
			t.Errorf("NewRecord with %v: %s", c.limits, js)
		}
	}
}
