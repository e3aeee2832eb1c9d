package keyspace

import (
	"runtime/debug"
	"testing"
)

// gcPercent returns GOGC as it is now.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// While a large key set is read whole, the garbage collector runs more
// often (GOGC loadGCPercent), so that the read's garbage does not double
// the memory the key set takes; reads that overlap share the setting, and
// the last one to end puts back what was set before. A GOGC already lower,
// or off, is left as it is.
func TestFullReadsCollectOftener(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	one := collectOftener()
	if got := gcPercent(); got != loadGCPercent {
		t.Fatalf("GOGC %d during a read, want %d", got, loadGCPercent)
	}
	two := collectOftener()
	one()
	if got := gcPercent(); got != loadGCPercent {
		t.Fatalf("GOGC %d while a second read goes on, want %d", got, loadGCPercent)
	}
	two()
	if got := gcPercent(); got != 100 {
		t.Fatalf("GOGC %d after the reads, want 100 as before", got)
	}
	for _, was := range []int{10, -1} {
		debug.SetGCPercent(was)
		restore := collectOftener()
		if got := gcPercent(); got != was {
			t.Errorf("GOGC %d during a read, want %d as set before", got, was)
		}
		restore()
		if got := gcPercent(); got != was {
			t.Errorf("GOGC %d after a read, want %d as set before", got, was)
		}
	}
}
