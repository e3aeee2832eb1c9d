#!/usr/bin/env bash
# Start and restart of a Caddy whose keys are in Redis, with a cache_file:
# how long from spawning the process to its first admitted request, on a
# first start (nothing local: the whole key set is read from Redis) and on
# restarts from the cache file, and the memory each process takes.
#
# One redis-server of its own on loopback holds KEYS keys, imported with
# `caddy apikey import`; one Caddy built from this checkout serves them
# (redis store, cache_file in a temporary folder). The script prints:
#
#   first start        spawn to first 200, no cache file (a full read)
#   restart            spawn to first 200 after a graceful stop, with the
#                      cache file the first run wrote, and, while the server
#                      was down, one key revoked and one added (through
#                      `caddy apikey`): the revoked key must get 403 and the
#                      added one 200 from the first request the restarted
#                      server answers (the script fails otherwise)
#   restart, log trimmed  the same after the key set's log was trimmed
#                      while the server was down, so that the log cannot
#                      cover the gap: a full read
#   restart, Redis down   spawn to first 200 with Redis stopped: the cache
#                      file alone
#   steady RSS, peak   VmRSS SETTLE seconds after the first 200, and VmHWM
#                      (the peak over the process's life) of each process
#
# Each time is wall-clock, with the CPU time the process had used by then
# (user and system), which other work on the machine moves less.
#
# Usage: KEYS=1000000 bash bench/restart.sh      (default KEYS=100000)
#
# Settings (environment): KEYS, RUNS=3 (restarts timed, each figure is
# given for each run), SETTLE=5 (seconds before the steady RSS is read),
# PORT=18193, ADMIN_PORT=12041, REDIS_PORT=16401, CADDY= (a Caddy binary
# with the plugin instead of building one from the checkout). Needs Go,
# curl, redis-server and redis-cli. Run it on a quiet machine: the figures
# are wall-clock times.
set -euo pipefail

KEYS=${KEYS:-100000}
RUNS=${RUNS:-3}
SETTLE=${SETTLE:-5}
PORT=${PORT:-18193}
ADMIN_PORT=${ADMIN_PORT:-12041}
REDIS_PORT=${REDIS_PORT:-16401}
CADDY=${CADDY:-}

