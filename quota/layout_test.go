package quota

import (
	"testing"
	"unsafe"
)

func TestHolderLayout(t *testing.T) {
	var h Holder
	if n := unsafe.Sizeof(h); n != 192 {
		t.Errorf("a Holder is %d bytes, want 192 (a size class whose objects start on a cache line)", n)
	}
	if off := unsafe.Offsetof(h.wanted); off >= 64 {
		t.Errorf("what a spend reads ends at byte %d, past the first cache line", off)
	}
}
