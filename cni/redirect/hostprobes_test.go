package redirect_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/internal/netnstest"
)

// TestHostProbes: a "node" namespace and a "pod" namespace joined by a
// veth. With the host tables, the node's own connection to the pod
// arrives from the probe address; a pod not in the set sees the node's
// address; removing the tables restores that for every pod.
func TestHostProbes(t *testing.T) {
	netnstest.RequireRoot(t)
	node, pod := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t,
		netnstest.End{NS: node, Name: "veth-pod", Addrs: []netip.Prefix{netip.MustParsePrefix("10.210.0.1/24")}},
		netnstest.End{NS: pod, Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.210.0.2/24"), netip.MustParsePrefix("10.210.0.3/24")}})
	// The pod answers the probe address through its default route.
	netnstest.AddRoute(t, pod, netip.MustParsePrefix("0.0.0.0/0"), "eth0", netip.MustParseAddr("10.210.0.1"))
	ln := netnstest.Listen(t, pod, "tcp4", "0.0.0.0:8080")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
			c.Close()
		}
	}()
	source := func(dst string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := netnstest.Dial(ctx, node, nil, "tcp4", dst+":8080")
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := source("10.210.0.2"); got != "10.210.0.1" {
		t.Fatalf("before: pod saw %s, want the node's 10.210.0.1", got)
	}
	r := redirect.DefaultRules()
	enrolled := netip.MustParseAddr("10.210.0.2")
	node.Run(t, func() error {
		if err := redirect.ApplyHostProbes(r, []netip.Addr{enrolled, netip.MustParseAddr("fd00::2")}); err != nil {
			return err
		}
		// Idempotent.
		return redirect.ApplyHostProbes(r, []netip.Addr{enrolled, netip.MustParseAddr("fd00::2")})
	})
	if got := source("10.210.0.2"); got != r.ProbeSNAT.String() {
		t.Fatalf("enrolled: pod saw %s, want the probe address %s", got, r.ProbeSNAT)
	}
	if got := source("10.210.0.3"); got != "10.210.0.1" {
		t.Fatalf("not in the set: pod saw %s, want the node's address", got)
	}
	node.Run(t, func() error {
		got, err := redirect.HostProbePods()
		if err != nil {
			return err
		}
		slices.SortFunc(got, netip.Addr.Compare)
		if want := []netip.Addr{enrolled, netip.MustParseAddr("fd00::2")}; !slices.Equal(got, want) {
			t.Errorf("HostProbePods = %v, want %v", got, want)
		}
		return redirect.RemoveHostProbes()
	})
	if got := source("10.210.0.2"); got != "10.210.0.1" {
		t.Fatalf("after remove: pod saw %s, want the node's address", got)
	}
	node.Run(t, func() error {
		got, err := redirect.HostProbePods()
		if err != nil || len(got) != 0 {
			t.Errorf("after remove: HostProbePods = %v, %v", got, err)
		}
		return redirect.RemoveHostProbes() // absent: fine
	})
}
