package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/strait-mesh/strait/ztunnel/rbac"
)

func ips(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func wl(uid, ns string, labels map[string]string, addrs ...string) *Workload {
	return &Workload{UID: uid, Name: uid, Namespace: ns, ServiceAccount: "default", Node: "node-a", IPs: ips(addrs...),
		Protocol: ProtocolHBONE, Labels: labels, TrustDomain: "cluster.local", Healthy: true}
}

func svc(name, ns string, sel map[string]string, vips ...string) *Service {
	return &Service{Name: name, Namespace: ns, Hostname: name + "." + ns + ".svc.cluster.local", VIPs: ips(vips...),
		Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}, Selector: sel}
}

func pol(name, ns string, scope rbac.Scope, sel map[string]string) *rbac.Policy {
	return &rbac.Policy{Name: name, Namespace: ns, Scope: scope, Selector: sel, Action: rbac.ActionAllow, Rules: []rbac.Rule{{}}}
}

func pa(name, ns string, scope rbac.Scope, sel map[string]string, m rbac.Mode) *rbac.PeerAuthentication {
	return &rbac.PeerAuthentication{Name: name, Namespace: ns, Scope: scope, Selector: sel, Mode: m}
}

func mustSnapshot(t testing.TB, ws []*Workload, ss []*Service, ps []*rbac.Policy, pas []*rbac.PeerAuthentication) *Snapshot {
	t.Helper()
	s, err := NewSnapshot(ws, ss, ps, pas)
	if err != nil {
		t.Fatalf("NewSnapshot: %v", err)
	}
	return s
}

func shop() *Snapshot {
	checkout := map[string]string{"app": "checkout"}
	ws := []*Workload{
		wl("c2", "shop", checkout, "10.0.0.12"),
		wl("c1", "shop", checkout, "10.0.0.11", "fd00::11"),
		wl("c3", "shop", checkout, "10.0.0.13"),
		wl("f1", "shop", map[string]string{"app": "frontend"}, "10.0.0.21"),
		wl("x1", "other", checkout, "10.0.1.11"),
	}
	ws[2].Healthy = false
	ss := []*Service{
		svc("checkout", "shop", checkout, "10.96.0.10", "fd00:96::10"),
		svc("frontend", "shop", map[string]string{"app": "frontend"}, "10.96.0.11"),
		svc("headless", "shop", nil),
	}
	ps := []*rbac.Policy{
		pol("wl", "shop", rbac.ScopeWorkload, checkout),
		pol("ns", "shop", rbac.ScopeNamespace, nil),
		pol("mesh", "istio-system", rbac.ScopeMesh, nil),
		pol("other-ns", "other", rbac.ScopeNamespace, nil),
		pol("wl-frontend", "shop", rbac.ScopeWorkload, map[string]string{"app": "frontend"}),
	}
	pas := []*rbac.PeerAuthentication{
		pa("mesh", "istio-system", rbac.ScopeMesh, nil, rbac.ModeStrict),
		pa("ns", "shop", rbac.ScopeNamespace, nil, rbac.ModePermissive),
		pa("wl", "shop", rbac.ScopeWorkload, map[string]string{"app": "frontend"}, rbac.ModeStrict),
	}
	s, err := NewSnapshot(ws, ss, ps, pas)
	if err != nil {
		panic(err)
	}
	return s
}

func uids(ws []*Workload) []string {
	out := []string{}
	for _, w := range ws {
		out = append(out, w.UID)
	}
	return out
}

func keys(ps []*rbac.Policy) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.Key())
	}
	return out
}

