package store

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewStore(t *testing.T) {
	st := New()
	s := st.Load()
	if s == nil || s.Version() != 0 || len(s.Workloads()) != 0 || s.WorkloadByIP(netip.MustParseAddr("10.0.0.1")) != nil {
		t.Fatalf("initial snapshot: %+v", s)
	}
	var zero Store
	if zero.Load() == nil {
		t.Fatal("zero Store Load returned nil")
	}
	zero.Replace(shop())
	if zero.Load().Version() != 1 {
		t.Error("zero Store Replace")
	}
}

func TestReplaceVersions(t *testing.T) {
	st, other := New(), New()
	s := shop()
	for i := uint64(1); i <= 3; i++ {
		st.Replace(s)
		if v := st.Load().Version(); v != i {
			t.Fatalf("version %d after %d replaces", v, i)
		}
	}
	if s.Version() != 0 {
		t.Error("Replace modified its argument")
	}
	other.Replace(s)
	if other.Load().Version() != 1 || st.Load().Version() != 3 {
		t.Error("versions are per store")
	}
	// The published copy shares its contents.
	if st.Load().WorkloadByUID("c1") != s.WorkloadByUID("c1") {
		t.Error("published copy does not share workloads")
	}
	defer func() {
		if recover() == nil {
			t.Error("Replace(nil) did not panic")
		}
	}()
	st.Replace(nil)
}

func waitSignal(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no signal")
	}
}

func noSignal(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
		t.Fatal("unexpected signal")
	default:
	}
}

func TestSubscribe(t *testing.T) {
	st := New()
	a, cancelA := st.Subscribe()
	b, cancelB := st.Subscribe()
	defer cancelB()
	noSignal(t, a)

	st.Replace(shop())
	waitSignal(t, a)
	waitSignal(t, b)
	noSignal(t, a)

	// Three replacements coalesce into one pending signal.
	for range 3 {
		st.Replace(shop())
	}
	waitSignal(t, a)
	noSignal(t, a)
	if v := st.Load().Version(); v != 4 {
		t.Errorf("version %d", v)
	}

	cancelA()
	cancelA() // idempotent
	if _, ok := <-a; ok {
		t.Error("cancelled channel delivered a value")
	}
	st.Replace(shop()) // must not panic on the closed channel
	waitSignal(t, b)
}

// TestLoadDuringReplace swaps snapshots continuously while readers check
// that every snapshot they load is internally consistent (all its
// workloads and services belong to one generation) and that versions never
// go backwards. Run with -race.
func TestLoadDuringReplace(t *testing.T) {
	const n = 64
	gen := func(g int) *Snapshot {
		ws := make([]*Workload, n)
		for i := range ws {
			ws[i] = &Workload{UID: fmt.Sprintf("u%d", i), Name: "w", Namespace: "ns", ServiceAccount: "sa", TrustDomain: "td",
				Protocol: ProtocolHBONE, Healthy: true, IPs: []netip.Addr{addrN(i)}, Labels: map[string]string{"gen": fmt.Sprint(g)}}
		}
		ss := []*Service{{Name: "s", Namespace: "ns", Hostname: fmt.Sprintf("gen-%d", g), VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.1")},
			Ports: []ServicePort{{Port: 80}}, Selector: map[string]string{"gen": fmt.Sprint(g)}}}
		s, err := NewSnapshot(ws, ss, nil, nil)
		if err != nil {
			panic(err)
		}
		return s
	}
	gens := make([]*Snapshot, 8)
	for i := range gens {
		gens[i] = gen(i)
	}
	st := New()
	st.Replace(gens[0])

	var stop atomic.Bool
	var wg sync.WaitGroup
	var loads atomic.Int64
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			var last uint64
			for !stop.Load() {
				s := st.Load()
				loads.Add(1)
				if v := s.Version(); v < last {
					errs <- fmt.Errorf("version went back from %d to %d", last, v)
					return
				} else {
					last = v
				}
				svc := s.ServiceByVIP(netip.MustParseAddr("10.96.0.1"))
				g := svc.Selector["gen"]
				if svc.Hostname != "gen-"+g {
					errs <- fmt.Errorf("torn service %+v", svc)
					return
				}
				if eps := s.Endpoints(svc); len(eps) != n {
					errs <- fmt.Errorf("generation %s: %d endpoints, want %d", g, len(eps), n)
					return
				}
				for i := 0; i < n; i += 7 {
					w := s.WorkloadByIP(addrN(i))
					if w == nil || w.Labels["gen"] != g || s.WorkloadByUID(w.UID) != w {
						errs <- fmt.Errorf("generation %s: torn workload %+v", g, w)
						return
					}
				}
			}
		})
	}
	for i := 0; i < 2000 || loads.Load() < 2000; i++ {
		st.Replace(gens[i%len(gens)])
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
