package redis

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// streamText is every field of the audit stream of rs, as one string.
func streamText(t *testing.T, r *testredis.Server, rs Records) string {
	t.Helper()
	msgs, err := r.Do("XRANGE", rs.keys.Audit, "-", "+").AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, m := range msgs {
		for k, v := range m.FieldValues {
			b.WriteString(k + "=" + v + "\n")
		}
	}
	return b.String()
}

func readAudit(t *testing.T, rs Records, f audit.Filter) []audit.Entry {
	t.Helper()
	entries, err := rs.ReadAudit(f)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// Every operation on a Redis key set adds one entry to its audit stream,
// with who and what, never a key or a hash; import adds one per key.
func TestRedisAuditEveryAction(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "aud:")
	who := audit.Who{Via: audit.ViaCommand, User: "bob", Host: "ops-2"}
	st := stores.By(rs, who)
	now := time.Now()

	imported := []testkeys.Key{testkeys.New("imp 1", nil), testkeys.New("imp 2", nil)}
	if res, err := keyops.Import(testkeys.WriteKeys(t, "", imported...), st, keyops.ImportOptions{}); err != nil || res.Added != 2 {
		t.Fatalf("import: %+v %v", res, err)
	}
	raw, rec, err := keyops.Create(st, keyops.AddOptions{Label: "svc"}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.SetRateLimits(st, rec.ID, []keyset.RateLimit{{Requests: 5, Window: "1s"}}, nil); err != nil {
		t.Fatal(err)
	}
	rot, err := keyops.Rotate(st, keyops.RotateOptions{Ref: rec.ID, Grace: "0"}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.Revoke(st, rot.Added.KeyPrefix, now, nil); err != nil {
		t.Fatal(err)
	}

	text := streamText(t, r, rs)
	for _, s := range []string{raw, rot.Raw, imported[0].Raw, imported[1].Raw} {
		for _, secret := range []string{s, keyset.HashKey(s), testkeys.SecretPart(s)} {
			if strings.Contains(strings.ToLower(text), strings.ToLower(secret)) {
				t.Errorf("the audit stream holds a key or its hash (%s)", testkeys.Truncate(secret))
			}
		}
	}
	entries := readAudit(t, rs, audit.Filter{})
	want := []struct{ action, id string }{
		{audit.Import, imported[0].ID()}, {audit.Import, imported[1].ID()},
		{audit.Create, rec.ID}, {audit.RateLimits, rec.ID}, {audit.Rotate, rec.ID}, {audit.Revoke, rot.Added.ID},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d:\n%s", len(entries), len(want), text)
	}
	for i, w := range want {
		if e := entries[i]; e.Action != w.action || e.KeyID != w.id || e.Who != who || e.KeyPrefix == "" {
			t.Errorf("entry %d: %+v, want %s of %s", i, e, w.action, w.id)
		}
	}
	if c := entries[4].Changes; c["new_id"] != rot.Added.ID || c["revoked_at"] != *rot.OldRevokedAt {
		t.Errorf("rotate: %v", c)
	}
	if got := readAudit(t, rs, audit.Filter{Key: rot.Added.ID}); len(got) != 2 {
		t.Errorf("--key new id: %d entries, want 2 (rotate, revoke)", len(got))
	}
	if got := readAudit(t, rs, audit.Filter{Key: imported[1].Rec().KeyPrefix}); len(got) != 1 || got[0].Action != audit.Import {
		t.Errorf("--key imported key_prefix: %+v", got)
	}
	if got := readAudit(t, rs, audit.Filter{Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("since an hour ahead: %d entries", len(got))
	}
	if got := readAudit(t, rs, audit.Filter{Since: now.Add(-time.Minute)}); len(got) != len(want) {
		t.Errorf("since a minute ago: %d entries", len(got))
	}
}

// A change whose entry cannot be added to the stream (its key holds a
// string) is not made: neither the records nor the version move.
func TestRedisAuditUnwritable(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "audbad:")
	_, rec := teststores.AddKey(t, rs, "first")
	if err := r.Do("DEL", rs.keys.Audit).Error(); err != nil {
		t.Fatal(err)
	}
	if err := r.Do("SET", rs.keys.Audit, "not a stream").Error(); err != nil {
		t.Fatal(err)
	}
	version, _ := r.Do("GET", rs.keys.Version).ToString()
	if _, _, err := keyops.Create(rs, keyops.AddOptions{Label: "second"}, time.Now(), nil); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("add: %v, want WRONGTYPE", err)
	}
	if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err == nil {
		t.Fatal("revoke made without its audit entry")
	}
	records, _, err := rs.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 1 || records[0].RevokedAt != nil {
		t.Errorf("the key set changed: %d records, revoked_at %v", len(records), records[0].RevokedAt)
	}
	if now, _ := r.Do("GET", rs.keys.Version).ToString(); now != version {
		t.Errorf("version %s, was %s", now, version)
	}
}

// N changes at once through the admin API: N entries, in the order of the
// key set's change log.
func TestRedisAuditConcurrentAdmin(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "audc:")
	teststores.AddKey(t, rs, "seed")
	s := mustOpenRedisStore(t, r, "audc:")
	a := teststores.AdminOver(s)
	const n = 24
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if code, body := adminDo(a, "POST", "/apikey/keys", fmt.Sprintf(`{"label":"c%d"}`, i)); code != http.StatusCreated {
				t.Errorf("add: %d %s", code, body)
			}
		})
	}
	wg.Wait()
	code, body := adminDo(a, "GET", "/apikey/audit", "")
	var entries []audit.Entry
	if code != http.StatusOK || json.Unmarshal([]byte(body), &entries) != nil {
		t.Fatalf("GET /apikey/audit: %d %s", code, body)
	}
	if len(entries) != n+1 {
		t.Fatalf("%d entries, want %d", len(entries), n+1)
	}
	// The change log names the ids of each change, in order.
	msgs, err := r.Do("XRANGE", rs.keys.Log, "-", "+").AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	var logged []string
	for _, m := range msgs {
		var ids []string
		if err := json.Unmarshal([]byte(m.FieldValues["ids"]), &ids); err != nil {
			t.Fatal(err)
		}
		logged = append(logged, ids...)
	}
	if len(logged) != n+1 {
		t.Fatalf("%d changes logged, want %d", len(logged), n+1)
	}
	for i, e := range entries {
		if e.KeyID != logged[i] {
			t.Errorf("entry %d is of %s, the change log's %d of %s", i, e.KeyID, i, logged[i])
		}
		if i > 0 && (e.Who.Via != audit.ViaAdminAPI || e.Who.RemoteAddr == "") {
			t.Errorf("entry %d: who %+v", i, e.Who)
		}
	}
	code, body = adminDo(a, "GET", "/apikey/audit?key="+entries[5].KeyPrefix, "")
	if code != http.StatusOK || strings.Count(body, `"action"`) != 1 {
		t.Errorf("?key=: %d %s", code, body)
	}
}

