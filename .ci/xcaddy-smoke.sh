#!/usr/bin/env bash
# CI: build Caddy with xcaddy from this checkout, the way the README tells a
# plugin developer to, then smoke-test that binary with curl on loopback:
# 401 AUTH_REQUIRED without a key, 403 INVALID_KEY with a wrong one, 200 with
# the right one, and the access log's user_id.
#
# With the same binary, it then checks the demo: Caddyfile.example adapts to
# a listener on 127.0.0.1 only; example/caddy.json, the demo in JSON, loads
# and answers as the README says (run on a copy of example/, on the smoke
# ports); and a handler with no header and no query parameter is refused.
#
# Usage: bash .ci/xcaddy-smoke.sh
#
# The module path is not published and the Go module proxy refuses to list
# its versions, so a bare `--with github.com/caddy-apikey/caddy-apikey=.`
# fails (xcaddy's `go get` asks the proxy for the module's version list).
# Pinning a version for the replacement, `...caddy-apikey@v0.0.0=.`, makes
# `go get` take the local directory without asking the proxy.
#
# Settings (environment):
#   XCADDY_VERSION=v0.4.5   xcaddy to install through the Go module proxy
#   SMOKE_PORT=18080        HTTP port of the test site (127.0.0.1)
#   SMOKE_ADMIN_PORT=12019  Caddy's admin endpoint (127.0.0.1)
#   SMOKE_CADDY=            a Caddy binary to test instead of building one with
#                           xcaddy (a quick local run; CI always builds)
set -euo pipefail

XCADDY_VERSION=${XCADDY_VERSION:-v0.4.5}
SMOKE_PORT=${SMOKE_PORT:-18080}
SMOKE_ADMIN_PORT=${SMOKE_ADMIN_PORT:-12019}
MODULE=github.com/caddy-apikey/caddy-apikey

say() { printf 'xcaddy-smoke: %s\n' "$*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/xcaddy-smoke.XXXXXX")
caddy_pid=

# stop_caddy: stops the Caddy started here, if it runs.
stop_caddy() {
	if [[ -n $caddy_pid ]] && kill -0 "$caddy_pid" 2>/dev/null; then
		kill "$caddy_pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$caddy_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$caddy_pid" 2>/dev/null || true
		wait "$caddy_pid" 2>/dev/null || true
	fi
	caddy_pid=
}

cleanup() {
	local rc=$?
	stop_caddy
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
	printf 'xcaddy-smoke: FAILED: %s\n' "$*" >&2
	[[ -n $caddy_pid ]] || exit 1
	for f in "$tmp/caddy.log" "$tmp/access.log" "$tmp/demo.log"; do
		if [[ -s $f ]]; then
			printf -- '--- last lines of %s:\n' "${f##*/}" >&2
			tail -n 20 "$f" >&2
		fi
	done
	exit 1
}

command -v go >/dev/null 2>&1 || fail "go is not installed"
for tool in curl sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed"
done

if [[ -n ${SMOKE_CADDY:-} ]]; then
	caddy=$(realpath "$SMOKE_CADDY") || fail "SMOKE_CADDY=$SMOKE_CADDY: no such file"
	say "testing $caddy (SMOKE_CADDY), not an xcaddy build: $("$caddy" version)"
else
	# --- xcaddy, through the Go module proxy -------------------------------
	say "installing xcaddy $XCADDY_VERSION"
	GOBIN=$tmp/bin go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION" ||
		fail "cannot install xcaddy $XCADDY_VERSION through the Go module proxy"
	xcaddy=$tmp/bin/xcaddy

	# The Caddy version this plugin is built against, from go.mod.
	caddy_version=$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2) ||
		fail "cannot read the Caddy version from go.mod"

	# xcaddy works in its own temporary module, outside this checkout: no
	# workspace file may reach into it, and a -mod flag would break its `go get`
	# and `go mod tidy`.
	export GOWORK=off
	GOFLAGS=$(printf '%s\n' ${GOFLAGS:-} | grep -v '^-mod=' | tr '\n' ' ' || true)
	export GOFLAGS

	# --- build -------------------------------------------------------------
	say "building Caddy $caddy_version with the plugin: xcaddy build $caddy_version --with $MODULE@v0.0.0=."
	start=$SECONDS
	timeout 1500 "$xcaddy" build "$caddy_version" \
		--with "$MODULE@v0.0.0=." \
		--output "$tmp/caddy" >"$tmp/xcaddy.log" 2>&1 || {
		tail -n 30 "$tmp/xcaddy.log" >&2
		fail "xcaddy build failed (log above)"
	}
	say "built in $((SECONDS - start))s: $("$tmp/caddy" version)"
	caddy=$tmp/caddy
fi

