package redis

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// The live store is its key set's quota bank: every server of the fleet
// takes blocks of a key's quota from the same hash, {prefix}quota:<period>
// (see layout), through quotaScript, which applies a call's takes (or
// gives) in one atomic step, as quota.Apply (quota.Return) does.
var (
	_ quota.Bank        = (*Store)(nil)
	_ quota.Bank        = (*liveSet)(nil)
	_ stores.QuotaStore = Records{}
)

// quotaScript applies quota takes, gives and grants to the quota hashes
// of a key set (lua/quota.lua): ARGV[1] says which.
//
//   - take: KEYS are the periods' hashes; ARGV[2...1+#KEYS] the unix
//     milliseconds at which each expires ("0": never), then five
//     arguments per take: the index of its hash in KEYS, the key's id, its
//     allowance, the units wanted and owed. For each in turn: used +=
//     owed; left = max(allowance + granted − used, 0); got = min(want,
//     left); used += got. It answers got and left − got per take.
//   - give: KEYS as for take; then three arguments per give: the hash's
//     index, the id, the units given back: used −= n, not below 0, if the
//     key has a state in that period (none is made).
//   - grant: KEYS[1] the period's hash; ARGV[2] its expiry, ARGV[3] the
//     id, ARGV[4] the units to grant (negative: to take back), ARGV[5] the
//     most that may be granted: granted = max(granted + n, 0). It answers
//     used and granted.
//
// Every value it reads is checked to be a whole number before it writes
// anything (NOTNUMBER otherwise), so that a call is applied whole or not
// at all.
var quotaScript = rueidis.NewLuaScript(quotaLua)

//go:embed lua/quota.lua
var quotaLua string

// quotaSHA is quotaScript's SHA-1, for EVALSHA in a pipeline.
var quotaSHA = func() string { s := sha1.Sum([]byte(quotaLua)); return hex.EncodeToString(s[:]) }()

// quotaBatch is the most takes (or gives) one run of quotaScript applies:
// a round of more is sent as several runs in one pipeline, so that no one
// script holds Redis long.
const quotaBatch = 1000

// quotaHash is the Redis key of the quota state of a period.
func (k layout) quotaHash(period string) string { return k.quota + period }

// quotaExpiry is when the quota state of a period that ends at end may be
// dropped: a day after (quota.Expired), in unix milliseconds; "0" for a
// period that does not end (none, or a zero time).
func quotaExpiry(end time.Time) string {
	if end.IsZero() || !end.Before(quota.Never) {
		return "0"
	}
	return strconv.FormatInt(end.Add(24*time.Hour).UnixMilli(), 10)
}

// TakeQuota takes units of keys' quotas from the key set's quota state in
// Redis, for the quota meter (see quota.Bank): each take is written down
// as used before it returns. The takes go in runs of quotaScript of up to
// quotaBatch, all in one pipeline, the whole answered within the
// connection's answer time-out (answerTimeout) or failed.
func (r *Store) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	return r.store.TakeQuota(ctx, takes)
}

// GiveQuota gives back units a server took and did not spend (see
// quota.Bank).
func (r *Store) GiveQuota(ctx context.Context, gives []quota.Give) error {
	return r.store.GiveQuota(ctx, gives)
}

// TakeQuota is Store.TakeQuota.
func (s *liveSet) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	if len(takes) == 0 {
		return nil, nil
	}
	for _, t := range takes {
		if err := checkTake(t); err != nil {
			return nil, fmt.Errorf("taking quota: %w", err)
		}
	}
	c, err := s.quotaClient()
	if err != nil {
		return nil, s.quotaError("taking quota", err)
	}
	var runs []quotaRun
	for start := 0; start < len(takes); start += quotaBatch {
		batch := takes[start:min(start+quotaBatch, len(takes))]
		var run quotaRun
		run.args = make([]string, 1, 1+5*len(batch)+2)
		run.args[0] = "take"
		var ends []time.Time
		tuples := make([]string, 0, 5*len(batch))
		for _, t := range batch {
			k, added := run.key(s.rk.quotaHash(t.Period))
			if added {
				ends = append(ends, t.Ends)
			} else if ends[k].Before(t.Ends) {
				ends[k] = t.Ends
			}
			tuples = append(tuples, strconv.Itoa(k+1), t.ID, strconv.FormatInt(t.Allowance, 10), strconv.FormatInt(max(t.Want, 0), 10), strconv.FormatInt(t.Owed, 10))
		}
		for _, e := range ends {
			run.args = append(run.args, quotaExpiry(e))
		}
		run.args = append(run.args, tuples...)
		runs = append(runs, run)
	}
	replies, err := s.runQuota(ctx, c, runs)
	if err != nil {
		return nil, s.quotaError("taking quota", err)
	}
	out := make([]quota.Taken, 0, len(takes))
	for i, rep := range replies {
		n, err := rep.AsIntSlice()
		if err != nil {
			return nil, s.quotaError("taking quota", err)
		}
		if want := 2 * (len(runs[i].args) - 1 - len(runs[i].keys)) / 5; len(n) != want {
			return nil, s.quotaError("taking quota", unusableReply(fmt.Sprintf("redis: %d numbers in the reply to the quota script, want %d", len(n), want)))
		}
		for j := 0; j < len(n); j += 2 {
			out = append(out, quota.Taken{Got: n[j], Left: n[j+1]})
		}
	}
	return out, nil
}

