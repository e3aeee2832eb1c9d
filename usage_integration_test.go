package apikey

import (
	"os"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// liveReloadDeadline is the documented bound for a key file change to take
// effect (reload_interval's default is 1s).
const liveReloadDeadline = 2 * time.Second

func statusWith(t *testing.T, raw string) int {
	t.Helper()
	resp, _ := do(t, "GET", "/", "Authorization: Bearer "+raw)
	return resp.StatusCode
}

func TestLiveReloadThroughCaddy(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	path := testkeys.WriteKeys(t, "", a)
	loadCaddyfile(t, `
	apikey `+path+`
	respond "hello {http.auth.user.label}"
`)
	if got := statusWith(t, a.Raw); got != 200 {
		t.Fatalf("a: %d", got)
	}
	if got := statusWith(t, b.Raw); got != 403 {
		t.Fatalf("b before it is added: %d", got)
	}

	// Add b: admitted within the deadline, no reload of Caddy.
	testkeys.WriteKeys(t, path, a, b)
	testkeys.WaitFor(t, liveReloadDeadline, "the added key to be admitted", func() bool { return statusWith(t, b.Raw) == 200 })

	// Remove a, editing the file in place (as an editor may) rather than
	// renaming a new file over it (as writeKeys does).
	newData, err := os.ReadFile(testkeys.WriteKeys(t, "", b))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, newData, 0o600); err != nil {
		t.Fatal(err)
	}
	testkeys.WaitFor(t, liveReloadDeadline, "the removed key to be refused", func() bool { return statusWith(t, a.Raw) == 403 })

	// Break it: the keys in force stay in force.
	if err := os.WriteFile(path, []byte(`{"api_keys": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(liveReloadDeadline); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if got := statusWith(t, b.Raw); got != 200 {
			t.Fatalf("a broken key file changed the answer for a good key: %d", got)
		}
		if got := statusWith(t, a.Raw); got != 403 {
			t.Fatalf("a broken key file admitted a removed key: %d", got)
		}
	}

	// Delete it: still the same.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(liveReloadDeadline)
	if got := statusWith(t, b.Raw); got != 200 {
		t.Fatalf("a deleted key file changed the answer for a good key: %d", got)
	}

	// Repair it with a new set: the next good version is in force.
	testkeys.WriteKeys(t, path, a)
	testkeys.WaitFor(t, liveReloadDeadline, "the repaired file to be in force", func() bool {
		return statusWith(t, a.Raw) == 200 && statusWith(t, b.Raw) == 403
	})
}

func TestUsageFlushedOnConfigReloadAndStop(t *testing.T) {
	k := testkeys.New("k", nil)
	id := k.Record["id"].(string)
	path := testkeys.WriteKeys(t, "", k)
	site := `
	apikey ` + path + ` {
		usage_interval 1h
	}
	respond "ok"
`
	loadCaddyfile(t, site)
	lastUsedTime := func() time.Time {
		v := testkeys.LastUsed(t, path, id)
		if v == "" {
			return time.Time{}
		}
		ts, err := keyset.ParseTimestamp(v)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}

	// The first use is written soon (within maxFlushPeriod).
	if got := statusWith(t, k.Raw); got != 200 {
		t.Fatalf("status %d", got)
	}
	testkeys.WaitFor(t, storecore.MaxFlushPeriod+2*time.Second, "the first use to be written", func() bool { return !lastUsedTime().IsZero() })
	first := lastUsedTime()

	// A later use is held back by the interval (1h)...
	time.Sleep(1100 * time.Millisecond)
	if got := statusWith(t, k.Raw); got != 200 {
		t.Fatalf("status %d", got)
	}
	time.Sleep(storecore.MaxFlushPeriod + time.Second)
	if !lastUsedTime().Equal(first) {
		t.Fatal("a use within the usage interval was written")
	}
	// ...until the config is reloaded: then it is written at once.
	loadCaddyfile(t, site+"\n\theader X-Reloaded yes\n")
	second := lastUsedTime()
	if !second.After(first) {
		t.Fatalf("config reload did not flush the pending use: %v, first %v", second, first)
	}

	// And on stop (the handler goes away with its config).
	time.Sleep(1100 * time.Millisecond)
	if got := statusWith(t, k.Raw); got != 200 {
		t.Fatalf("status %d", got)
	}
	loadCaddyfile(t, `respond "no more apikey"`)
	if third := lastUsedTime(); !third.After(second) {
		t.Fatalf("stopping did not flush the pending use: %v, before %v", third, second)
	}
}
