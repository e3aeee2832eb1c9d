#!/usr/bin/env bash
# End-to-end measures of per-key rate limits (issue 18, "Measured"), with
# Caddy built from this checkout, on loopback:
#
#   1  single   one Caddy, one key, a limit of LIMIT per WINDOW (600/1m),
#               a client sending RATE requests/s (30: 3x the limit) for
#               DURATION s (180): admitted per fixed window (aligned on the
#               Unix epoch, as the limiter's are) and the most admitted in
#               any sliding WINDOW, against the limit (target: ±1 %). The
#               store is the key file (SINGLE_STORE=file: the limiter alone,
#               no fleet) or Redis (SINGLE_STORE=redis: one server of a
#               fleet of one, syncing every 100 ms).
#   2  fleet    three Caddy servers on one redis-server, the same key, the
#               same limit and RATE: DURATION s round-robin across the
#               three, then DURATION s all on server FLEET_ONE (1): admitted
#               per window fleet-wide against the limit (target: ±3 %);
#               each server shares its counts every 100 ms
#               (stores/redis.RateSyncInterval). The fleet's own count of
#               each window, as Redis holds it (HGET of the window's hash),
#               is shown beside the client's; and each server's syncs
#               (caddy_apikey_rate_limit_syncs_total) and Redis commands per
#               second at this rate.
#   3  sync     Redis commands per server per second from the rate-limit
#               sync at SYNC_RATE (10 000) requests/s of one server, from
#               INFO commandstats (hincrby, pexpireat) before and after
#               SYNC_WINDOW s, divided by its measured length, and the CPU
#               time Redis used meanwhile (INFO cpu). One case per count of
#               keys in SYNC_KEYS (1, 100, 1 000, 10 000), the keys taken in
#               turn, each with a limit it never reaches (1e9/1m): the sync
#               sends, every 100 ms, an HINCRBY and a PEXPIREAT for each of
#               two windows (the current one and the previous, read back)
#               of every key that admitted a request since the last sync,
#               so the count grows with the keys admitting per interval.
#
# The paced client of 1 and 2 is bench/paced (Go, open loop: each request
# at its planned time, whatever the answers; it records every request's
# send and answer time and status). With ALIGN=1 it starts half a request
# period after a whole WINDOW, so the run covers whole windows (up to one
# WINDOW of waiting). The load of 3 is wrk with bench/fleet.lua (each
# connection pauses PAUSE_MS after each answer), calibrated as in
# bench/fleet.sh: 3 s runs scale the connection count until wrk's rate is
# within 3 % of SYNC_RATE.
#
# Everything listens on 127.0.0.1, on free ports. Every process the script
# starts (redis-server, the Caddy servers, wrk, the client, its Redis
# watcher) is stopped when it exits, however it exits; the temporary folder
# (keys, Caddyfiles) is removed. The raw results (the summary, every
# request of 1 and 2 as CSV, wrk's output, Caddyfiles without the temporary
# path) stay in bench/results/ratelimit-<UTC time>/ (gitignored). No raw key
# is written there or printed.
#
# Usage: bash bench/ratelimit.sh            (about 12 minutes)
#        DURATION=30 ALIGN=0 bash bench/ratelimit.sh   (a quick check)
#
# Settings (environment):
#   SCENARIOS="1 2 3"  which to run
#   DURATION=180       seconds of scenario 1, and of each phase of 2
#   RATE=30            requests/s of the client in 1 and 2
#   LIMIT=600          the limit of 1 and 2 ...
#   WINDOW=1m          ... per this window (a Caddy duration)
#   ALIGN=1            0: start the client at once (windows at the edges
#                      then partial, and not compared with the limit)
#   SINGLE_STORE=file  the store of scenario 1: file or redis
#   FLEET_ONE=1        the server (1-3) that takes all traffic in 2's phase 2
#   SYNC_RATE=10000    target requests/s of scenario 3
#   SYNC_KEYS="1 100 1000 10000"  the cases of 3: keys in turn
#   SYNC_WINDOW=20     seconds measured per case of 3
#   SYNC_WARMUP=5      seconds of load before each of 3's windows
#   PAUSE_MS=10        3: each wrk connection's pause after an answer
#   THREADS=1          3: wrk threads
#   CADDY=             a Caddy binary with the plugin, instead of building
#                      one (go build ./cmd/caddy)
#
# Needs Go, curl, jq, ss, wrk, redis-server and redis-cli (Debian:
# apt-get install -y wrk redis-server jq).
set -euo pipefail