// GiveQuota is Store.GiveQuota.
func (s *liveSet) GiveQuota(ctx context.Context, gives []quota.Give) error {
	if len(gives) == 0 {
		return nil
	}
	for _, g := range gives {
		if g.N < 0 || g.N > quota.MaxRequests {
			return fmt.Errorf("giving back quota: %d units of key %q: must be from 0 to %d", g.N, g.ID, int64(quota.MaxRequests))
		}
	}
	c, err := s.quotaClient()
	if err != nil {
		return s.quotaError("giving back quota", err)
	}
	var runs []quotaRun
	for start := 0; start < len(gives); start += quotaBatch {
		batch := gives[start:min(start+quotaBatch, len(gives))]
		run := quotaRun{args: make([]string, 1, 1+3*len(batch))}
		run.args[0] = "give"
		for _, g := range batch {
			k, _ := run.key(s.rk.quotaHash(g.Period))
			run.args = append(run.args, strconv.Itoa(k+1), g.ID, strconv.FormatInt(g.N, 10))
		}
		runs = append(runs, run)
	}
	replies, err := s.runQuota(ctx, c, runs)
	if err == nil {
		for _, rep := range replies {
			if err = rep.Error(); err != nil {
				break
			}
		}
	}
	if err != nil {
		return s.quotaError("giving back quota", err)
	}
	return nil
}

// checkTake refuses a take whose numbers the bank cannot use.
func checkTake(t quota.Take) error {
	switch {
	case t.Allowance < 0 || t.Allowance > quota.MaxRequests:
		return fmt.Errorf("key %q: allowance %d: must be from 0 to %d", t.ID, t.Allowance, int64(quota.MaxRequests))
	case t.Want > quota.MaxRequests:
		return fmt.Errorf("key %q: %d units wanted: at most %d", t.ID, t.Want, int64(quota.MaxRequests))
	case t.Owed < 0 || t.Owed > quota.MaxRequests:
		return fmt.Errorf("key %q: %d units owed: must be from 0 to %d", t.ID, t.Owed, int64(quota.MaxRequests))
	}
	return nil
}

// quotaRun is one run of quotaScript: its keys and its arguments.
type quotaRun struct {
	keys []string
	args []string
}

// key returns the index of hash in r's keys, adding it if it is not
// there yet.
func (r *quotaRun) key(hash string) (int, bool) {
	for i, k := range r.keys {
		if k == hash {
			return i, false
		}
	}
	r.keys = append(r.keys, hash)
	return len(r.keys) - 1, true
}

// quotaClient returns the live store's client.
func (s *liveSet) quotaClient() (rueidis.Client, error) {
	p := s.client.Load()
	if p == nil {
		return nil, errNotConnected
	}
	return *p, nil
}

// runQuota sends runs of quotaScript in one pipeline (EVALSHA; the runs
// that Redis does not have the script for yet, again with EVAL), all
// answered within answerTimeout, and returns their replies, or the first
// failure to reach Redis. An error reply of the script stays in its reply.
func (s *liveSet) runQuota(ctx context.Context, c rueidis.Client, runs []quotaRun) (_ []rueidis.RedisResult, err error) {
	ctx, cancel, explain := s.answerWithin(ctx)
	defer cancel()
	defer func() { err = explain(err) }()
	cmds := make(rueidis.Commands, len(runs))
	for i, r := range runs {
		cmds[i] = c.B().Evalsha().Sha1(quotaSHA).Numkeys(int64(len(r.keys))).Key(r.keys...).Arg(r.args...).Build()
	}
	replies := c.DoMulti(ctx, cmds...)
	var again []int
	for i, rep := range replies {
		if err, ok := rueidis.IsRedisErr(rep.Error()); ok && err.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			r := runs[i]
			cmds = append(cmds, c.B().Eval().Script(quotaLua).Numkeys(int64(len(r.keys))).Key(r.keys...).Arg(r.args...).Build())
		}
		for j, rep := range c.DoMulti(ctx, cmds...) {
			replies[again[j]] = rep
		}
	}
	for _, rep := range replies {
		if err := rep.Error(); err != nil && !redisAnswered(err) {
			return nil, err
		}
	}
	return replies, nil
}

