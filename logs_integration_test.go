package apikey

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
)

// Where raw keys could reach Caddy's logs, and the log configuration the
// README recommends against it ("Keep keys out of logs").
//
// Caddy clones each request before any handler runs and attaches the clone
// to both the access logger and the error logger (caddyhttp.Server's
// ServeHTTP), so nothing the handler does to the request (hide_credentials,
// deleting headers) changes what is logged. Caddy hides Authorization,
// Proxy-Authorization and Cookie itself (unless log_credentials), but not
// X-Api-Key, a custom header or the query. With handle_errors a refusal is a
// Caddy error, and the http.log.error logger writes it at DEBUG with the
// whole request; that logger writes to the default log, not to the site's
// access log, so the site's filter does not cover it.

// readmeGlobalLogFilter is the README's global filter of Caddy's default
// log, for a handler with the default sources. The test adds an output line.
const readmeGlobalLogFilter = `log default {
		format filter {
			request>headers>X-Api-Key delete
			request>uri query {
				delete api_key
			}
			uri query {
				delete api_key
			}
		}
	}`

// readmeSiteLogFilter is the README's filter of a site's access log.
const readmeSiteLogFilter = `log {
		format filter {
			request>headers>X-Api-Key delete
			request>uri query {
				delete api_key
			}
		}
	}`

// customSourceFilterLines are what a handler with `header X-Custom-Key` and
// `query key` adds to both filters, as the README says.
const (
	customHeaderFilterLine = "request>headers>X-Custom-Key delete"
	customQueryFilterLine  = "delete key"
)

// logFilterConfig is the global options and the site body of the test's
// log configuration, logs written under dir. filtered: the README's
// recommended configuration; otherwise the README's former one, a filter on
// the site's access log only.
func logFilterConfig(dir string, filtered bool) (globals, siteLog string) {
	out := func(name string) string { return "output file " + filepath.Join(dir, name) + "\n\t\t" }
	if !filtered {
		siteLog = accessLogSite(filepath.Join(dir, "access.log"))
		return "\tdebug\n\tlog default {\n\t\t" + out("default.log") + "}", siteLog
	}
	withCustom := func(filter, file string) string {
		filter = strings.Replace(filter, "format filter {", out(file)+"format filter {", 1)
		filter = strings.Replace(filter, "X-Api-Key delete", "X-Api-Key delete\n\t\t\t"+customHeaderFilterLine, 1)
		return strings.ReplaceAll(filter, "delete api_key\n", "delete api_key\n\t\t\t\t"+customQueryFilterLine+"\n")
	}
	return "\tdebug\n\t" + withCustom(readmeGlobalLogFilter, "default.log"), withCustom(readmeSiteLogFilter, "access.log")
}

// TestReadmeShowsTheTestedLogFilters checks that "Keep keys out of logs"
// (docs/security.md) shows the filters TestLogsHoldNoKeys tests, as they are.
func TestReadmeShowsTheTestedLogFilters(t *testing.T) {
	readme := testkeys.ReadFile(t, "docs/security.md")
	for _, f := range []string{readmeGlobalLogFilter, readmeSiteLogFilter} {
		if !strings.Contains(readme, "\t"+f+"\n") {
			t.Errorf("docs/security.md does not show this log filter:\n%s", f)
		}
	}
}

