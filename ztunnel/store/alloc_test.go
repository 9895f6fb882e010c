//go:build !race

// Allocation budgets are built only without the race detector (the
// project's convention); make test-allocs runs them.

package store

import (
	"net/netip"
	"testing"
)

func TestLookupsNoAllocs(t *testing.T) {
	s := shop()
	st := New()
	st.Replace(s)
	c1 := s.WorkloadByUID("c1")
	checkout := s.ServiceByVIP(netip.MustParseAddr("10.96.0.10"))
	mapped := netip.MustParseAddr("::ffff:10.0.0.11")
	for name, f := range map[string]func(){
		"Load":              func() { st.Load() },
		"WorkloadByIP":      func() { s.WorkloadByIP(mapped) },
		"WorkloadByIP miss": func() { s.WorkloadByIP(netip.MustParseAddr("192.0.2.1")) },
		"WorkloadByUID":     func() { s.WorkloadByUID("c1") },
		"ServiceByVIP":      func() { s.ServiceByVIP(netip.MustParseAddr("fd00:96::10")) },
		"ServiceByHostname": func() { s.ServiceByHostname("shop", "checkout.shop.svc.cluster.local") },
		"Endpoints":         func() { s.Endpoints(checkout) },
		"Policies":          func() { s.Policies(c1) },
		"PeerAuthMode":      func() { s.PeerAuthMode(c1) },
		"Identity":          func() { c1.Identity() },
		"Workloads":         func() { s.Workloads() },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %.1f allocs, want 0", name, n)
		}
	}
}
