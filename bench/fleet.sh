#!/usr/bin/env bash
# What one Caddy server costs the Redis server that holds its key set:
# Redis operations per Caddy instance per second, idle and under load.
#
# One Caddy built from this checkout serves `respond "ok"` behind the apikey
# handler on the Redis store, with a key set of KEYS keys, on loopback. Each
# server follows the key set's change log (a blocking XREAD of up to 1 s on
# {apikey:}log, and a GET of {apikey:}version whenever a read comes back
# empty) and writes last-used times in batches (one EVALSHA of a Lua script
# per 500 keys, all of a flush in one round trip; a first use within
# min(usage_interval, 3 s), then a key at most once per usage_interval).
# The cases, each measured over WINDOW seconds after a warm-up:
#
#   idle        no request at all (not even during the warm-up)
#   load        about RATE requests/s from wrk, spread over all KEYS keys
#               (Authorization: Bearer), usage_interval INTERVAL
#   load        the same with usage_interval FAST_INTERVAL (a new Caddy):
#               shows the batching, at most one flush a second
#
# The load is paced: wrk has no rate option, so bench/fleet.lua has each
# connection wait PAUSE_MS after each answer; C connections then send a bit
# under C * 1000 / PAUSE_MS requests/s, as each answer's latency and wrk's
# timer add to the cycle (100 x 10 ms gave about 8 000/s on a 2-core VM).
# So each load case calibrates first: short wrk runs that scale the
# connection count by RATE / achieved rate until the rate is within 3% of
# RATE; the warm-up's rate scales it once more for the window. On a shared
# machine the rate still drifts: the report gives the rate wrk achieved in
# each window (and the script fails if any answer was not 2xx).
#
# Redis operations come from the Redis server's own counters, read before
# and after each window with one `INFO stats commandstats clients`: the
# calls of each command (commandstats) over the window's measured length.
# The script's own INFO calls are not counted (cmdstat_info is left out);
# nothing else talks to Redis during a window. Redis counts the commands a
# Lua script runs (HGET, HSET, ...) as calls of their own besides the
# EVALSHA itself: the report shows them apart from the commands Caddy sends
# (which include what its Redis client adds on its own, such as a PING on
# an idle connection or a SCRIPT LOAD before a batch of scripts).
# total_commands_processed is shown too; its delta counts everything, the
# opening INFO included.
#
# Everything runs on 127.0.0.1, on free ports; every process the script
# starts (redis-server, Caddy, wrk) is stopped when it exits, however it
# exits. Temporary files live in a mktemp folder, removed at exit.
#
# Usage: bash bench/fleet.sh
#
# Settings (environment):
#   KEYS=1000            keys in the key set
#   RATE=10000           target requests/s of the load cases
#   PAUSE_MS=10          each connection's pause after an answer, in ms
#   CONNECTIONS=         wrk connections to start calibrating from; default
#                        RATE * PAUSE_MS / 1000 (100)
#   CALIBRATE=1          0: no calibration, CONNECTIONS as given
#   THREADS=1            wrk threads
#   WARMUP=5             seconds before each window (idle: Caddy running
#                        without traffic; load: the same load as the window,
#                        long enough for the first uses of all keys, due
#                        within 3 s, to be written before the window)
#   WINDOW=20            seconds per measured window
#   INTERVAL=15m         usage_interval of the idle and first load case
#   FAST_INTERVAL=1s     usage_interval of the third case; empty: skip it
#   CADDY=               a Caddy binary with the plugin to use instead of
#                        building one from the checkout (go build ./cmd/caddy)
#
# Needs Go, curl, wrk, redis-server and redis-cli (Debian: apt-get install
# wrk redis-server).
set -euo pipefail

KEYS=${KEYS:-1000}
RATE=${RATE:-10000}
PAUSE_MS=${PAUSE_MS:-10}
CALIBRATE=${CALIBRATE:-1}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-5}
WINDOW=${WINDOW:-20}
INTERVAL=${INTERVAL:-15m}
FAST_INTERVAL=${FAST_INTERVAL-1s}
CADDY=${CADDY:-}

