package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/keyops"
)

func TestRedisCommandLine(t *testing.T) {
	r := testredis.Start(t)
	if _, _, err := openStore("keys.json", redisTarget{url: r.URL}, false); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("--file with --redis: %v", err)
	}
	st, closeStore, err := openStore("", redisTarget{url: r.URL, prefix: "cli:"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore()
	var stdout, stderr bytes.Buffer
	if err := addKey(&stdout, &stderr, st, keyops.AddOptions{Label: "cli", Scopes: []string{"read"}}, cmdNow); err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimSpace(stdout.String())
	if !testkeys.RawKeyPattern.MatchString(raw) || !strings.Contains(stderr.String(), "prefix cli:") {
		t.Fatalf("add printed %q and %q", stdout.String(), stderr.String())
	}
	stdout.Reset()
	if err := rotateKey(&stdout, &stderr, st, keyops.RotateOptions{Ref: raw[:11], Grace: "0"}, cmdNow); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := listKeys(&stdout, io.Discard, st, true, cmdNow); err != nil {
		t.Fatal(err)
	}
	var listed []keyops.Listed
	if err := json.Unmarshal(stdout.Bytes(), &listed); err != nil || len(listed) != 2 {
		t.Fatalf("list --json: %v\n%s", err, stdout.String())
	}
	if listed[0].RotatedFrom != nil { // same created_at: ordered by id
		listed[0], listed[1] = listed[1], listed[0]
	}
	if listed[0].Status != "revoked" || listed[1].Status != "active" || listed[1].RotatedFrom == nil || *listed[1].RotatedFrom != listed[0].ID {
		t.Errorf("after rotate --grace 0: %+v", listed)
	}
	if strings.Contains(stdout.String(), "key_hash") {
		t.Error("list shows hashes")
	}
}