// answerWithin bounds a call of the live store's request-side writers
// (quota, usage counts) by the connection's answer time-out
// (answerTimeout), or ctx's deadline if it is sooner: explain then says,
// of a call's error that is a time-out, how long Redis was given.
func (s *liveSet) answerWithin(ctx context.Context) (_ context.Context, _ context.CancelFunc, explain func(error) error) {
	budget := answerTimeout(s.opt)
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl).Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	return ctx, cancel, func(err error) error {
		if isTimeout(err) {
			return fmt.Errorf("Redis did not answer within %s: %w", budget, err)
		}
		return err
	}
}

// quotaError is the error of a quota call of the live store: it wraps
// quota.ErrUnavailable and names the key set.
func (s *liveSet) quotaError(what string, err error) error {
	return fmt.Errorf("%w: %s in Redis %s (prefix %s): %w", quota.ErrUnavailable, what, s.shown, s.rk.prefix, err)
}

// QuotaStates returns the quota state of each key id in its period (id ->
// the period's name), for those that have one (see stores.QuotaStore):
// one HMGET per period's hash (per 1 000 keys), in one pipeline.
func (r Records) QuotaStates(periods map[string]string) (map[string]quota.State, error) {
	if r.client == nil {
		return nil, r.wrap(errNotConnected)
	}
	out := make(map[string]quota.State)
	if len(periods) == 0 {
		return out, nil
	}
	byPeriod := make(map[string][]string)
	for id, p := range periods {
		byPeriod[p] = append(byPeriod[p], id)
	}
	type ask struct {
		period string
		ids    []string
	}
	var asks []ask
	cmds := make(rueidis.Commands, 0, len(byPeriod))
	for p, ids := range byPeriod {
		for start := 0; start < len(ids); start += quotaBatch {
			batch := ids[start:min(start+quotaBatch, len(ids))]
			fields := make([]string, 0, 2*len(batch))
			for _, id := range batch {
				fields = append(fields, "u:"+id, "g:"+id)
			}
			asks = append(asks, ask{p, batch})
			cmds = append(cmds, r.client.B().Hmget().Key(r.keys.quotaHash(p)).Field(fields...).Build())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), editTimeout)
	defer cancel()
	for i, rep := range r.client.DoMulti(ctx, cmds...) {
		vals, err := rep.ToArray()
		if err != nil {
			return nil, r.fail(ctx, err)
		}
		a := asks[i]
		if len(vals) != 2*len(a.ids) {
			return nil, r.wrap(unusableReply(fmt.Sprintf("redis: %d values in the reply to HMGET %s, want %d", len(vals), r.keys.quotaHash(a.period), 2*len(a.ids))))
		}
		for j, id := range a.ids {
			used, uok, err := optInt(vals[2*j])
			if err != nil {
				return nil, r.wrap(fmt.Errorf("%s field u:%s: %w", r.keys.quotaHash(a.period), id, err))
			}
			granted, gok, err := optInt(vals[2*j+1])
			if err != nil {
				return nil, r.wrap(fmt.Errorf("%s field g:%s: %w", r.keys.quotaHash(a.period), id, err))
			}
			if uok || gok {
				out[id] = quota.State{Period: a.period, Used: used, Granted: granted}
			}
		}
	}
	return out, nil
}

// optInt reads a value of an HMGET reply: a whole number, or nil (ok
// false).
func optInt(m rueidis.RedisMessage) (n int64, ok bool, err error) {
	if m.IsNil() {
		return 0, false, nil
	}
	s, err := m.ToString()
	if err != nil {
		return 0, false, err
	}
	n, err = strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false, unusableReply(fmt.Sprintf("holds %.40q, not a whole number", s))
	}
	return n, true, nil
}

// GrantQuota adds n units to key id's allowance for period, in one atomic
// step (quotaScript), never below 0 granted nor above quota.MaxRequests,
// and returns the key's state then (see stores.QuotaStore). The period's
// hash then expires a day after ends.
func (r Records) GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error) {
	if r.client == nil {
		return quota.State{}, r.wrap(errNotConnected)
	}
	if n < -quota.MaxRequests || n > quota.MaxRequests {
		return quota.State{}, fmt.Errorf("granting %d units: must be from %d to %d", n, -int64(quota.MaxRequests), int64(quota.MaxRequests))
	}
	ctx, cancel := context.WithTimeout(context.Background(), editTimeout)
	defer cancel()
	res, err := quotaScript.Exec(ctx, r.client, []string{r.keys.quotaHash(period)},
		[]string{"grant", quotaExpiry(ends), id, strconv.FormatInt(n, 10), strconv.FormatInt(quota.MaxRequests, 10)}).AsIntSlice()
	if err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "TOOMUCH "); ok {
			return quota.State{}, fmt.Errorf("granting %d units to key %q: %s", n, id, msg)
		}
		return quota.State{}, r.fail(ctx, err)
	}
	if len(res) != 2 {
		return quota.State{}, r.wrap(unusableReply(fmt.Sprintf("redis: unexpected reply to the quota script: %v", res)))
	}
	return quota.State{Period: period, Used: res[0], Granted: res[1]}, nil
}
