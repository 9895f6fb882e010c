package kube

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/strait-mesh/strait/ztunnel/store"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func pod(ns, name, ip string, labels map[string]string, mod ...func(*corev1.Pod)) *Pod {
	return SlimPod(fullPod(ns, name, ip, labels, mod...))
}

func fullPod(ns, name, ip string, labels map[string]string, mod ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name), Labels: labels, CreationTimestamp: metav1.NewTime(t0)},
		Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "sa-" + name},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	for _, m := range mod {
		m(p)
	}
	return p
}

func ns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

var ambient = map[string]string{LabelDataplaneMode: ModeAmbient}

func byName(ws []*store.Workload) map[string]*store.Workload {
	m := map[string]*store.Workload{}
	for _, w := range ws {
		m[w.Namespace+"/"+w.Name] = w
	}
	return m
}

func TestEnrollment(t *testing.T) {
	cases := []struct {
		pod, ns map[string]string
		want    bool
	}{
		{nil, nil, false},
		{nil, ambient, true},
		{map[string]string{LabelDataplaneMode: ModeNone}, ambient, false},
		{ambient, nil, true},
		{map[string]string{LabelDataplaneMode: "sidecar"}, nil, false},
		{map[string]string{LabelDataplaneMode: "bogus"}, ambient, true},
		{nil, map[string]string{LabelDataplaneMode: ModeNone}, false},
	}
	for _, c := range cases {
		if got := Enrolled(c.pod, c.ns); got != c.want {
			t.Errorf("Enrolled(pod %v, ns %v) = %v, want %v", c.pod, c.ns, got, c.want)
		}
	}
}

