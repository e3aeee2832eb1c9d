package apikey

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
)

// example/demo.sh runs the demo on a copy: the usage writer's last_used_at
// lands in the copy's key file, never in the tracked example/keys.json. The
// script runs in a scratch copy of the repository's demo files, with stubs
// for go and for the Caddy it builds: the stub Caddy does to the key file
// that its config names what the usage writer does, relative to the folder
// it runs in, as Caddy resolves keys_file.
func TestDemoLeavesTheTrackedKeyFileAlone(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	repo := t.TempDir()
	for _, f := range []string{"example/demo.sh", "example/keys.json", "Caddyfile.example"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(repo, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, f), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(repo, "example", "site"), 0o755); err != nil {
		t.Fatal(err)
	}
	tracked := testkeys.ReadFile(t, filepath.Join(repo, "example", "keys.json"))

	// go build -o bin/caddy ...: a stub Caddy that, on run, marks the key
	// file example/keys.json of the folder it runs in as used, and says
	// where it ran.
	stubs := t.TempDir()
	caddy := `#!/bin/sh
case "$1" in
version) echo v2-stub ;;
run) sed 's/"last_used_at": null/"last_used_at": "2026-12-01T00:00:00+00:00"/' example/keys.json >keys.tmp &&
	mv keys.tmp example/keys.json && pwd >"$STUB_RAN_IN" ;;
esac
`
	goStub := `#!/bin/sh
case "$1" in
version) echo "go version stub" ;;
build) mkdir -p bin && printf '%s' "$STUB_CADDY" > "$3" && chmod +x "$3" ;;
esac
`
	if err := os.WriteFile(filepath.Join(stubs, "go"), []byte(goStub), 0o755); err != nil {
		t.Fatal(err)
	}
	ranIn := filepath.Join(stubs, "ran-in")
	cmd := exec.Command("bash", filepath.Join(repo, "example", "demo.sh"))
	cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"), "STUB_CADDY="+caddy, "STUB_RAN_IN="+ranIn)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	where, err := os.ReadFile(ranIn)
	if err != nil {
		t.Fatalf("the demo's Caddy did not run: %v\n%s", err, out)
	}
	if got := testkeys.ReadFile(t, filepath.Join(repo, "example", "keys.json")); got != tracked {
		t.Errorf("the demo changed the tracked example/keys.json:\n%s\noutput:\n%s", got, out)
	}
	copyDir := strings.TrimSpace(string(where))
	if !strings.Contains(testkeys.ReadFile(t, filepath.Join(copyDir, "example", "keys.json")), `"last_used_at": "2026-12-01`) {
		t.Errorf("the demo's copy in %s did not get the use", copyDir)
	}
	if !strings.Contains(string(out), "bin/demo") {
		t.Errorf("demo.sh does not say where its copy is:\n%s", out)
	}
}
