package netnstest_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/netnstest"
)

func TestNamedNetNSLifecycle(t *testing.T) {
	netnstest.RequireRoot(t)
	name := fmt.Sprintf("strait-netnstest-%d", os.Getpid())
	path := netnstest.RunDir + "/" + name
	t.Run("create", func(t *testing.T) {
		n := netnstest.NewNamed(t, name)
		if n.Path() != path || n.Name() != name {
			t.Fatalf("path %q name %q", n.Path(), n.Name())
		}
		var ino, hostIno uint64
		n.Run(t, func() error { return statIno("/proc/thread-self/ns/net", &ino) })
		if err := statIno("/proc/thread-self/ns/net", &hostIno); err != nil {
			t.Fatal(err)
		}
		if ino == hostIno {
			t.Fatal("Do ran in the test's own netns")
		}
		var viaPath uint64
		if err := statIno(path, &viaPath); err != nil || viaPath != ino {
			t.Fatalf("%s: ino %d (%v), want %d", path, viaPath, err, ino)
		}
	})
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after cleanup: %v", path, err)
	}
}

func statIno(path string, ino *uint64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	*ino = fi.Sys().(*syscall.Stat_t).Ino
	return nil
}

// TestBridgeTopology wires two anonymous "pod" namespaces to a bridge in
// a "node" namespace and sends bytes across, over IPv4 and IPv6.
func TestBridgeTopology(t *testing.T) {
	netnstest.RequireRoot(t)
	node, a, b := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	netnstest.Bridge(t, node, "br0", netip.MustParsePrefix("10.200.9.1/24"))
	for i, pod := range []*netnstest.NetNS{a, b} {
		netnstest.Veth(t,
			netnstest.End{NS: pod, Name: "eth0", Addrs: []netip.Prefix{
				netip.MustParsePrefix(fmt.Sprintf("10.200.9.%d/24", 10+i)),
				netip.MustParsePrefix(fmt.Sprintf("fd00:200:9::%d/64", 10+i)),
			}},
			netnstest.End{NS: node, Name: fmt.Sprintf("veth%d", i), Master: "br0"})
	}
	netnstest.AddRoute(t, a, netip.MustParsePrefix("10.200.10.0/24"), "eth0", netip.MustParseAddr("10.200.9.1"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct{ network, listen, dial string }{
		{"tcp4", "10.200.9.11:7000", "10.200.9.11:7000"},
		{"tcp6", "[fd00:200:9::11]:7000", "[fd00:200:9::11]:7000"},
	} {
		ln := netnstest.Listen(t, b, tc.network, tc.listen)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(c, c)
		}()
		c, err := netnstest.Dial(ctx, a, nil, tc.network, tc.dial)
		if err != nil {
			t.Fatalf("%s: dial: %v", tc.network, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("%s: echo %q, %v", tc.network, buf, err)
		}
		c.Close()
	}

	// A listener opened in b is not reachable from a's loopback.
	netnstest.Listen(t, b, "tcp4", "127.0.0.1:7001")
	if c, err := netnstest.Dial(ctx, a, nil, "tcp4", "127.0.0.1:7001"); err == nil {
		c.Close()
		t.Fatal("reached b's loopback listener from a")
	}
}

func TestOriginalDstNeedsConntrack(t *testing.T) {
	netnstest.RequireRoot(t)
	n := netnstest.New(t)
	ln := netnstest.Listen(t, n, "tcp4", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := netnstest.Dial(ctx, n, nil, "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// No NAT rule (and so no conntrack) in this namespace: the kernel has
	// no original destination to report.
	if ap, err := netnstest.OriginalDst(s.(*net.TCPConn)); err == nil {
		t.Fatalf("OriginalDst without conntrack = %v, want an error", ap)
	}
}
