package storecore

import (
	"errors"
	"testing"
)

// A trouble is news when it starts and when what it says changes, not at
// each try; its end is news once.
func TestTrouble(t *testing.T) {
	var tr Trouble
	a, b := errors.New("a"), errors.New("b")
	steps := []struct {
		do   func() bool
		want bool
	}{
		{tr.End, false},
		{func() bool { return tr.Meet(a) }, true},
		{func() bool { return tr.Meet(a) }, false},
		{func() bool { return tr.Meet(b) }, true},
		{tr.Start, false},
		{tr.End, true},
		{tr.End, false},
		{tr.Start, true},
		{func() bool { return tr.Meet(a) }, true}, // started without a message: the first one is news
		{tr.End, true},
	}
	for i, s := range steps {
		if got := s.do(); got != s.want {
			t.Fatalf("step %d: %v, want %v", i, got, s.want)
		}
	}
}
