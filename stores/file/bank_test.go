package file

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// A quota meter on the file store admits exactly the allowance, however
// much more is asked for, and what it held goes back when it closes.
func TestMeterOnFileStoreSpendsTheAllowance(t *testing.T) {
	path := testkeys.WriteKeys(t, "", testkeys.New("k", nil))
	st := &Store{store: newKeyFile(path, zap.NewNop())}
	m := quota.NewMeter(st, quota.Options{})
	q := quota.Quota{Requests: 1000, Period: quota.Month}
	var admitted, unavailable int64
	for admitted < 3*q.Requests {
		d := m.Spend("k", q, 1, time.Now().UnixNano())
		if d.Outcome == quota.Exceeded {
			break
		}
		switch d.Outcome {
		case quota.Spent:
			admitted++
		case quota.Unavailable: // the state file was slow: asked again
			if unavailable++; unavailable > 100 {
				t.Fatalf("the state file was unavailable %d times", unavailable)
			}
			m.Sync()
		default:
			t.Fatalf("outcome %v", d.Outcome)
		}
	}
	if admitted != q.Requests {
		t.Fatalf("%d admitted, want exactly the allowance %d", admitted, q.Requests)
	}
	m.Close()
	period, _, _ := quota.Month.At(time.Now())
	states, err := Records{Path: path}.QuotaStates(map[string]string{"k": period})
	if err != nil || states["k"].Used != q.Requests {
		t.Fatalf("state %+v, %v; want %d used", states, err, q.Requests)
	}
}

// quotaCrashEnv names the key file whose quota a child test process takes
// blocks of, in a loop, until it is killed.
const quotaCrashEnv = "APIKEY_TEST_QUOTA_CRASH"

// runQuotaCrashTaker takes blocks of a key's quota and adds usage counts
// through the file store in a loop, and prints the units it has taken in
// all once each take has returned: those are on disk.
func runQuotaCrashTaker(path string) {
	st := &Store{store: newKeyFile(path, zap.NewNop())}
	ctx := context.Background()
	var took int64
	os.Stdout.WriteString("ready\n")
	for i := 0; ; i++ {
		got, err := st.TakeQuota(ctx, []quota.Take{monthTake("k", 1<<40, 1+int64(i%50), 0)})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(3)
		}
		took += got[0].Got
		os.Stdout.WriteString("took " + strconv.FormatInt(took, 10) + "\n")
		rows := []usagecount.Row{{ID: "k", Hour: dec3, Result: "admitted", N: got[0].Got}, {ID: fmt.Sprint("key-", i%300), Hour: dec3, Result: "revoked", N: 1}}
		if err := st.AddUsageCounts(ctx, rows, 100*365*24*time.Hour); err != nil {
			fmt.Println("error:", err)
			os.Exit(3)
		}
	}
}

// TestQuotaTakesSurviveKill kills a process with SIGKILL while it takes
// blocks of a quota and writes usage counts, many times over: the state
// file must always read whole, and count as used at least every unit the
// killed processes were told they took (they may have taken a few more,
// whose answer they did not live to print).
func TestQuotaTakesSurviveKill(t *testing.T) {
	testkeys.Slow(t, "a child process killed many times")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rs, path := stateRecords(t, dec3)
	var told int64 // units the children reported taken, in all
	const rounds = 20
	killedMidWay := 0
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), quotaCrashEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(out)
		if !lines.Scan() || lines.Text() != "ready" {
			t.Fatalf("round %d: child did not start: %q", round, lines.Text())
		}
		last := make(chan int64)
		go func() { // read what it says until it dies
			var took int64
			for lines.Scan() {
				if n, ok := strings.CutPrefix(lines.Text(), "took "); ok {
					took, _ = strconv.ParseInt(n, 10, 64)
				} else {
					t.Errorf("round %d: child says %q", round, lines.Text())
				}
			}
			last <- took
		}()
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond) // a random moment of its work
		if err := cmd.Process.Kill(); err != nil {                      // SIGKILL on Unix
			t.Fatal(err)
		}
		took := <-last
		_ = cmd.Wait()
		if took == 0 {
			t.Logf("round %d: killed before its first take returned", round)
		} else {
			killedMidWay++
		}
		told += took

		states, err := rs.QuotaStates(map[string]string{"k": "2026-12"})
		if err != nil {
			t.Fatalf("round %d: state file unreadable after SIGKILL: %v", round, err)
		}
		if used := states["k"].Used; used < told {
			t.Fatalf("round %d: %d units used in the state file, but the children were told they took %d", round, used, told)
		}
		if _, err := rs.ReadUsageCounts("k", time.Time{}); err != nil {
			t.Fatalf("round %d: usage counts unreadable after SIGKILL: %v", round, err)
		}
	}
	if killedMidWay < rounds/2 {
		t.Fatalf("only %d of %d children took quota before they were killed: the test proves little", killedMidWay, rounds)
	}
	states, _ := rs.QuotaStates(map[string]string{"k": "2026-12"})
	t.Logf("%d rounds: children told of %d units taken, %d used in the state file (%d taken by a child that died before it could tell)",
		rounds, told, states["k"].Used, states["k"].Used-told)
	// The next write clears what the killed writers left behind.
	if _, err := rs.GrantQuota("k", "2026-12", 1, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left behind: %v", left)
	}
}
