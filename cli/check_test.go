package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
)

// caddy apikey add and rotate make keys in the format --key-format names;
// caddy apikey check tells a well formed key from a typo and from a key of
// another format, offline, by its exit status, and never prints the key.
func TestCommandKeyFormatAndCheck(t *testing.T) {
	path := t.TempDir() + "/keys.json"
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "new", "--key-format", "acme_live_")
	if err != nil {
		t.Fatalf("add: %v\n%s", err, stderr)
	}
	raw := strings.TrimSpace(stdout)
	f, _ := keyformat.New("acme_live_")
	if f.Check(raw) != keyformat.WellFormed {
		t.Fatalf("add --key-format made %q, not a key in the format", raw)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "rotate", "--file", path, "--grace", "0", "--key-format", "acme_test_", raw[:18])
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	rotated := strings.TrimSpace(stdout)
	if g, _ := keyformat.New("acme_test_"); g.Check(rotated) != keyformat.WellFormed {
		t.Fatalf("rotate --key-format made %q", rotated)
	}
	if _, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--label", "x", "--key-format", "acme"); err == nil || !strings.Contains(stderr, "must end with _") {
		t.Errorf("add with a bad --key-format: %v %q", err, stderr)
	}

	typo := []byte(raw)
	if typo[len(typo)-10] == 'a' { // another base62 character in one place
		typo[len(typo)-10] = 'b'
	} else {
		typo[len(typo)-10] = 'a'
	}
	for _, tc := range []struct {
		name, stdin string
		args        []string
		want        string
		malformed   bool
		notFormat   bool
	}{
		{"well formed", raw + "\n", nil, "well formed (prefix acme_live_, key_prefix " + raw[:18] + ")", false, false},
		{"well formed, prefix given", raw, []string{"--key-format", "acme_live_"}, "well formed", false, false},
		{"a typo", string(typo), nil, "malformed: the checksum does not match", true, false},
		{"cut short", raw[:len(raw)-1], nil, "malformed: wrong length", true, false},
		{"another prefix", raw, []string{"--key-format", "other_"}, "not in this format", false, true},
		{"the default format", testkeys.New("old", nil).Raw, nil, "not in this format", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, err := testkeys.RunCommand(t, tc.stdin, append([]string{"check"}, tc.args...)...)
			if !strings.Contains(stdout, tc.want) {
				t.Errorf("stdout %q, want %q", stdout, tc.want)
			}
			switch {
			case tc.malformed && !errors.Is(err, errMalformed):
				t.Errorf("err %v, want the malformed exit", err)
			case tc.notFormat && (err == nil || !strings.Contains(err.Error(), "status 2")):
				t.Errorf("err %v, want exit status 2", err)
			case !tc.malformed && !tc.notFormat && err != nil:
				t.Errorf("err %v, want none", err)
			}
			if strings.Contains(stdout+stderr, strings.TrimSpace(tc.stdin)[10:]) {
				t.Errorf("the key's secret part was printed: %q %q", stdout, stderr)
			}
		})
	}
	// The key as the argument, as `caddy apikey check <key>`.
	if stdout, _, err := testkeys.RunCommand(t, "", "check", raw); err != nil || !strings.Contains(stdout, "well formed") {
		t.Errorf("check <key>: %v %q", err, stdout)
	}
	if stdout, _, err := testkeys.RunCommand(t, "", "check", string(typo)); !errors.Is(err, errMalformed) || !strings.Contains(stdout, "malformed") {
		t.Errorf("check <typo>: %v %q", err, stdout)
	}
	if _, stderr, err := testkeys.RunCommand(t, "", "check"); err == nil || !strings.Contains(stderr, "no key on stdin") {
		t.Errorf("check without a key: %v %q", err, stderr)
	}
}