func TestLookups(t *testing.T) {
	s := shop()
	for _, c := range []struct {
		ip   string
		want string
	}{
		{"10.0.0.11", "c1"}, {"fd00::11", "c1"}, {"::ffff:10.0.0.12", "c2"}, {"10.0.0.21", "f1"},
		{"10.0.0.99", ""}, {"10.96.0.10", ""},
	} {
		got := s.WorkloadByIP(netip.MustParseAddr(c.ip))
		if (got == nil && c.want != "") || (got != nil && got.UID != c.want) {
			t.Errorf("WorkloadByIP(%s) = %v, want %q", c.ip, got, c.want)
		}
	}
	if s.WorkloadByIP(netip.Addr{}) != nil {
		t.Error("WorkloadByIP(zero) found something")
	}
	if w := s.WorkloadByUID("f1"); w == nil || w.Name != "f1" {
		t.Errorf("WorkloadByUID(f1) = %v", w)
	}
	if s.WorkloadByUID("nope") != nil || s.WorkloadByUID("") != nil {
		t.Error("WorkloadByUID found a missing uid")
	}
	for _, c := range []struct{ ip, want string }{{"10.96.0.10", "checkout"}, {"fd00:96::10", "checkout"}, {"::ffff:10.96.0.11", "frontend"}, {"10.0.0.11", ""}} {
		got := s.ServiceByVIP(netip.MustParseAddr(c.ip))
		if (got == nil && c.want != "") || (got != nil && got.Name != c.want) {
			t.Errorf("ServiceByVIP(%s) = %v, want %q", c.ip, got, c.want)
		}
	}
	if got := s.ServiceByHostname("shop", "checkout.shop.svc.cluster.local"); got == nil || got.Name != "checkout" {
		t.Errorf("ServiceByHostname = %v", got)
	}
	if s.ServiceByHostname("other", "checkout.shop.svc.cluster.local") != nil {
		t.Error("ServiceByHostname ignored the namespace")
	}
	if got := uids(s.Workloads()); !reflect.DeepEqual(got, []string{"c1", "c2", "c3", "f1", "x1"}) {
		t.Errorf("Workloads = %v", got)
	}
	var names []string
	for _, svc := range s.Services() {
		names = append(names, svc.Namespace+"/"+svc.Name)
	}
	if !reflect.DeepEqual(names, []string{"shop/checkout", "shop/frontend", "shop/headless"}) {
		t.Errorf("Services = %v", names)
	}
	if got := keys(s.AuthorizationPolicies()); !reflect.DeepEqual(got, []string{"istio-system/mesh", "other/other-ns", "shop/ns", "shop/wl", "shop/wl-frontend"}) {
		t.Errorf("AuthorizationPolicies = %v", got)
	}
	if got := len(s.PeerAuthentications()); got != 3 {
		t.Errorf("PeerAuthentications: %d", got)
	}
	if p, ok := s.ServiceByVIP(netip.MustParseAddr("10.96.0.10")).Port(80); !ok || p.TargetPort != 8080 {
		t.Errorf("Port(80) = %+v, %v", p, ok)
	}
	if _, ok := s.ServiceByVIP(netip.MustParseAddr("10.96.0.10")).Port(81); ok {
		t.Error("Port(81) found")
	}
}

func TestEndpoints(t *testing.T) {
	s := shop()
	checkout := s.ServiceByHostname("shop", "checkout.shop.svc.cluster.local")
	// c3 is unhealthy, x1 is in another namespace; sorted by UID although
	// given out of order.
	if got := uids(s.Endpoints(checkout)); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Errorf("Endpoints(checkout) = %v", got)
	}
	if got := s.Endpoints(s.ServiceByHostname("shop", "headless.shop.svc.cluster.local")); len(got) != 0 {
		t.Errorf("empty selector has endpoints %v", uids(got))
	}
	if s.Endpoints(nil) != nil {
		t.Error("Endpoints(nil)")
	}
	// A service from elsewhere is computed against this snapshot.
	foreign := svc("checkout", "shop", map[string]string{"app": "checkout"})
	if got := uids(s.Endpoints(foreign)); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Errorf("Endpoints(foreign) = %v", got)
	}
	// Explicit endpoints (EndpointSlices) win over the selector: unknown
	// UIDs, unhealthy workloads (c3) and other namespaces (x1) are skipped,
	// duplicates collapse, the result is sorted.
	explicit := svc("explicit", "shop", map[string]string{"app": "frontend"})
	explicit.EndpointUIDs = []string{"c2", "nope", "c3", "x1", "c1", "c2"}
	if got := uids(s.Endpoints(explicit)); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Errorf("Endpoints(explicit) = %v", got)
	}
	empty := svc("none", "shop", map[string]string{"app": "checkout"})
	empty.EndpointUIDs = []string{}
	if got := s.Endpoints(empty); len(got) != 0 {
		t.Errorf("empty EndpointUIDs (not nil) should pick nothing, got %v", uids(got))
	}
	// Appending to the result must not write into the snapshot.
	eps := s.Endpoints(checkout)
	_ = append(eps, nil)
	if got := uids(s.Endpoints(checkout)); !reflect.DeepEqual(got, []string{"c1", "c2"}) {
		t.Errorf("append changed the snapshot: %v", got)
	}
}

