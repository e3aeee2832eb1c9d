package apikey

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// openPTY opens a pseudo-terminal and returns its two ends: what the
// terminal shows is read from master; slave is the terminal a command
// writes to.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skip("no pseudo-terminal here:", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// caddy apikey import shows its progress when its stderr is a terminal:
// each step (reading the file, reading the key set, writing it) on a line
// of its own, with what it found and the time it took.
func TestCommandImportShowsProgressOnATerminal(t *testing.T) {
	r := testredis.Start(t)
	master, slave := openPTY(t)
	keys := make([]testkeys.Key, 500)
	for i := range keys {
		keys[i] = testkeys.New(fmt.Sprintf("k%d", i), nil)
	}
	path := testkeys.WriteKeys(t, "", keys...)

	shown := make(chan string)
	go func() {
		var b bytes.Buffer
		_, _ = io.Copy(&b, master) // until the terminal's other end is closed (EIO)
		shown <- b.String()
	}()
	stdout, err := runWithStderr(t, slave, "import", "--file", path, "--redis", r.URL, "--prefix", "tty:")
	slave.Close()
	text := <-shown
	if err != nil {
		t.Fatalf("import: %v; the terminal showed %q", err, text)
	}
	if !strings.Contains(stdout, "Imported 500 keys") {
		t.Errorf("stdout %q", stdout)
	}
	for _, want := range []string{"\r", "Reading " + path, "500 keys (", "Reading the key set redis://", "Writing 500 keys to redis://"} {
		if !strings.Contains(text, want) {
			t.Errorf("the terminal did not show %q:\n%q", want, text)
		}
	}
}

// runWithStderr runs `caddy apikey args...` in process with stderr as its
// standard error, and returns its standard output.
func runWithStderr(t *testing.T, stderr io.Writer, args ...string) (string, error) {
	t.Helper()
	reg, ok := caddycmd.Commands()["apikey"]
	if !ok {
		t.Fatal("the apikey command is not registered")
	}
	cmd := &cobra.Command{Use: reg.Name, SilenceUsage: true, SilenceErrors: true}
	reg.CobraFunc(cmd)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(stderr)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}