// logSite is a site with every way of refusing, under /j/ with JSON
// refusals and under /e/ with handle_errors, plus a reverse proxy (to this
// same site's /upstream/) with and without hide_credentials, and
// handle_path, whose rewrite Caddy logs at DEBUG with the new URI.
func logSite(keys, siteLog string) string {
	var b strings.Builder
	b.WriteString(siteLog + "\n")
	for _, m := range []string{"j", "e"} {
		he := ""
		if m == "e" {
			he = "handle_errors"
		}
		fmt.Fprintf(&b, `
	handle /%[1]s/plain/* {
		apikey %[2]s {
			%[3]s
		}
		respond "ok"
	}
	handle /%[1]s/scoped/* {
		apikey %[2]s {
			scope admin
			%[3]s
		}
		respond "ok"
	}
	handle /%[1]s/custom/* {
		apikey %[2]s {
			header X-Custom-Key
			query key
			%[3]s
		}
		respond "ok"
	}
	handle_path /%[1]s/strip/* {
		apikey %[2]s {
			%[3]s
		}
		respond "ok"
	}
	handle /%[1]s/proxy/* {
		apikey %[2]s {
			hide_credentials
			%[3]s
		}
		reverse_proxy localhost:%[4]d {
			rewrite /upstream{uri}
		}
	}
	handle /%[1]s/proxyraw/* {
		apikey %[2]s {
			%[3]s
		}
		reverse_proxy localhost:%[4]d {
			rewrite /upstream{uri}
		}
	}
`, m, keys, he, httpPort)
	}
	b.WriteString(`
	handle /upstream/* {
		respond "upstream"
	}
	handle_errors {
		respond "{http.error.status_code} {http.auth.apikey.error_code}"
	}
`)
	return b.String()
}

// logCase is one request of the log tests.
type logCase struct {
	name    string
	path    string // after /j or /e
	headers []string
	status  int
	code    string // of a refusal
}

// logKeys are the keys of the log tests.
type logKeys struct {
	valid, revoked, expired testkeys.Key
	unknown, unknown2       string
}

func newLogKeys() logKeys {
	return logKeys{
		valid:    testkeys.New("valid", nil),
		revoked:  testkeys.New("revoked", map[string]any{"revoked_at": "2026-11-25T21:00:00+00:00"}),
		expired:  testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"}),
		unknown:  testkeys.New("not in the file", nil).Raw,
		unknown2: testkeys.New("not in the file either", nil).Raw,
	}
}

// secrets names the secret part of every raw key of k.
func (k logKeys) secrets() map[string]string {
	return map[string]string{
		"valid":    testkeys.SecretPart(k.valid.Raw),
		"revoked":  testkeys.SecretPart(k.revoked.Raw),
		"expired":  testkeys.SecretPart(k.expired.Raw),
		"unknown":  testkeys.SecretPart(k.unknown),
		"unknown2": testkeys.SecretPart(k.unknown2),
	}
}

