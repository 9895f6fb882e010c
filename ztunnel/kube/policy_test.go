package kube_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/strait-mesh/strait/deploy"
	"github.com/strait-mesh/strait/deploy/manifest"
	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/ztunnel/kube"
	"github.com/strait-mesh/strait/ztunnel/rbac"
	"github.com/strait-mesh/strait/ztunnel/store"

	"go.uber.org/zap/zaptest"
)

// TestPoliciesFromCRDs: AuthorizationPolicy and PeerAuthentication
// objects reach the store within a second, an object the node proxy
// cannot enforce is left out with an Accepted=False status, and deleting a
// policy removes it.
func TestPoliciesFromCRDs(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	crds, err := manifest.Load(deploy.Files, "crds")
	if err != nil {
		t.Fatal(err)
	}
	a, err := manifest.NewApplier(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, crds, false); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"shop", "strait-system"} {
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	st := store.New()
	src, err := kube.New(kube.Options{Config: c.Config, Policies: true, WriteStatus: true, Store: st,
		Translator: kube.Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"}, Debounce: 20 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(rctx) }()
	defer func() { rcancel(); <-done }()
	select {
	case <-src.Ready():
	case err := <-done:
		t.Fatal(err)
	}

	create := func(res, ns string, obj map[string]any) {
		t.Helper()
		gvr := kube.AuthorizationPolicies
		if res == "pa" {
			gvr = kube.PeerAuthentications
		}
		if _, err := dyn.Resource(gvr).Namespace(ns).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create("ap", "shop", map[string]any{"apiVersion": "security.strait.dev/v1alpha1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "deny-legacy", "namespace": "shop"},
		"spec":     map[string]any{"action": "DENY", "rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"namespaces": []any{"legacy"}}}}}}}})
	create("pa", "shop", map[string]any{"apiVersion": "security.strait.dev/v1alpha1", "kind": "PeerAuthentication",
		"metadata": map[string]any{"name": "strict", "namespace": "shop"}, "spec": map[string]any{"mtls": map[string]any{"mode": "STRICT"}}})
	// Valid for the API server, refused by the node proxy: a selector in
	// the root namespace.
	create("ap", "strait-system", map[string]any{"apiVersion": "security.strait.dev/v1alpha1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "rooted", "namespace": "strait-system"},
		"spec":     map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "x"}}, "rules": []any{map[string]any{}}}})

	w := &store.Workload{Namespace: "shop", Labels: map[string]string{}}
	deadline := time.Now().Add(time.Second)
	for {
		s := st.Load()
		if len(s.AuthorizationPolicies()) == 1 && s.PeerAuthMode(w) == rbac.ModeStrict {
			if p := s.AuthorizationPolicies()[0]; p.Key() != "shop/deny-legacy" || p.Action != rbac.ActionDeny {
				t.Fatalf("policy = %+v", p)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policies not in the store after 1 s: %d policies, mode %v", len(s.AuthorizationPolicies()), s.PeerAuthMode(w))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cond := func(ns, name string) (string, string) {
		u, err := dyn.Resource(kube.AuthorizationPolicies).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m := c.(map[string]any)
			if m["type"] == "Accepted" {
				return m["status"].(string), m["reason"].(string)
			}
		}
		return "", ""
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		s1, r1 := cond("shop", "deny-legacy")
		s2, r2 := cond("strait-system", "rooted")
		if s1 == "True" && r1 == "Accepted" && s2 == "False" && r2 == "Invalid" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: deny-legacy %s/%s, rooted %s/%s", s1, r1, s2, r2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := dyn.Resource(kube.AuthorizationPolicies).Namespace("shop").Delete(ctx, "deny-legacy", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Second)
	for len(st.Load().AuthorizationPolicies()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("deleted policy still in the store after 1 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
