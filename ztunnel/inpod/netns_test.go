package inpod

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/netnstest"
)

// hostNS opens the test process's own namespace: entering it exercises
// the same setns path as a pod's (and needs the same privilege).
func hostNS(t *testing.T) *NetNS {
	t.Helper()
	netnstest.RequireRoot(t)
	ns, err := OpenNetNS("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func TestDialAndListenInNetNS(t *testing.T) {
	ns := hostNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, err := ns.Listen(ctx, "127.0.0.1:0", SocketOpts{Mark: Mark, ReusePort: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	c, err := ns.Dial(ctx, netip.Addr{}, dst, SocketOpts{Mark: Mark})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q %v", buf, err)
	}
	if got := netip.MustParseAddrPort(c.RemoteAddr().String()); got != dst {
		t.Fatalf("remote %v, want %v", got, dst)
	}
}

func TestDialRefusedFailsFast(t *testing.T) {
	ns := hostNS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err = ns.Dial(ctx, netip.Addr{}, dst, SocketOpts{})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("refusal took %v", time.Since(start))
	}
}

func TestNetNSFromFileRefusesNonNamespace(t *testing.T) {
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NetNSFromFile(f); err == nil {
		t.Fatal("a regular file was accepted as a network namespace")
	}
}
