package apikey

import (
	"bufio"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// keyTimeline records, for one key, when it became valid or invalid, so a
// response can be judged against the key set in force when it was served.
type keyTimeline struct {
	mu      sync.Mutex
	changes []keyChange
}

type keyChange struct {
	at    time.Time
	valid bool
}

func (tl *keyTimeline) set(valid bool) {
	tl.mu.Lock()
	tl.changes = append(tl.changes, keyChange{time.Now(), valid})
	tl.mu.Unlock()
}

// expect returns the status a request sent at sent and answered at recv
// must get, or 0 if a key change within the reload deadline before or
// during the request makes both answers right.
func (tl *keyTimeline) expect(sent, recv time.Time) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	valid := false
	for _, c := range tl.changes {
		if c.at.After(sent.Add(-liveReloadDeadline)) && !c.at.After(recv) {
			return 0 // in transition
		}
		if !c.at.After(sent) {
			valid = c.valid
		}
	}
	if valid {
		return http.StatusOK
	}
	return http.StatusForbidden
}

// TestKeyRotationUnderLoad sends a sustained, bounded load while keys are
// added, revoked and the whole file replaced, and checks every answer
// against the key set in force.
func TestKeyRotationUnderLoad(t *testing.T) {
	const (
		loadDuration = 8 * time.Second
		maxRequests  = 200_000
		workers      = 8
	)
	stable := testkeys.New("stable", nil)
	var (
		keysMu   sync.Mutex
		pool     = []testkeys.Key{stable}
		timeline = map[string]*keyTimeline{}
	)
	path := testkeys.WriteKeys(t, "", stable)
	timeline[stable.Raw] = &keyTimeline{}
	timeline[stable.Raw].set(true)
	unknown := testkeys.New("never stored", nil)
	timeline[unknown.Raw] = &keyTimeline{}
	pool = append(pool, unknown)

	loadCaddyfile(t, `
	apikey `+path+` {
		usage_interval 1s
	}
	respond "ok {http.auth.user.id}"
`)

	var (
		sent, fiveXX, wrong atomic.Int64
		okByKey             sync.Map // raw key -> true, for keys that got a 200
		failures            = make(chan string, 20)
	)
	report := func(msg string) {
		select {
		case failures <- msg:
		default:
		}
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	deadline := time.Now().Add(loadDuration)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && sent.Add(1) <= maxRequests {
				keysMu.Lock()
				k := pool[rand.IntN(len(pool))]
				tl := timeline[k.Raw]
				keysMu.Unlock()
				req := newRequest("GET", siteURL("/"), "Authorization: Bearer "+k.Raw)
				req.RequestURI = "" // a client request has none
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					report("request error: " + err.Error())
					continue
				}
				resp.Body.Close()
				end := time.Now()
				if resp.StatusCode >= 500 {
					fiveXX.Add(1)
				}
				if resp.StatusCode == http.StatusOK {
					okByKey.Store(k.Raw, k.Record["id"])
				}
				if want := tl.expect(start, end); want != 0 && resp.StatusCode != want {
					wrong.Add(1)
					report(fmt.Sprintf("key %q: got %d, want %d", k.Record["label"], resp.StatusCode, want))
				}
			}
		}()
	}

	// Rotate while the load runs: add a key, revoke one, replace the file.
	var live []testkeys.Key // keys in the file besides stable
	rounds := 0
	for time.Now().Add(liveReloadDeadline + time.Second).Before(deadline) {
		rounds++
		added := testkeys.New(fmt.Sprintf("added %d", rounds), nil)
		keysMu.Lock()
		timeline[added.Raw] = &keyTimeline{}
		pool = append(pool, added)
		keysMu.Unlock()
		_, err := testkeys.Update(path, func(doc *keyfile.Doc) error {
			rec, err := keyfile.NewRecord(added.Rec())
			doc.Records = append(doc.Records, rec)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		timeline[added.Raw].set(true)
		live = append(live, added)
		time.Sleep(300 * time.Millisecond)

		if len(live) > 1 {
			victim := live[0]
			live = live[1:]
			_, err := testkeys.Update(path, func(doc *keyfile.Doc) error {
				for i := range doc.Records {
					if doc.Records[i].ID == victim.Record["id"] {
						return doc.Records[i].Set("revoked_at", keyset.FormatTimestamp(time.Now()))
					}
				}
				return fmt.Errorf("victim not found")
			})
			if err != nil {
				t.Fatal(err)
			}
			timeline[victim.Raw].set(false)
		}
		time.Sleep(300 * time.Millisecond)

		if rounds%3 == 0 {
			// Replace the whole file (mv over it), keeping the same keys
			// and the times the writer has put in it, under the lock, as
			// the README's recipe does: a replacement that drops
			// last_used_at, or races the writer, may lose a use.
			unlock, err := keyfile.Lock(path, keyfile.LockTimeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			all := append([]testkeys.Key{stable}, live...)
			onDisk := map[string]*string{}
			for _, rec := range testkeys.ReadDoc(t, path).Records {
				onDisk[rec.ID] = rec.LastUsedAt
			}
			for i, k := range all {
				// Copies: the load's workers read the records.
				all[i].Record = maps.Clone(k.Record)
				if at := onDisk[k.Record["id"].(string)]; at != nil {
					all[i].Record["last_used_at"] = *at
				}
			}
			testkeys.WriteKeys(t, path, all...)
			unlock()
		}
	}
	wg.Wait()
	close(failures)
	for msg := range failures {
		t.Error(msg)
	}
	t.Logf("%d requests, %d keyops.Rotation rounds", min(sent.Load(), maxRequests), rounds)
	if fiveXX.Load() != 0 {
		t.Errorf("%d responses were 5xx", fiveXX.Load())
	}
	if wrong.Load() != 0 {
		t.Errorf("%d responses did not match the key set in force", wrong.Load())
	}
	if rounds < 2 {
		t.Fatalf("only %d keyops.Rotation rounds: the test proves little", rounds)
	}

	// The last-used times of the keys that were used and are still in the
	// file are persisted, at the latest when the config goes away.
	loadCaddyfile(t, `respond "done"`)
	used := map[string]bool{}
	okByKey.Range(func(raw, id any) bool {
		used[id.(string)] = true
		return true
	})
	for _, rec := range testkeys.ReadDoc(t, path).Records {
		if used[rec.ID] && rec.LastUsedAt == nil {
			t.Errorf("key %v was used but its last_used_at is not in the file", rec.Label)
		}
	}
	if _, err := keyfile.ReadKeySet(path); err != nil {
		t.Fatalf("key file left broken: %v", err)
	}
}

// TestBadKeyFileAtStartFailsClosed loads configs whose key file is missing,
// empty, unreadable or invalid: each load fails with an error naming the
// file, and the config before it (which admits nobody) stays in force.
func TestBadKeyFileAtStartFailsClosed(t *testing.T) {
	k := testkeys.New("k", nil)
	loadCaddyfile(t, `respond "no auth here" 418`)

	dir := t.TempDir()
	cases := map[string]func(path string){
		"missing": func(string) {},
		"empty":   func(path string) { os.WriteFile(path, nil, 0o600) },
		// As root, permissions do not stop reading: a folder in the file's
		// place is unreadable as a file for everyone.
		"unreadable": func(path string) { os.Mkdir(path, 0o700) },
		"bad JSON":   func(path string) { os.WriteFile(path, []byte(`{"api_keys": [}`), 0o600) },
		"invalid": func(path string) {
			testkeys.WriteKeys(t, path, testkeys.New("x", map[string]any{"key_hash": "nothex"}))
		},
	}
	for name, prepare := range cases {
		path := dir + "/" + strings.ReplaceAll(name, " ", "_") + ".json"
		prepare(path)
		err := loadConfigError(t, caddyfileFor(`
	apikey `+path+`
	respond "admitted"
`))
		if err == "" {
			t.Fatalf("%s: config with a %s key file loaded", name, name)
		}
		if !strings.Contains(err, path) {
			t.Errorf("%s: load error does not name the file: %s", name, err)
		}
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+k.Raw)
		if resp.StatusCode != 418 {
			t.Fatalf("%s: the previous config is not in force: %d %q", name, resp.StatusCode, body)
		}
	}
}

// TestHostileRequests sends malformed and oversized requests over raw TCP:
// each gets 400, 401 or 403, never a 5xx, and Caddy keeps serving. Caddy
// refuses headers over 16 KiB by default (431) before any handler runs; the
// limit is raised here so that the handler itself meets them.
func TestHostileRequests(t *testing.T) {
	k := testkeys.New("k", nil)
	path := testkeys.WriteKeys(t, "", k)
	loadCaddyfileWithGlobals(t, "\tservers {\n\t\tmax_header_size 4MB\n\t}", `
	apikey `+path+`
	respond "admitted"
`)
	big := strings.Repeat("A", 64<<10)
	var repeated strings.Builder
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&repeated, "X-API-Key: sk_%d\r\n", i)
	}
	var sameRepeated strings.Builder
	for i := 0; i < 3000; i++ {
		sameRepeated.WriteString("X-API-Key: sk_same\r\n")
	}
	cases := []struct {
		name    string
		headers string
		target  string
		allowed []int
	}{
		{"64 KiB bearer", "Authorization: Bearer " + big + "\r\n", "/", []int{403}},
		{"64 KiB X-API-Key", "X-API-Key: " + big + "\r\n", "/", []int{403}},
		{"64 KiB other header", "X-Junk: " + big + "\r\n", "/", []int{401}},
		{"3000 different X-API-Key", repeated.String(), "/", []int{400}},
		{"3000 equal X-API-Key", sameRepeated.String(), "/", []int{403}},
		{"NUL in key", "X-API-Key: sk_\x00abc\r\n", "/", []int{400, 403}},
		{"non-UTF-8 key", "X-API-Key: sk_\xff\xfe\x80\r\n", "/", []int{403}},
		{"non-UTF-8 bearer", "Authorization: Bearer \xc3\x28\r\n", "/", []int{403}},
		{"Bearer without key", "Authorization: Bearer\r\n", "/", []int{401}},
		{"Bearer with spaces only", "Authorization: Bearer    \r\n", "/", []int{401}},
		{"Basic instead of Bearer", "Authorization: Basic dXNlcjpwYXNz\r\n", "/", []int{401}},
		{"huge query", "", "/?api_key=" + strings.Repeat("x", 200<<10), []int{403, 414, 431}},
		{"huge query without key", "", "/?q=" + strings.Repeat("x", 200<<10), []int{401, 414, 431}},
		{"bad escape in query", "", "/?api_key=%zz%", []int{400, 403}},
		{"many parameters", "", "/?" + strings.Repeat("api_key=a&api_key=b&", 2000), []int{400}},
	}
	for _, c := range cases {
		status := rawRequest(t, c.target, c.headers)
		ok := false
		for _, s := range c.allowed {
			ok = ok || s == status
		}
		if !ok {
			t.Errorf("%s: status %d, want one of %v", c.name, status, c.allowed)
		}
	}
	// With Caddy's default header limit, an oversized header never reaches
	// the handler.
	loadCaddyfile(t, `
	apikey `+path+`
	respond "admitted"
`)
	if status := rawRequest(t, "/", "X-API-Key: "+big+"\r\n"); status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header with the default limit: %d, want 431", status)
	}

	// Still serving, still right.
	if resp, _ := do(t, "GET", "/", "X-API-Key: "+k.Raw); resp.StatusCode != 200 {
		t.Fatalf("after the hostile requests, a good key gets %d", resp.StatusCode)
	}
}

// rawRequest sends a GET with the given raw header lines over TCP and
// returns the response status.
func rawRequest(t *testing.T, target, headers string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("localhost:%d", httpPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost:%d\r\n%sConnection: close\r\n\r\n", target, httpPort, headers)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no HTTP response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
