package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/strait-mesh/strait/deploy/internal/ctrltest"
	"github.com/strait-mesh/strait/internal/kubetest"
)

func TestCommands(t *testing.T) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// --dry-run=client needs no cluster and prints every object.
	if err := run(ctx, []string{"install", "--dry-run=client", "--kubeconfig="}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: Namespace", "kind: CustomResourceDefinition", "name: authorizationpolicies.security.strait.dev", "kind: DaemonSet", "name: strait-ca", "name: strait-cni-agent", "image: ghcr.io/strait-mesh/strait-cni-agent:v0.1.0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("client dry run output lacks %q", want)
		}
	}
	if err := run(ctx, []string{"install", "--dry-run=bogus"}, &out, &errb); err == nil {
		t.Error("--dry-run=bogus accepted")
	}
	if err := run(ctx, []string{"frobnicate"}, &out, &errb); err == nil || !strings.Contains(errb.String(), "usage:") {
		t.Errorf("unknown command: %v, stderr %q", err, errb.String())
	}

	c := kubetest.Start(t)
	kc := "--kubeconfig=" + c.KubeconfigPath
	out.Reset()
	if err := run(ctx, []string{"install", kc, "--wait=0"}, &out, &errb); err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	for _, name := range []string{"ztunnel", "strait-cni-agent"} {
		if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Fatalf("after install: %v", err)
		}
	}
	// No controller-manager here: waiting says so instead of hanging.
	if err := run(ctx, []string{"install", kc, "--wait=1m", "--controller-grace=2s"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no controller") {
		t.Errorf("install --wait without a controller-manager = %v", err)
	}
	// install waits for both DaemonSets: with the CA and ztunnel rolled
	// out but one node agent of three not available, it fails naming the
	// agent; once it is available, install succeeds.
	for _, w := range []struct {
		kind, name  string
		want, ready int32
	}{{"Deployment", "strait-ca", 2, 2}, {"DaemonSet", "ztunnel", 3, 3}, {"DaemonSet", "strait-cni-agent", 3, 2}} {
		if err := ctrltest.SetRollout(ctx, c.Client, w.kind, "strait-system", w.name, w.want, w.ready); err != nil {
			t.Fatal(err)
		}
	}
	out.Reset()
	err := run(ctx, []string{"install", kc, "--wait=3s", "--controller-grace=1s"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "DaemonSet strait-system/strait-cni-agent not rolled out") || !strings.Contains(err.Error(), "2/3 available") {
		t.Errorf("install with 2/3 node agents available = %v", err)
	}
	if err := c.EnsureNamespace(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, "shop", "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"strait.dev/dataplane-mode":"ambient"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: "shop", Name: "web", Node: "node-a", IP: "10.244.0.5"}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run(ctx, []string{"status", kc}, &out, &errb); err != nil {
		t.Fatalf("status: %v", err)
	}
	s := out.String()
	for _, want := range []string{"ENROLLED NAMESPACE", "shop", "strait-ca (Deployment)", "2/2 ready", "ztunnel (DaemonSet)", "3/3 nodes ready, 3 updated", "strait-cni-agent (DaemonSet)", "2/3 nodes ready, 3 updated", "TRUST ROOT"} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
	if err := ctrltest.SetRollout(ctx, c.Client, "DaemonSet", "strait-system", "strait-cni-agent", 3, 3); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run(ctx, []string{"install", kc, "--wait=30s", "--controller-grace=1s"}, &out, &errb); err != nil {
		t.Fatalf("install with every workload rolled out: %v\n%s", err, out.String())
	}
	for _, want := range []string{"DaemonSet strait-system/strait-cni-agent rolled out", "DaemonSet strait-system/ztunnel rolled out", "Deployment strait-system/strait-ca rolled out", "installed;"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("install output lacks %q:\n%s", want, out.String())
		}
	}

	// uninstall deletes the workloads in the foreground first. With no
	// garbage collector nothing finishes them: it stops, keeping the RBAC
	// the node agents need to see their DaemonSet being deleted.
	err = run(ctx, []string{"uninstall", kc, "--wait=2s"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "strait-cni-agent") || !strings.Contains(err.Error(), "run uninstall again") {
		t.Errorf("uninstall without a garbage collector = %v", err)
	}
	if _, err := c.Client.RbacV1().Roles("strait-system").Get(ctx, "strait-cni-agent", metav1.GetOptions{}); err != nil {
		t.Errorf("the agent's Role after a stopped uninstall: %v", err)
	}
	// With ctrltest doing the garbage collector's part it completes; the
	// RBAC is still there while the DaemonSets are being deleted.
	gcCtx, stopGC := context.WithCancel(ctx)
	defer stopGC()
	rbacThere := make(chan error, 3)
	go ctrltest.GC(gcCtx, c.Client, "strait-system", func(kind, name string) {
		_, err := c.Client.RbacV1().RoleBindings("strait-system").Get(ctx, "strait-cni-agent", metav1.GetOptions{})
		rbacThere <- err
	})
	out.Reset()
	if err := run(ctx, []string{"uninstall", kc}, &out, &errb); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out.String())
	}
	stopGC()
	if n := len(rbacThere); n != 3 {
		t.Errorf("%d workloads seen being deleted, want 3", n)
	}
	for range len(rbacThere) {
		if err := <-rbacThere; err != nil {
			t.Errorf("the agent's RoleBinding while a workload was being deleted: %v", err)
		}
	}
	for _, name := range []string{"ztunnel", "strait-cni-agent"} {
		if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, name, metav1.GetOptions{}); err == nil {
			t.Errorf("DaemonSet %s survived uninstall", name)
		}
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "strait-cni-agent", metav1.GetOptions{}); err == nil {
		t.Error("ClusterRole strait-cni-agent survived uninstall")
	}
}

func TestParseExpiry(t *testing.T) {
	body := []byte("# HELP x\nstrait_cert_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/shop/sa/web\"} 1.7e+09\nother 1\n")
	got := parseExpiry(body)
	if len(got) != 1 || got[0].identity != "spiffe://cluster.local/ns/shop/sa/web" || got[0].at.Unix() != 1700000000 {
		t.Fatalf("parseExpiry = %+v", got)
	}
}