log() { printf 'fleet: %s\n' "$*" >&2; }
die() {
	printf 'fleet: FAILED: %s\n' "$*" >&2
	exit 1
}

for v in KEYS RATE PAUSE_MS THREADS WARMUP WINDOW; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((KEYS >= 1 && RATE >= 1 && PAUSE_MS >= 1 && THREADS >= 1 && WINDOW >= 1)) ||
	die "KEYS, RATE, PAUSE_MS, THREADS and WINDOW must be at least 1"
((WARMUP >= 4)) || die "WARMUP must be at least 4 s: first uses are written within 3 s, and must be before the window"
CONNECTIONS=${CONNECTIONS:-$(((RATE * PAUSE_MS + 999) / 1000))}
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1)) || die "CONNECTIONS must be a whole number >= 1"
conns=$CONNECTIONS
calibrated=

for tool in go curl wrk redis-server redis-cli ss; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
lua=$repo/bench/fleet.lua
[[ -f $lua ]] || die "missing $lua"

# --- processes and cleanup -----------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-fleet.XXXXXX")
caddy_pid=
redis_pid=
wrk_pid=

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

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	# wrk first, then Caddy (it writes pending last-used times to Redis as
	# it stops), then Redis.
	stop "$wrk_pid"
	stop "$caddy_pid"
	stop "$redis_pid"
	if ((rc != 0)) && [[ -d $work ]]; then
		for f in "$work"/caddy*.log "$work"/redis.log; do
			[[ -s $f ]] || continue
			printf 'fleet: last lines of %s:\n' "${f##*/}" >&2
			tail -n 15 "$f" | sed 's/^/    /' >&2
		done
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port prints a port that nothing listens on at the moment, below the
# ephemeral range (so that no outgoing connection holds it either). Whoever
# takes it may still lose a race for it: the callers retry.
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

# --- build and keys --------------------------------------------------------
if [[ -n $CADDY ]]; then
	caddy=$CADDY
	log "using $caddy"
else
	log "building Caddy with the plugin (go build ./cmd/caddy)"
	go build -o "$work/caddy" ./cmd/caddy
	caddy=$work/caddy
fi
"$caddy" list-modules | grep -x 'http.handlers.apikey.stores.redis' >/dev/null ||
	die "$caddy has no http.handlers.apikey.stores.redis module"

log "generating $KEYS keys"
# -more with -count KEYS keeps the raw value of every key, one a line.
go run ./bench/genkeys -n "$KEYS" -keys "$work/keys.json" -raw "$work/raw-one.txt" \
	-more "$work/raw-keys.txt" -count "$KEYS" 2>/dev/null
nraw=$(sort -u "$work/raw-keys.txt" | grep -c . || true)
((nraw == KEYS)) || die "genkeys kept $nraw raw keys, want $KEYS"

# --- Redis -----------------------------------------------------------------
redis_port=
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
rcli() { redis-cli -p "$redis_port" "$@"; }
redis_url=redis://127.0.0.1:$redis_port/0
prefix=apikey:
log "redis-server $(rcli INFO server | tr -d '\r' | awk -F: '$1 == "redis_version" { print $2 }') on 127.0.0.1:$redis_port"

log "importing the keys into Redis (caddy apikey import)"
"$caddy" apikey import --file "$work/keys.json" --redis "$redis_url" --prefix "$prefix" \
	>"$work/import.out" 2>&1 || die "import: $(cat "$work/import.out")"
n=$(rcli HLEN "{$prefix}records")
((n == KEYS)) || die "Redis holds $n records after the import, want $KEYS"

# --- Caddy -----------------------------------------------------------------
caddy_port=
caddy_log=