SCENARIOS=${SCENARIOS:-1 2 3}
DURATION=${DURATION:-180}
RATE=${RATE:-30}
LIMIT=${LIMIT:-600}
WINDOW=${WINDOW:-1m}
ALIGN=${ALIGN:-1}
SINGLE_STORE=${SINGLE_STORE:-file}
FLEET_ONE=${FLEET_ONE:-1}
SYNC_RATE=${SYNC_RATE:-10000}
SYNC_KEYS=${SYNC_KEYS:-1 100 1000 10000}
SYNC_WINDOW=${SYNC_WINDOW:-20}
SYNC_WARMUP=${SYNC_WARMUP:-5}
PAUSE_MS=${PAUSE_MS:-10}
THREADS=${THREADS:-1}
CADDY=${CADDY:-}

log() { printf 'ratelimit: %s\n' "$*" >&2; }
die() {
	printf 'ratelimit: FAILED: %s\n' "$*" >&2
	exit 1
}

for v in DURATION RATE LIMIT SYNC_RATE SYNC_WINDOW SYNC_WARMUP PAUSE_MS THREADS FLEET_ONE; do
	[[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} >= 1)) || die "$v must be a whole number >= 1, got '${!v}'"
done
((FLEET_ONE <= 3)) || die "FLEET_ONE must be 1, 2 or 3"
[[ $ALIGN == 0 || $ALIGN == 1 ]] || die "ALIGN must be 0 or 1"
[[ $SINGLE_STORE == file || $SINGLE_STORE == redis ]] || die "SINGLE_STORE must be file or redis"
for k in $SYNC_KEYS; do
	[[ $k =~ ^[0-9]+$ ]] && ((k >= 1)) || die "SYNC_KEYS holds '$k'; give key counts >= 1"
done
for s in $SCENARIOS; do
	[[ $s == 1 || $s == 2 || $s == 3 ]] || die "SCENARIOS holds '$s'; give some of 1 2 3"
done
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

for tool in go curl jq ss wrk redis-server redis-cli; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "$tool is not installed (Debian: apt-get install -y wrk redis-server jq curl iproute2)"
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
lua=$repo/bench/fleet.lua
[[ -f $lua ]] || die "missing $lua"

# --- processes, cleanup and the helpers shared with bench/quota.sh ---------
bench=ratelimit
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

# --- build -----------------------------------------------------------------
if [[ -n $CADDY ]]; then
	caddy=$CADDY
	log "using $caddy"
else
	log "building Caddy with the plugin (go build ./cmd/caddy)"
	go build -o "$work/caddy" ./cmd/caddy
	caddy=$work/caddy
fi
# (the list read whole first: grep -q stopping early would fail the pipe)
modules=$("$caddy" list-modules) || die "$caddy list-modules failed"
grep -qx 'http.handlers.apikey.stores.redis' <<<"$modules" ||
	die "$caddy has no http.handlers.apikey.stores.redis module"
go build -o "$work/paced" ./bench/paced
paced=$work/paced

summary=$out/summary.txt
{
	echo "Per-key rate limits end to end (bench/ratelimit.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "machine: $(nproc) cores, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
	echo "software: $("$caddy" version | cut -d' ' -f1), $(go version | cut -d' ' -f3), Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
	echo "settings: SCENARIOS='$SCENARIOS' DURATION=$DURATION RATE=$RATE LIMIT=$LIMIT WINDOW=$WINDOW ALIGN=$ALIGN SINGLE_STORE=$SINGLE_STORE FLEET_ONE=$FLEET_ONE SYNC_RATE=$SYNC_RATE SYNC_KEYS=$SYNC_KEYS SYNC_WINDOW=$SYNC_WINDOW"
	echo "load average at the start: $(loadavg)"
} >"$summary"

# --- Redis -----------------------------------------------------------------
if want 2 || want 3 || { want 1 && [[ $SINGLE_STORE == redis ]]; }; then
	start_redis
	redis_url=redis://127.0.0.1:$redis_port/0
fi

# --- Caddy and keys ----------------------------------------------------------

# check_limited NAME KEYFILE: one request with the key in KEYFILE (not the
# measured key: it would spend one of its requests) must be admitted with
# the limit's headers.
check_limited() {
	local h
	h=$(curl -s -D - -o /dev/null --max-time 5 -H @<(printf 'Authorization: Bearer %s\n' "$(<"$2")") "$(url_of "$1")" | tr -d '\r')
	[[ $h == "HTTP/1.1 200"* ]] || die "Caddy $1 did not admit the check key: $(head -1 <<<"$h")"
	grep -qi "^x-ratelimit-limit: $LIMIT\$" <<<"$h" || die "Caddy $1 answered without X-RateLimit-Limit: $LIMIT"
	grep -qi '^ratelimit-policy: ' <<<"$h" || die "Caddy $1 answered without RateLimit-Policy"
}

