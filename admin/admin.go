package admin

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(API{})
}

// API is the admin API of the key stores in use (module
// admin.api.apikey): routes under /apikey/ on Caddy's admin endpoint that
// list the stores and their keys, and create, revoke and rotate keys while
// Caddy runs. Its writes take the path of `caddy apikey` (the recordStore:
// locked, merged with every other writer), and each change is in force on
// this server before the answer. New keys are made in the key_format of
// the store's handlers (KeyFormat).
type API struct {
	logger  *zap.Logger
	routes  *http.ServeMux                       // the API's routes (newMux)
	stores  func() []stores.Live                 // the stores in use: stores.InUse
	formats func(store string) *keyformat.Format // the key format of a store's handlers: KeyFormat
	now     func() time.Time
	emit    func(name string, data map[string]any) // to Caddy's events app; nil: none (see useEvents)
}

// New returns the API over the stores that inUse returns, as Provision
// makes it over the stores in use in this process, for a host other than
// Caddy's admin endpoint.
func New(logger *zap.Logger, inUse func() []stores.Live, now func() time.Time) *API {
	a := &API{logger: logger, stores: inUse, formats: KeyFormat, now: now}
	a.routes = a.newMux()
	return a
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.apikey",
		New: func() caddy.Module { return new(API) },
	}
}

// Provision sets the API up on the stores of this process. Caddy
// provisions admin routers in the config's context, not a module's: the
// logger is asked for by module, to be named admin.api.apikey.
func (a *API) Provision(ctx caddy.Context) error {
	a.logger, a.stores, a.formats, a.now = ctx.Logger(a), stores.InUse, KeyFormat, time.Now
	a.routes = a.newMux()
	a.useEvents(ctx)
	return nil
}

// keyFormats holds the key formats of the handlers in use, by the name of
// their store (stores.Live.Name), in the order they were provisioned.
var keyFormats = struct {
	sync.Mutex
	byStore map[string][]*formatUse
}{byStore: make(map[string][]*formatUse)}

// formatUse is one handler's key format; f is nil for the default format.
type formatUse struct{ f *keyformat.Format }

// UseKeyFormat notes that a handler serving from the store named store
// takes keys in format f (its key_format; nil for the default format),
// until release is called (the handler's Cleanup). The admin API makes
// keys on a store in the format of the handler provisioned last among
// those in use on it (KeyFormat): a config reload's handlers are
// provisioned before the old config's are cleaned up, so the new config
// has its say at once.
func UseKeyFormat(store string, f *keyformat.Format) (release func()) {
	u := &formatUse{f}
	keyFormats.Lock()
	keyFormats.byStore[store] = append(keyFormats.byStore[store], u)
	keyFormats.Unlock()
	return sync.OnceFunc(func() {
		keyFormats.Lock()
		defer keyFormats.Unlock()
		uses := slices.DeleteFunc(keyFormats.byStore[store], func(v *formatUse) bool { return v == u })
		if len(uses) == 0 {
			delete(keyFormats.byStore, store)
		} else {
			keyFormats.byStore[store] = uses
		}
	})
}

// KeyFormat is the format the admin API makes keys in on the store named
// store: the key_format of the handler provisioned last among those in use
// on it, nil (the default format) if that one has none or if no handler
// says.
func KeyFormat(store string) *keyformat.Format {
	keyFormats.Lock()
	defer keyFormats.Unlock()
	uses := keyFormats.byStore[store]
	if len(uses) == 0 {
		return nil
	}
	return uses[len(uses)-1].f
}

// Routes returns one route for everything under /apikey/: the API routes
// by itself, so that every refusal, a wrong path or method included, is
// its JSON envelope rather than the mux's plain text.
func (a *API) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/apikey/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// maxBodySize bounds a request's body. A create or rotate request takes a
// few hundred bytes.
const maxBodySize = 64 << 10

// operation is one method of one route. ref is the route's {id}, if it
// has one. It returns the status and the body of its answer.
type operation func(w http.ResponseWriter, r *http.Request, ref string) (int, any, error)

// apiError is a refused request: its status, its code and what to say.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "BAD_REQUEST", fmt.Sprintf(format, args...)}
}

// serve answers one request. It returns no error to Caddy, whose error
// body would be {"error": ...}: it writes every answer itself.
func (a *API) serve(w http.ResponseWriter, r *http.Request) error {
	a.routes.ServeHTTP(w, r)
	return nil
}

