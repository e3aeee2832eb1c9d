// Package apikey is a Caddy HTTP handler (module http.handlers.apikey,
// directive apikey) that admits only requests carrying a valid API key.
// Keys are checked against the SHA-256 hashes kept in a JSON key file whose
// records follow those of SoulSync's API-key module, so that files written
// by that application keep working; raw keys are never stored.
//
// It is a handler and not a caddyauth provider because it answers refusals
// itself, with JSON bodies and their codes (400 AMBIGUOUS_KEY, 401
// AUTH_REQUIRED, 403 INVALID_KEY, KEY_EXPIRED or INSUFFICIENT_SCOPE), where
// caddyauth answers every failure with a bare 401.
//
// The request path is ServeHTTP in module.go. It finds the key a request
// presents with package internal/credential and looks it up in a Store
// (store.go), a guest module: the key file's (package stores/file, its
// format in package keyfile) or a Redis key set's (package stores/redis),
// both holding the whole key set in memory (package keyset). The commands
// (package cli) and the admin API (package admin) edit stores through
// package keyops; the Prometheus metrics are in metrics.go. What the
// handlers of one key set share (the rate limiter, the quota meter, the
// usage counts, the events) is package internal/shared's.
package apikey

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/configcheck"
	"github.com/caddy-apikey/caddy-apikey/internal/credential"
	"github.com/caddy-apikey/caddy-apikey/internal/keyevents"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

func init() {
	caddy.RegisterModule(Handler{})
	admin.FlushUsageCounts = FlushUsage
}

