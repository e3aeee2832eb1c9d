package apikey

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/caddy-apikey/caddy-apikey/internal/credential"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Fuzz targets. Their seed corpora are in testdata/fuzz/<name>/; a plain
// `go test` runs the seeds. To fuzz one (-short keeps TestMain from starting
// the integration tests' Caddy in every fuzzing worker):
//
//	go test -short -run '^$' -fuzz '^FuzzParseKeySet$' -fuzztime 60s .

// FuzzParseKeySet feeds arbitrary bytes to the key file parser: it never
// panics, a rejection is a readable error, what it accepts encoding/json
// decodes alike, and an accepted file survives the writer's round trip (parseKeyDoc,
// marshal, parse again) with the same keys.
func FuzzParseKeySet(f *testing.F) {
	f.Add([]byte(testkeys.BenchKeyFile(3)))
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := keyfile.ParseKeySet(data)

		if err == nil && utf8.Valid(data) {
			sameAsEncodingJSON(t, data)
		}
		// The streaming reader (the watcher's) agrees with the whole-file one.
		streamed, serr := keyfile.DecodeKeySet(bytes.NewReader(data), int64(len(data)))
		if (serr == nil) != (err == nil) {
			t.Fatalf("streaming decode error %v, whole-file error %v", serr, err)
		}
		if err == nil {
			sameKeys(t, ks, streamed)
		}

		if err != nil {
			msg := err.Error()
			if msg == "" || strings.Contains(msg, "%!") {
				t.Fatalf("unclear error %q", msg)
			}
			if !utf8.ValidString(msg) && utf8.Valid(data) {
				t.Fatalf("error is not UTF-8: %q", msg)
			}
			return
		}

		doc, err := keyfile.ParseDoc(data)
		if err != nil {
			t.Fatalf("parseKeyDoc refuses a file that keyfile.ParseKeySet accepts: %v", err)
		}
		out := testkeys.MarshalDoc(doc)
		again, err := keyfile.ParseKeySet(out)
		if err != nil {
			t.Fatalf("the written file is refused: %v\n%s", err, out)
		}
		if again.Len() != ks.Len() {
			t.Fatalf("%d keys after the round trip, want %d", again.Len(), ks.Len())
		}
		sameKeys(t, ks, again)
	})
}

// sameKeys checks that two key sets hold the same keys, in the same order.
func sameKeys(t *testing.T, ks, other *keyset.KeySet) {
	t.Helper()
	if other.Len() != ks.Len() {
		t.Fatalf("%d keys, want %d", other.Len(), ks.Len())
	}
	for i := range ks.Len() {
		a, b := ks.At(i), other.At(i)
		if a.ID != b.ID || a.Label != b.Label || a.Prefix != b.Prefix || testkeys.ExpiresAt(a) != testkeys.ExpiresAt(b) ||
			a.Revoked() != b.Revoked() || testkeys.ScopesJoined(a) != testkeys.ScopesJoined(b) {
			t.Fatalf("key %d differs:\n%+v\n%+v", i, a, b)
		}
	}
	for sum := range ks.All() {
		if k, k2 := ks.Find(sum), other.Find(sum); k2 == nil || k2.ID != k.ID {
			t.Fatalf("key %q is not found by its hash", k.ID)
		}
	}
}

// sameAsEncodingJSON checks that the records parseKeyDoc decodes from an
// accepted file are those encoding/json decodes from it.
func sameAsEncodingJSON(t *testing.T, data []byte) {
	doc, err := keyfile.ParseDoc(data)
	if err != nil {
		t.Fatal(err)
	}
	var want []keyset.Record
	if doc.IsList() {
		err = json.Unmarshal(data, &want)
	} else {
		var top struct {
			Keys []keyset.Record `json:"api_keys"`
		}
		err = json.Unmarshal(data, &top)
		want = top.Keys
	}
	if err != nil {
		t.Fatalf("encoding/json refuses an accepted file: %v", err)
	}
	got := make([]keyset.Record, len(doc.Records))
	for i := range doc.Records {
		got[i] = doc.Records[i].Record
	}
	if len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
		t.Fatalf("parseKeyDoc and encoding/json disagree:\ngot  %#v\nwant %#v", got, want)
	}
}