func TestPoliciesAndModes(t *testing.T) {
	s := shop()
	cases := []struct {
		uid    string
		policy []string
		mode   rbac.Mode
	}{
		{"c1", []string{"istio-system/mesh", "shop/ns", "shop/wl"}, rbac.ModePermissive},
		{"c3", []string{"istio-system/mesh", "shop/ns", "shop/wl"}, rbac.ModePermissive},
		{"f1", []string{"istio-system/mesh", "shop/ns", "shop/wl-frontend"}, rbac.ModeStrict},
		{"x1", []string{"istio-system/mesh", "other/other-ns"}, rbac.ModeStrict},
	}
	for _, c := range cases {
		w := s.WorkloadByUID(c.uid)
		if got := keys(s.Policies(w)); !reflect.DeepEqual(got, c.policy) {
			t.Errorf("Policies(%s) = %v, want %v", c.uid, got, c.policy)
		}
		if got := s.PeerAuthMode(w); got != c.mode {
			t.Errorf("PeerAuthMode(%s) = %s, want %s", c.uid, got, c.mode)
		}
		// The same answers for an equal workload that is not the
		// snapshot's own (e.g. kept from an older snapshot).
		cp := *w
		if got := keys(s.Policies(&cp)); !reflect.DeepEqual(got, c.policy) {
			t.Errorf("Policies(copy of %s) = %v, want %v", c.uid, got, c.policy)
		}
		if got := s.PeerAuthMode(&cp); got != c.mode {
			t.Errorf("PeerAuthMode(copy of %s) = %s, want %s", c.uid, got, c.mode)
		}
	}
	stranger := wl("zz", "elsewhere", nil, "192.0.2.1")
	if got := keys(s.Policies(stranger)); !reflect.DeepEqual(got, []string{"istio-system/mesh"}) {
		t.Errorf("Policies(stranger) = %v", got)
	}
	if s.Policies(nil) != nil || s.PeerAuthMode(nil) != rbac.ModePermissive {
		t.Error("nil workload")
	}
	// Policies feed Evaluate directly.
	if d := rbac.Evaluate(s.Policies(s.WorkloadByUID("c1")), rbac.Connection{DstPort: 80}); !d.Allow || d.Policy != "istio-system/mesh" {
		t.Errorf("Evaluate = %+v", d)
	}
	empty := mustSnapshot(t, []*Workload{wl("a", "ns", nil, "10.0.0.1")}, nil, nil, nil)
	if got := empty.Policies(empty.WorkloadByUID("a")); len(got) != 0 {
		t.Errorf("no policies: %v", keys(got))
	}
	if got := empty.PeerAuthMode(empty.WorkloadByUID("a")); got != rbac.ModePermissive {
		t.Errorf("default mode %s", got)
	}
}