# metric NAME PATTERN: the sum of the values of the samples of Caddy NAME's
# /metrics whose line matches PATTERN (an extended regular expression).
metric() {
	curl -s --max-time 5 "http://127.0.0.1:${caddy_admin[$1]}/metrics" |
		awk -v re="$2" '$0 ~ re && $1 !~ /^#/ { s += $NF } END { printf "%d\n", s }'
}

# add_key STORE-ARGS... -- LABEL FILE: makes a key with caddy apikey add;
# its raw value goes to FILE (mode 0600), its id is printed.
add_key() {
	local args=() label file id
	while [[ $1 != -- ]]; do
		args+=("$1")
		shift
	done
	label=$2 file=$3
	(umask 077 && "$caddy" apikey add "${args[@]}" --create --label "$label" >"$file" 2>"$work/add.err") ||
		die "caddy apikey add: $(cat "$work/add.err")"
	id=$(awk '$1 == "id:" { print $2; exit }' "$work/add.err")
	[[ -n $id ]] || die "caddy apikey add printed no id"
	echo "$id"
}

# run_paced ARGS...: the paced client in the background (so that a signal
# stops it), its report on stdout.
run_paced() {
	local rc=0
	"$paced" "$@" >"$work/paced.out" 2>"$work/paced.log" &
	bg_pid=$!
	wait "$bg_pid" || rc=$?
	bg_pid=
	cat "$work/paced.log" >&2
	cat "$work/paced.out"
	((rc == 0)) || die "the paced client failed ($rc)"
}

align_args=()
((ALIGN)) && align_args=(-align "$WINDOW")
# The window in seconds (the Redis hashes are named by it).
window_s=$(WINDOW=$WINDOW awk 'BEGIN {
	w = ENVIRON["WINDOW"]; s = 0
	while (match(w, /^[0-9]+(h|m|s)/)) {
		u = substr(w, RLENGTH, 1); v = substr(w, 1, RLENGTH - 1)
		s += v * (u == "h" ? 3600 : u == "m" ? 60 : 1); w = substr(w, RLENGTH + 1)
	}
	if (w != "" || s == 0) exit 1
	print s }') || die "WINDOW must be like 1m, 30s or 1h (h, m and s only here)"

# --- 1: one server -----------------------------------------------------------
if want 1; then
	log "1 single: one Caddy ($SINGLE_STORE store), one key, $LIMIT/$WINDOW, $RATE requests/s for ${DURATION}s"
	if [[ $SINGLE_STORE == file ]]; then
		store=(--file "$work/single-keys.json")
		body="		keys_file $work/single-keys.json"
	else
		store=(--redis "$redis_url" --prefix single:)
		body="		redis $redis_url {
			prefix single:
		}"
	fi
	add_key "${store[@]}" -- "rate bench" "$work/single.key" >/dev/null
	add_key "${store[@]}" -- "check" "$work/single-check.key" >/dev/null
	start_caddy single "$body
		rate_limit $LIMIT $WINDOW"
	check_limited single "$work/single-check.key"
	la0=$(loadavg)
	run_paced -name "1 single ($SINGLE_STORE store)" -key "$work/single.key" -rate "$RATE" "${align_args[@]}" \
		-limit "$LIMIT" -window "$WINDOW" -tolerance 1 -server "$(url_of single)" \
		-phase "${DURATION}s=1" -out "$out/single.csv" >"$work/single.report"
	la1=$(loadavg)
	{
		echo
		cat "$work/single.report"
		echo "  Caddy's caddy_apikey_requests_total: ok $(metric single 'caddy_apikey_requests_total.*result="ok"'), rate_limited $(metric single 'caddy_apikey_requests_total.*result="rate_limited"') (ok includes the one check request of another key)"
		echo "  load average: $la0 before, $la1 after"
	} | tee -a "$summary"
	stop_caddies
fi

# --- 2: a fleet of three ---------------------------------------------------------
# snapshot FILE: the time, then Redis's counters (one INFO call).

