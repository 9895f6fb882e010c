package store

import (
	"net/netip"
	"testing"
)

func BenchmarkWorkloadByIP(b *testing.B) {
	s := bigSnapshot(b, 10000)
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = addrN(i * 9 % 10000)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if s.WorkloadByIP(addrs[i&1023]) == nil {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkLookups(b *testing.B) {
	s := bigSnapshot(b, 10000)
	st := New()
	st.Replace(s)
	w := s.WorkloadByUID("uid-04242")
	vip := netip.AddrFrom4([4]byte{10, 96, 0, 42})
	b.ReportAllocs()
	for b.Loop() {
		snap := st.Load()
		svc := snap.ServiceByVIP(vip)
		_ = snap.Endpoints(svc)
		_ = snap.ServiceByHostname(svc.Namespace, svc.Hostname)
		_ = snap.Policies(w)
		_ = snap.PeerAuthMode(w)
		_ = w.Identity()
	}
}

func BenchmarkNewSnapshot(b *testing.B) {
	for b.Loop() {
		bigSnapshot(b, 10000)
	}
}
