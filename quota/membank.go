package quota

import (
	"context"
	"sync"
	"time"
)

// MemoryBank is a Bank in memory, for one process: the reference for what
// a store's bank does (Apply), and for tests.
type MemoryBank struct {
	mu     sync.Mutex
	states map[string]*State // by key id: the latest period's state
	// Fail, if set, makes every call fail with its error.
	Fail error
}

// NewMemoryBank returns an empty bank.
func NewMemoryBank() *MemoryBank { return &MemoryBank{states: make(map[string]*State)} }

// TakeQuota applies each take (see Apply).
func (b *MemoryBank) TakeQuota(_ context.Context, takes []Take) ([]Taken, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Fail != nil {
		return nil, b.Fail
	}
	out := make([]Taken, len(takes))
	for i, t := range takes {
		s := b.states[t.ID]
		switch {
		case s != nil && Older(t.Period, s.Period):
			continue // {0, 0}: a server still on a period that is over
		case s == nil || s.Period != t.Period:
			s = &State{Period: t.Period}
			b.states[t.ID] = s
		}
		out[i] = Apply(s, t)
	}
	return out, nil
}

// GiveQuota applies each give (see Return).
func (b *MemoryBank) GiveQuota(_ context.Context, gives []Give) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Fail != nil {
		return b.Fail
	}
	for _, g := range gives {
		if s := b.states[g.ID]; s != nil {
			Return(s, g)
		}
	}
	return nil
}

// Grant adds n units to key id's allowance for period.
func (b *MemoryBank) Grant(id, period string, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.states[id]
	if s == nil || s.Period != period {
		s = &State{Period: period}
		b.states[id] = s
	}
	s.Granted += n
}

// State returns key id's state.
func (b *MemoryBank) State(id string) State {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.states[id]; s != nil {
		return *s
	}
	return State{}
}

// Apply makes take t on state s, the state of t's key in t's period:
// used += Owed; left = max(allowance + granted − used, 0); got = min(Want,
// left); used += got.
func Apply(s *State, t Take) Taken {
	s.Used += t.Owed
	left := s.Left(t.Allowance)
	got := min(max(t.Want, 0), left)
	s.Used += got
	return Taken{Got: got, Left: left - got}
}

// Return gives g's units back to s, if s is g's period's state: used −=
// N, not below 0.
func Return(s *State, g Give) {
	if s.Period == g.Period {
		s.Used = max(s.Used-g.N, 0)
	}
}

// Older reports whether period a is of the same kind as b (both days,
// both months) and before it. A bank answers a take for a period older
// than the one it holds with nothing ({0, 0}) and leaves the state alone:
// two servers on either side of midnight must not reset each other's
// count.
func Older(a, b string) bool { return len(a) == len(b) && a < b }

// Expired reports whether the state of a period that ended at end may be
// dropped at now: a day after it ended (a server's clock may be a little
// behind, and `caddy apikey list` shows the last period's use meanwhile).
func Expired(end, now time.Time) bool { return now.After(end.Add(24 * time.Hour)) }
