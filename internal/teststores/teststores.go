// Package teststores holds what the tests of several packages share to
// run stores and the admin API over them: a file store provisioned as a
// handler's config does, and calls to the admin API in this process.
package teststores

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// StartFileStore provisions a file store on the key file at path, as a
// handler's config does (usage_interval and reload_interval as given:
// 0 for the default, negative for off), released when the test ends.
func StartFileStore(t testing.TB, path string, usage, reload time.Duration) *filestore.Store {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	s := &filestore.Store{Path: path, UsageInterval: caddy.Duration(usage), ReloadInterval: caddy.Duration(reload)}
	if err := s.Provision(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Cleanup(); cancel() })
	return s
}

// Live returns the store in use whose name is name, as the admin API
// finds it.
func Live(t testing.TB, name string) stores.Live {
	t.Helper()
	for _, s := range stores.InUse() {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no store %s in use", name)
	return nil
}

// AdminOver is the admin API over the stores live, alone.
func AdminOver(live ...stores.Live) *admin.API {
	return admin.New(zap.NewNop(), func() []stores.Live { return live }, time.Now)
}

// Call sends method target with body (none if "") to a, and returns the
// response and its body.
func Call(t testing.TB, a *admin.API, method, target, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	w := httptest.NewRecorder()
	if err := a.Routes()[0].Handler.ServeHTTP(w, r); err != nil {
		t.Fatal(err)
	}
	return w.Result(), w.Body.String()
}

// WantRefusal checks an admin API refusal: its status, code, and that its
// message says each of want.
func WantRefusal(t testing.TB, resp *http.Response, body string, status int, code string, want ...string) string {
	t.Helper()
	msg := testkeys.AssertRefusal(t, resp, body, status, code, "")
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message does not say %q: %q", w, msg)
		}
	}
	return msg
}

// AddKey adds a key labelled label to st and returns the raw key and its
// record.
func AddKey(t testing.TB, st stores.RecordStore, label string) (string, keyset.Record) {
	t.Helper()
	raw, rec, err := keyops.Create(st, keyops.AddOptions{Label: label}, time.Now(), nil)
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	return raw, rec
}