# start_caddy INTERVAL: starts a Caddy whose apikey handler uses the key set
# in Redis with that usage_interval; waits until it answers. No admin
# endpoint (admin off): the script stops Caddy by its process id.
start_caddy() {
	local iv=$1 p code
	caddy_log=$work/caddy-$iv.log
	for _ in 1 2 3 4 5; do
		p=$(free_port)
		cat >"$work/Caddyfile" <<-EOF
			{
				admin off
				auto_https off
				persist_config off
			}
			http://127.0.0.1:$p {
				bind 127.0.0.1
				apikey {
					redis $redis_url {
						prefix $prefix
					}
					usage_interval $iv
				}
				respond "ok"
			}
		EOF
		XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config \
			"$caddy" run --config "$work/Caddyfile" --adapter caddyfile >"$caddy_log" 2>&1 &
		caddy_pid=$!
		# Ready when it answers; a request without a key (401) and one
		# with an unknown key (403) are not uses, so the key set sees no
		# traffic until the load starts.
		for _ in $(seq 150); do
			kill -0 "$caddy_pid" 2>/dev/null || break
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$p/" 2>/dev/null || true)
			if [[ $code == 401 ]]; then
				caddy_port=$p
				break
			fi
			sleep 0.2
		done
		if [[ -n $caddy_port && $caddy_port == "$p" ]]; then
			code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer sk_not_a_key" "http://127.0.0.1:$p/" || true)
			[[ $code == 403 ]] || die "Caddy answered $code to an unknown key, want 403"
			return 0
		fi
		stop "$caddy_pid"
		caddy_pid=
		grep -q 'address already in use' "$caddy_log" || die "Caddy did not start"
	done
	die "Caddy did not start (no free port)"
}

stop_caddy() {
	stop "$caddy_pid"
	caddy_pid=
	caddy_port=
}

# --- measuring -------------------------------------------------------------
now() { date +%s.%N; }

# snapshot FILE: the time, then Redis's counters (one INFO call).
snapshot() {
	now >"$1"
	rcli INFO stats commandstats clients | tr -d '\r' >>"$1"
}

# run_wrk SECONDS OUTFILE: the paced load over all keys, on $conns
# connections; fails unless every answer was 2xx.
run_wrk() {
	local secs=$1 file=$2 rc=0
	timeout --kill-after=5 $((secs + 30)) \
		wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 5s -s "$lua" \
		"http://127.0.0.1:$caddy_port/" -- "$work/raw-keys.txt" "$PAUSE_MS" >"$file" 2>&1 &
	wrk_pid=$!
	wait "$wrk_pid" || rc=$?
	wrk_pid=
	((rc == 0)) || die "wrk failed ($rc): $(cat "$file")"
	local requests non2xx
	requests=$(awk '/ requests in /{print $1; exit}' "$file")
	non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$file")
	[[ -n $requests ]] && ((requests > 0)) || die "wrk completed no request: $(cat "$file")"
	((${non2xx:-0} == 0)) || die "$non2xx answers were not 2xx: $(cat "$file")"
}

rps_of() { awk '/^Requests\/sec:/{ printf "%.0f", $2; exit }' "$1"; }

# rescale WRK_OUTPUT: whether wrk's rate there was within 3% of RATE; if
# not, scales the connection count by RATE / that rate.
rescale() {
	local r
	r=$(rps_of "$1")
	awk -v r="$r" -v t="$RATE" 'BEGIN { exit !(r >= 0.97 * t && r <= 1.03 * t) }' && return 0
	conns=$(awk -v c="$conns" -v r="$r" -v t="$RATE" 'BEGIN { n = int(c * t / r + 0.5); print (n < 1 ? 1 : n) }')
	((conns <= 20 * CONNECTIONS)) || die "calibration needs over $((20 * CONNECTIONS)) connections; is the machine too slow for RATE=$RATE?"
	return 1
}

# calibrate NAME: short runs, from the connection count of the last case,
# until wrk's rate is within 3% of RATE (at most 4 runs of 3 s). The first
# uses they make are written within 3 s, before the warm-up that follows
# ends.
calibrate() {
	local i f
	for i in 1 2 3 4; do
		f=$work/case-$1.calibrate-$i
		run_wrk 3 "$f"
		log "$1: calibrating: $conns connections x ${PAUSE_MS} ms pause: $(rps_of "$f") requests/s"
		rescale "$f" && break
	done
	calibrated=1
}

