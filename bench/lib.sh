# Shared by bench/ratelimit.sh and bench/quota.sh: the processes they start
# and their cleanup, free ports, a redis-server, Caddy servers behind the
# apikey handler, wrk paced and calibrated, and Redis's command counts.
# Sourced once $repo and $bench (the script's name, for its results folder
# bench/results/<bench>-<UTC time> and its messages) are set, and log and
# die defined; it sets stamp, out, work and summary's folder, and traps
# EXIT, INT and TERM.

# --- processes and cleanup -----------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$repo/bench/results/$bench-$stamp
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/apikey-$bench.XXXXXX")
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
			printf '%s: last lines of %s:\n' "$bench" "${f##*/}" >&2
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
	((${non2xx:-0} == 0)) || die "$non2xx answers were not 2xx (every request must be admitted here): $(cat "$file")"
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

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
