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

# --- processes and cleanup -----------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$repo/bench/results/quota-$stamp
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-quota.XXXXXX")
declare -A caddy_pid=() caddy_port=() caddy_admin=()
redis_pid=
bg_pid= # wrk, the paced client or the Redis watcher, whichever runs
watch_pid=

# stop PID: SIGTERM, up to 10 s to exit, then SIGKILL. Only processes this
# script started are ever passed here.
stop() {
	local pid=$1
	[[ -n $pid ]] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

stop_caddies() {
	local n
	for n in "${!caddy_pid[@]}"; do
		stop "${caddy_pid[$n]}"
		unset "caddy_pid[$n]" "caddy_port[$n]" "caddy_admin[$n]"
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop "$bg_pid"
	stop "$watch_pid"
	stop_caddies
	stop "$redis_pid"
	if ((rc != 0)) && [[ -d $work ]]; then
		for f in "$work"/*.log; do
			[[ -s $f ]] || continue
			printf 'quota: last lines of %s:\n' "${f##*/}" >&2
			tail -n 15 "$f" | sed 's/^/    /' >&2
		done
	fi
	rm -rf "$work"
	((rc == 0)) || log "partial results in ${out#"$repo"/}"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port prints a port that nothing listens on at the moment, below the
# ephemeral range. Whoever takes it may still lose a race: callers retry.
free_port() {
	local low p
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	((low > 11000)) || low=32768
	for _ in $(seq 200); do
		p=$((10000 + RANDOM % (low - 10000)))
		if [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]; then
			echo "$p"
			return 0
		fi
	done
	die "found no free port"
}

# --- build -----------------------------------------------------------------
if [[ -n $CADDY ]]; then
	caddy=$CADDY
else
	log "building Caddy with the plugin (go build ./cmd/caddy)"
	go build -o "$work/caddy" ./cmd/caddy
	caddy=$work/caddy
fi
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
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
# --- Redis -----------------------------------------------------------------
redis_port=
start_redis() {
	local p
	for _ in 1 2 3 4 5; do
		p=$(free_port)
		redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
			--daemonize no --dir "$work" --logfile "$work/redis.log" &
		redis_pid=$!
		for _ in $(seq 50); do
			kill -0 "$redis_pid" 2>/dev/null || break
			[[ $(redis-cli -p "$p" PING 2>/dev/null) == PONG ]] && redis_port=$p && break
			sleep 0.1
		done
		[[ -n $redis_port ]] && break
		stop "$redis_pid"
		redis_pid=
	done
	[[ -n $redis_port ]] || die "redis-server did not start"
	log "redis-server on 127.0.0.1:$redis_port"
}
rcli() { redis-cli -p "$redis_port" "$@"; }
# --- Caddy -----------------------------------------------------------------
# start_caddy NAME BODY: a Caddy whose site answers "ok" behind the apikey
# handler with BODY inside its block (the store and the limits), with an
# admin endpoint for its metrics; waits until it refuses a request without
# a key (401) and one with an unknown key (403).
start_caddy() {
	local name=$1 body=$2 p a code
	local cf=$work/$name.Caddyfile clog=$work/caddy-$name.log
	for _ in 1 2 3 4 5; do
		p=$(free_port)
		a=$(free_port)
		((a != p)) || continue
		cat >"$cf" <<-EOF
			{
				admin 127.0.0.1:$a
				auto_https off
				persist_config off
			}
			http://127.0.0.1:$p {
				bind 127.0.0.1
				apikey {
			$body
				}
				respond "ok"
			}
		EOF
		XDG_DATA_HOME=$work/data-$name XDG_CONFIG_HOME=$work/config-$name \
			"$caddy" run --config "$cf" --adapter caddyfile >"$clog" 2>&1 &
		caddy_pid[$name]=$!
		for _ in $(seq 150); do
			kill -0 "${caddy_pid[$name]}" 2>/dev/null || break
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$p/" 2>/dev/null || true)
			if [[ $code == 401 ]]; then
				caddy_port[$name]=$p
				caddy_admin[$name]=$a
				break
			fi
			sleep 0.2
		done
		if [[ ${caddy_port[$name]:-} == "$p" ]]; then
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer sk_not_a_key" "http://127.0.0.1:$p/" || true)
			[[ $code == 403 ]] || die "Caddy $name answered $code to an unknown key, want 403"
			sed "s|$work|<tmp>|g" "$cf" >"$out/$name.Caddyfile"
			return 0
		fi
		stop "${caddy_pid[$name]}"
		unset "caddy_pid[$name]"
		grep -q 'address already in use' "$clog" || die "Caddy $name did not start"
	done
	die "Caddy $name did not start (no free port)"
}
url_of() { echo "http://127.0.0.1:${caddy_port[$1]}/"; }
snapshot() {
	date +%s.%N >"$1"
	rcli INFO stats commandstats cpu | tr -d '\r' >>"$1"
}
# calls FILE-BEFORE FILE-AFTER COMMAND: the command's calls between them.
calls() {
	awk -v c="cmdstat_$3:" '
		FNR == 1 { next }
		index($0, c) == 1 { split($0, a, /[:,=]/); v[FILENAME == ARGV[1]] = a[3] }
		END { printf "%d\n", v[0] - v[1] }' "$1" "$2"
}
elapsed() { awk 'FNR == 1 { t[NR == FNR] = $1 } END { printf "%.3f\n", t[0] - t[1] }' "$1" "$2"; }

conns=
run_wrk() { # SECONDS KEYS-FILE OUTFILE NAME
	local secs=$1 keys=$2 file=$3 rc=0
	timeout --kill-after=5 $((secs + 30)) \
		wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 5s -s "$lua" \
		"$(url_of "$4")" -- "$keys" "$PAUSE_MS" >"$file" 2>&1 &
	bg_pid=$!
	wait "$bg_pid" || rc=$?
	bg_pid=
	((rc == 0)) || die "wrk failed ($rc): $(cat "$file")"
	local requests non2xx
	requests=$(awk '/ requests in /{print $1; exit}' "$file")
	non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$file")
	[[ -n $requests ]] && ((requests > 0)) || die "wrk completed no request: $(cat "$file")"
	((${non2xx:-0} == 0)) || die "$non2xx answers were not 2xx (the quota must not run out here): $(cat "$file")"
}
rps_of() { awk '/^Requests\/sec:/{ printf "%.0f", $2; exit }' "$1"; }
# rescale FILE: whether wrk's rate there was within 3 % of SYNC_RATE; if
# not, scales the connection count by SYNC_RATE / that rate.
rescale() {
	local r
	r=$(rps_of "$1")
	awk -v r="$r" -v t="$SYNC_RATE" 'BEGIN { exit !(r >= 0.97 * t && r <= 1.03 * t) }' && return 0
	conns=$(awk -v c="$conns" -v r="$r" -v t="$SYNC_RATE" 'BEGIN { n = int(c * t / r + 0.5); print (n < 1 ? 1 : n) }')
	((conns <= 2000)) || die "calibration needs over 2000 connections; is the machine too slow for SYNC_RATE=$SYNC_RATE?"
	return 1
}


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