// Handler admits only requests that carry a valid API key, and rejects the
// others with a JSON error: 401 AUTH_REQUIRED when no key is sent, 403
// INVALID_KEY when the key is unknown or revoked, 403 KEY_EXPIRED when it is
// past its expiry, 403 INSUFFICIENT_SCOPE when it lacks a required scope, and
// 400 AMBIGUOUS_KEY when one source carries several different keys.
//
// On success, the request goes on to the next handler with these
// placeholders set: `{http.auth.user.id}` (the key's id, which Caddy's access
// log shows as `user_id`), `{http.auth.user.label}`,
// `{http.auth.user.key_prefix}` and `{http.auth.user.scopes}` (comma-joined).
//
// The keys come from a store: a key file (keys_file), watched so that
// changes take effect within reload_interval, or a Redis key set shared by
// a fleet, whose changes take effect within milliseconds. Either way the
// whole key set is in memory and a request never waits on the store.
// Last-used times are written back in the background, at most once per key
// per usage_interval.
type Handler struct {
	// The key store: a module in the http.handlers.apikey.stores
	// namespace, named by its "backend" member ("file", "redis"). Give
	// either store or keys_file.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.apikey.stores inline_key=backend"`

	// Path to a JSON key file: the shorthand for a file store, with the
	// handler's usage_interval and reload_interval. Relative paths are
	// relative to Caddy's working directory.
	KeysFile string `json:"keys_file,omitempty"`

	// Request headers to read the key from, in order; the first one that
	// carries a key wins, before the query parameter. Default: the
	// `Authorization` header with the `Bearer` scheme, then `X-API-Key`.
	// An empty list reads no header.
	Headers []HeaderSource `json:"headers,omitempty"`

	// Query parameter to read the key from, after the headers. Default:
	// `api_key`. An empty string reads no query parameter.
	Query *string `json:"query,omitempty"`

	// Realm named in the WWW-Authenticate header of 401 responses.
	// Default: `restricted`.
	Realm string `json:"realm,omitempty"`

	// Scopes the key must hold, all of them, for the request to pass.
	Scopes []string `json:"scopes,omitempty"`

	// Let requests without any key pass, unauthenticated and without
	// placeholders. A key that is sent must still be valid.
	Optional bool `json:"optional,omitempty"`

	// Remove the key from the request before the next handler, so an
	// upstream never sees it: every value of the enabled headers that
	// carries a key, and every query pair that an upstream could read as
	// the query parameter (separated by "&" or ";", its name escaped in
	// any way, in any case, or as PHP mangles names: `api.key`,
	// `api_key[]`). Header values without a key (e.g. `Authorization:
	// Basic ...`) and the other query pairs stay as they were. A request
	// let through without a key (optional) loses those query pairs too.
	HideCredentials bool `json:"hide_credentials,omitempty"`

	// Instead of writing a JSON error, return the failure to Caddy so the
	// site's `handle_errors` routes answer it. They see the status in
	// `{http.error.status_code}`, the message in `{http.error.message}`
	// and the error code (e.g. `INVALID_KEY`) in
	// `{http.auth.apikey.error_code}`.
	HandleErrors bool `json:"handle_errors,omitempty"`

	// How often at most a key's last-used time is written to the key
	// file. Default: 15m. A negative value turns usage tracking off.
	UsageInterval caddy.Duration `json:"usage_interval,omitempty"`

	// How often the key file is checked for changes. Default: 1s. A
	// negative value turns watching off; the file is then read on config
	// loads only.
	ReloadInterval caddy.Duration `json:"reload_interval,omitempty"`

	// The checksummed key format, opted in by its prefix, e.g.
	// {"prefix": "acme_live_"}: keys are the prefix, 30 random base62
	// characters and 6 of their CRC32 (GitHub's layout), so that a
	// secret scanner finds them without false alarms. A key sent with
	// this prefix that is not well formed (a typo, a key cut short) is
	// refused as INVALID_KEY before any hashing or lookup, and counted as
	// malformed; keys without the prefix (the default format's) are
	// looked up as ever, so both kinds work side by side. The admin API
	// makes keys in this format for this handler's store.
	KeyFormat *keyformat.Format `json:"key_format,omitempty"`

	// The rate limits of keys whose record has no rate_limits member,
	// e.g. [{"requests": 100, "window": "1m"}]: a key may make that many
	// requests in any window of that length (windows as Caddy durations,
	// whole seconds). A key's own rate_limits replace them (an empty list:
	// none for that key). A request over a limit is refused with 429
	// RATE_LIMITED and Retry-After. A key's count is kept per key store:
	// the routes that guard with one key file or Redis key set count
	// together, and with a Redis key set, every server of the fleet.
	RateLimits []keyset.RateLimit `json:"rate_limits,omitempty"`

	// Enforce no rate limit on this route, neither the defaults nor the
	// keys' own.
	RateLimitsOff bool `json:"rate_limits_off,omitempty"`

	// Leave the rate-limit headers off admitted and refused responses
	// (RateLimit-Policy, RateLimit, X-RateLimit-Limit, -Remaining and
	// -Reset). A 429 always carries Retry-After.
	RateLimitHeadersOff bool `json:"rate_limit_headers_off,omitempty"`

	// Units of a key's quota that a request on this route spends
	// (default 1), so that an expensive endpoint spends more of it. Keys
	// without a quota are not metered.
	Cost int64 `json:"cost,omitempty"`

	// Spend and enforce no quota on this route (e.g. a status endpoint).
	QuotasOff bool `json:"quotas_off,omitempty"`

	// Add the quota headers to admitted responses of keys with a quota:
	// X-Quota-Limit, X-Quota-Remaining and X-Quota-Reset (seconds until
	// the period ends; left out for a fixed allowance). Off by default;
	// the {http.auth.apikey.quota.*} placeholders are always set.
	QuotaHeaders bool `json:"quota_headers,omitempty"`

	// What a server does with a key whose quota it cannot spend because
	// the quota state (the key file's state file, Redis) cannot be
	// reached and it holds no units of it: "refuse" (the default: 503
	// QUOTA_UNAVAILABLE, never beyond the quota) or "admit" (and charge
	// the requests to the quota once the state is back, which may take
	// the key past its allowance).
	QuotaOutage string `json:"quota_outage,omitempty"`

	// How long the store keeps each key's usage counts (requests per
	// hour by result). Default: 35 days (35d). It is one setting per key
	// store: the handler loaded last that counts sets it for every route
	// of the store. A negative value turns the counts off for this route.
	UsageRetention caddy.Duration `json:"usage_retention,omitempty"`

	// How long before a key's expires_at the apikey_expiring event is
	// emitted through Caddy's events app (when one is configured).
	// Default: 7 days. A negative value turns it off.
	ExpiryNotice caddy.Duration `json:"expiry_notice,omitempty"`

	store   Store              // the key set and usage tracking: the store module's
	sources credential.Sources // where the key is read from: Headers and Query
	logger  *zap.Logger
	results *requestCounters // requests_total by result; nil: not counted

	releaseFormat func() // ends this handler's say in the admin API's key format

	limits limiting            // the rate limits: the defaults and the key set's limiter
	quota  metering            // the quota: the route's cost and the key set's meter
	counts *usagecount.Flusher // the key set's usage counts; nil: not kept
	events *keyevents.Events   // the events about the key set's keys

	// Refusals, built once by setup.
	authRequired  *refusal
	invalidKey    *refusal
	revokedKey    *refusal // answered as invalidKey, counted apart
	malformedKey  *refusal // INVALID_KEY too, for a key with KeyFormat's prefix that fails its check
	keyExpired    *refusal
	ambiguousKey  *refusal
	scopeRefusals []*refusal // one for each of Scopes
	rateLimited   *refusal
	quotaExceeded *refusal
	quotaDown     *refusal
	challenge     string // the WWW-Authenticate value of a 401
}