func TestIdentity(t *testing.T) {
	s := shop()
	w := s.WorkloadByUID("c1")
	if got := w.Identity().String(); got != "spiffe://cluster.local/ns/shop/sa/default" {
		t.Errorf("Identity = %q", got)
	}
	// Computed too for a workload that no snapshot owns.
	free := &Workload{TrustDomain: "td", Namespace: "a", ServiceAccount: "b"}
	if got := free.Identity().String(); got != "spiffe://td/ns/a/sa/b" {
		t.Errorf("Identity = %q", got)
	}
	tcp := &Workload{UID: "t", Name: "t", Namespace: "legacy", Protocol: ProtocolTCP, IPs: ips("10.9.9.9")}
	s2 := mustSnapshot(t, []*Workload{tcp}, nil, nil, nil)
	if id := s2.WorkloadByUID("t").Identity(); !id.IsZero() {
		t.Errorf("TCP workload without service account has identity %q", id)
	}
	var nilw *Workload
	if !nilw.Identity().IsZero() {
		t.Error("nil workload identity")
	}
}

func TestNewSnapshotCopiesInput(t *testing.T) {
	w := wl("a", "shop", map[string]string{"app": "x"}, "::ffff:10.0.0.1")
	sv := svc("s", "shop", map[string]string{"app": "x"}, "10.96.0.1")
	sv.Ports[0].TargetPort = 0
	p := pol("p", "shop", rbac.ScopeNamespace, nil)
	s := mustSnapshot(t, []*Workload{w}, []*Service{sv}, []*rbac.Policy{p}, nil)
	w.Labels["app"] = "y"
	w.IPs[0] = netip.MustParseAddr("10.0.0.2")
	sv.Selector["app"] = "y"
	p.Name = "changed"
	got := s.WorkloadByUID("a")
	if got == w || got.Labels["app"] != "x" || got.IPs[0] != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("snapshot shares the caller's workload: %+v", got)
	}
	if s.WorkloadByIP(netip.MustParseAddr("10.0.0.1")) != got {
		t.Error("mapped address not indexed as IPv4")
	}
	gs := s.Services()[0]
	if gs.Selector["app"] != "x" || len(s.Endpoints(gs)) != 1 {
		t.Errorf("snapshot shares the caller's service: %+v", gs)
	}
	if gs.Ports[0].TargetPort != 80 {
		t.Errorf("targetPort default: %+v", gs.Ports[0])
	}
	if s.AuthorizationPolicies()[0].Name != "p" {
		t.Error("snapshot shares the caller's policy")
	}
}