// routeList names the routes, for the refusal of any other path.
const routeList = "GET /apikey/stores, GET and POST /apikey/keys, POST /apikey/keys/{id}/revoke, POST /apikey/keys/{id}/rotate, PUT and DELETE /apikey/keys/{id}/rate_limits, PUT and DELETE /apikey/keys/{id}/quota, POST /apikey/keys/{id}/quota/grant, GET /apikey/keys/{id}/usage, GET /apikey/audit"

// newMux routes the API's paths to their operations by method. ServeMux
// matches a path segment by segment, each unescaped, so that an id holding
// a slash can be named (as %2F). The methods are matched here rather than
// in the patterns, and any other path is answered here too, so that every
// refusal is the API's JSON envelope rather than the mux's plain text.
func (a *API) newMux() *http.ServeMux {
	m := http.NewServeMux()
	for pattern, ops := range map[string]map[string]operation{
		"/apikey/stores":                {http.MethodGet: a.listStores},
		"/apikey/audit":                 {http.MethodGet: a.readAudit},
		"/apikey/keys":                  {http.MethodGet: a.listKeys, http.MethodPost: a.createKey},
		"/apikey/keys/{id}/revoke":      {http.MethodPost: a.revokeKey},
		"/apikey/keys/{id}/rotate":      {http.MethodPost: a.rotateKey},
		"/apikey/keys/{id}/rate_limits": {http.MethodPut: a.setRateLimits, http.MethodDelete: a.setRateLimits},
		"/apikey/keys/{id}/quota":       {http.MethodPut: a.setQuota, http.MethodDelete: a.setQuota},
		"/apikey/keys/{id}/quota/grant": {http.MethodPost: a.grantQuota},
		"/apikey/keys/{id}/usage":       {http.MethodGet: a.readUsage},
		"/":                             nil,
	} {
		m.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			a.answer(w, r, ops)
		})
	}
	return m
}

// answer runs the operation of ops that the request's method names, and
// writes its answer or its refusal.
func (a *API) answer(w http.ResponseWriter, r *http.Request, ops map[string]operation) {
	status, body, err := a.run(w, r, ops)
	if err != nil {
		a.refuse(w, err)
		return
	}
	// A list without items is null, as caddy apikey list --json writes it.
	data, err := jsonv2.Marshal(body, jsonv2.FormatNilSliceAsNull(true), jsonv2.FormatNilMapAsNull(true))
	if err != nil { // cannot happen: the answers are plain data
		a.refuse(w, err)
		return
	}
	writeBody(w, status, data)
}

func (a *API) run(w http.ResponseWriter, r *http.Request, ops map[string]operation) (int, any, error) {
	if ops == nil {
		return 0, nil, &apiError{http.StatusNotFound, "NOT_FOUND", "no such route; the routes are " + routeList}
	}
	op := ops[r.Method]
	if op == nil {
		allow := strings.Join(slices.Sorted(maps.Keys(ops)), ", ")
		w.Header().Set("Allow", allow)
		return 0, nil, &apiError{http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", fmt.Sprintf("%s %s is not allowed; use %s", r.Method, r.URL.Path, allow)}
	}
	return op(w, r, r.PathValue("id"))
}

// writeBody writes an answer whose JSON body is data. Answers are never
// cached: the ones that create a key hold it.
func writeBody(w http.ResponseWriter, status int, data []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(data)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}

// refuse writes the refusal that err calls for, in the handler's JSON
// envelope: a refusal of what the request names or asks (keyops.RefError,
// keyops.InputError, apiError) as its code says, an edit that other writers kept
// beating (stores.ErrConflict) as 409 CONFLICT, to be tried again, anything else
// as the server's failure, logged.
func (a *API) refuse(w http.ResponseWriter, err error) {
	var ae *apiError
	var re *keyops.RefError
	var ie keyops.InputError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &re) && re.Code == "KEY_NOT_FOUND":
		ae = &apiError{http.StatusNotFound, re.Code, re.Msg}
	case errors.As(err, &re):
		ae = &apiError{http.StatusConflict, re.Code, re.Msg}
	case errors.As(err, &ie):
		ae = badRequest("%s", ie)
	case errors.Is(err, stores.ErrConflict):
		ae = &apiError{http.StatusConflict, "CONFLICT", err.Error()}
	case errors.Is(err, keyops.ErrNoQuotaState):
		ae = &apiError{http.StatusNotFound, "NO_QUOTA_STATE", err.Error()}
	case errors.Is(err, keyops.ErrNoUsageCounts):
		ae = &apiError{http.StatusNotFound, "NO_USAGE_COUNTS", err.Error()}
	default:
		a.logger.Error("admin request failed", zap.Error(err))
		ae = &apiError{http.StatusInternalServerError, "INTERNAL_ERROR", err.Error()}
	}
	writeBody(w, ae.status, keyops.ErrorBody(ae.code, ae.message))
}

