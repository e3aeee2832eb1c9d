package keyset

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// sameLimits reports whether two keys have the same own rate limits.
func sameLimits(a, b *Key) bool {
	la, oka := a.RateLimits()
	lb, okb := b.RateLimits()
	return oka == okb && slices.Equal(la, lb) && (la == nil) == (lb == nil)
}

func limitRecord(id string, limits []RateLimit) Record {
	raw := "sk_limits_" + id
	return Record{ID: id, KeyHash: HashKey(raw), KeyPrefix: raw[:10], RateLimits: limits}
}

// A record's rate_limits: absent means the handler's defaults, [] none,
// and a list its own, parsed once when the key is made.
func TestRecordRateLimits(t *testing.T) {
	ks, err := New([]Record{
		limitRecord("absent", nil),
		limitRecord("none", []RateLimit{}),
		limitRecord("two", []RateLimit{{100, "1m"}, {10, "1s"}}),
		limitRecord("spelled", []RateLimit{{5000, "1d"}, {7, "1m30s"}, {1, "366d"}, {1000000000, "0.5h"}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		limits []ratelimit.Limit
		own    bool
	}{
		"absent":  {nil, false},
		"none":    {[]ratelimit.Limit{}, true},
		"two":     {[]ratelimit.Limit{{Requests: 100, Window: time.Minute}, {Requests: 10, Window: time.Second}}, true},
		"spelled": {[]ratelimit.Limit{{Requests: 5000, Window: 24 * time.Hour}, {Requests: 7, Window: 90 * time.Second}, {Requests: 1, Window: ratelimit.MaxWindow}, {Requests: ratelimit.MaxRequests, Window: 30 * time.Minute}}, true},
	}
	for i := range 4 {
		k := ks.At(i)
		got, own := k.RateLimits()
		w := want[k.ID]
		if own != w.own || !slices.Equal(got, w.limits) || (got == nil) != (w.limits == nil) {
			t.Errorf("%s: RateLimits() = %v, %v; want %v, %v", k.ID, got, own, w.limits, w.own)
		}
	}
}

// A key's RateLimit-Policy is its own limits', made once and shared by its
// copies and by a key set read back from a snapshot; "" without limits of
// its own.
func TestRateLimitPolicy(t *testing.T) {
	ks, err := New([]Record{
		limitRecord("absent", nil),
		limitRecord("none", []RateLimit{}),
		limitRecord("two", []RateLimit{{100, "1m"}, {10, "1s"}}),
	})
	if err != nil {
		t.Fatal(err)
	}
	const two = `"1m";q=100;w=60, "1s";q=10;w=1`
	data := encodeSnapshot(t, Snapshot{KeySet: ks, Of: "x", Written: time.Unix(0, 0)})
	snap, err := DecodeSnapshot(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	byID := func(set *KeySet, id string) *Key {
		for i := range set.Len() {
			if k := set.At(i); k.ID == id {
				return k
			}
		}
		t.Fatalf("no key %q", id)
		return nil
	}
	for _, set := range []*KeySet{ks, snap.KeySet} {
		for id, want := range map[string]string{"absent": "", "none": "", "two": two} {
			if got := byID(set, id).RateLimitPolicy(); got != want {
				t.Errorf("%s: RateLimitPolicy() = %q, want %q", id, got, want)
			}
		}
	}
	// The next key set after another key's change keeps "two" with its
	// policy.
	first := byID(ks, "two").RateLimitPolicy()
	relabeled := limitRecord("absent", nil)
	relabeled.Label = "relabeled"
	next, problems := ks.With(map[string]*Record{"absent": &relabeled}, nil)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if again := byID(next, "two").RateLimitPolicy(); unsafe.StringData(again) != unsafe.StringData(first) {
		t.Error("the next key set made the policy of an unchanged key again")
	}
}

// Each malformed limit refuses its record with one error that names the
// record and its id and says what is wrong.
func TestRecordRateLimitsRefused(t *testing.T) {
	nine := make([]RateLimit, 9)
	for i := range nine {
		nine[i] = RateLimit{10, strings.Repeat("1", i+1) + "s"}
	}
	for _, c := range []struct {
		name   string
		limits []RateLimit
		want   string
	}{
		{"zero requests", []RateLimit{{0, "1m"}}, "rate_limits: limit 1: requests must be a whole number from 1 to 1000000000, not 0"},
		{"negative requests", []RateLimit{{10, "1s"}, {-5, "1m"}}, "rate_limits: limit 2: requests must be a whole number from 1 to 1000000000, not -5"},
		{"absurd requests", []RateLimit{{1000000001, "1m"}}, "not 1000000001"},
		{"no window", []RateLimit{{10, ""}}, `rate_limits: limit 1: window "" is not a duration such as 1s, 1m, 1h or 1d`},
		{"unparsable window", []RateLimit{{10, "1 minute"}}, `window "1 minute" is not a duration`},
		{"zero window", []RateLimit{{10, "0s"}}, "window must be from 1s to 366d, not 0s"},
		{"negative window", []RateLimit{{10, "-1m"}}, "window must be from 1s to 366d, not -1m0s"},
		{"short window", []RateLimit{{10, "100ms"}}, "not 100ms"},
		{"long window", []RateLimit{{10, "400d"}}, "window must be from 1s to 366d, not 400d"},
		{"fractional window", []RateLimit{{10, "1.5s"}}, "window must be a whole number of seconds, not 1.5s"},
		{"too many", nine, "rate_limits: at most 8 limits, not 9"},
		{"same window", []RateLimit{{100, "1m"}, {10, "1s"}, {50, "60s"}}, "rate_limits: rate limits 1 and 3 have the same window, 1m"},
	} {
		_, err := New([]Record{limitRecord("fine", []RateLimit{{1, "1s"}}), limitRecord("bad-"+c.name, c.limits)})
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, `record 2 (id "bad-`+c.name+`"): `) || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %q, want record 2, its id and %q", c.name, msg, c.want)
		}
		if _, _, err := FromRecord(new(limitRecord("x", c.limits))); err == nil {
			t.Errorf("%s: FromRecord accepted it", c.name)
		}
	}
}

// A change whose limits are broken refuses that record alone: the other
// keys keep theirs, looser and tighter ones alike.
func TestWithBrokenLimits(t *testing.T) {
	base, err := New([]Record{
		limitRecord("a", []RateLimit{{100, "1m"}}),
		limitRecord("b", nil),
		limitRecord("c", []RateLimit{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	a2 := limitRecord("a", []RateLimit{{0, "1m"}})
	b2 := limitRecord("b", []RateLimit{{5, "1s"}})
	next, problems := base.With(map[string]*Record{"a": &a2, "b": &b2}, nil)
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), `record "a": rate_limits: limit 1: requests must be`) {
		t.Fatalf("problems %v, want one naming a", problems)
	}
	if k, _ := next.Lookup("sk_limits_a"); k != nil {
		t.Error("the key with broken limits is still in force")
	}
	kb, _ := next.Lookup("sk_limits_b")
	kc, _ := next.Lookup("sk_limits_c")
	if l, own := kb.RateLimits(); !own || !slices.Equal(l, []ratelimit.Limit{{Requests: 5, Window: time.Second}}) {
		t.Errorf("b: %v, %v; want its new limit", l, own)
	}
	if l, own := kc.RateLimits(); !own || len(l) != 0 {
		t.Errorf("c: %v, %v; want its own none", l, own)
	}
	// The set it was made from is unchanged.
	if l, own := base.At(0).RateLimits(); !own || !slices.Equal(l, []ratelimit.Limit{{Requests: 100, Window: time.Minute}}) {
		t.Errorf("a in the first set: %v, %v", l, own)
	}
}

// rate_limits in JSON: absent when the record has none of its own, [] when
// it says none, with both JSON packages this plugin uses; a record read
// back has what was written; Key.Record gives the limits back.
func TestRecordRateLimitsJSON(t *testing.T) {
	for _, c := range []struct {
		limits []RateLimit
		want   string
	}{
		{nil, ""},
		{[]RateLimit{}, `"rate_limits":[]`},
		{[]RateLimit{{100, "1m"}, {10, "1s"}}, `"rate_limits":[{"requests":100,"window":"1m"},{"requests":10,"window":"1s"}]`},
	} {
		rec := limitRecord("j", c.limits)
		v1, err1 := json.Marshal(rec)
		v2, err2 := jsonv2.Marshal(rec)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		for _, out := range []string{string(v1), string(v2)} {
			if c.want == "" && strings.Contains(out, "rate_limits") || !strings.Contains(out, c.want) {
				t.Errorf("%v marshalled as %s, want %s", c.limits, out, c.want)
			}
			var back Record
			if err := json.Unmarshal([]byte(out), &back); err != nil || !slices.Equal(back.RateLimits, c.limits) || (back.RateLimits == nil) != (c.limits == nil) {
				t.Errorf("%s read back as %#v, %v", out, back.RateLimits, err)
			}
		}
		k, sum, err := FromRecord(&rec)
		if err != nil {
			t.Fatal(err)
		}
		if got := k.Record(sum).RateLimits; !slices.Equal(got, c.limits) || (got == nil) != (c.limits == nil) {
			t.Errorf("Key.Record: %#v, want %#v", got, c.limits)
		}
	}
	// Key.Record writes windows in the largest whole unit.
	rec := limitRecord("w", []RateLimit{{1, "3600s"}, {2, "1m30s"}, {3, "48h"}})
	k, sum, err := FromRecord(&rec)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.Record(sum).RateLimits; !slices.Equal(got, []RateLimit{{1, "1h"}, {2, "90s"}, {3, "2d"}}) {
		t.Errorf("Key.Record: %v", got)
	}
	if got := RateLimitsOf([]ratelimit.Limit{{Requests: 5, Window: time.Second}}); !slices.Equal(got, []RateLimit{{Requests: 5, Window: "1s"}}) {
		t.Errorf("RateLimitsOf: %v", got)
	}
}

// rewriteSnapshot gives a snapshot another magic and fixes its checksum.
func rewriteSnapshot(data []byte, magic string, edit func([]byte) []byte) []byte {
	body := append([]byte(magic), data[len(magic):len(data)-4]...)
	if edit != nil {
		body = edit(body)
	}
	return binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
}

// A snapshot of the form before rate limits (version 1) is still read; one
// that claims limits in that form, or holds limits out of bounds, is
// damaged.
func TestSnapshotRateLimitForms(t *testing.T) {
	plain, err := New([]Record{limitRecord("p", nil)})
	if err != nil {
		t.Fatal(err)
	}
	data := encodeSnapshot(t, Snapshot{KeySet: plain, Of: "x", Written: time.Unix(0, 0)})
	if !bytes.HasPrefix(data, []byte(snapshotMagic)) {
		t.Fatalf("written as %q", data[:len(snapshotMagic)])
	}
	v1 := rewriteSnapshot(data, snapshotMagicV1, nil)
	snap, err := DecodeSnapshot(bytes.NewReader(v1), int64(len(v1)))
	if err != nil || snap.KeySet.Len() != 1 {
		t.Fatalf("version 1: %v", err)
	}
	if _, own := snap.KeySet.At(0).RateLimits(); own {
		t.Error("a version 1 key has limits of its own")
	}

	limited, err := New([]Record{limitRecord("l", []RateLimit{{100, "1m"}})})
	if err != nil {
		t.Fatal(err)
	}
	data = encodeSnapshot(t, Snapshot{KeySet: limited, Of: "x", Written: time.Unix(0, 0)})
	// The key: magic, "x" (2), version 0 (1), log "" (1), written (1),
	// count (1), text (1), then its hash and its flags.
	flagsAt := len(snapshotMagic) + 7 + 32
	if data[flagsAt] != snapLimits {
		t.Fatalf("flags %#x", data[flagsAt])
	}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"limits in version 1", rewriteSnapshot(data, snapshotMagicV1, nil), "unknown flags"},
		{"zero requests", rewriteSnapshot(data, snapshotMagic, func(b []byte) []byte {
			b[flagsAt+2] = 0 // the count 1, then requests 100 in one byte
			return b
		}), `damaged: key 1 (id "l"): rate limit 1: requests must be`},
		{"nine limits", rewriteSnapshot(data, snapshotMagic, func(b []byte) []byte {
			b[flagsAt+1] = 9
			return b
		}), "damaged: key 1 has 9 rate limits"},
	} {
		if _, err := DecodeSnapshot(bytes.NewReader(c.data), int64(len(c.data))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
