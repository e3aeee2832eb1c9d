package apikey

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testfleet"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// Four clients change the rate limits of four keys through a Caddy's
// admin API, each its own key, one change after another (requests 1, 2,
// 3, …), and Caddy is killed -9 in the middle. Each change that was made
// has its audit entry, in order; on a key file, the one change the crash
// may have cut short has its entry without the change (the entry is
// written and flushed first, then the key file replaced); on Redis, entry
// and change are one script, so the entries are exactly the changes.
func TestAuditSurvivesCaddyKill9(t *testing.T) {
	testkeys.Slow(t, "Caddy processes killed -9 during admin API changes")
	t.Run("file", func(t *testing.T) {
		keys := []testkeys.Key{testkeys.New("c1", nil), testkeys.New("c2", nil), testkeys.New("c3", nil), testkeys.New("c4", nil)}
		path := testkeys.WriteKeys(t, "", keys...)
		ids := make([]string, len(keys))
		for i, k := range keys {
			ids[i] = k.ID()
		}
		auditKill(t, "keys_file "+path, filestore.Records{Path: path}, ids, true)
	})
	t.Run("redis", func(t *testing.T) {
		r := testredis.Start(t)
		rs := redisRecords(t, r, "audk:")
		var ids []string
		for i := range 4 {
			_, rec := teststores.AddKey(t, rs, fmt.Sprintf("c%d", i+1))
			ids = append(ids, rec.ID)
		}
		auditKill(t, "redis "+r.URL+" {\n\t\t\tprefix audk:\n\t\t}", rs, ids, false)
	})
}

func auditKill(t *testing.T, block string, st stores.RecordStore, ids []string, entryFirst bool) {
	c, err := testfleet.LaunchCaddyWith(t, "admin", block, `respond "ok"`)
	if err != nil {
		t.Fatal(err)
	}
	// The measure is 10 000 changes, killed at half (run it with
	// AUDIT_FULL=1); the default run makes 2 000, killed at 1 000.
	total := int64(2_000)
	if os.Getenv("AUDIT_FULL") != "" {
		total = 10_000
	}
	var made, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			client := &http.Client{Timeout: 10 * time.Second}
			for n := int64(1); n <= total/int64(len(ids)); n++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"rate_limits": [{"requests": %d, "window": "1m"}]}`, n)
				req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/apikey/keys/%s/rate_limits", c.AdminPort, id), bytes.NewBufferString(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					return // killed
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("key %s, change %d: %d", id, n, resp.StatusCode)
					return
				}
				made.Add(1)
			}
		})
	}
	for made.Load() < total/2 {
		time.Sleep(time.Millisecond)
	}
	if err := c.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()

	recs, _, err := st.Read()
	if err != nil {
		t.Fatal(err)
	}
	inStore := map[string]int64{}
	for _, r := range recs {
		if len(r.RateLimits) == 1 {
			inStore[r.ID] = r.RateLimits[0].Requests
		}
	}
	reader, ok := st.(stores.AuditReader)
	if !ok {
		t.Fatalf("%s keeps no audit log", st)
	}
	entries, err := reader.ReadAudit(audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string][]int64{}
	for _, e := range entries {
		if e.Action != audit.RateLimits {
			continue
		}
		limits, _ := e.Changes["rate_limits"].([]any)
		if len(limits) != 1 {
			t.Fatalf("entry %+v: rate_limits %v", e, e.Changes["rate_limits"])
		}
		n, _ := limits[0].(map[string]any)["requests"].(float64)
		seen[e.KeyID] = append(seen[e.KeyID], int64(n))
	}
	var sum, cut int64
	for _, id := range ids {
		got, want := seen[id], inStore[id]
		for i, n := range got {
			if n != int64(i+1) {
				t.Fatalf("key %s: entry %d is for change %d: out of order or missing", id, i+1, n)
			}
		}
		switch extra := int64(len(got)) - want; {
		case extra == 0:
		case extra == 1 && entryFirst:
			cut++
			t.Logf("key %s: the change to %d requests has its entry, but the crash cut it short: the key file holds %d (entry: %+v)", id, len(got), want, lastEntry(entries, id))
		default:
			t.Errorf("key %s: %d entries for %d changes made", id, len(got), want)
		}
		sum += want
	}
	t.Logf("killed -9 after %d changes answered (%d clients cut off): %d changes in the store, each with its entry in order; %d entries of changes cut short", made.Load(), failed.Load(), sum, cut)
	if sum < made.Load() {
		t.Errorf("%d changes answered 200, only %d in the store", made.Load(), sum)
	}
}

func lastEntry(entries []audit.Entry, id string) audit.Entry {
	for i := len(entries) - 1; i >= 0; i-- {
		if entries[i].KeyID == id {
			return entries[i]
		}
	}
	return audit.Entry{}
}