// FuzzCredential sends arbitrary Authorization and X-API-Key values (each
// possibly repeated) and raw queries through credential extraction and the
// whole handler: never a panic, never an empty key, the status that fits
// what was found, and hiding the credential removes it.
func FuzzCredential(f *testing.F) {
	f.Fuzz(func(t *testing.T, auth, xAPIKey, rawQuery string, repeat bool) {
		h := newBenchHandler(fuzzKeySet(t))
		r := &http.Request{Method: "GET", URL: &url.URL{Path: "/", RawQuery: rawQuery}, Header: http.Header{}}
		r.RequestURI = r.URL.RequestURI()
		for _, hv := range []struct{ name, value string }{{"Authorization", auth}, {"X-Api-Key", xAPIKey}} {
			if hv.value == "" {
				continue
			}
			r.Header[hv.name] = []string{hv.value}
			if repeat {
				r.Header[hv.name] = append(r.Header[hv.name], hv.value, "x"+hv.value)
			}
		}

		cred := h.sources.Find(r)
		switch cred.Status {
		case credential.None:
			if cred != (credential.Credential{}) {
				t.Fatalf("no credential, but %+v", cred)
			}
		case credential.Ambiguous:
			if cred.Key != "" {
				t.Fatalf("ambiguous credential with a key: %+v", cred)
			}
		case credential.Found:
			if cred.Key == "" {
				t.Fatal("found an empty key")
			}
			if (cred.Header == "") == (cred.Param == "") {
				t.Fatalf("a found key must come from one header or the query: %+v", cred)
			}
			if cred.Header != "" && strings.Trim(cred.Key, " \t") != cred.Key {
				t.Fatalf("key %q from a header has white space around it", cred.Key)
			}
			if cred.Param != "" {
				if q, err := url.ParseQuery(rawQuery); err == nil {
					if !slices.Contains(q[cred.Param], cred.Key) {
						t.Fatalf("key %q is not a value of %q in %q", cred.Key, cred.Param, rawQuery)
					}
				}
			}
		default:
			t.Fatalf("unknown status %d", cred.Status)
		}

		// The whole handler answers per the credential.
		w := &discardWriter{hdr: http.Header{}}
		passed := false
		next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { passed = true; return nil })
		req := caddyhttp.PrepareRequest(r.Clone(r.Context()), caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, req, next); err != nil {
			t.Fatalf("ServeHTTP: %v", err)
		}
		want := map[credential.Status]int{credential.None: http.StatusUnauthorized, credential.Ambiguous: http.StatusBadRequest, credential.Found: http.StatusForbidden}[cred.Status]
		if cred.Status == credential.Found && cred.Key == fuzzKey {
			want = 0
		}
		if passed != (want == 0) || w.status != want {
			t.Fatalf("credential %+v: status %d (passed %v), want %d", cred, w.status, passed, want)
		}

		// Hiding the credentials leaves no key in any source, and no
		// query pair an upstream could read as the parameter; the other
		// pairs stay, in their order, byte for byte.
		if cred.Status != credential.None {
			h.sources.Hide(r)
			if after := h.sources.Find(r); after.Status != credential.None {
				t.Fatalf("after hiding, the request still carries a key: %+v", after)
			}
		}
		split := func(q string) []string {
			return strings.FieldsFunc(q, func(c rune) bool { return c == '&' || c == ';' })
		}
		var kept []string
		for _, pair := range split(rawQuery) {
			if k, _, _ := strings.Cut(pair, "="); !credential.NameMayBe(k, h.sources.Query) {
				kept = append(kept, pair)
			}
		}
		if got := split(credential.RemoveQueryParam(rawQuery, h.sources.Query)); !slices.Equal(got, kept) {
			t.Fatalf("RemoveQueryParam(%q) keeps %q, want %q", rawQuery, got, kept)
		}
	})
}

// fuzzKey is the one valid key of FuzzCredential's key set.
const fuzzKey = "sk_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuz"

var fuzzKeys *keyset.KeySet

func fuzzKeySet(t *testing.T) *keyset.KeySet {
	if fuzzKeys == nil {
		fuzzKeys = testkeys.KeySet(t, keyset.Record{ID: "fuzz", Label: "Fuzz", KeyHash: keyset.HashKey(fuzzKey), KeyPrefix: fuzzKey[:11]})
	}
	return fuzzKeys
}

// FuzzCaddyfile feeds arbitrary text to the apikey directive, both to
// UnmarshalCaddyfile directly and through Caddy's Caddyfile adapter inside a
// site block: never a panic, every rejection has a message, nothing is
// accepted without a key store, and a lone argument becomes a path matcher
// only when it holds a "*" (no key file may), so that no key file meant for
// the whole site is ever read as the one path to guard.
func FuzzCaddyfile(f *testing.F) {
	f.Fuzz(func(t *testing.T, text string) {
		tokens, tokErr := caddyfile.Tokenize([]byte("apikey "+text), "Caddyfile")
		if tokErr == nil {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
				if err.Error() == "" {
					t.Fatal("empty error")
				}
			} else if h.KeysFile == "" && h.StoreRaw == nil {
				t.Fatal("accepted without a key store")
			}
		}

		adapter := caddyconfig.GetAdapter("caddyfile")
		body := "http://localhost {\n\tapikey " + text + "\n\trespond ok\n}\n"
		out, _, err := adapter.Adapt([]byte(body), nil)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if tokErr != nil {
			return
		}
		var args []string // the directive's arguments, on its own line
		for _, tok := range tokens[1:] {
			if tok.Line != tokens[0].Line || tok.Text == "{" {
				break
			}
			args = append(args, tok.Text)
		}
		var cfg map[string]any
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("adapted config is not JSON: %v", err)
		}
		directives := 0
		for _, tok := range tokens {
			if tok.Text == "apikey" {
				directives++
			}
		}
		// (With more than one, which route is this directive's is not
		// known.)
		if routes := apikeyRoutes(cfg); len(routes) == 1 && directives == 1 {
			if r := routes[0]; r.Match != nil && len(args) == 1 && strings.HasPrefix(args[0], "/") && !strings.Contains(args[0], "*") {
				m, _ := json.Marshal(r.Match)
				t.Fatalf("the lone argument %q became the matcher %s", args[0], m)
			}
		}
	})
}