// storeFailure names the store in an error that is its failure (a key file
// that cannot be read or written, say), and lets a refusal of the request
// pass as it is.
func storeFailure(st stores.Live, err error) error {
	var re *keyops.RefError
	var ie keyops.InputError
	if errors.As(err, &re) || errors.As(err, &ie) || errors.Is(err, keyops.ErrNoQuotaState) || errors.Is(err, keyops.ErrNoUsageCounts) {
		return err
	}
	return fmt.Errorf("key store %s: %w", st.Name(), err)
}

// StoreInfo is a store in use as GET /apikey/stores shows it.
type StoreInfo struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`                 // file, redis
	Path      string    `json:"path,omitempty"`       // a file store's key file
	URL       string    `json:"url,omitempty"`        // a Redis store's server, without its password
	Prefix    string    `json:"prefix,omitempty"`     // a Redis store's key prefix
	KeyFormat string    `json:"key_format,omitempty"` // the prefix of the key format new keys are made in; none for the default format
	Keys      KeyCounts `json:"keys"`
}

// KeyCounts are the keys in force by state, expiry judged now.
type KeyCounts struct {
	Active  int `json:"active"`
	Expired int `json:"expired"`
	Revoked int `json:"revoked"`
}

// storeKind splits a store's name ("file:/etc/caddy/keys.json",
// "redis:redis://10.0.0.5:6379/0#apikey:") into its kind and where its
// keys are.
func storeKind(s stores.Live) (kind, where string) {
	kind, where, _ = strings.Cut(s.Name(), ":")
	return kind, where
}

func (a *API) listStores(http.ResponseWriter, *http.Request, string) (int, any, error) {
	now := a.now()
	out := []StoreInfo{}
	for _, s := range a.stores() {
		info := StoreInfo{Name: s.Name()}
		if f := a.formats(s.Name()); f != nil {
			info.KeyFormat = f.Prefix
		}
		var where string
		switch info.Kind, where = storeKind(s); info.Kind {
		case "file":
			info.Path = where
		case "redis":
			// The URL holds no "#": it has no fragment.
			info.URL, info.Prefix, _ = strings.Cut(where, "#")
		}
		if ks := s.KeySet(); ks != nil {
			n := ks.Counts(now)
			info.Keys = KeyCounts{n[keyset.Active], n[keyset.Expired], n[keyset.Revoked]}
		}
		out = append(out, info)
	}
	return http.StatusOK, out, nil
}

// pickStore returns the store that the request's ?store= names (its name,
// a file store's path, relative to Caddy's working directory as keys_file
// is, or a Redis store's prefix), or the one store in use if it names none.
func (a *API) pickStore(r *http.Request) (stores.Live, error) {
	all := a.stores()
	if len(all) == 0 {
		return nil, &apiError{http.StatusNotFound, "NO_STORE", "no key store is in use: the config in force has no apikey handler"}
	}
	names := make([]string, len(all))
	for i, s := range all {
		names[i] = s.Name()
	}
	choices := strings.Join(names, ", ")
	want := r.URL.Query()["store"]
	switch {
	case len(want) > 1:
		return nil, badRequest("?store= is given %d times; give it once, one of: %s", len(want), choices)
	case len(want) == 0 || want[0] == "":
		if len(all) == 1 {
			return all[0], nil
		}
		return nil, &apiError{http.StatusBadRequest, "AMBIGUOUS_STORE", fmt.Sprintf("%d key stores are in use; name one with ?store=, one of: %s", len(all), choices)}
	}
	path, _ := filepath.Abs(want[0])
	var found []stores.Live
	for _, s := range all {
		if s.Name() == want[0] {
			return s, nil
		}
		switch kind, where := storeKind(s); {
		case kind == "file" && where == path,
			kind == "redis" && strings.HasSuffix(where, "#"+want[0]):
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return nil, &apiError{http.StatusBadRequest, "STORE_NOT_FOUND", fmt.Sprintf("no key store in use is %q; the stores in use are: %s", want[0], choices)}
	case 1:
		return found[0], nil
	}
	return nil, &apiError{http.StatusBadRequest, "AMBIGUOUS_STORE", fmt.Sprintf("%q names %d key stores; give the full name of one of: %s", want[0], len(found), choices)}
}

// existingRecords is a store's records as the admin API writes them: a key
// file that has gone is not made anew. Its server keeps the last keys in
// force; a new file holding one key would replace them all.
// Its edits are made by who, for their audit entries.
type existingRecords struct {
	stores.RecordStore
	who audit.Who
}

func (s existingRecords) Edit(e stores.Edit) error {
	e.Create = false
	e.Who = s.who
	return s.RecordStore.Edit(e)
}

// requester is who made the request r, for the audit log: its remote
// address and, when Caddy's remote admin authenticated it by a client
// certificate, the certificate's subject.
func requester(r *http.Request) audit.Who {
	w := audit.Who{Via: audit.ViaAdminAPI, RemoteAddr: r.RemoteAddr}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		w.Identity = r.TLS.PeerCertificates[0].Subject.String()
	}
	return w
}

// readAudit answers GET /apikey/audit: the entries of the store's audit
// log that ?key= (an id or key_prefix) and ?since= (a time, RFC 3339, or
// a duration before now such as 24h) keep, oldest first.
func (a *API) readAudit(_ http.ResponseWriter, r *http.Request, _ string) (int, any, error) {
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	since, err := audit.ParseSince(q.Get("since"), a.now())
	if err != nil {
		return 0, nil, badRequest("?%v", err)
	}
	reader, ok := st.Records().(stores.AuditReader)
	if !ok {
		return 0, nil, &apiError{http.StatusNotFound, "NO_AUDIT_LOG", fmt.Sprintf("the key store %s keeps no audit log", st.Name())}
	}
	entries, err := reader.ReadAudit(audit.Filter{Key: strings.TrimSpace(q.Get("key")), Since: since})
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	if entries == nil {
		entries = []audit.Entry{}
	}
	return http.StatusOK, entries, nil
}

// waiting logs that a write waits for another writer of st (a usage write
// of a large key file, or a `caddy apikey` command).
func (a *API) waiting(st stores.Live) func() {
	return func() {
		a.logger.Info("waiting for another writer of the key store", zap.String("store", st.Name()))
	}
}

// refresh puts a change to st in force on this server. The change is made
// whatever comes of it: a failure is said in the answer ("warning") and
// logged, not answered as an error that would have the client try again.
func (a *API) refresh(st stores.Live) string {
	if err := st.Refresh(); err != nil {
		a.logger.Warn("a change made through the admin API is saved but not yet in force on this server",
			zap.String("store", st.Name()), zap.Error(err))
		return "the change is saved but not yet in force on this server: " + err.Error()
	}
	return ""
}

// listed is rec as `caddy apikey list --json` shows it, its status at now.
func listed(rec keyset.Record, now time.Time) keyops.Listed {
	k, _, _ := keyset.FromRecord(&rec) // cannot fail: the record was checked as it was written
	return keyops.NewListed(&rec, k, now)
}

func (a *API) listKeys(_ http.ResponseWriter, r *http.Request, _ string) (int, any, error) {
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	flush(st)
	keys, err := keyops.List(st.Records(), a.now())
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	return http.StatusOK, keys, nil
}

// CreateRequest is the body of POST /apikey/keys.
type CreateRequest struct {
	Label   string   `json:"label"`
	Scopes  []string `json:"scopes"`
	Expires string   `json:"expires"` // a duration from now or a time; "" for never
}

// NewKeyAnswer is the answer to a create or a rotate: the raw key, shown
// this once, and its record as listed; for a rotate, the old key's record
// after the keyops.Rotation.
type NewKeyAnswer struct {
	Key string `json:"key"`
	keyops.Listed
	Replaced *keyops.Listed `json:"replaced,omitempty"`
	Warning  string         `json:"warning,omitempty"`
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request, _ string) (int, any, error) {
	var req CreateRequest
	if err := readBody(w, r, &req, "the members are label, scopes and expires"); err != nil {
		return 0, nil, err
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	now := a.now()
	raw, rec, err := keyops.Create(existingRecords{st.Records(), requester(r)}, keyops.AddOptions{Label: req.Label, Scopes: req.Scopes, Expires: req.Expires, Format: a.formats(st.Name())}, now, a.waiting(st))
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	a.logger.Info("key created", zap.String("store", st.Name()),
		zap.String("key_id", rec.ID), zap.String("key_label", rec.Label), zap.String("key_prefix", rec.KeyPrefix))
	a.event(EventCreated, st, rec, r, nil)
	return http.StatusCreated, NewKeyAnswer{Key: raw, Listed: listed(rec, now), Warning: a.refresh(st)}, nil
}

// RevokeAnswer is the answer to a revoke: the key's record as listed after
// it, and whether it was revoked before (then nothing changed).
type RevokeAnswer struct {
	keyops.Listed
	AlreadyRevoked bool   `json:"already_revoked"`
	Warning        string `json:"warning,omitempty"`
}

func (a *API) revokeKey(w http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	if err := readBody(w, r, &struct{}{}, "revoke takes none; send no body, or {}"); err != nil {
		return 0, nil, err
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	now := a.now()
	rec, already, err := keyops.Revoke(existingRecords{st.Records(), requester(r)}, ref, now, a.waiting(st))
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	answer := RevokeAnswer{AlreadyRevoked: already != ""}
	if !answer.AlreadyRevoked {
		// rec is the record as it was, before the revocation set this.
		at := keyset.FormatTimestamp(now)
		rec.RevokedAt = &at
		answer.Warning = a.refresh(st)
		a.logger.Info("key revoked", zap.String("store", st.Name()),
			zap.String("key_id", rec.ID), zap.String("key_label", rec.Label), zap.String("key_prefix", rec.KeyPrefix))
		a.event(EventRevoked, st, rec, r, nil)
	}
	answer.Listed = listed(rec, now)
	return http.StatusOK, answer, nil
}

// RateLimitsRequest is the body of PUT /apikey/keys/{id}/rate_limits: the
// key's own rate limits ([] for none at all). DELETE drops them: the
// handlers' defaults apply to the key again.
type RateLimitsRequest struct {
	RateLimits *[]keyset.RateLimit `json:"rate_limits"`
}

func (a *API) setRateLimits(w http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	var limits []keyset.RateLimit
	if r.Method == http.MethodPut {
		var req RateLimitsRequest
		if err := readBody(w, r, &req, `the member is rate_limits, a list such as [{"requests": 100, "window": "1m"}]`); err != nil {
			return 0, nil, err
		}
		if req.RateLimits == nil {
			return 0, nil, badRequest(`give rate_limits, a list such as [{"requests": 100, "window": "1m"}] ([] for no limit); DELETE drops the key's own limits`)
		}
		limits = *req.RateLimits
		if limits == nil {
			limits = []keyset.RateLimit{}
		}
	} else if err := readBody(w, r, &struct{}{}, "DELETE takes none; send no body, or {}"); err != nil {
		return 0, nil, err
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	rec, changed, err := keyops.SetRateLimits(existingRecords{st.Records(), requester(r)}, ref, limits, a.waiting(st))
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	answer := RateLimitsAnswer{Listed: listed(rec, a.now()), Changed: changed}
	if changed {
		answer.Warning = a.refresh(st)
		a.logger.Info("key rate limits set", zap.String("store", st.Name()),
			zap.String("key_id", rec.ID), zap.String("key_label", rec.Label), zap.String("key_prefix", rec.KeyPrefix), zap.Int("rate_limits", len(limits)), zap.Bool("own", limits != nil))
	}
	return http.StatusOK, answer, nil
}