// The retention the key set holds bounds the stream, for every writer.
func TestRedisAuditRetention(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "audr:")
	if n, err := rs.AuditMaxEntries(); err != nil || n != DefaultAuditMaxEntries {
		t.Fatalf("default: %d %v", n, err)
	}
	if err := rs.SetAuditMaxEntries(10); err != nil {
		t.Fatal(err)
	}
	if n, err := rs.AuditMaxEntries(); err != nil || n != 10 {
		t.Fatalf("set: %d %v", n, err)
	}
	for i := range 300 {
		teststores.AddKey(t, rs, fmt.Sprint(i))
	}
	// MAXLEN ~ trims whole stream nodes (100 entries by default).
	if l, err := r.Do("XLEN", rs.keys.Audit).AsInt64(); err != nil || l >= 250 {
		t.Errorf("XLEN %d (%v) after 300 changes with a retention of 10", l, err)
	}
}

// caddy apikey audit reads the stream and sets its retention (the command
// is registered by commands_test.go's import of the cli package).
func TestRedisAuditCommand(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "audcmd:")
	_, rec := teststores.AddKey(t, rs, "cmd")
	out, _, err := testkeys.RunCommand(t, "", "audit", "--redis", r.URL, "--prefix", "audcmd:", "--key", rec.ID, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var entries []audit.Entry
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 1 || entries[0].KeyID != rec.ID {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	if _, _, err := testkeys.RunCommand(t, "", "audit", "--redis", r.URL, "--prefix", "audcmd:", "--set-max-entries", "5000"); err != nil {
		t.Fatal(err)
	}
	if n, err := rs.AuditMaxEntries(); err != nil || n != 5000 {
		t.Errorf("retention %d %v, want 5000", n, err)
	}
	if _, _, err := testkeys.RunCommand(t, "", "audit", "--redis", r.URL, "--prefix", "audcmd:", "--set-max-entries", "-1"); err == nil {
		t.Error("a negative retention was taken")
	}
}

// The measure on a Redis key set: 10,000 changes through the admin
// API from 4 clients at once leave exactly 10,000 entries, in the order of
// the key set's change log.
func TestRedisAudit10000Changes(t *testing.T) {
	testkeys.Slow(t, "10,000 edits of a Redis key set")
	const clients, total = 4, 10000
	r := testredis.Start(t)
	rs := records(t, r, "aud10k:")
	ids := make([]string, clients)
	for i := range ids {
		_, rec := teststores.AddKey(t, rs, fmt.Sprintf("client %d", i))
		ids[i] = rec.ID
	}
	if err := r.Do("DEL", rs.keys.Audit, rs.keys.Log).Error(); err != nil {
		t.Fatal(err)
	}
	s := mustOpenRedisStore(t, r, "aud10k:")
	a := teststores.AdminOver(s)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for n := 1; n <= total/clients; n++ {
				body := fmt.Sprintf(`{"rate_limits":[{"requests":%d,"window":"1m"}]}`, n)
				if code, out := adminDo(a, "PUT", "/apikey/keys/"+ids[c]+"/rate_limits", body); code != http.StatusOK {
					t.Errorf("client %d, change %d: %d %s", c, n, code, out)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d changes from %d clients in %v (%.0f a second)", total, clients, elapsed.Round(time.Millisecond), total/elapsed.Seconds())
	entries := readAudit(t, rs, audit.Filter{})
	if len(entries) != total {
		t.Fatalf("%d entries, want %d", len(entries), total)
	}
	msgs, err := r.Do("XRANGE", rs.keys.Log, "-", "+").AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != total {
		t.Fatalf("%d changes logged, want %d", len(msgs), total)
	}
	for i, m := range msgs {
		var logged []string
		if err := json.Unmarshal([]byte(m.FieldValues["ids"]), &logged); err != nil || len(logged) != 1 {
			t.Fatalf("log entry %d: %v", i, m.FieldValues)
		}
		if entries[i].KeyID != logged[0] {
			t.Fatalf("entry %d is of %s, change %d of %s", i, entries[i].KeyID, i, logged[0])
		}
	}
}

// A quota set and a grant are in the audit stream, after the key's
// creation, and the grant is in the key's quota state.
func TestRedisAuditQuotaGrant(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "audq:")
	who := audit.Who{Via: audit.ViaCommand, User: "bob", Host: "ops-2"}
	st := stores.By(rs, who)
	_, rec, err := keyops.Create(st, keyops.AddOptions{Label: "metered"}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.SetQuota(st, rec.ID, &keyset.QuotaSpec{Requests: 100, Period: "month"}, nil); err != nil {
		t.Fatal(err)
	}
	g, err := keyops.GrantQuota(rs, rec.ID, 25, who, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if g.State.Granted != 25 {
		t.Errorf("grant: %+v", g)
	}
	var actions []string
	for _, e := range readAudit(t, rs, audit.Filter{Key: rec.ID}) {
		actions = append(actions, e.Action)
	}
	if strings.Join(actions, " ") != "create quota quota" {
		t.Errorf("the key's audit entries: %v, want create, quota (set), quota (grant)", actions)
	}
}

// The Redis store's records keep quota state and usage counts, and write
// a grant's audit entry.
var (
	_ stores.QuotaStore  = Records{}
	_ stores.AuditWriter = Records{}
	_ usagecount.Reader  = Records{}
)
