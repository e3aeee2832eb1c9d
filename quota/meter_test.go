package quota

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]Quota{"10000/month": {10000, Month}, "5/day": {5, Day}, "0/none": {0, None}} {
		got, err := Parse(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10", "x/day", "10/week", "-1/day", "10/Day", "2000000000000000/day"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestPeriodAt(t *testing.T) {
	at := time.Date(2026, 12, 31, 23, 59, 59, 0, time.FixedZone("x", -5*3600)) // 2027-01-01 04:59:59 UTC
	name, start, end := Day.At(at)
	if name != "2027-01-01" || !start.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) || !end.Equal(time.Date(2027, 1, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("Day.At = %s %s %s", name, start, end)
	}
	name, _, end = Month.At(time.Date(2027, 2, 28, 12, 0, 0, 0, time.UTC))
	if name != "2027-02" || !end.Equal(time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("Month.At = %s %s", name, end)
	}
	if name, _, end := None.At(at); name != "none" || end != Never {
		t.Errorf("None.At = %s %s", name, end)
	}
}

// spendAll spends one unit at a time from n goroutines until every one
// was refused Exceeded, and returns the admitted count.
func spendAll(t *testing.T, m *Meter, id string, q Quota, n int) int64 {
	t.Helper()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for {
				d := m.Spend(id, q, 1, time.Now().UnixNano())
				switch d.Outcome {
				case Spent:
					admitted.Add(1)
				case Exceeded:
					return
				}
			}
		})
	}
	wg.Wait()
	return admitted.Load()
}

func TestSpendsExactlyTheAllowance(t *testing.T) {
	bank := NewMemoryBank()
	m := NewMeter(bank, Options{})
	defer m.Close()
	q := Quota{Requests: 10000, Period: Month}
	if got := spendAll(t, m, "k1", q, 8); got != 10000 {
		t.Fatalf("admitted %d, want 10000", got)
	}
	if s := bank.State("k1"); s.Used != 10000 {
		t.Fatalf("bank used %d, want 10000", s.Used)
	}
}

func TestNeverMoreThanTheQuotaAcrossCrashes(t *testing.T) {
	bank := NewMemoryBank()
	q := Quota{Requests: 10000, Period: Day}
	var admitted int64
	crashes := 0
	for i := 0; ; i++ {
		m := NewMeter(bank, Options{})
		refused := false
		for range 1500 {
			d := m.Spend("k", q, 1, time.Now().UnixNano())
			if d.Outcome == Spent {
				admitted++
			} else if d.Outcome == Exceeded {
				refused = true
				break
			}
		}
		if refused {
			m.Close()
			break
		}
		// A crash: the meter is dropped without Close; what it held is
		// stranded.
		m.stop()
		<-m.done
		crashes++
	}
	if admitted > q.Requests {
		t.Fatalf("admitted %d, over the quota of %d", admitted, q.Requests)
	}
	if stranded := q.Requests - admitted; stranded > int64(crashes)*q.Block() {
		t.Fatalf("%d units stranded by %d crashes, more than a block (%d) each", stranded, crashes, q.Block())
	}
	t.Logf("%d crashes, %d admitted, %d stranded", crashes, admitted, q.Requests-admitted)
}

func TestCloseGivesBack(t *testing.T) {
	bank := NewMemoryBank()
	m := NewMeter(bank, Options{})
	q := Quota{Requests: 1000, Period: None}
	if d := m.Spend("k", q, 3, time.Now().UnixNano()); d.Outcome != Spent || d.Remaining != 997 {
		t.Fatalf("spend = %+v", d)
	}
	m.Close()
	if s := bank.State("k"); s.Used != 3 || s.Period != "none" {
		t.Fatalf("after close the bank has %+v, want 3 used", s)
	}
}

func TestGrantAdmitsAgain(t *testing.T) {
	bank := NewMemoryBank()
	m := NewMeter(bank, Options{})
	defer m.Close()
	q := Quota{Requests: 5, Period: Day}
	now := time.Now().UnixNano()
	if got := spendAll(t, m, "k", q, 2); got != 5 {
		t.Fatalf("admitted %d, want 5", got)
	}
	d := m.Spend("k", q, 1, now)
	if d.Outcome != Exceeded || d.ResetSeconds(now) < 1 || d.ResetSeconds(now) > 86400 {
		t.Fatalf("spend after the quota = %+v", d)
	}
	name, _, _ := Day.At(time.Unix(0, now))
	bank.Grant("k", name, 2)
	m.Sync()
	if got := spendAll(t, m, "k", q, 1); got != 2 {
		t.Fatalf("admitted %d after a grant of 2", got)
	}
	// A raised allowance is asked about at once.
	if got := spendAll(t, m, "k", Quota{Requests: 10, Period: Day}, 1); got != 5 { // 10 + 2 granted - 7 used
		t.Fatalf("admitted %d after raising the quota to 10, want 5", got)
	}
}

