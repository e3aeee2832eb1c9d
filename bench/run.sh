#!/usr/bin/env bash
# End-to-end benchmark of the apikey plugin: one Caddy built from this
# checkout serves the same tiny `respond "ok"` endpoint three ways, on
# loopback, in one process:
#
#   nothing   no authentication
#   apikey    apikey handler, Bearer key, 100 000 keys loaded, usage
#             tracking on (the default)
#   basic     Caddy's own basic_auth, bcrypt, with its hash cache (on by
#             default when configured from a Caddyfile)
#
# wrk drives each endpoint in turn, over several rounds (the order rotates
# each round), and for every run the script records requests/s, p50 and
# p99 latency, and the Caddy process's CPU time (utime + stime from
# /proc/<pid>/stat) divided by the requests served. It prints a Markdown
# table of the medians with their ratios to "nothing", and keeps the raw
# results in bench/results/<UTC time>/ (gitignored).
#
# Usage: bash bench/run.sh
#
# Settings (environment):
#   ROUNDS=5         rounds; each runs every endpoint once
#   DURATION=10      seconds per wrk run
#   WARMUP=3         seconds of unrecorded load per endpoint before round 1
#   CONNECTIONS=50   wrk connections
#   THREADS=1        wrk threads; 1 leaves the other core of a 2-core
#                    machine to Caddy
#   KEYS=100000      keys in the apikey key file
#   BASE_PORT=18181  the endpoints listen on BASE_PORT, +1, +2 (127.0.0.1)
#   ADMIN_PORT=12029 Caddy's admin endpoint (127.0.0.1)
#   SAME_HEADERS=0   1: send the apikey endpoint's Authorization header to
#                    "nothing" too, so that the comparison leaves out what
#                    receiving that header costs and shows only what the
#                    handler costs
#   STRICT=0         1: exit with status 1 if apikey misses a target
#                    (>= 95% of the unprotected requests/s, <= +5% CPU
#                    time per request)
#
# Needs Go and wrk; if wrk is missing it is installed with apt-get (as
# root, or through sudo).
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-50}
THREADS=${THREADS:-1}
KEYS=${KEYS:-100000}
BASE_PORT=${BASE_PORT:-18181}
ADMIN_PORT=${ADMIN_PORT:-12029}
STRICT=${STRICT:-0}
SAME_HEADERS=${SAME_HEADERS:-0}

for v in ROUNDS DURATION WARMUP CONNECTIONS THREADS KEYS BASE_PORT ADMIN_PORT; do
	if ! [[ ${!v} =~ ^[0-9]+$ ]]; then
		echo "bench: $v must be a whole number, got '${!v}'" >&2
		exit 2
	fi
done
if ((ROUNDS < 1 || DURATION < 1 || CONNECTIONS < 1 || THREADS < 1 || KEYS < 1)); then
	echo "bench: ROUNDS, DURATION, CONNECTIONS, THREADS and KEYS must be at least 1" >&2
	exit 2
fi

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
	printf 'bench: FAILED: %s\n' "$*" >&2
	exit 1
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# --- tools ---------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
	log "wrk is missing; installing the Debian package"
	sudo=()
	if [[ $(id -u) != 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "wrk is not installed and this is not root; install wrk (apt-get install wrk)"
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
fi
command -v go >/dev/null 2>&1 || die "go is not installed"
command -v curl >/dev/null 2>&1 || die "curl is not installed"

# --- workspace -----------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$repo/bench/results/$stamp
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-bench.XXXXXX")
caddy_pid=

cleanup() {
	local rc=$?
	if [[ -n $caddy_pid ]] && kill -0 "$caddy_pid" 2>/dev/null; then
		kill "$caddy_pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$caddy_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build, keys, password ----------------------------------------------
log "building Caddy with the plugin (go build ./cmd/caddy)"
go build -o "$work/caddy" ./cmd/caddy
caddy=$work/caddy
"$caddy" list-modules | grep -x 'http.handlers.apikey' >/dev/null || die "the built Caddy has no http.handlers.apikey module"

log "generating $KEYS keys (hashes only in the key file)"
go run ./bench/genkeys -n "$KEYS" -keys "$work/keys.json" -raw "$work/raw-key.txt"
raw_key=$(<"$work/raw-key.txt")

password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
pw_hash=$("$caddy" hash-password --algorithm bcrypt --plaintext "$password")
basic_cred=$(printf '%s' "bench:$password" | base64 -w0)

# --- Caddy ---------------------------------------------------------------
p_nothing=$BASE_PORT
p_apikey=$((BASE_PORT + 1))
p_basic=$((BASE_PORT + 2))

cat >"$work/Caddyfile" <<EOF
{
	admin 127.0.0.1:$ADMIN_PORT
	auto_https off
	persist_config off
	log {
		output file $out/caddy.log
		level INFO
	}
}

# No site has a log directive: access logs are off.

http://127.0.0.1:$p_nothing {
	bind 127.0.0.1
	respond "ok"
}

http://127.0.0.1:$p_apikey {
	bind 127.0.0.1
	apikey $work/keys.json
	respond "ok"
}

http://127.0.0.1:$p_basic {
	bind 127.0.0.1
	basic_auth bcrypt {
		bench $pw_hash
	}
	respond "ok"
}
EOF
sed "s|$work|<tmp>|g" "$work/Caddyfile" >"$out/Caddyfile"

