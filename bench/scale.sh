#!/usr/bin/env bash
# Scale test of a key store: one Caddy built from this checkout serves KEYS
# keys on loopback, from a key file (STORE=file, the default) or from a Redis
# key set (STORE=redis: a redis-server of its own, the keys imported with
# `caddy apikey import`), and the script prints each figure the README
# states for a key set that large:
#
#   load       from starting Caddy to the first request admitted
#   rss        steady resident memory once loaded and idle, and the peak
#              (VmHWM) over the whole run
#   add        how long `caddy apikey add` takes, and then how long until
#              the new key is admitted (a change in force)
#   revoke     the same for `caddy apikey revoke <id>`, until the key is
#              refused
#   rotate     `caddy apikey rotate <key_prefix>` (a name that is not an id)
#   first use  from a key's first use until its last-used time is written
#              (in the file, or in Redis)
#   p99        wrk --latency p99 idle, and while a usage write of USED keys
#              is under way
#   stop       graceful stop (SIGTERM) with uses pending
#
# Usage: KEYS=1000000 bash bench/scale.sh      (default KEYS=100000)
#        STORE=redis KEYS=1000000 bash bench/scale.sh
#
# Settings (environment): STORE, KEYS, USED=100 (keys first used before the loaded
# wrk run), DURATION=10 (seconds per wrk run), CONNECTIONS=50, PORT=18191,
# ADMIN_PORT=12039. Needs Go, curl and wrk (installed with apt-get if
# missing). Run it on a quiet machine: the figures are wall-clock times.
set -euo pipefail

KEYS=${KEYS:-100000}
USED=${USED:-100}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
PORT=${PORT:-18191}
ADMIN_PORT=${ADMIN_PORT:-12039}
STORE=${STORE:-file}
REDIS_PORT=${REDIS_PORT:-16399}
[[ $STORE == file || $STORE == redis ]] || { echo "STORE must be file or redis" >&2; exit 2; }

