#!/usr/bin/env bash
# End-to-end measures of per-key quotas (issue 19, "Measured"), with Caddy
# built from this checkout, on loopback:
#
#   1  tests  the end-to-end Go tests, whose logs give the figures: one
#             server spending a quota of 10 000 with 30 000 requests
#             (TestQuotaExactOnOneServer: exactly 10 000 admitted); one
#             server killed -9 twenty times while it spends a quota of
#             10 000 (TestQuotaSurvivesKill9: admitted, and units stranded);
#             three servers on one redis-server spending a quota of 100 000
#             round-robin, then skewed, one killed -9 midway
#             (TestQuotaFleetWithAKill, here with QUOTA_FULL=1: a cost of 1,
#             100 000 requests). An upstream in the test counts what was
#             admitted, answered or not.
#   2  redis  Redis commands per server per second at RATE (10 000)
#             requests/s of one server on one key with a quota of QUOTA
#             (1 000 000/month: blocks of 10 000, so about one take a
#             second), from INFO commandstats before and after WINDOW
#             seconds: evalsha (the quota's takes; last-used writes are off
#             here, usage_interval off), hincrby and pexpireat (the usage
#             counts, written every 10 s), and every command.
#
# The load of 2 is wrk with bench/fleet.lua (each connection pauses
# PAUSE_MS after each answer), calibrated as in bench/ratelimit.sh: 3 s
# runs scale the connection count until wrk's rate is within 3 % of RATE.
# Every process the script starts is stopped when it exits, however it
# exits. The summary stays in bench/results/quota-<UTC time>/ (gitignored).
# No raw key is written there or printed.
#
# Usage: bash bench/quota.sh                (about 4 minutes)
#
# Settings (environment):
#   SCENARIOS="1 2"   which to run
#   RATE=10000        target requests/s of 2
#   QUOTA=1000000     the key's monthly quota in 2
#   WINDOW=20         seconds measured in 2
#   WARMUP=5          seconds of load before 2's window
#   PAUSE_MS=10       2: each wrk connection's pause after an answer
#   THREADS=1         2: wrk threads
#   CADDY=            a Caddy binary with the plugin, instead of building one
#
# Needs Go, curl, ss, wrk, redis-server and redis-cli (Debian:
# apt-get install -y wrk redis-server curl iproute2).
set -euo pipefail

SCENARIOS=${SCENARIOS:-1 2}
RATE=${RATE:-10000}
QUOTA=${QUOTA:-1000000}
WINDOW=${WINDOW:-20}
WARMUP=${WARMUP:-5}
PAUSE_MS=${PAUSE_MS:-10}
THREADS=${THREADS:-1}
CADDY=${CADDY:-}
SYNC_RATE=$RATE

