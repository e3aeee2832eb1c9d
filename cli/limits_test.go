package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// caddy apikey add --rate gives a new key limits of its own; limits sets
// (--rate), empties (--none) and drops (--defaults) them; list shows them
// in its table and, as the record holds them, in --json; the key file
// keeps its other members; bad limits change nothing.
func TestCommandRateLimits(t *testing.T) {
	path := t.TempDir() + "/keys.json"
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "metered", "--rate", "100/1m", "--rate", "10/1s")
	if err != nil {
		t.Fatalf("add --rate: %v\n%s", err, stderr)
	}
	raw := strings.TrimSpace(stdout)
	rec := testkeys.FileRecord(t, path, testkeys.ReadDoc(t, path).Records[0].ID)
	if want := []keyset.RateLimit{{Requests: 100, Window: "1m"}, {Requests: 10, Window: "1s"}}; len(rec.RateLimits) != 2 || rec.RateLimits[0] != want[0] || rec.RateLimits[1] != want[1] {
		t.Fatalf("the record's rate_limits = %+v", rec.RateLimits)
	}

	listed := func() keyops.Listed {
		t.Helper()
		out, _, err := testkeys.RunCommand(t, "", "list", "--file", path, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var l []keyops.Listed
		if err := json.Unmarshal([]byte(out), &l); err != nil || len(l) != 1 {
			t.Fatalf("list --json: %v %s", err, out)
		}
		return l[0]
	}
	table := func() string {
		out, _, err := testkeys.RunCommand(t, "", "list", "--file", path)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if !strings.Contains(table(), "100/1m,10/1s") {
		t.Errorf("list does not show the limits:\n%s", table())
	}

	for _, tc := range []struct {
		args  []string
		want  []keyset.RateLimit
		shown string
	}{
		{[]string{"--rate", "5/1h"}, []keyset.RateLimit{{Requests: 5, Window: "1h"}}, "5/1h"},
		{[]string{"--none"}, []keyset.RateLimit{}, "none"},
		{[]string{"--defaults"}, nil, "default"},
	} {
		out, stderr, err := testkeys.RunCommand(t, "", append(append([]string{"limits", "--file", path}, tc.args...), raw[:11])...)
		if err != nil || !strings.Contains(out, tc.shown) {
			t.Fatalf("limits %v: %v %q %q", tc.args, err, out, stderr)
		}
		l := listed()
		if (l.RateLimits == nil) != (tc.want == nil) || len(l.RateLimits) != len(tc.want) {
			t.Errorf("after limits %v: list --json shows %+v, want %+v", tc.args, l.RateLimits, tc.want)
		}
		if !strings.Contains(table(), " "+tc.shown+" ") {
			t.Errorf("after limits %v, the table does not show %q:\n%s", tc.args, tc.shown, table())
		}
	}
	if out, _, _ := testkeys.RunCommand(t, "", "list", "--file", path, "--json"); strings.Contains(out, "rate_limits") {
		t.Errorf("a key without limits of its own shows rate_limits in list --json: %s", out)
	}

	before := testkeys.ReadFile(t, path)
	for _, args := range [][]string{
		{"--rate", "0/1m"}, {"--rate", "100"}, {"--rate", "10/1m", "--rate", "20/1m"}, {"--rate", "1/1ms"}, {"--none", "--defaults"}, {},
	} {
		if _, stderr, err := testkeys.RunCommand(t, "", append(append([]string{"limits", "--file", path}, args...), raw[:11])...); err == nil {
			t.Errorf("limits %v succeeded", args)
		} else if stderr == "" {
			t.Errorf("limits %v: no message", args)
		}
	}
	if _, _, err := testkeys.RunCommand(t, "", "add", "--file", path, "--label", "bad", "--rate", "ten/1m"); err == nil {
		t.Error("add --rate ten/1m succeeded")
	}
	if testkeys.ReadFile(t, path) != before {
		t.Error("a refused limits or add changed the key file")
	}
}

// A rotated key keeps the old one's own rate limits: none of its own, none
// at all, or its list.
func TestCommandRotateKeepsRateLimits(t *testing.T) {
	path := t.TempDir() + "/keys.json"
	for _, rates := range [][]string{nil, {"--none"}, {"--rate", "7/1m", "--rate", "2/1s"}} {
		stdout, _, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "r")
		if err != nil {
			t.Fatal(err)
		}
		raw := strings.TrimSpace(stdout)
		if rates != nil {
			if _, stderr, err := testkeys.RunCommand(t, "", append(append([]string{"limits", "--file", path}, rates...), raw[:11])...); err != nil {
				t.Fatalf("limits: %v %s", err, stderr)
			}
		}
		old := testkeys.ReadDoc(t, path).Records
		if _, stderr, err := testkeys.RunCommand(t, "", "rotate", "--file", path, "--grace", "0", raw[:11]); err != nil {
			t.Fatalf("rotate: %v %s", err, stderr)
		}
		recs := testkeys.ReadDoc(t, path).Records
		was, now := old[len(old)-1].RateLimits, recs[len(recs)-1].RateLimits
		if (was == nil) != (now == nil) || len(was) != len(now) {
			t.Errorf("rotating a key with rate limits %v: the new key has %+v, the old had %+v", rates, now, was)
		}
	}
}