# in_use PORT: whether something already listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$p_nothing" "$p_apikey" "$p_basic" "$ADMIN_PORT"; do
	! in_use "$p" || die "port $p on 127.0.0.1 is already in use; set BASE_PORT / ADMIN_PORT"
done

log "starting Caddy"
XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config \
	"$caddy" run --config "$work/Caddyfile" --adapter caddyfile >"$out/caddy.stdout" 2>&1 &
caddy_pid=$!

ready=
for _ in $(seq 100); do
	kill -0 "$caddy_pid" 2>/dev/null || die "Caddy exited at startup (ports $p_nothing-$p_basic or $ADMIN_PORT in use?); see $out/caddy.stdout and $out/caddy.log"
	if curl -fsS --max-time 2 "http://127.0.0.1:$p_nothing/" >/dev/null 2>&1; then
		ready=1
		break
	fi
	sleep 0.2
done
[[ -n $ready ]] || die "Caddy did not answer on 127.0.0.1:$p_nothing within 20 s"

# Each endpoint must answer what the benchmark expects, or it would measure
# refusals instead.
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 30 "$@"; }
[[ $(status "http://127.0.0.1:$p_apikey/") == 401 ]] || die "apikey endpoint without a key: want 401"
[[ $(status -H "Authorization: Bearer sk_wrong" "http://127.0.0.1:$p_apikey/") == 403 ]] || die "apikey endpoint with a wrong key: want 403"
[[ $(status -H "Authorization: Bearer $raw_key" "http://127.0.0.1:$p_apikey/") == 200 ]] || die "apikey endpoint with the key: want 200"
[[ $(status "http://127.0.0.1:$p_basic/") == 401 ]] || die "basic_auth endpoint without credentials: want 401"
[[ $(status -H "Authorization: Basic $basic_cred" "http://127.0.0.1:$p_basic/") == 200 ]] || die "basic_auth endpoint with the password: want 200"

clk_tck=$(getconf CLK_TCK)

# cpu_ticks prints the Caddy process's utime + stime, in clock ticks.
cpu_ticks() {
	local stat
	stat=$(<"/proc/$caddy_pid/stat") || die "Caddy is gone"
	stat=${stat##*) } # after the command name, fields start at 3 (state)
	local -a f
	read -r -a f <<<"$stat"
	echo $((f[11] + f[12])) # fields 14 (utime) and 15 (stime)
}

endpoints=(nothing apikey basic)
declare -A port=([nothing]=$p_nothing [apikey]=$p_apikey [basic]=$p_basic)
declare -A header=(
	[nothing]=""
	[apikey]="Authorization: Bearer $raw_key"
	[basic]="Authorization: Basic $basic_cred"
)
if [[ $SAME_HEADERS == 1 ]]; then
	header[nothing]=${header[apikey]}
fi

# wrk_run NAME SECONDS OUTFILE: loads one endpoint; prints the CPU ticks
# Caddy used meanwhile.
wrk_run() {
	local name=$1 secs=$2 file=$3
	local -a args=(-t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency --timeout 5s)
	[[ -n ${header[$name]} ]] && args+=(-H "${header[$name]}")
	local before after
	before=$(cpu_ticks)
	timeout --kill-after=5 $((secs + 30)) wrk "${args[@]}" "http://127.0.0.1:${port[$name]}/" >"$file" 2>&1 ||
		die "wrk failed on $name; see $file"
	after=$(cpu_ticks)
	echo $((after - before))
}

# to_us VALUE: a wrk latency (e.g. 812.00us, 1.23ms, 2.01s) in microseconds.
to_us() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); m = 1 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); m = 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); m = 1000000 }
		else if (v ~ /m$/) { sub(/m$/, "", v); m = 60000000 }
		else { print "NaN"; exit 1 }
		printf "%.1f", v * m
	}'
}