if want 2; then
	log "2 fleet: three Caddy servers on one Redis, one key, $LIMIT/$WINDOW, $RATE requests/s: ${DURATION}s round-robin, then ${DURATION}s all on server $FLEET_ONE"
	pre=fleet:
	id=$(add_key --redis "$redis_url" --prefix "$pre" -- "rate bench" "$work/fleet.key")
	add_key --redis "$redis_url" --prefix "$pre" -- "check" "$work/fleet-check.key" >/dev/null
	for s in s1 s2 s3; do
		start_caddy "$s" "		redis $redis_url {
			prefix $pre
		}
		rate_limit $LIMIT $WINDOW"
	done
	for s in s1 s2 s3; do check_limited "$s" "$work/fleet-check.key"; done
	# The watcher reads the fleet's count of the key in each window's hash
	# every 5 s; the last reading of a window is its total (a hash lasts
	# until two windows after its own).
	(
		while :; do
			for k in $(rcli --scan --pattern "{$pre}rl:$window_s:*"); do
				echo "${k##*:} $(rcli HGET "$k" "$id")"
			done
			sleep 5
		done
	) >"$work/fleet.watch" 2>/dev/null &
	watch_pid=$!
	sleep 1 # the check requests' syncs
	declare -A syncs0=()
	for s in s1 s2 s3; do syncs0[$s]=$(metric "$s" 'caddy_apikey_rate_limit_syncs_total.*result="ok"'); done
	snapshot "$work/fleet.before"
	la0=$(loadavg)
	run_paced -name "2 fleet (3 servers, Redis)" -key "$work/fleet.key" -rate "$RATE" "${align_args[@]}" \
		-limit "$LIMIT" -window "$WINDOW" -tolerance 3 \
		-server "$(url_of s1)" -server "$(url_of s2)" -server "$(url_of s3)" \
		-phase "${DURATION}s=1,2,3" -phase "${DURATION}s=$FLEET_ONE" -out "$out/fleet.csv" >"$work/fleet.report"
	la1=$(loadavg)
	sleep 1 # the last syncs
	snapshot "$work/fleet.after"
	for k in $(rcli --scan --pattern "{$pre}rl:$window_s:*"); do
		echo "${k##*:} $(rcli HGET "$k" "$id")"
	done >>"$work/fleet.watch"
	stop "$watch_pid"
	watch_pid=
	# Rates over the client's run: nothing is sent before it (while it
	# waits for a whole window) nor after.
	secs=$((2 * DURATION))
	{
		echo
		cat "$work/fleet.report"
		echo "  the fleet's count of the key per window in Redis (HGET {$pre}rl:$window_s:<index> <id>, last reading):"
		awk 'NF == 2 && $2 != "" { v[$1] = $2 } END { for (i in v) print i, v[i] }' "$work/fleet.watch" | sort -n |
			while read -r i v; do
				printf '    %s-%s  %s\n' "$(date -u -d "@$((i * window_s))" +%H:%M:%S)" "$(date -u -d "@$(((i + 1) * window_s))" +%H:%M:%S)" "$v"
			done
		for s in s1 s2 s3; do
			ok=$(($(metric "$s" 'caddy_apikey_rate_limit_syncs_total.*result="ok"') - syncs0[$s]))
			er=$(metric "$s" 'caddy_apikey_rate_limit_syncs_total.*result="error"')
			echo "  $s: syncs ok $ok, error $er ($(awk -v n="$ok" -v t="$secs" 'BEGIN { printf "%.2f", n / t }')/s over the ${secs}s run); requests ok $(metric "$s" 'caddy_apikey_requests_total.*result="ok"'), rate_limited $(metric "$s" 'caddy_apikey_requests_total.*result="rate_limited"')"
		done
		hi=$(calls "$work/fleet.before" "$work/fleet.after" hincrby)
		px=$(calls "$work/fleet.before" "$work/fleet.after" pexpireat)
		echo "  Redis during the run: hincrby $hi, pexpireat $px: $(awk -v a="$hi" -v b="$px" -v t="$secs" 'BEGIN { printf "%.1f", (a + b) / t / 3 }') a second per server over the ${secs}s (sync interval 100 ms;"
		echo "  a server syncs only after it admitted a request of the key: at most 10 times a second)"
		echo "  load average: $la0 before, $la1 after"
	} | tee -a "$summary"
	stop_caddies
fi

# --- 3: Redis commands of the sync at SYNC_RATE -------------------------------------

# redis_cpu FILE-BEFORE FILE-AFTER: seconds of CPU (user + system) Redis
# used between them.
redis_cpu() {
	awk '
		FNR == 1 { next }
		/^used_cpu_(user|sys):/ { split($0, a, ":"); v[FILENAME == ARGV[1]] += a[2] }
		END { printf "%.3f\n", v[0] - v[1] }' "$1" "$2"
}

