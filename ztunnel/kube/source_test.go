package kube_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/ztunnel/kube"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// waitFor polls cond on the store's snapshot for up to d.
func waitFor(t *testing.T, st *store.Store, d time.Duration, what string, cond func(*store.Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond(st.Load()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startSource(t *testing.T, c *kubetest.Cluster) (*kube.Source, *store.Store) {
	t.Helper()
	st := store.New()
	src, err := kube.New(kube.Options{Config: c.Config, Store: st, Translator: kube.Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"},
		Debounce: 20 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-src.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready after 30 s")
	}
	return src, st
}

// TestSourceAgainstAPIServer runs the source against a real kube-apiserver
// and etcd: enrollment by namespace and pod label, services with their
// EndpointSlices, changes applied within a second, and an API server
// restart that the store survives with its last snapshot.
func TestSourceAgainstAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	mk := func(ns, name, ip string, labels map[string]string) *corev1.Pod {
		t.Helper()
		p, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: ns, Name: name, Node: "node-a", ServiceAccount: name, Labels: labels, IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, n := range []string{"shop", "legacy"} {
		if err := c.EnsureNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	label := func(ns, v string) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, kube.LabelDataplaneMode, v)
		if v == "" {
			patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, kube.LabelDataplaneMode)
		}
		if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	label("shop", kube.ModeAmbient)
	web := mk("shop", "web", "10.244.0.10", map[string]string{"app": "web"})
	mk("shop", "optout", "10.244.0.11", map[string]string{kube.LabelDataplaneMode: kube.ModeNone})
	mk("legacy", "old", "10.244.0.12", nil)
	svc, err := c.CreateService(ctx, "shop", "web", "10.96.0.50", []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}, map[string]string{"app": "web"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SyncEndpointSlice(ctx, svc); err != nil {
		t.Fatal(err)
	}

	src, st := startSource(t, c)
	t.Logf("initial sync took %v", src.SyncTime())
	snap := st.Load()
	proto := func(s *store.Snapshot, ip string) store.Protocol {
		if w := s.WorkloadByIP(netip.MustParseAddr(ip)); w != nil {
			return w.Protocol
		}
		return ""
	}
	if got := proto(snap, "10.244.0.10"); got != store.ProtocolHBONE {
		t.Errorf("shop/web protocol %q, want HBONE", got)
	}
	if got := proto(snap, "10.244.0.11"); got != store.ProtocolTCP {
		t.Errorf("shop/optout protocol %q, want TCP", got)
	}
	if got := proto(snap, "10.244.0.12"); got != store.ProtocolTCP {
		t.Errorf("legacy/old protocol %q, want TCP", got)
	}
	w := snap.WorkloadByIP(netip.MustParseAddr("10.244.0.10"))
	if w.UID != string(web.UID) || w.ServiceAccount != "web" || w.Node != "node-a" || !w.Healthy || w.Identity().String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("shop/web = %+v", w)
	}
	s := snap.ServiceByVIP(netip.MustParseAddr("10.96.0.50"))
	if s == nil || s.Hostname != "web.shop.svc.cluster.local" || len(snap.Endpoints(s)) != 1 || snap.Endpoints(s)[0].UID != string(web.UID) {
		t.Fatalf("service web = %+v", s)
	}

	// Changes land within a second: a new endpoint, a namespace label, a
	// readiness flip, a deletion.
	web2 := mk("shop", "web2", "10.244.0.13", map[string]string{"app": "web"})
	if _, err := c.SyncEndpointSlice(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, st, time.Second, "two endpoints", func(s *store.Snapshot) bool {
		return len(s.Endpoints(s.ServiceByVIP(netip.MustParseAddr("10.96.0.50")))) == 2
	})
	label("legacy", kube.ModeAmbient)
	waitFor(t, st, time.Second, "legacy enrolled", func(s *store.Snapshot) bool { return proto(s, "10.244.0.12") == store.ProtocolHBONE })
	label("legacy", "")
	waitFor(t, st, time.Second, "legacy unenrolled", func(s *store.Snapshot) bool { return proto(s, "10.244.0.12") == store.ProtocolTCP })
	if _, err := c.SetPodReady(ctx, "shop", "web2", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, st, time.Second, "web2 unhealthy", func(s *store.Snapshot) bool {
		w := s.WorkloadByUID(string(web2.UID))
		return w != nil && !w.Healthy && len(s.Endpoints(s.ServiceByVIP(netip.MustParseAddr("10.96.0.50")))) == 1
	})
	if err := c.DeletePod(ctx, "shop", "optout"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, st, time.Second, "optout gone", func(s *store.Snapshot) bool { return s.WorkloadByIP(netip.MustParseAddr("10.244.0.11")) == nil })

	// API server restart: the store keeps its snapshot meanwhile and the
	// informers pick up what changed once it is back.
	before := st.Load()
	c.Restart(t)
	if st.Load().WorkloadByIP(netip.MustParseAddr("10.244.0.10")) == nil || len(st.Load().Workloads()) != len(before.Workloads()) {
		t.Fatal("store lost workloads across the API server restart")
	}
	mk("shop", "after-restart", "10.244.0.14", nil)
	waitFor(t, st, 30*time.Second, "pod created after the restart", func(s *store.Snapshot) bool {
		return proto(s, "10.244.0.14") == store.ProtocolHBONE
	})
}
