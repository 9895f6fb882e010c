//go:build !race

// Allocation budgets are built only without the race detector; make test
// runs them in a separate pass (make test-allocs).

package metrics

import "testing"

// TestNoAllocsConnBytesAndClose: counting bytes and closing never
// allocate (the recorder's counters are resolved at ConnOpened).
func TestNoAllocsConnBytesAndClose(t *testing.T) {
	m := New()
	r := m.ConnOpened(fullLabels())
	if a := testing.AllocsPerRun(1000, func() {
		r.AddSent(4096)
		r.AddReceived(512)
		r.Close()
	}); a != 0 {
		t.Fatalf("%.1f allocs per AddSent+AddReceived+Close, want 0", a)
	}
}

// TestAllocBudgetConnOpened: on a known label set, ConnOpened costs one
// allocation, the recorder itself.
func TestAllocBudgetConnOpened(t *testing.T) {
	m := New()
	l := fullLabels()
	m.ConnOpened(l).Close()
	if a := testing.AllocsPerRun(1000, func() { m.ConnOpened(l).Close() }); a > 1 {
		t.Fatalf("%.1f allocs per ConnOpened+Close, budget 1", a)
	}
}