# sync_case KEYS: one Caddy on a key set of KEYS keys (prefix kKEYS:),
# the limit 1e9/1m for every key; calibrate, warm up, measure.
sync_case() {
	local k=$1 name=k$1 i f keys=$work/k$1.keys
	log "3 $name: $k keys: generating and importing them (caddy apikey import)"
	go run ./bench/genkeys -n "$k" -keys "$work/$name.json" -raw "$work/$name-one.txt" \
		-more "$keys" -count "$k" 2>/dev/null
	i=$(sort -u "$keys" | grep -c . || true)
	((i == k)) || die "genkeys kept $i raw keys, want $k"
	"$caddy" apikey import --file "$work/$name.json" --redis "$redis_url" --prefix "$name:" >"$work/import.out" 2>&1 ||
		die "import: $(cat "$work/import.out")"
	start_caddy "$name" "		redis $redis_url {
			prefix $name:
		}
		rate_limit 1000000000 1m"
	conns=$(((SYNC_RATE * PAUSE_MS + 999) / 1000))
	for i in 1 2 3 4; do
		f=$out/$name.calibrate-$i.wrk
		run_wrk 3 "$keys" "$f" "$name"
		log "3 $name: calibrating: $conns connections x ${PAUSE_MS} ms pause: $(rps_of "$f") requests/s"
		rescale "$f" && break
	done
	run_wrk "$SYNC_WARMUP" "$keys" "$out/$name.warmup.wrk" "$name"
	rescale "$out/$name.warmup.wrk" || true
	log "3 $name: measuring ${SYNC_WINDOW}s with $conns connections"
	local ok0 ok1 la0 la1
	ok0=$(metric "$name" 'caddy_apikey_rate_limit_syncs_total.*result="ok"')
	la0=$(loadavg)
	snapshot "$work/$name.before"
	run_wrk "$SYNC_WINDOW" "$keys" "$out/$name.wrk" "$name"
	snapshot "$work/$name.after"
	la1=$(loadavg)
	ok1=$(metric "$name" 'caddy_apikey_rate_limit_syncs_total.*result="ok"')
	local secs hi px ev cpu
	secs=$(elapsed "$work/$name.before" "$work/$name.after")
	hi=$(calls "$work/$name.before" "$work/$name.after" hincrby)
	px=$(calls "$work/$name.before" "$work/$name.after" pexpireat)
	ev=$(calls "$work/$name.before" "$work/$name.after" evalsha)
	cpu=$(redis_cpu "$work/$name.before" "$work/$name.after")
	awk -v k="$k" -v r="$(rps_of "$out/$name.wrk")" -v c="$conns" -v t="$secs" -v cpu="$cpu" \
		-v hi="$hi" -v px="$px" -v ev="$ev" -v s="$((ok1 - ok0))" -v la0="$la0" -v la1="$la1" 'BEGIN {
		printf "  %6d %9d %6d %7.2fs %10.1f %11.1f %10.1f %8.2f %8.1f %8.1f %9.1f %%   %s / %s\n",
			k, r, c, t, hi / t, px / t, (hi + px) / t, (hi + px) / t / r, s / t, ev / t, 100 * cpu / t, la0, la1 }' | tee -a "$summary"
	stop_caddies
}

if want 3; then
	log "3 sync: Redis commands of the rate-limit sync at $SYNC_RATE requests/s of one server"
	{
		echo
		echo "3 sync: Redis commands per server per second from the rate-limit sync: one Caddy on Redis, every key limited to 1000000000/1m"
		echo "  (never reached), wrk paced to about $SYNC_RATE requests/s over the keys in turn (${PAUSE_MS} ms pause after each answer),"
		echo "  ${SYNC_WARMUP}s warm-up, then INFO commandstats and cpu before and after ${SYNC_WINDOW}s; sync interval 100 ms"
		printf '  %6s %9s %6s %8s %10s %11s %10s %8s %8s %8s %11s   %s\n' \
			keys 'req/s' conns window 'hincrby/s' 'pexpireat/s' 'sync cmd/s' 'per req' 'syncs/s' 'evalsha/s' 'Redis CPU' 'load average before / after'
	} | tee -a "$summary"
	for k in $SYNC_KEYS; do sync_case "$k"; done
	echo "  (evalsha: the last-used writes, not the rate limits; syncs/s: caddy_apikey_rate_limit_syncs_total{result=\"ok\"};" | tee -a "$summary"
	echo "   Redis CPU: its used_cpu_user + used_cpu_sys over the window, all commands)" | tee -a "$summary"
fi

echo "load average at the end: $(loadavg)" >>"$summary"
log "results in ${out#"$repo"/}"