// logCases is every refusal path, and successes, each with raw keys.
func logCases(k logKeys) []logCase {
	v, u, u2 := k.valid.Raw, k.unknown, k.unknown2
	return []logCase{
		{"no key", "/plain/a", nil, 401, CodeAuthRequired},
		{"unknown bearer", "/plain/a", []string{"Authorization: Bearer " + u}, 403, CodeInvalidKey},
		{"unknown x-api-key", "/plain/a", []string{"X-Api-Key: " + u}, 403, CodeInvalidKey},
		{"unknown in the query", "/plain/a?x=1&api_key=" + u, nil, 403, CodeInvalidKey},
		{"revoked", "/plain/a", []string{"X-Api-Key: " + k.revoked.Raw}, 403, CodeInvalidKey},
		{"expired in the query", "/plain/a?api_key=" + k.expired.Raw, nil, 403, CodeKeyExpired},
		{"insufficient scope", "/scoped/a?api_key=" + v, []string{"X-Api-Key: " + v}, 403, CodeInsufficientScope},
		{"ambiguous x-api-key", "/plain/a", []string{"X-Api-Key: " + u, "X-Api-Key: " + v}, 400, CodeAmbiguousKey},
		{"ambiguous bearer", "/plain/a", []string{"Authorization: Bearer " + v, "Authorization: Bearer " + u}, 400, CodeAmbiguousKey},
		{"ambiguous query", "/plain/a?api_key=" + v + "&api_key=" + u, nil, 400, CodeAmbiguousKey},
		{"ambiguous query, name escaped", "/plain/a?api%5Fkey=" + v + "&api_key=" + u, nil, 400, CodeAmbiguousKey},
		{"wrong bearer, valid x-api-key", "/plain/a", []string{"Authorization: Bearer " + u, "X-Api-Key: " + v}, 403, CodeInvalidKey},
		{"wrong x-api-key, valid query", "/plain/a?api_key=" + v, []string{"X-Api-Key: " + u}, 403, CodeInvalidKey},
		{"custom header unknown", "/custom/a", []string{"X-Custom-Key: " + u}, 403, CodeInvalidKey},
		{"custom header ambiguous", "/custom/a", []string{"X-Custom-Key: " + v, "X-Custom-Key: " + u}, 400, CodeAmbiguousKey},
		{"custom query ambiguous", "/custom/a?key=" + v + "&key=" + u, nil, 400, CodeAmbiguousKey},
		{"custom header wrong, valid custom query", "/custom/a?key=" + v, []string{"X-Custom-Key: " + u}, 403, CodeInvalidKey},
		{"handle_path, unknown in the query", "/strip/a?api_key=" + u, nil, 403, CodeInvalidKey},
		{"handle_path, ambiguous query", "/strip/a?api_key=" + v + "&api_key=" + u2, nil, 400, CodeAmbiguousKey},
		{"proxy, unknown in the query", "/proxyraw/a?api_key=" + u2, []string{"X-Api-Key: " + u}, 403, CodeInvalidKey},
		{"success, x-api-key", "/plain/a", []string{"X-Api-Key: " + v}, 200, ""},
		{"success, bearer", "/plain/a", []string{"Authorization: Bearer " + v}, 200, ""},
		{"success, query", "/plain/a?api_key=" + v, nil, 200, ""},
		{"success, custom", "/custom/a?key=" + v, []string{"X-Custom-Key: " + v}, 200, ""},
		{"success, handle_path", "/strip/a?api_key=" + v, nil, 200, ""},
		{"success, proxy with hide_credentials", "/proxy/a?api_key=" + v, []string{"X-Api-Key: " + v}, 200, ""},
		{"success, proxy without hide_credentials", "/proxyraw/a?api_key=" + v, []string{"X-Api-Key: " + v}, 200, ""},
	}
}

// runLogCases sends every case under /j and under /e and checks the
// answers. It returns how many of them were refused under /e (each one an
// error that Caddy's error logger writes).
func runLogCases(t *testing.T, cases []logCase) (refused int) {
	t.Helper()
	for _, m := range []string{"j", "e"} {
		for _, c := range cases {
			resp, body := do(t, "GET", "/"+m+c.path, c.headers...)
			switch {
			case c.status == 200:
				if resp.StatusCode != 200 {
					t.Errorf("%s %q: status %d, want 200", m, c.name, resp.StatusCode)
				}
			case m == "j":
				testkeys.AssertRefusal(t, resp, body, c.status, c.code, "restricted")
			default:
				refused++
				if want := fmt.Sprintf("%d %s", c.status, c.code); resp.StatusCode != c.status || body != want {
					t.Errorf("e %q: status %d body %q, want %d %q", c.name, resp.StatusCode, testkeys.Truncate(body), c.status, want)
				}
			}
		}
	}
	return refused
}

// logLine is one line of a log file.
type logLine struct {
	file, text, logger, msg string
}

// readLogLines returns the lines of the log files under dir, waiting (at
// most 10 s) until the default log holds at least errs entries of Caddy's
// error logger and the access log at least reqs entries: the logs are
// written after the response.
func readLogLines(t *testing.T, dir string, errs, reqs int) []logLine {
	t.Helper()
	var lines []logLine
	testkeys.WaitFor(t, 10*time.Second, fmt.Sprintf("%d error log and %d access log entries", errs, reqs), func() bool {
		lines = lines[:0]
		var nErr, nAcc int
		for _, name := range []string{"default.log", "access.log"} {
			f, err := os.Open(filepath.Join(dir, name))
			if err != nil {
				return false
			}
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				l := logLine{file: name, text: sc.Text()}
				var e struct{ Logger, Msg string }
				if json.Unmarshal(sc.Bytes(), &e) == nil {
					l.logger, l.msg = e.Logger, e.Msg
				}
				switch {
				case strings.HasPrefix(l.logger, "http.log.error"):
					nErr++
				case strings.HasPrefix(l.logger, "http.log.access"):
					nAcc++
				}
				lines = append(lines, l)
			}
			err = sc.Err()
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		return nErr >= errs && nAcc >= reqs
	})
	return lines
}