"$caddy" list-modules >"$tmp/modules.txt" || fail "caddy list-modules failed"
grep -qx 'http.handlers.apikey' "$tmp/modules.txt" ||
	fail "caddy list-modules does not list http.handlers.apikey"
say "ok: list-modules has http.handlers.apikey"

# --- key file and Caddyfile --------------------------------------------
key_id=smoke-key-0001
raw_key=sk_smoke$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
key_hash=$(printf '%s' "$raw_key" | sha256sum | cut -d' ' -f1)
cat >"$tmp/keys.json" <<EOF
{
  "api_keys": [
    {
      "id": "$key_id",
      "label": "CI smoke test",
      "key_hash": "$key_hash",
      "key_prefix": "${raw_key:0:11}",
      "created_at": "2026-01-01T00:00:00.000000+00:00",
      "last_used_at": null
    }
  ]
}
EOF

cat >"$tmp/Caddyfile" <<EOF
{
	admin 127.0.0.1:$SMOKE_ADMIN_PORT
	auto_https off
	persist_config off
	log {
		output file $tmp/caddy.log
	}
}

http://127.0.0.1:$SMOKE_PORT {
	bind 127.0.0.1
	log {
		output file $tmp/access.log
		format json
	}
	apikey $tmp/keys.json
	respond "ok"
}
EOF

"$caddy" validate --config "$tmp/Caddyfile" --adapter caddyfile >"$tmp/validate.log" 2>&1 || {
	cat "$tmp/validate.log" >&2
	fail "caddy validate rejects the smoke-test Caddyfile"
}

# --- serve -------------------------------------------------------------
# in_use PORT: whether something already listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$SMOKE_PORT" "$SMOKE_ADMIN_PORT"; do
	! in_use "$p" || fail "port $p on 127.0.0.1 is already in use; set SMOKE_PORT / SMOKE_ADMIN_PORT"
done
say "starting Caddy on 127.0.0.1:$SMOKE_PORT (admin 127.0.0.1:$SMOKE_ADMIN_PORT)"
XDG_DATA_HOME=$tmp/data XDG_CONFIG_HOME=$tmp/config \
	"$caddy" run --config "$tmp/Caddyfile" --adapter caddyfile >>"$tmp/caddy.log" 2>&1 &
caddy_pid=$!

url=http://127.0.0.1:$SMOKE_PORT/
# curl_opts: extra curl arguments for every request (set for the demo).
curl_opts=()

# wait_up: waits for the Caddy just started to answer on $url.
wait_up() {
	local up=
	for _ in $(seq 100); do
		kill -0 "$caddy_pid" 2>/dev/null ||
			fail "Caddy exited at startup (port $SMOKE_PORT or $SMOKE_ADMIN_PORT in use? set SMOKE_PORT / SMOKE_ADMIN_PORT)"
		if curl -s -o /dev/null --max-time 2 "${curl_opts[@]}" "$url"; then
			up=1
			break
		fi
		sleep 0.1
	done
	[[ -n $up ]] || fail "Caddy does not answer on $url after 10 s"
}
wait_up

# check NAME WANT_STATUS WANT_BODY_SUBSTRING [curl args...]
check() {
	local name=$1 want=$2 body=$3
	shift 3
	local got
	got=$(curl -s -o "$tmp/body" -w '%{http_code}' --max-time 10 "${curl_opts[@]}" "$@" "$url") || fail "$name: curl failed"
	[[ $got == "$want" ]] || fail "$name: want HTTP $want, got $got: $(head -c 300 "$tmp/body")"
	grep -qF -- "$body" "$tmp/body" || fail "$name: the response does not contain '$body': $(head -c 300 "$tmp/body")"
	say "ok: $name -> $got"
}
check "no key" 401 '"AUTH_REQUIRED"'
check "wrong key" 403 '"INVALID_KEY"' -H "Authorization: Bearer sk_smoke_wrong_key"
check "right key" 200 'ok' -H "Authorization: Bearer $raw_key"

