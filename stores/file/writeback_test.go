package file

import (
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
)

// A key file written back is the file read, re-indented: members in their
// order, unknown members and values exactly as they were (escapes, number
// spelling), nested values indented like the rest.
func TestKeyDocRoundTrip(t *testing.T) {
	in := `{"app": {"name": "soul\"sync", "n": [1, 2, {"x": null}]}, "api_keys": [
 {"id": "a", "label": "L\u00e9", "key_hash": "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB", "meta": {"tags": ["x", "y"], "deep": {}}, "empty": [], "n": 1.50e3, "last_used_at": null}
], "zz": true}`
	want := `{
  "app": {
    "name": "soul\"sync",
    "n": [
      1,
      2,
      {
        "x": null
      }
    ]
  },
  "api_keys": [
    {
      "id": "a",
      "label": "L\u00e9",
      "key_hash": "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB",
      "meta": {
        "tags": [
          "x",
          "y"
        ],
        "deep": {}
      },
      "empty": [],
      "n": 1.50e3,
      "last_used_at": "2026-11-25T20:14:31.000000+00:00"
    }
  ],
  "zz": true
}
`
	doc, err := keyfile.ParseDoc([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Records[0].Set("last_used_at", "2026-11-25T20:14:31.000000+00:00"); err != nil {
		t.Fatal(err)
	}
	if out := testkeys.MarshalDoc(doc); string(out) != want {
		t.Fatalf("written back as\n%s\nwant\n%s", out, want)
	}

	// A bare array stays one; an empty list is written as [].
	doc, err = keyfile.ParseDoc([]byte(` [ ] `))
	if err != nil {
		t.Fatal(err)
	}
	if out := testkeys.MarshalDoc(doc); string(out) != "[]\n" {
		t.Fatalf("empty array written as %q", out)
	}
	doc, err = keyfile.ParseDoc([]byte(`{"api_keys": null, "other": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if out := testkeys.MarshalDoc(doc); !strings.Contains(string(out), `"api_keys": []`) || !strings.Contains(string(out), `"other": "x"`) {
		t.Fatalf("null list written as %q", out)
	}
	// A new file gets the testkeys.Object form.
	if out := testkeys.MarshalDoc(keyfile.NewDoc()); string(out) != "{\n  \"api_keys\": []\n}\n" {
		t.Fatalf("new file written as %q", out)
	}
}