cases=()
# measure NAME INTERVAL LOAD(0|1): one window; keeps its figures in
# $work/case-NAME.*.
measure() {
	local name=$1 iv=$2 load=$3
	cases+=("$name")
	if ((load)); then
		[[ $CALIBRATE == 1 ]] && calibrate "$name"
		log "$name: warming up with load for ${WARMUP}s"
		run_wrk "$WARMUP" "$work/case-$name.warmup"
		log "$name: warm-up: $conns connections: $(rps_of "$work/case-$name.warmup") requests/s"
		[[ $CALIBRATE == 1 ]] && ! rescale "$work/case-$name.warmup" && log "$name: $conns connections for the window"
		echo "$conns" >"$work/case-$name.conns"
		# Every key's first use must be written before the window.
		local used
		used=$(rcli HLEN "{$prefix}used")
		((used == KEYS)) || log "$name: warning: $used of $KEYS keys have a last use in Redis after the warm-up"
		echo "$used" >"$work/case-$name.used"
		log "$name: measuring ${WINDOW}s"
		snapshot "$work/case-$name.before"
		run_wrk "$WINDOW" "$work/case-$name.wrk"
		snapshot "$work/case-$name.after"
	else
		log "$name: ${WARMUP}s warm-up, no traffic"
		sleep "$WARMUP"
		echo "-" >"$work/case-$name.used"
		echo "-" >"$work/case-$name.conns"
		log "$name: measuring ${WINDOW}s, no traffic"
		snapshot "$work/case-$name.before"
		sleep "$WINDOW"
		snapshot "$work/case-$name.after"
	fi
	echo "$iv" >"$work/case-$name.interval"
}

start_caddy "$INTERVAL"
measure idle "$INTERVAL" 0
measure load "$INTERVAL" 1
if [[ -n $FAST_INTERVAL ]]; then
	stop_caddy
	rcli DEL "{$prefix}used" >/dev/null # so that every key's first use is new again
	start_caddy "$FAST_INTERVAL"
	measure "load-$FAST_INTERVAL" "$FAST_INTERVAL" 1
fi
stop_caddy

# --- report ----------------------------------------------------------------
# delta NAME: "command calls" lines for the window (INFO left out), and
# "#window SECONDS", "#tcp DELTA", "#clients N".
delta() {
	awk '
		FNR == 1 { t[FILENAME == ARGV[1]] = $1; next }
		/^cmdstat_/ {
			split($0, a, /[:,=]/)
			c = substr(a[1], 9)
			if (FILENAME == ARGV[1]) before[c] = a[3]; else after[c] = a[3]
			cmds[c] = 1
		}
		/^total_commands_processed:/ { split($0, a, ":"); tcp[FILENAME == ARGV[1]] = a[2] }
		/^connected_clients:/ { split($0, a, ":"); clients = a[2] }
		END {
			for (c in cmds) if (c != "info" && after[c] - before[c] > 0) print c, after[c] - before[c]
			printf "#window %.3f\n", t[0] - t[1]
			print "#tcp", tcp[0] - tcp[1]
			print "#clients", clients - 1   # less redis-cli itself
		}' "$work/case-$1.before" "$work/case-$1.after"
}

# Commands that Caddy never sends itself: they reach Redis only from inside
# its Lua scripts (usageScript: HGET, HSET; headScript, run on a full read
# of the key set: XREVRANGE, and a GET that is counted as sent; editScript,
# which only caddy apikey runs: INCR, XADD, HSET).
in_script='^(hget|hset|xrevrange|incr|xadd)$'

