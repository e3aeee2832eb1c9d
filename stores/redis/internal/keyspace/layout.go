// Package keyspace is a Redis key set's key space: the Redis keys of a
// key set (Layout), the Lua scripts that change them (lua/*.lua,
// embedded), and the stateless functions that run those scripts and
// commands against a rueidis client: reading and writing records, the
// change log's entries, last-used times, quota state, usage counts, the
// fleet's rate-limit windows and the audit stream; and what a reply or a
// time-out of Redis means (errors.go, timeouts.go). What to do with what
// they read is package live's (the live key set, its follower and
// writers) and package stores/redis's (the record store the commands
// edit).
package keyspace

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A key set in Redis is these Redis keys, which share one Cluster hash
// tag, "{<prefix>}", so that every script touches one slot:
//
//	{apikey:}records  hash: record id -> the record, as JSON (the key file's format)
//	{apikey:}used     hash: "<key_hash>:<id>" -> last use, unix microseconds
//	{apikey:}version  integer: +1 with every change to the records
//	{apikey:}log      stream: one entry per change: v (the new version), ids (JSON array of the ids changed),
//	                  was (JSON array: each record's key_hash before the change)
//	{apikey:}audit    stream: the audit log ({apikey:}audit:max_entries: its retention, if set)
//	{apikey:}rl:<window seconds>:<index>
//	                  hash: key id -> requests admitted in that window of the rate limits of that length,
//	                  by the fleet (ratelimit.go); expires once the next window is over
//	{apikey:}quota:<period>
//	                  hash: "u:<id>" -> units of the key's quota used in the period (taken by servers),
//	                  "g:<id>" -> units granted on top of its allowance for the period (quota.go); the
//	                  period is named as quota.Period.At names it: 2026-12-03, 2026-12, or none (a fixed
//	                  allowance); expires a day after the period ends (quota.Expired), none never
//	{apikey:}usage:<YYYYMMDDHH>
//	                  hash: "<id>:<result>" -> requests of the key with that result (usagecount.Results)
//	                  in that hour (UTC); expires once the hour is older than the retention (usage.go)
//
// Records change only through editScript, which checks the version the
// change was made from, writes the records, bumps the version and appends
// to the log in one atomic step. Last-used times live apart from the
// records, so that usage never rewrites a record (nor the members this
// plugin does not know) and never floods the log; list and export show
// the later of the record's last_used_at and its used entry. Quota state
// and usage counts live apart too, written by their own scripts and
// commands, never through the log.
type Layout struct {
	Prefix                      string
	tag                         string // {prefix}: every key's start, so that all are in one Cluster slot
	Records, Used, Version, Log string
	Audit, AuditMax             string // the audit stream, and its retention if set (see DefaultAuditMaxEntries)
	quota, usage                string // the starts of the quota hashes ({prefix}quota:) and usage hashes ({prefix}usage:)
}

// DefaultAuditMaxEntries is about how many entries a key set's audit
// stream keeps (XADD MAXLEN ~) unless its {prefix}audit:max_entries key
// says otherwise (caddy apikey audit --set-max-entries).
const DefaultAuditMaxEntries = 1000000

// DefaultPrefix is the prefix of a key set when none is given.
const DefaultPrefix = "apikey:"

// logMaxLen is about how many changes the log keeps. An instance that falls
// further behind (a long disconnect) reads the whole key set again.
const logMaxLen = 10000

// New returns the layout of the key set at prefix (DefaultPrefix if
// empty).
func New(prefix string) (Layout, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return Layout{}, fmt.Errorf("redis prefix %q: must not hold { or }, which would break its Cluster hash tag", prefix)
	}
	tag := "{" + prefix + "}"
	return Layout{Prefix: prefix, tag: tag, Records: tag + "records", Used: tag + "used", Version: tag + "version", Log: tag + "log", Audit: tag + "audit", AuditMax: tag + "audit:max_entries", quota: tag + "quota:", usage: tag + "usage:"}, nil
}

// QuotaHash is the Redis key of the quota state of a period.
func (k Layout) QuotaHash(period string) string { return k.quota + period }

// UsageHash is the Redis key of the usage counts of the hour that starts
// at hour (UTC).
func (k Layout) UsageHash(hour time.Time) string { return k.usage + hour.UTC().Format("2006010215") }

// RateWindow is the Redis key of the counts of one window of the limits of
// that length: {prefix}rl:<window in seconds>:<index>, in the key set's
// slot.
func (k Layout) RateWindow(window time.Duration, index int64) string {
	return k.tag + "rl:" + strconv.FormatInt(int64(window/time.Second), 10) + ":" + strconv.FormatInt(index, 10)
}
