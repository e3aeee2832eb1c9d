package testkeys

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/caddy-apikey/caddy-apikey/stores"
)

// Slow skips a test that takes seconds (why says what it runs) when -short
// is given, for a quick inner loop; the README's test command runs it.
func Slow(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: a slow test (" + why + "); the full test command runs it")
	}
}

// GaugeValue returns the value of the series of the stores' gauge name
// whose store label is store, and whether there is one.
func GaugeValue(t testing.TB, name, store string) (float64, bool) {
	t.Helper()
	m := storeSeries(t, name, map[string]string{"store": store})
	return m.GetGauge().GetValue(), m != nil
}

// CounterValue returns the value of the series of the stores' counter name
// whose store label is store and result label result, and whether there
// is one.
func CounterValue(t testing.TB, name, store, result string) (float64, bool) {
	t.Helper()
	m := storeSeries(t, name, map[string]string{"store": store, "result": result})
	return m.GetCounter().GetValue(), m != nil
}

// storeSeries returns the series of the stores' metric name that has the
// labels given, or nil.
func storeSeries(t testing.TB, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range stores.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m
		}
	}
	return nil
}

// RunCommand runs `caddy apikey <args>` in this process, as the command
// line does, with stdin as its input, and returns what it printed. The
// test binary must import the cli package (blank) for the command to be
// registered.
func RunCommand(t testing.TB, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	reg, ok := caddycmd.Commands()["apikey"]
	if !ok {
		t.Fatal("the apikey command is not registered: import the cli package")
	}
	cmd := &cobra.Command{Use: reg.Name, SilenceUsage: true, SilenceErrors: true}
	reg.CobraFunc(cmd)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// The shapes of a raw key in the default format, and of a key's id.
var (
	RawKeyPattern = regexp.MustCompile(`^sk_[A-Za-z0-9_-]{43}$`)
	UUIDv4Pattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

// HangLimit bounds how long a call that must not block (an open of a FIFO,
// a lock) may take before a test calls it a hang. It is not a performance
// bound.
const HangLimit = 10 * time.Second

// NoHang runs f and fails the test if it does not return within
// HangLimit.
func NoHang(t testing.TB, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(HangLimit):
		t.Fatalf("%s hangs", what)
	}
}
