package audit_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// The measure on the file store: 10,000 changes through the admin
// API from 4 clients at once (each setting the rate limits of its own key,
// a new value each time) leave exactly 10,000 entries, each client's in
// the order it made them, and the last entry of each key is what the key
// file holds.
func TestFileAudit10000Changes(t *testing.T) {
	testkeys.Slow(t, "10,000 edits of a key file, each flushed to disk twice")
	const clients, total = 4, 10000
	path := filepath.Join(t.TempDir(), "keys.json")
	keys := make([]testkeys.Key, clients)
	for i := range keys {
		keys[i] = testkeys.New(fmt.Sprintf("client %d", i), nil)
	}
	testkeys.WriteKeys(t, path, keys...)
	s := teststores.StartFileStore(t, path, -1, -1)
	api := teststores.AdminOver(teststores.Live(t, s.Name()))

	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for n := 1; n <= total/clients; n++ {
				body := fmt.Sprintf(`{"rate_limits":[{"requests":%d,"window":"1m"}]}`, n)
				resp, out := teststores.Call(t, api, http.MethodPut, "/apikey/keys/"+keys[c].ID()+"/rate_limits", body)
				if resp.StatusCode != http.StatusOK {
					t.Errorf("client %d, change %d: %d %s", c, n, resp.StatusCode, out)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d changes from %d clients in %v (%.0f a second)", total, clients, elapsed.Round(time.Millisecond), total/elapsed.Seconds())
	entries, err := filestore.Records{Path: path}.ReadAudit(audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != total {
		t.Fatalf("%d entries, want %d", len(entries), total)
	}
	next := map[string]int64{}
	for i, e := range entries {
		limits, _ := json.Marshal(e.Changes["rate_limits"])
		var got []struct{ Requests int64 }
		if err := json.Unmarshal(limits, &got); err != nil || len(got) != 1 {
			t.Fatalf("entry %d: %s", i, limits)
		}
		next[e.KeyID]++
		if got[0].Requests != next[e.KeyID] {
			t.Fatalf("entry %d: change %d of %s, want %d", i, got[0].Requests, e.KeyID, next[e.KeyID])
		}
	}
	for _, k := range keys {
		if rec := testkeys.FileRecord(t, path, k.ID()); len(rec.RateLimits) != 1 || rec.RateLimits[0].Requests != total/clients {
			t.Errorf("key %s holds %+v", k.ID(), rec.RateLimits)
		}
	}
}
