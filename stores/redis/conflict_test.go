package redis

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
)

// Changes conflict only when they touch the same records: a revoke is
// never starved by adds of other keys, and a conflict that remains is a
// 409 with a clear message, never a 500.

// adminDo is call, safe from any goroutine: it reports, it does not stop.
func adminDo(a *admin.API, method, target, body string) (int, string) {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	_ = a.Routes()[0].Handler.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// seedKeys imports n keys into rs at once, and returns them.
func seedKeys(t testing.TB, rs stores.RecordStore, n int) []testkeys.Key {
	t.Helper()
	keys := make([]testkeys.Key, n)
	for i := range keys {
		keys[i] = testkeys.New(fmt.Sprintf("k%d", i), nil)
	}
	if res, err := keyops.Import(testkeys.WriteKeys(t, "", keys...), rs, keyops.ImportOptions{Waiting: nil}); err != nil || res.Added != n {
		t.Fatalf("import: %+v, %v", res, err)
	}
	return keys
}

// meddlingStore is a live store whose record store lets another writer in
// between each read and write of an edit.
type meddlingStore struct {
	*live.Set
	meddle func()
}

func (m meddlingStore) Records() stores.RecordStore {
	return meddlingRecords{m.Set.Records(), m.meddle}
}

type meddlingRecords struct {
	stores.RecordStore
	meddle func()
}

func (m meddlingRecords) Edit(e stores.Edit) error {
	edit := e.Change
	e.Change = func(doc *keyfile.Doc) error {
		m.meddle()
		return edit(doc)
	}
	return m.RecordStore.Edit(e)
}
