package file

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"go.uber.org/zap"
)

// BenchmarkUsageWrite measures one usage write of a 10 000-key file (a real
// file in a temporary folder) in which all 10 000 keys are due.
func BenchmarkUsageWrite(b *testing.B) {
	const n = 10_000
	path := filepath.Join(b.TempDir(), "keys.json")
	if err := os.WriteFile(path, testkeys.BenchKeyFile(n), 0o600); err != nil {
		b.Fatal(err)
	}
	s := newKeyFile(path, zap.NewNop())
	setUsageInterval(s, time.Minute)
	if err := s.load(); err != nil {
		b.Fatal(err)
	}
	ks := s.KeySet()
	sums := make([][sha256.Size]byte, n)
	for i := range sums {
		sums[i] = sha256.Sum256([]byte(testkeys.BenchRawKey(i)))
	}
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return clock }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		// A usage interval later, every key has been used again.
		clock = clock.Add(time.Minute)
		for j := range sums {
			s.MarkUsed(ks.Find(sums[j]), sums[j], clock.UnixNano())
		}
		b.StartTimer()
		s.writeUsage(false)
	}
	b.StopTimer()
	if s.writeFailing.On() || s.usage.Pending() != 0 {
		b.Fatalf("usage write failed: %d keys still waiting", s.usage.Pending())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	if want := keyset.FormatTimestamp(clock); bytes.Count(data, []byte(want)) != n {
		b.Fatalf("the file does not hold %s for all %d keys", want, n)
	}
}