func TestNewSnapshotErrors(t *testing.T) {
	type in struct {
		ws  []*Workload
		ss  []*Service
		ps  []*rbac.Policy
		pas []*rbac.PeerAuthentication
	}
	w := func(f func(*Workload)) *Workload { x := wl("a", "shop", nil, "10.0.0.1"); f(x); return x }
	sv := func(f func(*Service)) *Service { x := svc("s", "shop", nil, "10.96.0.1"); f(x); return x }
	cases := []struct {
		name string
		in   in
		want []string
		is   error
	}{
		{"nil workload", in{ws: []*Workload{nil}}, []string{"store: workloads[0]: is nil"}, ErrInvalidWorkload},
		{"empty uid", in{ws: []*Workload{w(func(w *Workload) { w.UID = "" })}}, []string{`workloads[0] (uid ""): uid is empty`}, ErrInvalidWorkload},
		{"duplicate uid", in{ws: []*Workload{wl("a", "shop", nil, "10.0.0.1"), wl("a", "shop", nil, "10.0.0.2")}}, []string{`workloads[1] (uid "a"): uid is used by another workload`}, ErrDuplicate},
		{"no name", in{ws: []*Workload{w(func(w *Workload) { w.Name = "" })}}, []string{"name is empty"}, ErrInvalidWorkload},
		{"no namespace", in{ws: []*Workload{w(func(w *Workload) { w.Namespace = "" })}}, []string{"namespace is empty", "no valid identity"}, ErrInvalidWorkload},
		{"bad protocol", in{ws: []*Workload{w(func(w *Workload) { w.Protocol = "UDP" })}}, []string{`protocol "UDP" is neither HBONE nor TCP`}, ErrInvalidWorkload},
		{"hbone without identity", in{ws: []*Workload{w(func(w *Workload) { w.ServiceAccount = "" })}}, []string{"no valid identity: identity: service account"}, ErrInvalidWorkload},
		{"bad trust domain", in{ws: []*Workload{w(func(w *Workload) { w.TrustDomain = "Bad TD" })}}, []string{"no valid identity: identity: trust domain"}, ErrInvalidWorkload},
		{"invalid ip", in{ws: []*Workload{w(func(w *Workload) { w.IPs = []netip.Addr{{}} })}}, []string{"ips[0] is not a valid address"}, ErrInvalidWorkload},
		{"unspecified ip", in{ws: []*Workload{w(func(w *Workload) { w.IPs = ips("::") })}}, []string{"ips[0]: :: is unspecified"}, ErrInvalidWorkload},
		{"ip twice in one", in{ws: []*Workload{w(func(w *Workload) { w.IPs = ips("10.0.0.1", "::ffff:10.0.0.1") })}}, []string{`ips[1]: 10.0.0.1 is also an IP of workload "a"`}, ErrDuplicate},
		{"ip in two", in{ws: []*Workload{wl("a", "shop", nil, "10.0.0.1"), wl("b", "shop", nil, "10.0.0.1")}}, []string{`workloads[1] (uid "b"): ips[0]: 10.0.0.1 is also an IP of workload "a"`}, ErrDuplicate},
		{"nil service", in{ss: []*Service{nil}}, []string{"services[0]: is nil"}, ErrInvalidService},
		{"service no name", in{ss: []*Service{sv(func(s *Service) { s.Name = "" })}}, []string{"services[0] (shop/): name is empty"}, ErrInvalidService},
		{"service no namespace", in{ss: []*Service{sv(func(s *Service) { s.Namespace = "" })}}, []string{"namespace is empty"}, ErrInvalidService},
		{"duplicate service", in{ss: []*Service{svc("s", "shop", nil, "10.96.0.1"), svc("s", "shop", nil, "10.96.0.2")}}, []string{
			"services[1] (shop/s): another service has this namespace and name",
			`services[1] (shop/s): hostname "s.shop.svc.cluster.local" is also the hostname of service shop/s`}, ErrDuplicate},
		{"duplicate hostname", in{ss: []*Service{svc("a", "shop", nil), sv(func(s *Service) { s.Hostname = "a.shop.svc.cluster.local" })}}, []string{`hostname "a.shop.svc.cluster.local" is also the hostname of service shop/a`}, ErrDuplicate},
		{"duplicate vip", in{ss: []*Service{svc("a", "shop", nil, "10.96.0.1"), svc("b", "shop", nil, "::ffff:10.96.0.1")}}, []string{"services[1] (shop/b): vips[0]: 10.96.0.1 is also a VIP of service shop/a"}, ErrDuplicate},
		{"vip is a workload ip", in{ws: []*Workload{wl("a", "shop", nil, "10.96.0.1")}, ss: []*Service{svc("s", "shop", nil, "10.96.0.1")}}, []string{`vips[0]: 10.96.0.1 is also an IP of workload "a"`}, ErrDuplicate},
		{"invalid vip", in{ss: []*Service{sv(func(s *Service) { s.VIPs = []netip.Addr{{}} })}}, []string{"vips[0] is not a valid address"}, ErrInvalidService},
		{"unspecified vip", in{ss: []*Service{sv(func(s *Service) { s.VIPs = ips("0.0.0.0") })}}, []string{"vips[0]: 0.0.0.0 is unspecified"}, ErrInvalidService},
		{"port 0", in{ss: []*Service{sv(func(s *Service) { s.Ports = []ServicePort{{Port: 0}} })}}, []string{"ports[0]: port is 0"}, ErrInvalidService},
		{"port twice", in{ss: []*Service{sv(func(s *Service) { s.Ports = []ServicePort{{Port: 80}, {Port: 80, TargetPort: 81}} })}}, []string{"ports[1]: port 80 is listed twice"}, ErrDuplicate},
		{"bad san", in{ss: []*Service{sv(func(s *Service) { s.SANs = []string{"not-spiffe"} })}}, []string{`sans[0]: "not-spiffe" is not a SPIFFE id`}, ErrInvalidService},
		{"nil policy", in{ps: []*rbac.Policy{nil}}, []string{"authorizationPolicies[0]: is nil"}, ErrInvalidPolicy},
		{"invalid policy", in{ps: []*rbac.Policy{{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: "NOPE"}}}, []string{`store: authorizationPolicies[0]: rbac: policy "shop/p": action: unknown action "NOPE"`}, rbac.ErrInvalidAction},
		{"duplicate policy", in{ps: []*rbac.Policy{pol("p", "shop", rbac.ScopeNamespace, nil), pol("p", "shop", rbac.ScopeMesh, nil)}}, []string{`authorizationPolicies[1]: another policy is named "shop/p"`}, ErrDuplicate},
		{"nil peer auth", in{pas: []*rbac.PeerAuthentication{nil}}, []string{"peerAuthentications[0]: is nil"}, ErrInvalidPolicy},
		{"invalid peer auth", in{pas: []*rbac.PeerAuthentication{pa("a", "shop", rbac.ScopeNamespace, nil, "OFF")}}, []string{`unknown mode "OFF"`}, rbac.ErrInvalidMode},
		{"duplicate peer auth", in{pas: []*rbac.PeerAuthentication{pa("a", "shop", rbac.ScopeWorkload, map[string]string{"a": "b"}, rbac.ModeStrict), pa("a", "shop", rbac.ScopeWorkload, map[string]string{"a": "c"}, rbac.ModeStrict)}}, []string{`another peer authentication is named "shop/a"`}, ErrDuplicate},
		{"two namespace-wide", in{pas: []*rbac.PeerAuthentication{pa("a", "shop", rbac.ScopeNamespace, nil, rbac.ModeStrict), pa("b", "shop", rbac.ScopeNamespace, nil, rbac.ModePermissive)}}, []string{"peerAuthentications[1] (shop/b): shop/a already has a namespace-wide peer authentication"}, ErrDuplicate},
		{"two mesh-wide", in{pas: []*rbac.PeerAuthentication{pa("a", "x", rbac.ScopeMesh, nil, rbac.ModeStrict), pa("b", "y", rbac.ScopeMesh, nil, rbac.ModeStrict)}}, []string{"x/a already has a mesh-wide peer authentication"}, ErrDuplicate},
		{"every error reported", in{
			ws: []*Workload{w(func(w *Workload) { w.UID = "" }), w(func(w *Workload) { w.UID = "b"; w.Protocol = "" })},
			ss: []*Service{sv(func(s *Service) { s.Ports = []ServicePort{{}} })},
			ps: []*rbac.Policy{nil},
		}, []string{"uid is empty", `protocol "" is neither`, "10.0.0.1 is also an IP", "port is 0", "authorizationPolicies[0]: is nil"}, ErrDuplicate},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := NewSnapshot(c.in.ws, c.in.ss, c.in.ps, c.in.pas)
			if err == nil {
				t.Fatal("NewSnapshot succeeded")
			}
			if s != nil {
				t.Error("snapshot returned with an error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(c.want) {
				t.Errorf("%d errors, want %d:\n%v", len(lines), len(c.want), err)
			}
			for i, want := range c.want {
				if i < len(lines) && !strings.Contains(lines[i], want) {
					t.Errorf("error %d = %q, want it to contain %q", i, lines[i], want)
				}
				if i < len(lines) && !strings.HasPrefix(lines[i], "store: ") {
					t.Errorf("error %q lacks the store: prefix", lines[i])
				}
			}
			if !errors.Is(err, c.is) {
				t.Errorf("errors.Is(%v) = false", c.is)
			}
		})
	}
}

