//go:build !race

// Allocation budgets are built only without the race detector, under which
// sync.Pool drops items at random; make test runs them in a separate pass.

package hbone

import "testing"

// TestAllocBudgetStreamSetup: a tunnel on a warm pooled connection costs
// at most 120 allocations, client and server together (the in-memory
// upstream's own allocations included).
func TestAllocBudgetStreamSetup(t *testing.T) {
	f := newFixture(t, func(c *ServerConfig) { c.Handler = pipeHandler{} })
	c := f.client(t, "ns-a", "sa-a")
	req := f.request()
	for i := 0; i < 20; i++ {
		oneTunnel(t, c, req)
	}
	allocs := testing.AllocsPerRun(200, func() { oneTunnel(t, c, req) })
	t.Logf("%.1f allocs per tunnel", allocs)
	if allocs > 120 {
		t.Fatalf("%.1f allocs per tunnel setup, budget 120", allocs)
	}
}