log() { printf 'scale: %s\n' "$*" >&2; }
die() {
	printf 'scale: FAILED: %s\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
figure() { printf '%-34s %s\n' "$1" "$2"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if ! command -v wrk >/dev/null 2>&1; then
	log "wrk is missing; installing the Debian package"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-scale.XXXXXX")
caddy_pid=
redis_pid=
cleanup() {
	local rc=$?
	if [[ -n $redis_pid ]]; then
		kill -9 "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	if [[ -n $caddy_pid ]] && kill -0 "$caddy_pid" 2>/dev/null; then
		kill -9 "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT

log "building Caddy with the plugin"
go build -o "$work/caddy" ./cmd/caddy
caddy=$work/caddy
log "generating $KEYS keys"
go run ./bench/genkeys -n "$KEYS" -keys "$work/keys.json" -raw "$work/raw.txt" -more "$work/used.txt" -count "$USED" 2>/dev/null
key=$(head -n1 "$work/raw.txt")
keys=$work/keys.json
log "key file: $(du -h "$keys" | cut -f1)"

store_flags=(--file "$keys")
apikey_block="apikey $keys"
if [[ $STORE == redis ]]; then
	command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (apt-get install -y redis-server)"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
	redis_pid=$!
	until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
	redis_url=redis://127.0.0.1:$REDIS_PORT/0
	store_flags=(--redis "$redis_url")
	apikey_block="apikey {
		redis $redis_url
	}"
	t=$(now)
	"$caddy" apikey import --file "$keys" --redis "$redis_url" >/dev/null 2>"$work/import.err" || die "import: $(cat "$work/import.err")"
	import_time=$(since "$t")
fi

cat >"$work/Caddyfile" <<EOF
{
	admin 127.0.0.1:$ADMIN_PORT
	default_bind 127.0.0.1
}
http://127.0.0.1:$PORT {
	$apikey_block
	respond "ok"
}
EOF
url=http://127.0.0.1:$PORT/
status() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$url" 2>/dev/null || true; }
# wait_for CODE KEY LIMIT: poll until KEY gets CODE, at most LIMIT seconds.
wait_for() {
	local deadline=$(($(date +%s) + $3))
	until [[ $(status "$2") == "$1" ]]; do
		(($(date +%s) < deadline)) || die "no $1 for the key within $3 s"
		sleep 0.02
	done
}
rss() { awk -v f="$1" '$1 == f":" { printf "%d MB", $2 / 1024 }' "/proc/$caddy_pid/status"; }
p99() { wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $1" "$url" | awk '$1 == "99%" { print $2 }'; }

echo "Scale test, $STORE store: $KEYS keys ($(du -h "$keys" | cut -f1) key file), $(nproc) cores, $(go version | cut -d' ' -f3)"
if [[ $STORE == redis ]]; then
	echo "($(redis-server --version | cut -d' ' -f1-3); Redis memory $(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory_human/ { print $2 }' | tr -d '\r'))"
	figure "caddy apikey import (whole file)" "$import_time"
fi

t=$(now)
"$caddy" run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
caddy_pid=$!
wait_for 200 "$key" 120
figure "load at start (to first 200)" "$(since "$t")"

sleep 5
figure "steady RSS (idle, loaded)" "$(rss VmRSS)"

idle=$(p99 "$key")
figure "p99 idle (wrk --latency)" "$idle"

# First uses of USED keys, then load (in the background) while their usage
# write happens; meanwhile, time until the first one is in the file.
mapfile -t used <"$work/used.txt"
first=${used[0]:0:11}
first_hash=$(printf '%s' "${used[0]}" | "$caddy" apikey hash)
t=$(now)
for k in "${used[@]}"; do status "$k" >/dev/null; done
p99 "$key" >"$work/p99-loaded.txt" &
wrk_pid=$!
written() {
	if [[ $STORE == redis ]]; then
		redis-cli -p "$REDIS_PORT" hkeys '{apikey:}used' | grep -q "^$first_hash:"
	else
		grep -F -A3 "$first" "$keys" | grep -q 'last_used_at": *"'
	fi
}
until written; do
	awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a > 60) }' && die "first use not written within 60 s"
	sleep 0.05
done
written=$(since "$t")
wait "$wrk_pid"
figure "p99 during a usage write of $USED keys" "$(cat "$work/p99-loaded.txt")"
figure "first use written (from the use)" "$written"

t=$(now)
new=$("$caddy" apikey add "${store_flags[@]}" --label "scale test" 2>"$work/add.err") || die "add: $(cat "$work/add.err")"
figure "caddy apikey add" "$(since "$t")"
t=$(now)
wait_for 200 "$new" 60
figure "added key admitted (after add)" "$(since "$t")"

t=$(now)
new_id=$(awk '$1 == "id:" { print $2 }' "$work/add.err")
"$caddy" apikey revoke "${store_flags[@]}" "$new_id" >/dev/null 2>"$work/revoke.err" || die "revoke: $(cat "$work/revoke.err")"
figure "caddy apikey revoke" "$(since "$t")"
t=$(now)
wait_for 403 "$new" 60
figure "revoked key refused (after revoke)" "$(since "$t")"

# A rotation named by key_prefix: a command that reads the whole key set
# on either store.
t=$(now)
"$caddy" apikey rotate "${store_flags[@]}" --grace 0 "${key:0:11}" >/dev/null 2>"$work/rotate.err" || die "rotate: $(cat "$work/rotate.err")"
figure "caddy apikey rotate <key_prefix>" "$(since "$t")"

figure "peak RSS (VmHWM, whole run)" "$(rss VmHWM)"

status "${used[1]}" >/dev/null # a use pending at stop
t=$(now)
kill -TERM "$caddy_pid"
wait "$caddy_pid" || true
caddy_pid=
figure "graceful stop (SIGTERM)" "$(since "$t")"
