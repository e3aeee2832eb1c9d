package admin

import (
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// FlushUsageCounts, if set (the root package sets it), writes the usage
// counts this process holds and has not written yet for the store named
// storeName (stores.Live.Name) to that store, and has its quota meter ask
// the store's quota state again about the keys it refused. The API calls
// it before it reads usage counts (GET /apikey/keys/{id}/usage) or quota
// state (GET /apikey/keys, the answer of PUT and DELETE
// /apikey/keys/{id}/quota), so that its answers hold this server's
// requests up to now, and after a grant, so that this server admits the
// key's requests again at once. Nil: the answers hold what the store
// has, up to the last usage interval.
var FlushUsageCounts func(storeName string)

// flush calls FlushUsageCounts for st, if it is set.
func flush(st stores.Live) {
	if f := FlushUsageCounts; f != nil {
		f(st.Name())
	}
}

// QuotaRequest is the body of PUT /apikey/keys/{id}/quota: the key's
// quota. DELETE drops it: the key is no longer metered.
type QuotaRequest struct {
	Quota *QuotaBody `json:"quota"`
}

// QuotaBody is a quota in a request: both members are required.
type QuotaBody struct {
	Requests *int64  `json:"requests"`
	Period   *string `json:"period"`
}

const quotaMembers = `the member is quota, an object such as {"requests": 10000, "period": "month"}`

// QuotaAnswer is the answer of PUT and DELETE /apikey/keys/{id}/quota:
// the key as it is now, its quota state this period with it.
type QuotaAnswer struct {
	keyops.Listed
	Changed bool   `json:"changed"`
	Warning string `json:"warning,omitempty"`
}

func (a *API) setQuota(w http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	var q *keyset.QuotaSpec
	if r.Method == http.MethodPut {
		var req QuotaRequest
		if err := readBody(w, r, &req, quotaMembers); err != nil {
			return 0, nil, err
		}
		switch b := req.Quota; {
		case b == nil:
			return 0, nil, badRequest(`give quota, an object such as {"requests": 10000, "period": "month"} (periods: day, month, none); DELETE drops the key's quota`)
		case b.Requests == nil || b.Period == nil:
			return 0, nil, badRequest(`quota must have "requests" and "period", as in {"requests": 10000, "period": "month"}`)
		default:
			q = &keyset.QuotaSpec{Requests: *b.Requests, Period: *b.Period}
		}
	} else if err := readBody(w, r, &struct{}{}, "DELETE takes none; send no body, or {}"); err != nil {
		return 0, nil, err
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	rec, changed, err := keyops.SetQuota(existingRecords{st.Records(), requester(r)}, ref, q, a.waiting(st))
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	answer := QuotaAnswer{Changed: changed}
	if changed {
		answer.Warning = a.refresh(st)
		quotaText := "none"
		if q != nil {
			quotaText = strconv.FormatInt(q.Requests, 10) + "/" + q.Period
		}
		a.logger.Info("key quota set", zap.String("store", st.Name()),
			zap.String("key_id", rec.ID), zap.String("key_label", rec.Label), zap.String("key_prefix", rec.KeyPrefix), zap.String("quota", quotaText))
	}
	flush(st)
	answer.Listed = keyops.ListOne(st.Records(), rec, a.now())
	return http.StatusOK, answer, nil
}

// GrantRequest is the body of POST /apikey/keys/{id}/quota/grant: units
// more for the key's current period (negative: units granted before taken
// back, but not below none granted).
type GrantRequest struct {
	Units *int64 `json:"units"`
}

// GrantAnswer is the answer of POST /apikey/keys/{id}/quota/grant: the
// key as it is now, its quota state after the grant with it, and the
// units granted and their period.
type GrantAnswer struct {
	keyops.Listed
	Units  int64  `json:"units"`
	Period string `json:"period"`
}

func (a *API) grantQuota(w http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	var req GrantRequest
	if err := readBody(w, r, &req, "the member is units, a whole number"); err != nil {
		return 0, nil, err
	}
	if req.Units == nil {
		return 0, nil, badRequest(`give units, a whole number of units to grant for the key's current period (negative to take units back), as in {"units": 500}`)
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	now := a.now()
	// The store itself, not existingRecords: the grant is no edit of the
	// records, and must see the store's quota state.
	g, err := keyops.GrantQuota(st.Records(), ref, *req.Units, requester(r), now)
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	flush(st)
	a.logger.Info("key quota granted", zap.String("store", st.Name()),
		zap.String("key_id", g.Record.ID), zap.String("key_label", g.Record.Label), zap.String("key_prefix", g.Record.KeyPrefix),
		zap.Int64("units", g.Units), zap.String("period", g.State.Period), zap.Int64("granted", g.State.Granted), zap.Int64("remaining", g.State.Remaining))
	l := listed(g.Record, now)
	l.QuotaState = &g.State
	return http.StatusOK, GrantAnswer{Listed: l, Units: g.Units, Period: g.State.Period}, nil
}

// readUsage answers GET /apikey/keys/{id}/usage: the key's usage counts
// over the last ?days= days (keyops.DefaultUsageDays if none), today
// (UTC) the last, as `caddy apikey usage --json` prints them. This
// server's counts not yet written are written first (FlushUsageCounts).
func (a *API) readUsage(_ http.ResponseWriter, r *http.Request, ref string) (int, any, error) {
	days := keyops.DefaultUsageDays
	switch v := r.URL.Query()["days"]; {
	case len(v) > 1:
		return 0, nil, badRequest("?days= is given %d times; give it once", len(v))
	case len(v) == 1:
		n, err := strconv.Atoi(v[0])
		if err != nil || keyops.CheckUsageDays(n) != nil {
			return 0, nil, badRequest("?days=%s: want a whole number of days from 1 to %d (the counts are kept %d days)", v[0], keyops.MaxUsageDays, keyops.MaxUsageDays)
		}
		days = n
	}
	st, err := a.pickStore(r)
	if err != nil {
		return 0, nil, err
	}
	flush(st)
	u, err := keyops.ReadUsage(st.Records(), ref, days, a.now())
	if err != nil {
		return 0, nil, storeFailure(st, err)
	}
	return http.StatusOK, u, nil
}