{
	echo "date_utc: $stamp"
	echo "nproc: $(nproc)"
	echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "kernel: $(uname -srm)"
	echo "go: $(go version)"
	echo "caddy: $("$caddy" version)"
	echo "wrk: $(wrk -v 2>&1 | head -1)"
	echo "settings: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS THREADS=$THREADS KEYS=$KEYS SAME_HEADERS=$SAME_HEADERS"
	echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

# --- warm-up -------------------------------------------------------------
if ((WARMUP > 0)); then
	log "warming up each endpoint for ${WARMUP}s"
	for ep in "${endpoints[@]}"; do
		wrk_run "$ep" "$WARMUP" "$out/warmup-$ep.txt" >/dev/null
	done
fi
# The key's first use is written to the key file within 5 s (usage
# tracking); let that one-off write happen before measuring.
sleep 6

# --- rounds --------------------------------------------------------------
csv=$out/runs.csv
echo "round,endpoint,duration_s,requests,rps,p50_us,p99_us,cpu_ticks,clk_tck,cpu_us_per_req,non2xx,socket_errors" >"$csv"
n=${#endpoints[@]}
total=$((ROUNDS * n * DURATION))
log "measuring: $ROUNDS rounds x $n endpoints x ${DURATION}s (about ${total}s), $CONNECTIONS connections, $THREADS wrk thread(s)"
for ((r = 1; r <= ROUNDS; r++)); do
	for ((i = 0; i < n; i++)); do
		ep=${endpoints[$(((r - 1 + i) % n))]}
		file=$out/wrk-r$r-$ep.txt
		ticks=$(wrk_run "$ep" "$DURATION" "$file")
		requests=$(awk '/ requests in /{print $1; exit}' "$file")
		rps=$(awk '/^Requests\/sec:/{print $2; exit}' "$file")
		p50=$(awk '/^ +50% /{print $2; exit}' "$file")
		p99=$(awk '/^ +99% /{print $2; exit}' "$file")
		non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' "$file")
		sockerr=$(awk -F'[ ,]+' '/Socket errors:/{print $4 + $6 + $8 + $10; exit}' "$file")
		non2xx=${non2xx:-0}
		sockerr=${sockerr:-0}
		[[ -n $requests && -n $rps && -n $p50 && -n $p99 ]] || die "cannot read wrk's output in $file"
		((requests > 0)) || die "no requests completed on $ep; see $file"
		((non2xx == 0)) || die "$non2xx responses on $ep were not 2xx, so the run measured refusals; see $file"
		p50_us=$(to_us "$p50")
		p99_us=$(to_us "$p99")
		cpu_us=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$requests" 'BEGIN { printf "%.3f", t * 1e6 / hz / n }')
		echo "$r,$ep,$DURATION,$requests,$rps,$p50_us,$p99_us,$ticks,$clk_tck,$cpu_us,$non2xx,$sockerr" >>"$csv"
		note=""
		((sockerr == 0)) || note="  socket errors: $sockerr"
		log "round $r/$ROUNDS $(printf "%-8s %10s req/s  p50 %9s  p99 %9s  CPU %s µs/req" "$ep" "$rps" "$p50" "$p99" "$cpu_us")$note"
	done
done

echo "loadavg_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
used=$(grep -c '"last_used_at": *"' "$work/keys.json" || true)
echo "keys_with_last_used_at_written: $used" >>"$out/machine.txt"

# --- report --------------------------------------------------------------
report_args=()
[[ $STRICT == 1 ]] && report_args+=(-strict)
{
	echo "Machine: $(nproc) cores, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $("$caddy" version | cut -d' ' -f1), $(go version | cut -d' ' -f3)."
	echo "wrk: $THREADS thread(s), $CONNECTIONS connections, ${DURATION}s per run; $ROUNDS rounds; $KEYS keys loaded.$([[ $SAME_HEADERS == 1 ]] && echo ' "nothing" also receives the Bearer header (SAME_HEADERS=1).')"
	echo
	go run ./bench/report "${report_args[@]}" "$csv"
} >"$out/summary.md" || report_rc=$?
cat "$out/summary.md"
ln -sfn "$stamp" "$repo/bench/results/latest"
log "raw results in ${out#"$repo"/}"
exit "${report_rc:-0}"
