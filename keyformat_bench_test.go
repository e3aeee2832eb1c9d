package apikey

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The checksummed key format's cost on the request path. Run with
//
//	go test -short -run '^$' -bench 'BenchmarkKeyFormat' -benchmem .
//
// BenchmarkKeyFormatServeHTTP is ServeHTTP as BenchmarkServeHTTP measures
// it (requests prepared as Caddy prepares them, counting on), with
// key_format acme_live_ on, over a key set holding as many keys of each
// format. BenchmarkKeyFormatDecision is the part of the request path that
// tells the two refusals apart: the format's test (Format.Malformed)
// against hashing the key and looking it up.

var benchFormat = &keyformat.Format{Prefix: "acme_live_"}

// benchMixedKeySet holds n keys of the default format (testkeys.BenchRawKey)
// and n of benchFormat, whose raw keys it returns.
func benchMixedKeySet(b *testing.B, n int) (*keyset.KeySet, []string) {
	recs := testkeys.BenchRecords(n)
	raws := make([]string, n)
	for i := range raws {
		raw, err := benchFormat.Generate()
		if err != nil {
			b.Fatal(err)
		}
		raws[i] = raw
		recs = append(recs, keyfile.Record{Record: keyset.Record{
			ID: fmt.Sprintf("fmt-%d", i), Label: "Key", KeyHash: keyset.HashKey(raw), KeyPrefix: benchFormat.KeyPrefix(raw),
		}})
	}
	ks, err := keyfile.BuildKeySet(recs)
	if err != nil {
		b.Fatal(err)
	}
	return ks, raws
}

func BenchmarkKeyFormatServeHTTP(b *testing.B) {
	const n = 10_000
	ks, raws := benchMixedKeySet(b, n)
	valid := raws[n/2]
	unknown, _ := benchFormat.Generate()
	typo := valid[:len(valid)-1] + string(flip(valid[len(valid)-1]))
	if benchFormat.Check(typo) != keyformat.WrongChecksum || benchFormat.Check(unknown) != keyformat.WellFormed {
		b.Fatal("the benchmark's keys are not what they claim")
	}
	cases := []struct {
		name   string
		key    string
		status int
	}{
		{"refused/wrong-checksum", typo, http.StatusForbidden},
		{"refused/well-formed-unknown", unknown, http.StatusForbidden},
		{"refused/default-format-unknown", "sk_notakeyatallnotakeyatallnotakeyatallnota", http.StatusForbidden},
		{"valid/new-format", valid, 0},
		{"valid/default-format", testkeys.BenchRawKey(n / 2), 0},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			h := newMemoryHandler(&Handler{KeysFile: "bench-keys.json", KeyFormat: benchFormat}, ks)
			h.results = requestResults
			benchRequests(b, h, "Bearer "+c.key, c.status)
		})
	}
}

// benchRequests runs b.N requests with the Authorization value auth
// through h, prepared in batches with the timer stopped, as
// BenchmarkServeHTTP does, and checks the last answer's status (0: passed).
func benchRequests(b *testing.B, h *Handler, auth string, status int) {
	w := &discardWriter{hdr: make(http.Header)}
	reqs := make([]*http.Request, benchBatch)
	prepare := func() {
		for j := range reqs {
			u := &url.URL{Path: "/api/items"}
			r := &http.Request{Method: "GET", URL: u, Header: http.Header{"Authorization": {auth}}, RemoteAddr: "192.0.2.1:51234", RequestURI: u.RequestURI()}
			reqs[j] = caddyhttp.PrepareRequest(r.WithContext(b.Context()), caddy.NewReplacer(), w, nil)
		}
	}
	prepare()
	for _, r := range reqs { // warm up: the first use of a key
		_ = h.ServeHTTP(w, r, noopNext)
	}
	w.status = 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += benchBatch {
		b.StopTimer()
		prepare()
		b.StartTimer()
		for _, r := range reqs[:min(benchBatch, b.N-i)] {
			if err := h.ServeHTTP(w, r, noopNext); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	if w.status != status {
		b.Fatalf("status %d, want %d", w.status, status)
	}
}

// benchSink keeps the compiler from dropping the work measured.
var benchSink int

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func BenchmarkKeyFormatDecision(b *testing.B) {
	const n = 10_000
	ks, raws := benchMixedKeySet(b, n)
	valid := raws[n/2]
	typo := valid[:len(valid)-1] + string(flip(valid[len(valid)-1]))
	unknown, _ := benchFormat.Generate()
	b.Run("check/wrong-checksum", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			benchSink += b2i(benchFormat.Malformed(typo))
		}
	})
	b.Run("check+lookup/well-formed-unknown", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			k, _ := ks.Lookup(unknown)
			benchSink += b2i(benchFormat.Malformed(unknown))
			if k != nil {
				b.Fatal("found")
			}
		}
	})
	b.Run("lookup/default-format", func(b *testing.B) {
		b.ReportAllocs()
		raw := testkeys.BenchRawKey(n / 2)
		for b.Loop() {
			k, _ := ks.Lookup(raw)
			benchSink += b2i(benchFormat.Malformed(raw))
			if k == nil {
				b.Fatal("not found")
			}
		}
	})
	b.Run("check+lookup/new-format", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			k, _ := ks.Lookup(valid)
			benchSink += b2i(benchFormat.Malformed(valid))
			if k == nil {
				b.Fatal("not found")
			}
		}
	})
}