log() { printf 'quota: %s\n' "$*" >&2; }
die() {
	printf 'quota: FAILED: %s\n' "$*" >&2
	exit 1
}
for v in RATE QUOTA WINDOW WARMUP PAUSE_MS THREADS; do
	[[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || die "$v must be a whole number >= 1, got '${!v}'"
done
for s in $SCENARIOS; do
	[[ $s == 1 || $s == 2 ]] || die "SCENARIOS holds '$s'; give some of 1 2"
done
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
for tool in go curl ss wrk redis-server redis-cli; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (Debian: apt-get install -y wrk redis-server curl iproute2)"
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
lua=$repo/bench/fleet.lua

# --- processes, cleanup and the helpers shared with bench/ratelimit.sh -----
bench=quota
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

# --- build -----------------------------------------------------------------
if [[ -n $CADDY ]]; then
	caddy=$CADDY
else
	log "building Caddy with the plugin (go build ./cmd/caddy)"
	go build -o "$work/caddy" ./cmd/caddy
	caddy=$work/caddy
fi
summary=$out/summary.txt
{
	echo "Per-key quotas end to end (bench/quota.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "machine: $(nproc) cores, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
	echo "software: $("$caddy" version | cut -d' ' -f1), $(go version | cut -d' ' -f3), Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
	echo "settings: SCENARIOS='$SCENARIOS' RATE=$RATE QUOTA=$QUOTA WINDOW=$WINDOW"
	echo "load average at the start: $(loadavg)"
} >"$summary"

# --- 1: the end-to-end tests ---------------------------------------------------
if want 1; then
	log "1 tests: go test -run 'TestQuota(ExactOnOneServer|SurvivesKill9|FleetWithAKill)' with QUOTA_FULL=1"
	echo >>"$summary"
	echo "1 tests (go test -count=1 -v -run 'TestQuota(ExactOnOneServer|SurvivesKill9|FleetWithAKill)' ., QUOTA_FULL=1):" >>"$summary"
	QUOTA_FULL=1 go test -count=1 -v -timeout 20m -run 'TestQuota(ExactOnOneServer|SurvivesKill9|FleetWithAKill)$' . >"$work/tests.out" 2>&1 ||
		{ tail -40 "$work/tests.out" >&2; die "the tests failed"; }
	grep -E '^(=== RUN|--- |\s+quota_integration_test.go)' "$work/tests.out" | sed 's/^/  /' | tee -a "$summary"
fi

# --- 2: Redis commands at RATE ---------------------------------------------------
if want 2; then
	start_redis
	redis_url=redis://127.0.0.1:$redis_port/0
	keys=$work/one.keys
	(umask 077 && "$caddy" apikey add --redis "$redis_url" --prefix q: --create --label "quota bench" --quota "$QUOTA/month" >"$keys" 2>"$work/add.err") ||
		die "caddy apikey add: $(cat "$work/add.err")"
	start_caddy one "		redis $redis_url {
			prefix q:
		}
		usage_interval off"
	conns=$(((RATE * PAUSE_MS + 999) / 1000))
	for i in 1 2 3 4; do
		f=$out/calibrate-$i.wrk
		run_wrk 3 "$keys" "$f" one
		log "2 redis: calibrating: $conns connections x ${PAUSE_MS} ms pause: $(rps_of "$f") requests/s"
		rescale "$f" && break
	done
	run_wrk "$WARMUP" "$keys" "$out/warmup.wrk" one
	log "2 redis: measuring ${WINDOW}s with $conns connections"
	la0=$(loadavg)
	snapshot "$work/before"
	run_wrk "$WINDOW" "$keys" "$out/measure.wrk" one
	snapshot "$work/after"
	la1=$(loadavg)
	secs=$(elapsed "$work/before" "$work/after")
	ev=$(calls "$work/before" "$work/after" evalsha)
	hi=$(calls "$work/before" "$work/after" hincrby)
	px=$(calls "$work/before" "$work/after" pexpireat)
	all=$(awk 'FNR == 1 { next } /^total_commands_processed:/ { split($0, a, ":"); v[FILENAME == ARGV[1]] = a[2] } END { printf "%d\n", v[0] - v[1] }' "$work/before" "$work/after")
	{
		echo
		echo "2 redis: one Caddy on Redis, one key with a quota of $QUOTA/month (blocks of $((QUOTA / 100))), wrk at about $RATE requests/s, ${WINDOW}s measured"
		awk -v r="$(rps_of "$out/measure.wrk")" -v t="$secs" -v ev="$ev" -v hi="$hi" -v px="$px" -v all="$all" -v la0="$la0" -v la1="$la1" 'BEGIN {
			printf "  %.0f requests/s over %.2fs: evalsha %.2f/s, hincrby %.2f/s, pexpireat %.2f/s, all commands %.2f/s (%.5f per request); load average %s / %s\n",
				r, t, ev / t, hi / t, px / t, all / t, all / t / r, la0, la1 }'
	} | tee -a "$summary"
fi

echo "load average at the end: $(loadavg)" >>"$summary"
log "results in ${out#"$repo"/}"