func TestBankDown(t *testing.T) {
	bank := NewMemoryBank()
	var troubles []error
	var mu sync.Mutex
	m := NewMeter(bank, Options{Trouble: func(err error) { mu.Lock(); troubles = append(troubles, err); mu.Unlock() }})
	defer m.Close()
	q := Quota{Requests: 200, Period: Month}
	if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Spent {
		t.Fatalf("first spend = %+v", d)
	}
	bank.mu.Lock()
	bank.Fail = errors.New("down")
	bank.mu.Unlock()
	// The block it holds (2 units, 1 spent) is spent, then the key is
	// refused.
	if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Spent {
		t.Fatalf("spend from the block held = %+v", d)
	}
	if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Unavailable {
		t.Fatalf("spend with the bank down = %+v, want Unavailable", d)
	}
	bank.mu.Lock()
	bank.Fail = nil
	bank.mu.Unlock()
	m.Sync()
	if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Spent {
		t.Fatalf("spend once the bank is back = %+v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(troubles) != 2 || troubles[0] == nil || troubles[1] != nil {
		t.Fatalf("troubles = %v, want one failure then one recovery", troubles)
	}
}

func TestAdmitWhenDownSettles(t *testing.T) {
	bank := NewMemoryBank()
	bank.Fail = errors.New("down")
	m := NewMeter(bank, Options{})
	q := Quota{Requests: 3, Period: Month}
	for range 5 {
		if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Unavailable {
			t.Fatalf("spend while down = %+v, want Unavailable", d)
		}
		m.Owe("k", 1)
	}
	bank.mu.Lock()
	bank.Fail = nil
	bank.mu.Unlock()
	m.Sync()
	if s := bank.State("k"); s.Used < 5 {
		t.Fatalf("bank used %d after settling 5 owed", s.Used)
	}
	if d := m.Spend("k", q, 1, time.Now().UnixNano()); d.Outcome != Exceeded {
		t.Fatalf("spend past the allowance once settled = %+v", d)
	}
	m.Close()
}

func TestCostLargerThanTheBlock(t *testing.T) {
	bank := NewMemoryBank()
	m := NewMeter(bank, Options{})
	defer m.Close()
	q := Quota{Requests: 100, Period: Month} // block 1
	n := 0
	for m.Spend("k", q, 7, time.Now().UnixNano()).Outcome == Spent {
		n++
	}
	if n != 14 {
		t.Fatalf("admitted %d requests of cost 7 from 100 units, want 14", n)
	}
}

func TestPeriodEndGivesBack(t *testing.T) {
	bank := NewMemoryBank()
	m := NewMeter(bank, Options{})
	defer m.Close()
	q := Quota{Requests: 1000, Period: Day}
	day1 := time.Date(2026, 12, 3, 23, 0, 0, 0, time.UTC).UnixNano()
	if d := m.Spend("k", q, 1, day1); d.Outcome != Spent {
		t.Fatal(d)
	}
	day2 := time.Date(2026, 12, 4, 0, 0, 1, 0, time.UTC).UnixNano()
	if d := m.Spend("k", q, 1, day2); d.Outcome != Spent || d.Remaining != 999 {
		t.Fatalf("first spend of the next day = %+v", d)
	}
	m.Sync()
	if s := bank.State("k"); s.Period != "2026-12-04" {
		t.Fatalf("bank state %+v", s)
	}
}

func BenchmarkSpend(b *testing.B) {
	m := NewMeter(NewMemoryBank(), Options{})
	defer m.Close()
	q := Quota{Requests: 1 << 40, Period: Month}
	now := time.Now().UnixNano()
	m.Spend("key-1", q, 1, now)
	m.Sync()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !m.Spend("key-1", q, 1, now).Allowed() {
				b.Fatal("refused")
			}
		}
	})
}

func BenchmarkSpendOneCore(b *testing.B) {
	m := NewMeter(NewMemoryBank(), Options{})
	defer m.Close()
	q := Quota{Requests: 1 << 40, Period: Month}
	now := time.Now().UnixNano()
	m.Spend("key-1", q, 1, now)
	m.Sync()
	b.ReportAllocs()
	for b.Loop() {
		if !m.Spend("key-1", q, 1, now).Allowed() {
			b.Fatal("refused")
		}
	}
}

func TestOlderPeriodGetsNothing(t *testing.T) {
	bank := NewMemoryBank()
	got, _ := bank.TakeQuota(t.Context(), []Take{{ID: "k", Period: "2026-12-04", Allowance: 10, Want: 4}})
	if got[0].Got != 4 {
		t.Fatal(got)
	}
	got, _ = bank.TakeQuota(t.Context(), []Take{{ID: "k", Period: "2026-12-03", Allowance: 10, Want: 4}})
	if got[0] != (Taken{}) || bank.State("k") != (State{Period: "2026-12-04", Used: 4}) {
		t.Fatalf("take for the day before: %+v, state %+v", got[0], bank.State("k"))
	}
	if !Older("2026-11", "2026-12") || Older("2026-12", "2026-12-01") || Older("none", "2026-12") {
		t.Error("Older")
	}
}