// HeaderSource is a request header that may carry the key.
type HeaderSource struct {
	// The header field name, e.g. `Authorization` or `X-API-Key`.
	Name string `json:"name"`
	// If set, the header's value must start with this authentication
	// scheme (compared without regard to case), e.g. `Bearer`; the key is
	// what follows it. If empty, the whole value is the key.
	Scheme string `json:"scheme,omitempty"`
}

// DefaultQueryParam is the query parameter read when none is configured.
const DefaultQueryParam = "api_key"

// defaultHeaders are the headers read when none are configured.
var defaultHeaders = []HeaderSource{
	{Name: "Authorization", Scheme: "Bearer"},
	{Name: "X-API-Key"},
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.apikey",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler and loads its store. Stores are shared:
// handlers that use the same key file, or the same Redis key set, share
// one key set in memory and one usage writer.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.setup(); err != nil {
		return err
	}
	// The http app provisions a server's handlers with the server in the
	// context, its header allowlists already set.
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	names := make([]string, len(h.Headers))
	for i, hs := range h.Headers {
		names[i] = hs.Name
	}
	configcheck.WarnDroppedHeaders(h.logger, names, srv)
	configcheck.WarnShadowedAuth(h.logger, srv)
	if h.KeysFile != "" {
		h.StoreRaw = caddyconfig.JSONModuleObject(filestore.Store{
			Path:           h.KeysFile,
			UsageInterval:  h.UsageInterval,
			ReloadInterval: h.ReloadInterval,
		}, "backend", "file", nil)
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return fmt.Errorf("loading the key store: %v", err)
	}
	if h.store = mod.(Store); h.KeysFile != "" {
		h.StoreRaw = nil // it was the shorthand's
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		h.logger.Warn("cannot register the apikey metrics; they will not be on /metrics", zap.Error(err))
	}
	h.results = requestResults
	h.useKeyFormat()
	h.useShared(ctx)
	return nil
}

// useKeyFormat tells the admin API which format this handler's keys are
// in (KeyFormat, or nil for the default), for the admin API to make keys
// in it on this handler's store, named as the admin API names it. Every
// handler says so, with a key format or without: the newest config's
// handlers have the last word, so a reload that drops key_format goes
// back to the default.
func (h *Handler) useKeyFormat() {
	named, ok := h.store.(interface{ Name() string })
	if !ok {
		if h.KeyFormat != nil {
			h.logger.Warn("the key store does not say its name, so the admin API makes keys in the default format on it, not in key_format",
				zap.String("key_format", h.KeyFormat.Prefix))
		}
		return
	}
	h.releaseFormat = admin.UseKeyFormat(named.Name(), h.KeyFormat)
}

// Cleanup ends this handler's say in the admin API's key format. The
// store module is cleaned up by Caddy, as every module a module loads.
func (h *Handler) Cleanup() error {
	if h.releaseFormat != nil {
		h.releaseFormat()
		h.releaseFormat = nil
	}
	h.limits.release()
	return nil
}