# The access log gets the request's entry once the response is written.
# log_has FILE TEXT: whether FILE holds TEXT within 5 s.
log_has() {
	for _ in $(seq 50); do
		grep -qF -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
log_has "$tmp/access.log" "\"user_id\":\"$key_id\"" || fail "the access log has no \"user_id\":\"$key_id\" entry"
say "ok: access log has \"user_id\":\"$key_id\""
if grep -qF -- "$raw_key" "$tmp/access.log" "$tmp/caddy.log"; then
	fail "the raw key appears in a log"
fi
say "ok: the raw key is in no log"
stop_caddy

# --- the demo: Caddyfile.example listens on loopback only ---------------
"$caddy" adapt --config Caddyfile.example --adapter caddyfile >"$tmp/demo-adapted.json" 2>"$tmp/adapt.log" || {
	cat "$tmp/adapt.log" >&2
	fail "caddy adapt rejects Caddyfile.example"
}
listen=$(grep -o '"listen":\[[^]]*\]' "$tmp/demo-adapted.json") ||
	fail "caddy adapt --config Caddyfile.example gives no listen address"
[[ $listen == '"listen":["127.0.0.1:8080"]' ]] ||
	fail "Caddyfile.example listens on $listen, want only 127.0.0.1:8080 (loopback: its key is published)"
say "ok: Caddyfile.example listens on 127.0.0.1:8080 only"
grep -qF '"listen": ["127.0.0.1:8080"]' example/caddy.json ||
	fail "example/caddy.json does not listen on 127.0.0.1:8080 only"
say "ok: example/caddy.json listens on 127.0.0.1:8080 only"

# --- the demo in JSON: example/caddy.json loads and answers --------------
# On a copy of example/, so that the usage writer's last_used_at does not
# change the checkout, and on the smoke ports instead of 8080 and 2020.
mkdir -p "$tmp/demo/example"
cp -R example/keys.json example/site "$tmp/demo/example/"
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$SMOKE_PORT/" -e "s/localhost:2020/127.0.0.1:$SMOKE_ADMIN_PORT/" \
	example/caddy.json >"$tmp/demo/caddy.json"
grep -qF "127.0.0.1:$SMOKE_ADMIN_PORT" "$tmp/demo/caddy.json" ||
	fail "example/caddy.json's admin endpoint is not localhost:2020"
(cd "$tmp/demo" && "$caddy" validate --config caddy.json) >"$tmp/validate.log" 2>&1 || {
	cat "$tmp/validate.log" >&2
	fail "caddy validate rejects example/caddy.json"
}
for p in "$SMOKE_PORT" "$SMOKE_ADMIN_PORT"; do
	! in_use "$p" || fail "port $p on 127.0.0.1 is still in use after the first Caddy stopped"
done
say "starting Caddy with example/caddy.json on 127.0.0.1:$SMOKE_PORT (admin 127.0.0.1:$SMOKE_ADMIN_PORT)"
(cd "$tmp/demo" && XDG_DATA_HOME=$tmp/data XDG_CONFIG_HOME=$tmp/config exec "$caddy" run --config caddy.json) \
	>"$tmp/demo.log" 2>&1 &
caddy_pid=$!
# The demo's site is http://localhost:8080: send Host: localhost, to 127.0.0.1.
curl_opts=(--resolve "localhost:$SMOKE_PORT:127.0.0.1")
demo_key=sk_aMGf1pwqfbeTKPWVnGGty623RtEkxWzKWaDFVmowT2I # the demo key, published in the README
demo_id=3f0c2a9e-5b7d-4c1e-9a8f-2d6b1e4c7a90
url=http://localhost:$SMOKE_PORT/
wait_up
check "demo JSON: public page" 200 '</html>'
url=http://localhost:$SMOKE_PORT/api/hello
check "demo JSON: no key" 401 '"AUTH_REQUIRED"'
check "demo JSON: wrong key" 403 '"INVALID_KEY"' -H "Authorization: Bearer sk_wrong"
check "demo JSON: Bearer" 200 "\"key_id\": \"$demo_id\"" -H "Authorization: Bearer $demo_key"
check "demo JSON: X-API-Key" 200 '"Hello, Demo key!"' -H "X-API-Key: $demo_key"
url="http://localhost:$SMOKE_PORT/api/hello?api_key=$demo_key"
check "demo JSON: ?api_key=" 200 '"Hello, Demo key!"'
log_has "$tmp/demo.log" "\"user_id\":\"$demo_id\"" || fail "the demo's access log (stdout) has no \"user_id\":\"$demo_id\" entry"
if grep -qF -- "$demo_key" "$tmp/demo.log"; then
	fail "the demo key appears in the demo's log (the log filter lets it through)"
fi
say "ok: the demo's access log has the key's user_id, and not the key"
stop_caddy

# --- a handler with no header and no query parameter is refused ----------
cat >"$tmp/no-source.json" <<EOF
{"apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:$SMOKE_PORT"], "routes": [
  {"handle": [{"handler": "apikey", "keys_file": "$tmp/keys.json", "headers": [], "query": ""}]}
]}}}}}
EOF
if "$caddy" validate --config "$tmp/no-source.json" >"$tmp/validate.log" 2>&1; then
	fail "caddy validate accepts an apikey handler with no header and no query parameter"
fi
grep -qF 'no credential source' "$tmp/validate.log" || {
	cat "$tmp/validate.log" >&2
	fail "a handler with no header and no query parameter is refused, but not for that reason"
}
say "ok: a handler with no header and no query parameter is refused"

say "PASS"