// RateLimitsAnswer is the answer of PUT and DELETE
// /apikey/keys/{id}/rate_limits: the key as it is now.
type RateLimitsAnswer struct {
	keyops.Listed
	Changed bool   `json:"changed"`
	Warning string `json:"warning,omitempty"`
}

// RotateRequest is the body of POST /apikey/keys/{id}/rotate, which may be
// empty.
type RotateRequest struct {
	Grace   string `json:"grace"`   // how long the old key stays valid; "" for keyops.DefaultGrace
	Expires string `json:"expires"` // the new key's expiry; "" for never
}

func (a *API) rotateKey(w http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	var req RotateRequest
	if err := readBody(w, r, &req, "the members are grace and expires"); err != nil {
		return 0, nil, err
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	now := a.now()
	rot, err := keyops.Rotate(existingRecords{st.Records(), requester(r)}, keyops.RotateOptions{Ref: ref, Grace: req.Grace, Expires: req.Expires, Format: a.formats(st.Name())}, now, a.waiting(st))
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	a.logger.Info("key rotated", zap.String("store", st.Name()),
		zap.String("key_id", rot.Added.ID), zap.String("key_label", rot.Added.Label), zap.String("key_prefix", rot.Added.KeyPrefix),
		zap.String("old_key_id", rot.Old.ID), zap.String("old_key_prefix", rot.Old.KeyPrefix), zap.String("old_key_outcome", rot.OldNote))
	a.event(EventRotated, st, rot.Added, r, map[string]any{"old_id": rot.Old.ID, "old_key_prefix": rot.Old.KeyPrefix})
	old := rot.Old
	old.ExpiresAt, old.RevokedAt = rot.OldExpiresAt, rot.OldRevokedAt
	replaced := listed(old, now)
	return http.StatusCreated, NewKeyAnswer{Key: rot.Raw, Listed: listed(rot.Added, now), Replaced: &replaced, Warning: a.refresh(st)}, nil
}

// readBody decodes the request's body, a JSON object, into v: only the
// members v has (named exactly, each once), nothing after the object, at
// most maxBodySize bytes. An empty body leaves v as it is. members says
// what v's members are, for the refusal of another.
func readBody(w http.ResponseWriter, r *http.Request, v any, members string) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodySize))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return &apiError{http.StatusRequestEntityTooLarge, "BODY_TOO_LARGE", fmt.Sprintf("the body is larger than %d bytes", maxBodySize)}
	case err != nil:
		return badRequest("reading the body: %v", err)
	}
	body := strings.Trim(string(data), " \t\r\n") // JSON's white space
	switch {
	case body == "":
		return nil
	case body[0] != '{':
		return badRequest("the body must be a JSON object (%s)", members)
	}
	if err := jsonv2.Unmarshal([]byte(body), v, jsonv2.RejectUnknownMembers(true)); err != nil {
		return badRequest("%s", jsonProblem(err, members))
	}
	return nil
}