func TestTranslateWorkloads(t *testing.T) {
	tr := Translator{TrustDomain: "example.org", ClusterDomain: "cluster.local"}
	v := View{
		Namespaces: []*corev1.Namespace{ns("shop", ambient), ns("legacy", nil)},
		Pods: []*Pod{
			pod("shop", "web", "10.0.0.1", map[string]string{"app": "web"}),
			pod("shop", "optout", "10.0.0.2", map[string]string{LabelDataplaneMode: ModeNone}),
			pod("legacy", "old", "10.0.0.3", nil),
			pod("legacy", "optin", "10.0.0.4", ambient),
			pod("shop", "pending", "", nil),
			pod("shop", "host", "192.168.0.10", nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
			pod("shop", "done", "10.0.0.5", nil, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
			pod("shop", "notready", "10.0.0.6", nil, func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }),
			pod("shop", "nosa", "10.0.0.7", nil, func(p *corev1.Pod) { p.Spec.ServiceAccountName = "" }),
			pod("shop", "dual", "10.0.0.8", nil, func(p *corev1.Pod) {
				p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.8"}, {IP: "fd00::8"}, {IP: "bogus"}}
			}),
			// The terminating pod loses 10.0.1.1 to the live one, the older
			// live pod loses 10.0.1.2 to the newer one.
			pod("shop", "dying", "10.0.1.1", nil, func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: t0} }),
			pod("shop", "reborn", "10.0.1.1", nil),
			pod("shop", "older", "10.0.1.2", nil),
			pod("shop", "newer", "10.0.1.2", nil, func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(t0.Add(time.Minute)) }),
		},
	}
	m := tr.Translate(v)
	got := byName(m.Workloads)
	want := map[string]struct {
		proto   store.Protocol
		healthy bool
		sa      string
		ips     []string
	}{
		"shop/web":      {store.ProtocolHBONE, true, "sa-web", []string{"10.0.0.1"}},
		"shop/optout":   {store.ProtocolTCP, true, "sa-optout", []string{"10.0.0.2"}},
		"legacy/old":    {store.ProtocolTCP, true, "sa-old", []string{"10.0.0.3"}},
		"legacy/optin":  {store.ProtocolHBONE, true, "sa-optin", []string{"10.0.0.4"}},
		"shop/notready": {store.ProtocolHBONE, false, "sa-notready", []string{"10.0.0.6"}},
		"shop/nosa":     {store.ProtocolHBONE, true, "default", []string{"10.0.0.7"}},
		"shop/dual":     {store.ProtocolHBONE, true, "sa-dual", []string{"10.0.0.8", "fd00::8"}},
		"shop/reborn":   {store.ProtocolHBONE, true, "sa-reborn", []string{"10.0.1.1"}},
		"shop/newer":    {store.ProtocolHBONE, true, "sa-newer", []string{"10.0.1.2"}},
	}
	if len(got) != len(want) {
		t.Fatalf("workloads %v, want %d of them", keys(got), len(want))
	}
	for k, w := range want {
		g := got[k]
		if g == nil {
			t.Fatalf("%s missing (have %v)", k, keys(got))
		}
		var ips []string
		for _, ip := range g.IPs {
			ips = append(ips, ip.String())
		}
		if g.Protocol != w.proto || g.Healthy != w.healthy || g.ServiceAccount != w.sa || !reflect.DeepEqual(ips, w.ips) ||
			g.TrustDomain != "example.org" || g.Node != "node-a" || g.UID != "uid-"+k[:strings.Index(k, "/")]+"-"+g.Name {
			t.Errorf("%s = %+v, want %+v", k, g, w)
		}
	}
	if len(m.Skipped) != 2 || !strings.Contains(strings.Join(m.Skipped, "\n"), "shop/dying: IP 10.0.1.1 belongs to pod shop/reborn") ||
		!strings.Contains(strings.Join(m.Skipped, "\n"), "shop/older: IP 10.0.1.2 belongs to pod shop/newer") {
		t.Errorf("skipped = %q", m.Skipped)
	}
	// What Translate makes, the store accepts.
	if _, err := store.NewSnapshot(m.Workloads, m.Services, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestTranslateServices(t *testing.T) {
	tr := Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"}
	web := pod("shop", "web", "10.0.0.1", map[string]string{"app": "web"})
	web2 := pod("shop", "web2", "10.0.0.2", map[string]string{"app": "web"})
	svc := func(name string, mod func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}, Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}
		mod(s)
		return s
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-abc", Labels: map[string]string{LabelServiceName: "web"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", UID: web.UID}},
			{Addresses: []string{"10.0.0.2"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", UID: web2.UID}},
			{Addresses: []string{"10.0.0.99"}}, // not a pod: skipped
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}, {Name: ptr("named"), Port: ptr(int32(9090))}},
	}
	v := View{
		Namespaces: []*corev1.Namespace{ns("shop", ambient)},
		Pods:       []*Pod{web, web2},
		Services: []*corev1.Service{
			svc("web", func(s *corev1.Service) {
				s.Spec.Ports = append(s.Spec.Ports,
					corev1.ServicePort{Name: "named", Port: 90, TargetPort: intstr.FromString("metrics")},
					corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
					corev1.ServicePort{Name: "same", Port: 7000})
			}),
			svc("noslice", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"} }),
			svc("headless", func(s *corev1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			}),
			svc("ext", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }),
			svc("clash", func(s *corev1.Service) {}),
		},
		Slices: []*discoveryv1.EndpointSlice{slice},
	}
	m := tr.Translate(v)
	snap, err := store.NewSnapshot(m.Workloads, m.Services, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := snap.ServiceByHostname("shop", "web.shop.svc.cluster.local")
	if s == nil || snap.ServiceByVIP(netip.MustParseAddr("10.96.0.10")) != s {
		t.Fatalf("web service not found by hostname and VIP: %+v", snap.Services())
	}
	// The named target port "metrics" is not in the slice (its port is
	// "named"→9090 by service port name): resolved by the service port's
	// name, as the endpointslice controller names slice ports.
	wantPorts := []store.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "named", Port: 90, TargetPort: 9090}, {Name: "same", Port: 7000, TargetPort: 7000}}
	if !reflect.DeepEqual(s.Ports, wantPorts) {
		t.Errorf("ports = %+v, want %+v", s.Ports, wantPorts)
	}
	if eps := snap.Endpoints(s); len(eps) != 2 {
		t.Errorf("web endpoints = %d, want 2", len(eps))
	}
	// No slice yet: no endpoints, even though the selector matches.
	if eps := snap.Endpoints(snap.ServiceByHostname("shop", "noslice.shop.svc.cluster.local")); len(eps) != 0 {
		t.Errorf("noslice endpoints = %d, want 0", len(eps))
	}
	if h := snap.ServiceByHostname("shop", "headless.shop.svc.cluster.local"); h == nil || len(h.VIPs) != 0 {
		t.Errorf("headless = %+v", h)
	}
	if snap.ServiceByHostname("shop", "ext.shop.svc.cluster.local") != nil {
		t.Error("ExternalName service translated")
	}
	if !strings.Contains(strings.Join(m.Skipped, "\n"), "service shop/clash: cluster IP 10.96.0.10 belongs to service shop/web") {
		t.Errorf("skipped = %q", m.Skipped)
	}
}

func TestSlimKeepsWhatTranslateReads(t *testing.T) {
	full := fullPod("shop", "web", "10.0.0.1", ambient)
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	full.Annotations = map[string]string{"big": strings.Repeat("x", 4096)}
	full.Spec.Containers = []corev1.Container{{Name: "c", Image: "img"}}
	full.Status.Conditions = append(full.Status.Conditions, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue})
	full.ResourceVersion = "42"
	o, err := Slim(full)
	if err != nil {
		t.Fatal(err)
	}
	s := o.(*Pod)
	want := &Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: full.UID, Labels: ambient, CreationTimestamp: full.CreationTimestamp, ResourceVersion: "42"},
		NodeName: "node-a", ServiceAccount: "sa-web", IPs: []string{"10.0.0.1"}, Phase: corev1.PodRunning, Ready: true}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("slim pod = %+v, want %+v", s, want)
	}
	if c := s.DeepCopyObject().(*Pod); !reflect.DeepEqual(c, s) || &c.IPs[0] == &s.IPs[0] {
		t.Errorf("DeepCopyObject = %+v", c)
	}
	// podIP alone (an old kubelet) and a readiness of False.
	old := fullPod("shop", "old", "10.0.0.2", nil, func(p *corev1.Pod) {
		p.Status.PodIPs = nil
		p.Status.Conditions[0].Status = corev1.ConditionFalse
	})
	if s := SlimPod(old); !reflect.DeepEqual(s.IPs, []string{"10.0.0.2"}) || s.Ready {
		t.Errorf("slim old pod = %+v", s)
	}
}
