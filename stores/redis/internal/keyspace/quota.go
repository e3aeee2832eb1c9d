package keyspace

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

// QuotaBatch is the most takes (or gives) one run of quotaScript applies:
// a round of more is sent as several runs in one pipeline, so that no one
// script holds Redis long. It is also how many keys one HMGET of
// QuotaStates reads.
const QuotaBatch = 1000

// quotaExpiry is when the quota state of a period that ends at end may be
// dropped: a day after (quota.Expired), in unix milliseconds; "0" for a
// period that does not end (none, or a zero time).
func quotaExpiry(end time.Time) string {
	if end.IsZero() || !end.Before(quota.Never) {
		return "0"
	}
	return strconv.FormatInt(end.Add(24*time.Hour).UnixMilli(), 10)
}

// TakeQuota applies takes (checked by the caller) to the key set's quota
// state: runs of quotaScript of up to QuotaBatch takes, all in one
// pipeline, the whole answered within answer (see AnswerWithin) or
// failed.
func TakeQuota(ctx context.Context, c rueidis.Client, k Layout, takes []quota.Take, answer time.Duration) ([]quota.Taken, error) {
	var runs []quotaRun
	for start := 0; start < len(takes); start += QuotaBatch {
		batch := takes[start:min(start+QuotaBatch, len(takes))]
		var run quotaRun
		run.args = make([]string, 1, 1+5*len(batch)+2)
		run.args[0] = "take"
		var ends []time.Time
		tuples := make([]string, 0, 5*len(batch))
		for _, t := range batch {
			i, added := run.key(k.QuotaHash(t.Period))
			if added {
				ends = append(ends, t.Ends)
			} else if ends[i].Before(t.Ends) {
				ends[i] = t.Ends
			}
			tuples = append(tuples, strconv.Itoa(i+1), t.ID, strconv.FormatInt(t.Allowance, 10), strconv.FormatInt(max(t.Want, 0), 10), strconv.FormatInt(t.Owed, 10))
		}
		for _, e := range ends {
			run.args = append(run.args, quotaExpiry(e))
		}
		run.args = append(run.args, tuples...)
		runs = append(runs, run)
	}
	replies, err := runQuota(ctx, c, runs, answer)
	if err != nil {
		return nil, err
	}
	out := make([]quota.Taken, 0, len(takes))
	for i, rep := range replies {
		n, err := rep.AsIntSlice()
		if err != nil {
			return nil, err
		}
		if want := 2 * (len(runs[i].args) - 1 - len(runs[i].keys)) / 5; len(n) != want {
			return nil, unusableReply(fmt.Sprintf("redis: %d numbers in the reply to the quota script, want %d", len(n), want))
		}
		for j := 0; j < len(n); j += 2 {
			out = append(out, quota.Taken{Got: n[j], Left: n[j+1]})
		}
	}
	return out, nil
}

// GiveQuota gives back units (checked by the caller) to the key set's
// quota state, as TakeQuota takes them.
func GiveQuota(ctx context.Context, c rueidis.Client, k Layout, gives []quota.Give, answer time.Duration) error {
	var runs []quotaRun
	for start := 0; start < len(gives); start += QuotaBatch {
		batch := gives[start:min(start+QuotaBatch, len(gives))]
		run := quotaRun{args: make([]string, 1, 1+3*len(batch))}
		run.args[0] = "give"
		for _, g := range batch {
			i, _ := run.key(k.QuotaHash(g.Period))
			run.args = append(run.args, strconv.Itoa(i+1), g.ID, strconv.FormatInt(g.N, 10))
		}
		runs = append(runs, run)
	}
	replies, err := runQuota(ctx, c, runs, answer)
	if err == nil {
		for _, rep := range replies {
			if err = rep.Error(); err != nil {
				break
			}
		}
	}
	return err
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

// runQuota sends runs of quotaScript in one pipeline (EVALSHA; the runs
// that Redis does not have the script for yet, again with EVAL), all
// answered within answer (AnswerWithin), and returns their replies, or the
// first failure to reach Redis. An error reply of the script stays in its
// reply.
func runQuota(ctx context.Context, c rueidis.Client, runs []quotaRun, answer time.Duration) (_ []rueidis.RedisResult, err error) {
	ctx, cancel, explain := AnswerWithin(ctx, answer)
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
		if err := rep.Error(); err != nil && !Answered(err) {
			return nil, err
		}
	}
	return replies, nil
}

// QuotaStates returns the quota state of each key id in its period (id ->
// the period's name), for those that have one: one HMGET per period's
// hash (per QuotaBatch keys), in one pipeline.
func QuotaStates(ctx context.Context, c rueidis.Client, k Layout, periods map[string]string) (map[string]quota.State, error) {
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
		for start := 0; start < len(ids); start += QuotaBatch {
			batch := ids[start:min(start+QuotaBatch, len(ids))]
			fields := make([]string, 0, 2*len(batch))
			for _, id := range batch {
				fields = append(fields, "u:"+id, "g:"+id)
			}
			asks = append(asks, ask{p, batch})
			cmds = append(cmds, c.B().Hmget().Key(k.QuotaHash(p)).Field(fields...).Build())
		}
	}
	for i, rep := range c.DoMulti(ctx, cmds...) {
		vals, err := rep.ToArray()
		if err != nil {
			return nil, err
		}
		a := asks[i]
		if len(vals) != 2*len(a.ids) {
			return nil, unusableReply(fmt.Sprintf("redis: %d values in the reply to HMGET %s, want %d", len(vals), k.QuotaHash(a.period), 2*len(a.ids)))
		}
		for j, id := range a.ids {
			used, uok, err := optInt(vals[2*j])
			if err != nil {
				return nil, fmt.Errorf("%s field u:%s: %w", k.QuotaHash(a.period), id, err)
			}
			granted, gok, err := optInt(vals[2*j+1])
			if err != nil {
				return nil, fmt.Errorf("%s field g:%s: %w", k.QuotaHash(a.period), id, err)
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

// GrantQuota adds n units (checked by the caller) to key id's allowance
// for period, in one atomic step (quotaScript), never below 0 granted nor
// above quota.MaxRequests (Refused), and returns the key's state then. The
// period's hash then expires a day after ends.
func GrantQuota(ctx context.Context, c rueidis.Client, k Layout, id, period string, n int64, ends time.Time) (quota.State, error) {
	res, err := quotaScript.Exec(ctx, c, []string{k.QuotaHash(period)},
		[]string{"grant", quotaExpiry(ends), id, strconv.FormatInt(n, 10), strconv.FormatInt(quota.MaxRequests, 10)}).AsIntSlice()
	if err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "TOOMUCH "); ok {
			return quota.State{}, Refused(fmt.Sprintf("granting %d units to key %q: %s", n, id, msg))
		}
		return quota.State{}, err
	}
	if len(res) != 2 {
		return quota.State{}, unusableReply(fmt.Sprintf("redis: unexpected reply to the quota script: %v", res))
	}
	return quota.State{Period: period, Used: res[0], Granted: res[1]}, nil
}