// memberTypes says what each member of a request body holds.
var memberTypes = map[string]string{
	"label":          "a string",
	"scopes":         "a list of strings",
	"expires":        "a string: a duration from now such as 90d, or a time such as 2027-01-31T00:00:00Z",
	"grace":          "a string: a duration such as 24h, or 0",
	"rate_limits":    `a list of limits such as [{"requests": 100, "window": "1m"}]`,
	"quota":          `an object such as {"requests": 10000, "period": "month"}`,
	"quota/requests": "a whole number",
	"quota/period":   `a string: "day", "month" or "none"`,
	"units":          "a whole number of units (negative to take units back)",
}

// jsonProblem says what is wrong with a body that does not decode, in the
// request's terms rather than Go's.
func jsonProblem(err error, members string) string {
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	switch {
	case errors.As(err, &syn):
		return "the body is not valid JSON: " + strings.TrimPrefix(syn.Error(), "jsontext: ")
	case errors.As(err, &sem) && errors.Is(sem.Err, jsonv2.ErrUnknownName):
		return fmt.Sprintf("unknown member %q: %s", sem.JSONPointer.LastToken(), members)
	case errors.As(err, &sem):
		path := strings.TrimPrefix(string(sem.JSONPointer), "/")
		if what, ok := memberTypes[path]; ok && strings.Contains(path, "/") {
			// A member of a member: {"quota": {"requests": "5"}}.
			outer, inner, _ := strings.Cut(path, "/")
			return fmt.Sprintf("%q of %q must be %s, not a JSON %s", inner, outer, what, keyfile.KindName(sem.JSONKind))
		}
		name, _, _ := strings.Cut(path, "/")
		return fmt.Sprintf("%q must be %s, not a JSON %s", name, memberTypes[name], keyfile.KindName(sem.JSONKind))
	}
	return err.Error()
}

// Interface guards
var (
	_ caddy.AdminRouter = (*API)(nil)
	_ caddy.Provisioner = (*API)(nil)
)
