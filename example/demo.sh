#!/usr/bin/env bash
# The demo of the apikey plugin: builds Caddy with the plugin, then serves
# Caddyfile.example on http://localhost:8080 (127.0.0.1 only). See README.md,
# "Try it", for the curl calls.
#
# Usage, from anywhere in a clone of the repository:
#
#     example/demo.sh
#
# The binary goes to bin/caddy (ignored by git); later runs rebuild it in
# seconds. Needs Go 1.26 or newer.
#
# The demo runs on a copy made afresh at each run in bin/demo/ (ignored by
# git too): Caddyfile.example, example/keys.json and example/site. The
# usage writer records last_used_at in that copy, bin/demo/example/keys.json,
# so the key file tracked by git never changes.
set -euo pipefail

say() { printf 'demo: %s\n' "$*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bin=bin/caddy

if ! command -v go >/dev/null 2>&1; then
	say "Go is not installed (or not on PATH); the demo needs Go 1.26 or newer: https://go.dev/dl/"
	exit 1
fi

say "building Caddy with the apikey plugin: go build -o $bin ./cmd/caddy ($(go version))"
say "the first build downloads and compiles all of Caddy: expect several minutes"
say "(about 12 on a busy 2-core machine), with little output meanwhile."
say "Later builds take seconds."
start=$SECONDS
go build -o "$bin" ./cmd/caddy
say "built $bin in $((SECONDS - start))s: $("$bin" version)"

# A fresh copy of the demo, so that the tracked example/keys.json never
# changes (the usage writer writes last_used_at into the copy).
demo=bin/demo
rm -rf "$demo"
mkdir -p "$demo/example"
cp Caddyfile.example "$demo/"
cp -R example/keys.json example/site "$demo/example/"

say "starting, in $demo (a copy of the demo): $bin run --config Caddyfile.example"
say "public page: http://localhost:8080/   API (needs a key): http://localhost:8080/api/hello"
say "the demo key and the curl calls are in README.md, \"Try it\". Last-used times go to $demo/example/keys.json."
say "Stop with Ctrl-C."
cd "$demo"
exec ../caddy run --config Caddyfile.example
