package keyfile

import (
	"bytes"
	"crypto/sha256"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
)

// SetQuota adds the quota member as the last one, replaces it in place
// (the other members and the untouched record as they were written),
// removes it for nil, and refuses a quota a record may not hold, the
// record left as it was; each state reads back, in the key set too.
func TestSetQuota(t *testing.T) {
	data := file(rec("edited", `, "team": "x"`), rec("untouched", `, "quota": {"period": "day", "requests": 5}`))
	doc, err := ParseDoc(data)
	if err != nil {
		t.Fatal(err)
	}
	r := &doc.Records[0]
	names := func() []string {
		var n []string
		for _, m := range r.Members() {
			n = append(n, m.Name)
		}
		return n
	}
	// back writes the document, reads it again and returns the edited
	// record's compact JSON and its key's quota.
	back := func(what string) (string, quota.Quota, bool) {
		t.Helper()
		var out bytes.Buffer
		if _, err := doc.WriteTo(&out); err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(out.Bytes(), []byte(`"quota": {"period": "day", "requests": 5}`)) {
			t.Errorf("%s: the untouched record changed:\n%s", what, out.Bytes())
		}
		again, ks, err := Parse(out.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		c, err := again.Records[0].Compact()
		if err != nil {
			t.Fatal(err)
		}
		k := ks.Find(sha256.Sum256([]byte("sk_edited")))
		q, has := k.Quota()
		return string(c), q, has
	}

	if err := r.SetQuota(&keyset.QuotaSpec{Requests: 10000, Period: "month"}); err != nil {
		t.Fatal(err)
	}
	if got := names(); !slices.Equal(got, []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "team", "quota"}) {
		t.Errorf("members after a new quota: %v", got)
	}
	c, q, has := back("set")
	if !strings.HasSuffix(c, `"team":"x","quota":{"requests":10000,"period":"month"}}`) || !has || q != (quota.Quota{Requests: 10000, Period: quota.Month}) {
		t.Errorf("set: %s, key's quota %v %v", c, q, has)
	}
	if *r.Quota != (keyset.QuotaSpec{Requests: 10000, Period: "month"}) {
		t.Errorf("the record says %+v", r.Quota)
	}

	// Changed in place, not moved.
	if err := r.Set("label", "after"); err != nil {
		t.Fatal(err)
	}
	if err := r.SetQuota(&keyset.QuotaSpec{Requests: 3, Period: "none"}); err != nil {
		t.Fatal(err)
	}
	if got := names(); !slices.Equal(got, []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "team", "quota"}) {
		t.Errorf("members after a change: %v", got)
	}
	if c, q, _ := back("changed"); !strings.HasSuffix(c, `"quota":{"requests":3,"period":"none"}}`) || q != (quota.Quota{Requests: 3, Period: quota.None}) {
		t.Errorf("changed: %s, %v", c, q)
	}

	// Refused: the record keeps its quota.
	for _, bad := range []keyset.QuotaSpec{{Requests: 5, Period: "week"}, {Requests: -1, Period: "day"}, {Requests: quota.MaxRequests + 1, Period: "day"}, {Requests: 5, Period: ""}} {
		if err := r.SetQuota(&bad); err == nil || !strings.HasPrefix(err.Error(), "quota: ") {
			t.Errorf("SetQuota(%+v): %v", bad, err)
		}
	}
	if c, q, _ := back("refused"); !strings.Contains(c, `"quota":{"requests":3,"period":"none"}`) || q.Requests != 3 || r.Quota.Requests != 3 {
		t.Errorf("after refusals: %s, %v", c, q)
	}

	// nil removes the member; twice is no harm.
	for range 2 {
		if err := r.SetQuota(nil); err != nil {
			t.Fatal(err)
		}
	}
	if c, _, has := back("removed"); strings.Contains(c, "quota") || has || r.Quota != nil {
		t.Errorf("removed: %s, key has a quota %v, record %+v", c, has, r.Quota)
	}

	// The record keeps no alias of the caller's spec.
	spec := &keyset.QuotaSpec{Requests: 7, Period: "day"}
	if err := r.SetQuota(spec); err != nil {
		t.Fatal(err)
	}
	spec.Requests = 8
	if r.Quota.Requests != 7 {
		t.Errorf("the record's quota follows the caller's: %+v", r.Quota)
	}

	// A record made new holds the member only with a quota.
	for _, c := range []struct {
		q    *keyset.QuotaSpec
		want string
	}{{nil, ""}, {&keyset.QuotaSpec{Requests: 100, Period: "day"}, `"quota":{"requests":100,"period":"day"}`}} {
		nr, err := NewRecord(keyset.Record{ID: "n", KeyHash: keyset.HashKey("sk_n"), KeyPrefix: "sk_n", Quota: c.q})
		if err != nil {
			t.Fatal(err)
		}
		js, _ := nr.Compact()
		if (c.want == "") == bytes.Contains(js, []byte(`"quota"`)) || !bytes.Contains(js, []byte(c.want)) {
			t.Errorf("NewRecord with %+v: %s", c.q, js)
		}
	}
}

// A record's quota as the key file holds it: the errors name the member
// and what it must be, never a Go type.
func TestDecodeQuota(t *testing.T) {
	rec := func(q string) []byte {
		return []byte(`{"api_keys": [{"id": "a", "label": "a", "key_hash": "` + strings.Repeat("ab", 32) + `", "key_prefix": "sk_a", "created_at": null, "last_used_at": null, "quota": ` + q + `}]}`)
	}
	ks, err := ParseKeySet(rec(`{"requests": 10000, "period": "month"}`))
	if err != nil {
		t.Fatal(err)
	}
	if q, ok := ks.At(0).Quota(); !ok || q.String() != "10000/month" {
		t.Errorf("quota %v %v", q, ok)
	}
	if _, err := ParseKeySet(rec(`null`)); err != nil {
		t.Errorf("null: %v", err)
	}
	for q, want := range map[string]string{
		`"10000/month"`:                                   `member "quota" must be an object`,
		`{"requests": "10", "period": "day"}`:             `"requests" must be a whole number such as 10000, not "10"`,
		`{"requests": 1.5, "period": "day"}`:              `"requests" must be a whole number`,
		`{"requests": 10, "period": "week"}`:              `period "week": must be "day", "month" or "none"`,
		`{"requests": 10, "period": 1}`:                   `"period" must be "day", "month" or "none", not a JSON number`,
		`{"requests": 10}`:                                `must have "requests" and "period"`,
		`{"requests": 10, "period": "day", "burst": 3}`:   `unknown member "burst"`,
		`{"Requests": 10, "period": "day"}`:               `must be spelled "requests"`,
		`{"requests": -1, "period": "day"}`:               `must be from 0`,
		`{"requests": 1, "requests": 2, "period": "day"}`: `appears twice`,
	} {
		_, err := ParseKeySet(rec(q))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "Go ") {
			t.Errorf("quota %s: %v, want %q", q, err, want)
		}
	}
}
