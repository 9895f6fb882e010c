package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	for _, want := range []string{"kind: Namespace", "kind: CustomResourceDefinition", "name: authorizationpolicies.security.strait.dev", "kind: DaemonSet", "name: strait-ca"} {
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
	if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, "ztunnel", metav1.GetOptions{}); err != nil {
		t.Fatalf("after install: %v", err)
	}
	// No controller-manager here: waiting says so instead of hanging.
	if err := run(ctx, []string{"install", kc, "--wait=1m", "--controller-grace=2s"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no controller") {
		t.Errorf("install --wait without a controller-manager = %v", err)
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
	for _, want := range []string{"ENROLLED NAMESPACE", "shop", "strait-ca (Deployment)", "0/2 ready", "ztunnel (DaemonSet)", "TRUST ROOT"} {
		if !strings.Contains(s, want) {
			t.Errorf("status lacks %q:\n%s", want, s)
		}
	}
	if err := run(ctx, []string{"uninstall", kc}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, "ztunnel", metav1.GetOptions{}); err == nil {
		t.Error("ztunnel DaemonSet survived uninstall")
	}
}

func TestParseExpiry(t *testing.T) {
	body := []byte("# HELP x\nstrait_cert_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/shop/sa/web\"} 1.7e+09\nother 1\n")
	got := parseExpiry(body)
	if len(got) != 1 || got[0].identity != "spiffe://cluster.local/ns/shop/sa/web" || got[0].at.Unix() != 1700000000 {
		t.Fatalf("parseExpiry = %+v", got)
	}
}