// setup checks the configuration and builds what the request path uses: the
// credential sources and the refusals. It does no I/O and needs no Caddy
// context, so tests, benchmarks and fuzz targets set a handler up with it.
func (h *Handler) setup() error {
	switch {
	case h.KeysFile == "" && h.StoreRaw == nil:
		return errors.New("a key store is required: keys_file, or a store module")
	case h.KeysFile != "" && h.StoreRaw != nil:
		return errors.New("keys_file and store are both given; give one (keys_file is the shorthand for the file store)")
	case h.StoreRaw != nil && (h.UsageInterval != 0 || h.ReloadInterval != 0):
		return errors.New("usage_interval and reload_interval go in the store module when a store is given")
	}
	if h.Headers == nil {
		h.Headers = defaultHeaders
	}
	h.sources.Query = DefaultQueryParam
	if h.Query != nil {
		h.sources.Query = *h.Query
	}
	h.sources.Headers = h.sources.Headers[:0]
	for _, hs := range h.Headers {
		if hs.Name == "" {
			return errors.New("headers: a header name is empty")
		}
		h.sources.Headers = append(h.sources.Headers, credential.Header{
			Name:   http.CanonicalHeaderKey(hs.Name),
			Scheme: hs.Scheme,
		})
	}
	if h.Realm == "" {
		h.Realm = "restricted"
	}
	h.scopeRefusals = h.scopeRefusals[:0]
	for _, s := range h.Scopes {
		if err := keyset.CheckScope(s); err != nil {
			return err
		}
		h.scopeRefusals = append(h.scopeRefusals, newRefusal(http.StatusForbidden, CodeInsufficientScope,
			"API key lacks the required scope "+strconv.Quote(s)+".", resultInsufficientScope))
	}
	h.authRequired = newRefusal(http.StatusUnauthorized, CodeAuthRequired, "API key is required. Pass via "+h.describeSources()+".", resultMissing)
	h.invalidKey = newRefusal(http.StatusForbidden, CodeInvalidKey, "Invalid API key.", resultInvalid)
	h.revokedKey = newRefusal(http.StatusForbidden, CodeInvalidKey, "Invalid API key.", resultRevoked)
	h.keyExpired = newRefusal(http.StatusForbidden, CodeKeyExpired, "API key has expired.", resultExpired)
	h.ambiguousKey = newRefusal(http.StatusBadRequest, CodeAmbiguousKey, "More than one API key was sent; send exactly one.", resultAmbiguous)
	h.malformedKey = nil
	if h.KeyFormat != nil {
		if err := h.KeyFormat.Validate(); err != nil {
			return fmt.Errorf("key_format: %v", err)
		}
		h.malformedKey = newRefusal(http.StatusForbidden, CodeInvalidKey, MalformedKeyMessage, resultMalformed)
	}
	h.challenge = `Bearer realm=` + strconv.Quote(h.Realm)
	h.rateLimited = newRefusal(http.StatusTooManyRequests, CodeRateLimited, "Rate limit exceeded for this API key; retry after the time in Retry-After.", resultRateLimited)
	if err := h.limits.setup(h.RateLimits, h.RateLimitsOff); err != nil {
		return err
	}
	h.quotaExceeded = newRefusal(http.StatusTooManyRequests, CodeQuotaExceeded, "Quota exceeded for this API key; it renews at the time in Retry-After.", resultQuotaExceeded)
	h.quotaDown = newRefusal(http.StatusServiceUnavailable, CodeQuotaUnavailable, "The quota of this API key cannot be checked right now; retry after the time in Retry-After.", resultQuotaUnavailable)
	if err := h.quota.setup(h); err != nil {
		return err
	}
	return h.Validate()
}

// Validate checks the handler's configuration.
func (h *Handler) Validate() error {
	if len(h.sources.Headers) == 0 && h.sources.Query == "" {
		return errors.New("no credential source: configure at least one header or a query parameter")
	}
	return nil
}

// Error codes of the refusals.
const (
	CodeAuthRequired      = "AUTH_REQUIRED"
	CodeInvalidKey        = "INVALID_KEY"
	CodeKeyExpired        = "KEY_EXPIRED"
	CodeInsufficientScope = "INSUFFICIENT_SCOPE"
	CodeAmbiguousKey      = "AMBIGUOUS_KEY"
	CodeRateLimited       = "RATE_LIMITED"
	CodeQuotaExceeded     = "QUOTA_EXCEEDED"
	CodeQuotaUnavailable  = "QUOTA_UNAVAILABLE"
)

// MalformedKeyMessage is the message of the INVALID_KEY refusal of a key
// that has the key_format's prefix but is not well formed.
const MalformedKeyMessage = "Invalid API key: it is not well formed; check that it was copied whole."

// refusal is one way of refusing a request, with its JSON body rendered
// and the result it is counted as.
type refusal struct {
	status  int
	code    string
	message string
	body    []byte
	length  string // len(body), for Content-Length
	result  result
}

func newRefusal(status int, code, message string, res result) *refusal {
	body := keyops.ErrorBody(code, message)
	return &refusal{status: status, code: code, message: message, body: body, length: strconv.Itoa(len(body)), result: res}
}