func TestEmptyTCPWorkloadWithoutIP(t *testing.T) {
	// A workload without an address is valid; it is just not found by IP.
	s := mustSnapshot(t, []*Workload{{UID: "u", Name: "n", Namespace: "ns", Protocol: ProtocolTCP}}, nil, nil, nil)
	if s.WorkloadByUID("u") == nil {
		t.Fatal("not indexed by uid")
	}
}

func TestMarshalJSON(t *testing.T) {
	s := shop()
	st := New()
	st.Replace(s)
	b, err := json.Marshal(st.Load())
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Version   uint64 `json:"version"`
		Workloads []struct {
			UID          string       `json:"uid"`
			IPs          []netip.Addr `json:"ips"`
			Identity     string       `json:"identity"`
			Policies     []string     `json:"policies"`
			PeerAuthMode string       `json:"peerAuthMode"`
		} `json:"workloads"`
		Services []struct {
			Name      string   `json:"name"`
			Endpoints []string `json:"endpoints"`
		} `json:"services"`
		AuthorizationPolicies []rbac.Policy             `json:"authorizationPolicies"`
		PeerAuthentications   []rbac.PeerAuthentication `json:"peerAuthentications"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if d.Version != 1 || len(d.Workloads) != 5 || len(d.Services) != 3 || len(d.AuthorizationPolicies) != 5 || len(d.PeerAuthentications) != 3 {
		t.Fatalf("dump: %s", b)
	}
	f1 := d.Workloads[3]
	if f1.UID != "f1" || f1.Identity != "spiffe://cluster.local/ns/shop/sa/default" || f1.PeerAuthMode != "STRICT" ||
		!reflect.DeepEqual(f1.Policies, []string{"istio-system/mesh", "shop/ns", "shop/wl-frontend"}) {
		t.Errorf("workload dump: %+v", f1)
	}
	if !reflect.DeepEqual(d.Services[0].Endpoints, []string{"c1", "c2"}) || d.Services[2].Endpoints == nil {
		t.Errorf("service dump: %+v", d.Services)
	}
	e, err := json.Marshal(New().Load())
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"version":0,"workloads":[],"services":[],"authorizationPolicies":[],"peerAuthentications":[]}`; string(e) != want {
		t.Errorf("empty dump %s", e)
	}
}