caddy_version=$("$caddy" version | cut -d' ' -f1)
redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
echo
echo "Redis operations per Caddy instance per second (bench/fleet.sh)"
echo
echo "machine: $(nproc) cores, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr); load average before the report $(cut -d' ' -f1-3 /proc/loadavg)"
echo "software: Redis $redis_version, Caddy $caddy_version, $(go version | cut -d' ' -f3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "setup: one Caddy instance (so per instance = the Redis total), $KEYS keys at prefix $prefix, loopback;"
echo "       load: target $RATE requests/s: wrk $THREADS thread(s), ${PAUSE_MS} ms pause after each answer, keys in turn;"
echo "       wrk conns = its connections in the window$([[ -n $calibrated ]] && echo ' (calibrated)')"
if [[ -n $calibrated ]]; then
	echo "       warm-up: idle ${WARMUP}s; load: calibration runs of 3 s, then ${WARMUP}s at the window's load"
else
	echo "       warm-up: ${WARMUP}s before each window (load: at the window's load)"
fi
echo "counted: every command Redis executed in the window (INFO commandstats, after minus before), over the window's measured"
echo "         length; the script's own INFO calls left out; nothing else connected. 'sent' = commands Caddy sent;"
echo "         'in scripts' = commands run by its Lua scripts (inside an EVALSHA, counted by Redis besides it)."
echo "         total_cmds = total_commands_processed after minus before (all commands, the opening INFO included)."
echo "         connections = Redis clients connected at the window's end, less redis-cli."
echo
printf '%-10s %-6s %8s %10s %8s %10s %10s %10s %12s %11s %11s\n' \
	case usage window 'req/s' non-2xx 'wrk conns' 'ops/s' 'sent/s' 'in scripts/s' total_cmds connections
for c in "${cases[@]}"; do
	delta "$c" >"$work/case-$c.delta"
	if [[ -f $work/case-$c.wrk ]]; then
		rps=$(rps_of "$work/case-$c.wrk")
		non2xx=$(awk '/Non-2xx or 3xx responses:/{ print $NF; exit }' "$work/case-$c.wrk")
		non2xx=${non2xx:-0}
	else
		rps=0 non2xx=-
	fi
	awk -v name="$c" -v iv="$(cat "$work/case-$c.interval")" -v rps="$rps" -v non2xx="$non2xx" \
		-v conns="$(cat "$work/case-$c.conns")" -v re="$in_script" '
		$1 == "#window" { w = $2; next }
		$1 == "#tcp" { tcp = $2; next }
		$1 == "#clients" { cl = $2; next }
		{ all += $2; if ($1 ~ re) ins += $2; else sent += $2 }
		END {
			printf "%-10s %-6s %7.2fs %10s %8s %10s %10.2f %10.2f %12.2f %11d %11d\n",
				name, iv, w, rps, non2xx, conns, all / w, sent / w, ins / w, tcp, cl
		}' "$work/case-$c.delta"
done

echo
echo "by command: calls in the window (per second); * = run inside a Lua script"
# Always the commands of the follower and the usage writer, then any other
# that was called in some window.
{
	printf '%s\n' xread get evalsha hmget
	for c in "${cases[@]}"; do awk '$1 !~ /^#/ { print $1 }' "$work/case-$c.delta"; done
} | awk '!seen[$0]++' >"$work/commands"
printf '%-14s' command
for c in "${cases[@]}"; do printf ' %22s' "$c"; done
echo
while read -r cmd; do
	label=$cmd
	[[ $cmd =~ $in_script ]] && label="$cmd *"
	printf '%-14s' "$label"
	for c in "${cases[@]}"; do
		awk -v cmd="$cmd" '
			$1 == "#window" { w = $2; next }
			$1 == cmd { n = $2 }
			END { printf " %22s", sprintf("%d (%.2f/s)", n, n / w) }' "$work/case-$c.delta"
	done
	echo
done <"$work/commands"

echo
for c in "${cases[@]}"; do
	used=$(cat "$work/case-$c.used")
	[[ $used == - ]] && continue
	echo "$c: $used of $KEYS keys had their first use written to Redis before the window."
done