// describeSources names the enabled credential sources for the 401 message,
// e.g. "Authorization: Bearer header, X-API-Key header or ?api_key= query
// parameter".
func (h *Handler) describeSources() string {
	var names []string
	for _, s := range h.Headers {
		if s.Scheme != "" {
			names = append(names, s.Name+": "+s.Scheme+" header")
		} else {
			names = append(names, s.Name+" header")
		}
	}
	if h.sources.Query != "" {
		names = append(names, "?"+h.sources.Query+"= query parameter")
	}
	switch len(names) {
	case 0:
		return "nothing (no source is enabled)"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// ServeHTTP authenticates the request and passes it on, or refuses it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	cred := h.sources.Find(r)
	switch cred.Status {
	case credential.None:
		if h.Optional {
			h.count(resultAnonymous)
			if h.HideCredentials {
				// No source the handler reads carries a key, but
				// the query may still carry one that an upstream
				// would read (e.g. after a ";").
				h.sources.Hide(r)
			}
			return next.ServeHTTP(w, r)
		}
		return h.refuse(w, r, h.authRequired, nil)
	case credential.Ambiguous:
		return h.refuse(w, r, h.ambiguousKey, nil)
	}
	// A key with the format's prefix must be well formed: a typo is
	// refused here, before the hash and the lookup.
	if h.KeyFormat != nil && h.KeyFormat.Malformed(cred.Key) {
		return h.refuse(w, r, h.malformedKey, nil)
	}

	ks := h.store.KeySet()
	key, sum := ks.Lookup(cred.Key)
	if key == nil {
		return h.refuse(w, r, h.invalidKey, nil)
	}
	if key.Revoked() {
		return h.refuse(w, r, h.revokedKey, key)
	}
	now := time.Now().UnixNano()
	if key.Expired(now) {
		return h.refuse(w, r, h.keyExpired, key)
	}
	for i, scope := range h.Scopes {
		if !key.HasScope(scope) {
			return h.refuse(w, r, h.scopeRefusals[i], key)
		}
	}

	var rd ratelimit.Decision
	limited := false
	if h.limits.limiter != nil {
		if limits := h.limits.of(key); len(limits) > 0 {
			rd, limited = h.limits.limiter.Allow(key.ID, limits, now), true
			if !h.RateLimitHeadersOff {
				ratelimit.WriteHeaders(w.Header(), h.limits.policyOf(key), rd)
			}
			if !rd.Allowed {
				w.Header()["Retry-After"] = []string{strconv.FormatInt(rd.RetryAfterSeconds(), 10)}
				h.events.RateLimited(key, rd, now)
				return h.refuse(w, r, h.rateLimited, key)
			}
		}
	}
	qd, metered := h.quota.spend(key, now)
	if metered && !qd.Allowed() {
		return h.refuseQuota(w, r, key, qd, now)
	}

	h.store.MarkUsed(key, sum, now)
	h.count(resultOK)
	h.countUse(key, resultOK)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if limited || metered {
		repl.Map(admittedPlaceholders(key, rd, limited, qd, metered, now))
		if metered && h.quota.headers {
			quota.WriteHeaders(w.Header(), qd, now)
		}
	} else {
		repl.Map(key.Placeholder)
	}
	if h.HideCredentials {
		h.sources.Hide(r)
	}
	return next.ServeHTTP(w, r)
}

// refuse answers a request that may not pass. key is the key that was
// presented, if it matched a record: it is logged by id, label and prefix;
// the raw key never is.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, why *refusal, key *keyset.Key) error {
	h.count(why.result)
	if key != nil {
		h.countUse(key, why.result)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "request refused"); c != nil {
		fields := []zap.Field{zap.String("code", why.code), zap.String("result", resultNames[why.result]), zap.String("remote_ip", r.RemoteAddr)}
		if key != nil {
			fields = append(fields, zap.String("key_id", key.ID), zap.String("key_label", key.Label), zap.String("key_prefix", key.Prefix))
		}
		c.Write(fields...)
	}
	// The header values are new memory each time, as later handlers may
	// edit values in place (the header directive's replace does): one
	// block for all of them, each header a slice of its own of it.
	hdr := w.Header()
	if h.HandleErrors {
		if why.status == http.StatusUnauthorized {
			hdr["Www-Authenticate"] = []string{h.challenge}
		}
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		repl.Set("http.auth.apikey.error_code", why.code)
		return caddyhttp.Error(why.status, errors.New(why.message))
	}
	v := &[5]string{"application/json", "no-store", "nosniff", why.length, h.challenge}
	hdr["Content-Type"] = v[0:1:1]
	hdr["Cache-Control"] = v[1:2:2]
	hdr["X-Content-Type-Options"] = v[2:3:3]
	hdr["Content-Length"] = v[3:4:4]
	if why.status == http.StatusUnauthorized {
		hdr["Www-Authenticate"] = v[4:5:5]
	}
	w.WriteHeader(why.status)
	_, err := w.Write(why.body)
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