log() { printf 'restart: %s\n' "$*" >&2; }
die() {
	printf 'restart: FAILED: %s\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
figure() { printf '%-44s %s\n' "$1" "$2"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (apt-get install -y redis-server)"

work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-restart.XXXXXX")
caddy_pid=
redis_pid=
cleanup() {
	local rc=$?
	for pid in $caddy_pid $redis_pid; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

if [[ -n $CADDY ]]; then
	caddy=$CADDY
else
	log "building Caddy with the plugin"
	go build -o "$work/caddy" ./cmd/caddy
	caddy=$work/caddy
fi
log "generating $KEYS keys"
go run ./bench/genkeys -n "$KEYS" -keys "$work/keys.json" -raw "$work/raw.txt" 2>/dev/null
key=$(head -n1 "$work/raw.txt")

start_redis() {
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >>"$work/redis.log" 2>&1 &
	redis_pid=$!
	until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
}
start_redis
redis_url=redis://127.0.0.1:$REDIS_PORT/0
store_flags=(--redis "$redis_url")
log "importing them into Redis"
"$caddy" apikey import --file "$work/keys.json" "${store_flags[@]}" >/dev/null 2>"$work/import.err" || die "import: $(cat "$work/import.err")"
rm -f "$work/keys.json"

cache=$work/cache
cat >"$work/Caddyfile" <<EOF
{
	admin 127.0.0.1:$ADMIN_PORT
	default_bind 127.0.0.1
}
http://127.0.0.1:$PORT {
	apikey {
		redis $redis_url {
			cache_file $cache
		}
	}
	respond "ok"
}
EOF
url=http://127.0.0.1:$PORT/
status() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$url" 2>/dev/null || true; }
# first_answer KEY LIMIT: poll until the server answers at all (not 000),
# at most LIMIT seconds; prints the status of that first answer.
first_answer() {
	local deadline=$(($(date +%s) + $2)) code
	while :; do
		code=$(status "$1")
		[[ $code != 000 ]] && break
		kill -0 "$caddy_pid" 2>/dev/null || die "Caddy exited: $(tail -n 5 "$work/caddy.log")"
		(($(date +%s) < deadline)) || die "no answer within $2 s: $(tail -n 5 "$work/caddy.log")"
		sleep 0.01
	done
	echo "$code"
}
mem() { awk -v f="$1" '$1 == f":" { printf "%d MB", $2 / 1024 }' "/proc/$caddy_pid/status"; }

# run LABEL: spawn Caddy, time it to its first answer (which must be 200),
# wait SETTLE seconds and print its steady and peak memory.
run() {
	local t code
	t=$(now)
	"$caddy" run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
	caddy_pid=$!
	code=$(first_answer "$key" 120)
	local took cpu
	took=$(since "$t")
	cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f s", ($14 + $15) / hz }' "/proc/$caddy_pid/stat")
	[[ $code == 200 ]] || die "$1: first answer $code, want 200; $(tail -n 5 "$work/caddy.log")"
	figure "$1: spawn to first 200 (CPU)" "$took ($cpu)"
	local k
	for k in "${revoked[@]}"; do
		[[ $(status "$k") == 403 ]] || die "$1: a key revoked while the server was down is admitted"
	done
	if [[ -n ${added:-} ]]; then
		[[ $(status "$added") == 200 ]] || die "$1: the key added while the server was down is refused"
	fi
	sleep "$SETTLE"
	figure "$1: steady RSS / peak (VmHWM)" "$(mem VmRSS) / $(mem VmHWM)"
}
stop() {
	kill -TERM "$caddy_pid"
	wait "$caddy_pid" || true
	caddy_pid=
}
# changes: revoke one key and add another through the commands, as while a
# server is down.
changes() {
	local raw id
	raw=$("$caddy" apikey add "${store_flags[@]}" --label "restart bench" 2>"$work/add.err") || die "add: $(cat "$work/add.err")"
	id=$(awk '$1 == "id:" { print $2 }' "$work/add.err")
	if [[ -n ${pending_id:-} ]]; then
		"$caddy" apikey revoke "${store_flags[@]}" "$pending_id" >/dev/null 2>"$work/revoke.err" || die "revoke: $(cat "$work/revoke.err")"
		revoked+=("$pending_raw")
	fi
	# The key added now is in the cache file of the next run; the next
	# round revokes it while the server is down.
	pending_id=$id pending_raw=$raw added=$raw
}

# cache_written SINCE: wait until the cache file is newer than the file
# SINCE (a server writes it after its catch-up).
cache_written() {
	local deadline=$(($(date +%s) + 120))
	until [[ $cache -nt $1 ]]; do
		(($(date +%s) < deadline)) || die "the cache file was not written within 120 s"
		sleep 0.1
	done
}

echo "Restart test, redis store with cache_file: $KEYS keys, $(nproc) cores, $(go version | cut -d' ' -f3), $(redis-server --version | cut -d' ' -f1-3)"
revoked=()
changes
touch "$work/mark"
run "first start (no cache file)"
cache_written "$work/mark"
figure "cache file" "$(du -h "$cache" | cut -f1)"
stop
for i in $(seq 1 "$RUNS"); do
	revoked=()
	changes
	touch "$work/mark"
	run "restart $i (cache file, 2 changes)"
	cache_written "$work/mark"
	stop
done

# Changes, the log trimmed, then more: the log no longer reaches back to
# the cache file's last change.
revoked=()
changes
redis-cli -p "$REDIS_PORT" xtrim '{apikey:}log' MAXLEN 0 >/dev/null
changes
touch "$work/mark"
run "restart, log trimmed (full read)"
cache_written "$work/mark"
stop

kill -TERM "$redis_pid"
wait "$redis_pid" || true
redis_pid=
revoked=()
run "restart, Redis down (cache file alone)"
stop
