package file

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"go.uber.org/zap"
)

// TestMain runs the child processes that some tests start (this test
// binary, with an environment variable naming what to do), or the tests.
func TestMain(m *testing.M) {
	if path := os.Getenv(crashWriterEnv); path != "" {
		runCrashWriter(path) // a child process of TestUsageWriteSurvivesKill
		os.Exit(0)
	}
	if path := os.Getenv(quotaCrashEnv); path != "" {
		runQuotaCrashTaker(path) // a child process of TestQuotaTakesSurviveKill
		os.Exit(0)
	}
	if path := os.Getenv(stateFullDiskEnv); path != "" {
		runStateFullDiskChild(path) // a child process of TestStateWriteOnFullDisk
		os.Exit(0)
	}
	if arg := os.Getenv(fullDiskEnv); arg != "" {
		runFullDiskChild(arg) // a child process of TestUsageWriteOnFullDisk
		os.Exit(0)
	}
	flag.Parse()
	os.Exit(m.Run())
}

// stateFullDiskEnv names the key file whose state file a child test
// process writes under a file size limit, as if the disk were full.
const stateFullDiskEnv = "APIKEY_TEST_STATE_FULL_DISK"

// fullDiskEnv names the key file that a child test process tries to write
// under a file size limit, as if the disk were full.
const fullDiskEnv = "APIKEY_TEST_FULL_DISK"

// TestUsageWriteOnFullDisk runs a usage write in a child process whose file
// size limit (RLIMIT_FSIZE) is below the key file's size: the write fails,
// the key file stays whole, keys keep working, and once the limit is lifted
// the pending use is written.
func TestUsageWriteOnFullDisk(t *testing.T) {
	if !canLimitFileSize {
		t.Skip("no file size limit on this platform; nothing to test")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var keys []testkeys.Key
	for i := 0; i < 50; i++ {
		keys = append(keys, testkeys.New(fmt.Sprintf("key %d", i), nil))
	}
	path := testkeys.WriteKeys(t, "", keys...)
	before, _ := os.ReadFile(path)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), fullDiskEnv+"="+path+"|"+keys[7].Raw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "full-disk child: ok") {
		t.Fatalf("child did not finish its checks:\n%s", out)
	}
	if recs := testkeys.ReadDoc(t, path).Records; len(recs) != len(keys) {
		t.Fatalf("%d keys in the file, want %d", len(recs), len(keys))
	}
	if testkeys.LastUsed(t, path, keys[7].Record["id"].(string)) == "" {
		t.Fatal("the use pending while the disk was full was not written afterwards")
	}
	if len(before) == 0 {
		t.Fatal("empty key file")
	}
}

// crashWriterEnv names the key file that a child test process writes usage
// times to, in a loop, until it is killed.
const crashWriterEnv = "APIKEY_TEST_CRASH_WRITER"

func runCrashWriter(path string) {
	s := newKeyFile(path, zap.NewNop())
	if err := s.load(); err != nil {
		os.Exit(3)
	}
	setUsageInterval(s, time.Nanosecond)
	os.Stdout.WriteString("ready\n")
	now := time.Now().UnixNano()
	for {
		now += int64(2 * time.Second)
		ks := s.KeySet()
		for sum := range ks.All() {
			s.MarkUsed(ks.Find(sum), sum, now)
		}
		s.writeUsage(true)
	}
}

// TestUsageWriteSurvivesKill kills a process with SIGKILL while it keeps
// writing usage times, many times over: the key file must always be valid
// and hold every key.
func TestUsageWriteSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a slow test (a child process killed many times); the full test command runs it")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var keys []testkeys.Key
	for i := 0; i < 200; i++ {
		keys = append(keys, testkeys.New("k", map[string]any{"extra": strings.Repeat("x", i)}))
	}
	path := testkeys.WriteKeys(t, "", keys...)
	written := 0
	const rounds = 30
	for round := 0; round < rounds; round++ {
		before, _ := os.ReadFile(path)
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashWriterEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it at a random moment once it writes.
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			t.Fatalf("round %d: child did not start: %v", round, err)
		}
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
			t.Fatal(err)
		}
		_ = cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code == 3 {
			t.Fatalf("round %d: the child could not load the key file", round)
		}

		ks, err := keyfile.ReadKeySet(path)
		if err != nil {
			t.Fatalf("round %d: key file broken after SIGKILL: %v", round, err)
		}
		if ks.Len() != len(keys) {
			t.Fatalf("round %d: %d keys after SIGKILL, want %d", round, ks.Len(), len(keys))
		}
		for _, k := range keys {
			if got, _ := ks.Lookup(k.Raw); got == nil {
				t.Fatalf("round %d: key %s lost", round, k.Record["id"])
			}
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			written++
		}
	}
	if written == 0 {
		t.Fatal("the child never got a write done: the test proves nothing")
	}
	// The next write clears what the killed writers left behind.
	if _, err := testkeys.Update(path, func(doc *keyfile.Doc) error {
		return doc.Records[0].Set("note", "after the kills")
	}); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")); len(left) != 0 {
		t.Fatalf("temporary files left behind: %v", left)
	}
	t.Logf("%d of %d rounds saw usage writes land", written, rounds)
}