// leaks returns, for each log line holding a secret, the line's file,
// logger and message, and which secrets it holds: never the secret itself.
func leaks(lines []logLine, secrets map[string]string) []string {
	var found []string
	for _, l := range lines {
		var which []string
		for name, s := range secrets {
			if strings.Contains(l.text, s) {
				which = append(which, name)
			}
		}
		if len(which) > 0 {
			sort.Strings(which)
			found = append(found, fmt.Sprintf("%s: logger %q msg %q holds the %s key", l.file, l.logger, l.msg, strings.Join(which, ", ")))
		}
	}
	return found
}

// TestLogsHoldNoKeys runs every refusal path, with JSON refusals and with
// handle_errors, and successes, at DEBUG level with the README's recommended
// log configuration, and finds no raw key in any line of any log.
func TestLogsHoldNoKeys(t *testing.T) {
	k := newLogKeys()
	keys := testkeys.WriteKeys(t, "", k.valid, k.revoked, k.expired)
	dir := t.TempDir()
	globals, siteLog := logFilterConfig(dir, true)
	loadCaddyfileWithGlobals(t, globals, logSite(keys, siteLog))

	cases := logCases(k)
	errs := runLogCases(t, cases)
	lines := readLogLines(t, dir, errs, 2*len(cases))

	for _, l := range leaks(lines, k.secrets()) {
		t.Error(l)
	}
	// The filters did not just drop the entries: the error logger wrote
	// each handle_errors refusal with its request, at DEBUG.
	var withRequest int
	for _, l := range lines {
		var e struct {
			Logger  string
			Level   string
			Request struct{ URI string }
		}
		if json.Unmarshal([]byte(l.text), &e) == nil && strings.HasPrefix(e.Logger, "http.log.error") && e.Level == "debug" && strings.HasPrefix(e.Request.URI, "/e/") {
			withRequest++
		}
	}
	if withRequest < errs {
		t.Errorf("%d error log entries at debug with the request, want %d", withRequest, errs)
	}
	// And the other debug entries that carry a request were written too:
	// handle_path's rewrite (before apikey runs) and the proxy's round trip.
	for _, logger := range []string{"http.handlers.rewrite", "http.handlers.reverse_proxy"} {
		n := 0
		for _, l := range lines {
			if l.logger == logger {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no %s entry in the default log", logger)
		}
	}
}

// TestLogsHoldKeysWithoutTheGlobalFilter shows what the global filter is
// for: with only the site's access log filtered (the README's former
// advice), Caddy's error logger writes the raw keys of handle_errors
// refusals, a valid key sent beside a wrong one included.
func TestLogsHoldKeysWithoutTheGlobalFilter(t *testing.T) {
	k := newLogKeys()
	keys := testkeys.WriteKeys(t, "", k.valid, k.revoked, k.expired)
	dir := t.TempDir()
	globals, siteLog := logFilterConfig(dir, false)
	loadCaddyfileWithGlobals(t, globals, logSite(keys, siteLog))

	cases := logCases(k)
	errs := runLogCases(t, cases)
	lines := readLogLines(t, dir, errs, 2*len(cases))

	secrets := k.secrets()
	inErrorLog := map[string]bool{}
	for _, l := range lines {
		if !strings.HasPrefix(l.logger, "http.log.error") {
			continue
		}
		for name, s := range secrets {
			if strings.Contains(l.text, s) {
				inErrorLog[name] = true
			}
		}
	}
	for _, name := range []string{"valid", "unknown", "unknown2", "revoked", "expired"} {
		if !inErrorLog[name] {
			t.Errorf("without the global filter, the error log does not hold the %s key: the test would not see a leak", name)
		}
	}
	for _, l := range leaks(lines, secrets) {
		t.Log(l)
	}
}
