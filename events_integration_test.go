package apikey

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

func init() { caddy.RegisterModule(eventRecorder{}) }

// eventRecorder is an events handler (events.handlers.apikey_test_recorder)
// that keeps the events it gets, for the tests to read: what a user's
// exec or webhook handler would get.
type eventRecorder struct{}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.apikey_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

var recorded = struct {
	sync.Mutex
	events []caddy.Event
}{}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.Lock()
	defer recorded.Unlock()
	recorded.events = append(recorded.events, e)
	return nil
}

// recordedEvents returns the events named name recorded so far.
func recordedEvents(name string) []caddy.Event {
	recorded.Lock()
	defer recorded.Unlock()
	var out []caddy.Event
	for _, e := range recorded.events {
		if e.Name() == name {
			out = append(out, e)
		}
	}
	return out
}

// loadWithEvents loads site (a Caddyfile site body) with an events app
// whose subscription hands every apikey event to the recorder.
func loadWithEvents(t *testing.T, site string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: -short does not start the test Caddy")
	}
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileFor(site)), nil)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   []string{admin.EventCreated, admin.EventRevoked, admin.EventRotated, EventExpiring, EventRateLimited},
		"handlers": []any{map[string]any{"handler": "apikey_test_recorder"}},
	}}}
	out, _ := json.Marshal(cfg)
	t.Cleanup(func() {
		_ = loadConfigError(t, fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n}\n", adminPort))
	})
	caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort}).InitServer(string(out), "json")
	if t.Failed() {
		t.FailNow()
	}
}

// Each event reaches a subscriber of Caddy's events app once, with the
// key's id, label and key_prefix and never the key: a key expiring soon
// when the config loads, a key created, rotated and revoked through the
// admin API (with who asked), and a key refused for its rate limit, once
// in the window however many requests are refused.
func TestEventsReachASubscriber(t *testing.T) {
	soon := testkeys.New("soon", map[string]any{"expires_at": keyset.FormatTimestamp(time.Now().Add(48 * time.Hour))})
	later := testkeys.New("later", map[string]any{"expires_at": keyset.FormatTimestamp(time.Now().Add(30 * 24 * time.Hour))})
	metered := testkeys.New("metered", map[string]any{"rate_limits": []map[string]any{{"requests": 1, "window": "1h"}}})
	path := testkeys.WriteKeys(t, "", soon, later, metered)
	recorded.Lock()
	recorded.events = nil
	recorded.Unlock()
	loadWithEvents(t, `
	apikey `+path+` {
		reload_interval 100ms
		usage_interval off
	}
	respond "ok"
`)
	check := func(name string, want int, id string) caddy.Event {
		t.Helper()
		testkeys.WaitFor(t, 5*time.Second, fmt.Sprintf("%d %s events", want, name), func() bool { return len(recordedEvents(name)) >= want })
		time.Sleep(50 * time.Millisecond) // none more comes
		events := recordedEvents(name)
		if len(events) != want {
			t.Fatalf("%d %s events, want %d: %+v", len(events), name, want, events)
		}
		e := events[want-1]
		if id != "" && e.Data["id"] != id {
			t.Errorf("%s: id %v, want %s", name, e.Data["id"], id)
		}
		if e.Data["key_prefix"] == nil || e.Data["label"] == nil || e.Data["store"] != "file:"+path {
			t.Errorf("%s: data %v", name, e.Data)
		}
		for _, v := range e.Data {
			if s, ok := v.(string); ok && (s == soon.Raw || s == metered.Raw || len(s) == 64 && s == keyset.HashKey(metered.Raw)) {
				t.Errorf("%s carries a key or a hash: %v", name, e.Data)
			}
		}
		return e
	}
	check(EventExpiring, 1, soon.Record["id"].(string)) // not later's: outside the 7 days

	var created admin.NewKeyAnswer
	resp, body := adminCall(t, "POST", "/apikey/keys", `{"label": "fresh"}`)
	adminAnswer(t, resp, body, 201, &created)
	if e := check(admin.EventCreated, 1, created.ID); e.Data["remote_addr"] == nil {
		t.Errorf("created: no remote_addr: %v", e.Data)
	}
	var rotated admin.NewKeyAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys/"+created.ID+"/rotate", `{"grace": "0"}`)
	adminAnswer(t, resp, body, 201, &rotated)
	if e := check(admin.EventRotated, 1, rotated.ID); e.Data["old_id"] != created.ID {
		t.Errorf("rotated: old_id %v, want %s", e.Data["old_id"], created.ID)
	}
	var revoked admin.RevokeAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys/"+rotated.ID+"/revoke", "")
	adminAnswer(t, resp, body, 200, &revoked)
	check(admin.EventRevoked, 1, rotated.ID)

	for i := range 4 {
		resp, _ := do(t, "GET", "/", bearer(metered))
		if want := map[bool]int{true: 200, false: 429}[i == 0]; resp.StatusCode != want {
			t.Fatalf("request %d of the metered key: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	if e := check(EventRateLimited, 1, metered.Record["id"].(string)); e.Data["limit"] != "1/1h" {
		t.Errorf("rate_limited: limit %v", e.Data["limit"])
	}
	var listed []keyops.Listed
	resp, body = adminCall(t, "GET", "/apikey/keys", "")
	adminAnswer(t, resp, body, 200, &listed)
}