func TestManyWorkloads(t *testing.T) {
	s := bigSnapshot(t, 10000)
	if n := len(s.Workloads()); n != 10000 {
		t.Fatalf("%d workloads", n)
	}
	for i := 0; i < 10000; i += 997 {
		ip := addrN(i)
		w := s.WorkloadByIP(ip)
		if w == nil || w.UID != fmt.Sprintf("uid-%05d", i) {
			t.Fatalf("WorkloadByIP(%s) = %v", ip, w)
		}
	}
}

func addrN(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func bigSnapshot(t testing.TB, n int) *Snapshot {
	ws := make([]*Workload, n)
	for i := range ws {
		ws[i] = &Workload{UID: fmt.Sprintf("uid-%05d", i), Name: fmt.Sprintf("pod-%d", i), Namespace: fmt.Sprintf("ns-%d", i%50),
			ServiceAccount: "default", IPs: []netip.Addr{addrN(i)}, Protocol: ProtocolHBONE, TrustDomain: "cluster.local", Healthy: true,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%100)}}
	}
	var ss []*Service
	var ps []*rbac.Policy
	for i := range 100 {
		ns := fmt.Sprintf("ns-%d", i%50)
		ss = append(ss, &Service{Name: fmt.Sprintf("svc-%d", i), Namespace: ns, Hostname: fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, ns),
			VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}, Ports: []ServicePort{{Port: 80}}, Selector: map[string]string{"app": fmt.Sprintf("app-%d", i)}})
		ps = append(ps, pol(fmt.Sprintf("p-%d", i), ns, rbac.ScopeWorkload, map[string]string{"app": fmt.Sprintf("app-%d", i)}))
	}
	return mustSnapshot(t, ws, ss, ps, nil)
}
