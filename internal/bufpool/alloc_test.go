//go:build !race

// Allocation budgets are built only without the race detector, under which
// sync.Pool drops items at random; make test runs them in a separate pass.

package bufpool

import "testing"

func TestSteadyStateNoAllocs(t *testing.T) {
	allocs := testing.AllocsPerRun(1000, func() {
		b := Get(32 << 10)
		Put(b)
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocs per Get/Put, want 0", allocs)
	}
}
