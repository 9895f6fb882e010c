package redirect_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/internal/netnstest"
)

// The test topology: a pod netns and a peer netns joined by a veth pair.
// The peer also owns the probe SNAT addresses, so it can play the kubelet.
var (
	podIP4  = netip.MustParseAddr("10.200.1.2")
	peerIP4 = netip.MustParseAddr("10.200.1.1")
	podIP6  = netip.MustParseAddr("fd00:200:1::2")
	peerIP6 = netip.MustParseAddr("fd00:200:1::1")
)

const timeout = 20 * time.Second

type env struct {
	t         *testing.T
	ctx       context.Context
	pod, peer *netnstest.NetNS
	b         redirect.Backend
}

func kinds() []redirect.Kind { return []redirect.Kind{redirect.NFTables, redirect.IPTables} }

// newEnv builds the topology and a backend of kind (nothing applied yet).
func newEnv(t *testing.T, kind redirect.Kind) *env {
	t.Helper()
	netnstest.RequireRoot(t)
	if kind == redirect.IPTables {
		requireBinaries(t, "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, pod: netnstest.New(t), peer: netnstest.New(t)}
	netnstest.Veth(t,
		netnstest.End{NS: e.pod, Name: "eth0", Addrs: []netip.Prefix{
			netip.PrefixFrom(podIP4, 24), netip.PrefixFrom(podIP6, 64)}},
		netnstest.End{NS: e.peer, Name: "veth0", Addrs: []netip.Prefix{
			netip.PrefixFrom(peerIP4, 24), netip.PrefixFrom(peerIP6, 64),
			netip.PrefixFrom(redirect.DefaultProbeSNAT, 32), netip.PrefixFrom(redirect.DefaultProbeSNAT6, 128)}})
	netnstest.AddRoute(t, e.pod, netip.PrefixFrom(redirect.DefaultProbeSNAT, 32), "eth0", netip.Addr{})
	netnstest.AddRoute(t, e.pod, netip.PrefixFrom(redirect.DefaultProbeSNAT6, 128), "eth0", netip.Addr{})
	b, err := redirect.New(kind, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != kind {
		t.Fatalf("New(%v).Kind() = %v", kind, b.Kind())
	}
	e.b = b
	return e
}

func requireBinaries(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not installed: apt-get install iptables nftables (.ci/run does): %v", n, err)
		}
	}
}

func (e *env) apply(r redirect.Rules) {
	e.t.Helper()
	e.pod.Run(e.t, func() error { return e.b.Apply(e.ctx, r) })
}

func (e *env) remove() {
	e.t.Helper()
	e.pod.Run(e.t, func() error { return e.b.Remove(e.ctx) })
}

func (e *env) installed() bool {
	e.t.Helper()
	var ok bool
	e.pod.Run(e.t, func() (err error) {
		ok, err = e.b.Installed(e.ctx)
		return err
	})
	return ok
}

func (e *env) counters() map[string]redirect.Counter {
	e.t.Helper()
	var c map[string]redirect.Counter
	e.pod.Run(e.t, func() (err error) {
		c, err = e.b.Counters(e.ctx)
		return err
	})
	return c
}

// dial connects from n to dst (from src when valid, with SO_MARK mark when
// not 0) and fails the test on error.
func (e *env) dial(n *netnstest.NetNS, src netip.Addr, dst netip.AddrPort, mark int) *net.TCPConn {
	e.t.Helper()
	d := &net.Dialer{}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	if mark != 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := netnstest.Dial(e.ctx, n, d, "tcp", dst.String())
	if err != nil {
		e.t.Fatalf("dial %v from %v: %v", dst, n, err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// listen opens a TCP listener on port in n, for the family of ip.
func listen(t *testing.T, n *netnstest.NetNS, ip netip.Addr, port uint16) net.Listener {
	t.Helper()
	network, any := "tcp4", netip.IPv4Unspecified()
	if ip.Is6() {
		network, any = "tcp6", netip.IPv6Unspecified()
	}
	return netnstest.Listen(t, n, network, netip.AddrPortFrom(any, port).String())
}

// expectAccepted accepts on ln the connection c dialed, checks bytes flow
// both ways, and returns the server side. Dial has returned, so the
// handshake is done and the connection already sits in exactly one
// listener's queue: the deadline only bounds a failing test.
func expectAccepted(t *testing.T, ln net.Listener, c *net.TCPConn) *net.TCPConn {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(timeout))
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("listener %v did not get the connection from %v to %v: %v", ln.Addr(), c.LocalAddr(), c.RemoteAddr(), err)
	}
	t.Cleanup(func() { s.Close() })
	if got, want := s.RemoteAddr().String(), c.LocalAddr().String(); got != want {
		t.Fatalf("listener %v accepted a connection from %s, want %s", ln.Addr(), got, want)
	}
	deadline := time.Now().Add(timeout)
	s.SetDeadline(deadline)
	c.SetDeadline(deadline)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	if _, err := s.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	return s.(*net.TCPConn)
}

// expectIdle checks that nothing is queued on ln (see expectAccepted for
// why this needs no waiting).
func expectIdle(t *testing.T, ln net.Listener) {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(-time.Second))
	if s, err := ln.Accept(); err == nil {
		s.Close()
		t.Fatalf("listener %v got a connection from %v", ln.Addr(), s.RemoteAddr())
	}
}

func expectOriginalDst(t *testing.T, s *net.TCPConn, want netip.AddrPort) {
	t.Helper()
	got, err := netnstest.OriginalDst(s)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("original destination %v, want %v", got, want)
	}
}

func expectCounter(t *testing.T, e *env, name string, packets uint64) {
	t.Helper()
	c := e.counters()
	if got := c[name].Packets; got != packets {
		t.Fatalf("counter %q: %d packets, want %d (all: %v)", name, got, packets, c)
	}
}

func TestBackends(t *testing.T) {
	for _, kind := range kinds() {
		t.Run(kind.String(), func(t *testing.T) {
			t.Parallel()
			t.Run("Outbound", func(t *testing.T) { testOutbound(t, kind) })
			t.Run("Inbound", func(t *testing.T) { testInbound(t, kind) })
			t.Run("HBONEPortNotRedirected", func(t *testing.T) { testHBONE(t, kind) })
			t.Run("ProxyMarkNotRedirected", func(t *testing.T) { testProxyMark(t, kind) })
			t.Run("LoopbackNotRedirected", func(t *testing.T) { testLoopback(t, kind) })
			t.Run("ProbeNotRedirected", func(t *testing.T) { testProbe(t, kind) })
			t.Run("DNSCapture", func(t *testing.T) { testDNS(t, kind) })
			t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, kind) })
		})
	}
}

// (a) TCP from the pod to another address lands on the outbound port in
// the pod netns, with the original destination preserved, over IPv4 and
// IPv6; the real destination sees nothing.
func testOutbound(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	for _, ip := range []netip.Addr{peerIP4, peerIP6} {
		capture := listen(t, e.pod, ip, redirect.DefaultOutboundPort)
		real := listen(t, e.peer, ip, 80)
		dst := netip.AddrPortFrom(ip, 80)
		c := e.dial(e.pod, netip.Addr{}, dst, 0)
		s := expectAccepted(t, capture, c)
		expectOriginalDst(t, s, dst)
		expectIdle(t, real)
	}
	expectCounter(t, e, redirect.CounterOutbound, 2)
}

// (b) TCP from the peer to the pod's port 8080 lands on the inbound port,
// with the original destination and the client's address preserved.
func testInbound(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	for _, ip := range []netip.Addr{podIP4, podIP6} {
		capture := listen(t, e.pod, ip, redirect.DefaultInboundPort)
		app := listen(t, e.pod, ip, 8080)
		dst := netip.AddrPortFrom(ip, 8080)
		c := e.dial(e.peer, netip.Addr{}, dst, 0)
		s := expectAccepted(t, capture, c)
		expectOriginalDst(t, s, dst)
		expectIdle(t, app)
	}
	expectCounter(t, e, redirect.CounterInbound, 2)
}

// (c) TCP to the HBONE port reaches it, not the inbound capture port.
func testHBONE(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	capture := listen(t, e.pod, podIP4, redirect.DefaultInboundPort)
	hbone := listen(t, e.pod, podIP4, redirect.DefaultHBONEPort)
	c := e.dial(e.peer, netip.Addr{}, netip.AddrPortFrom(podIP4, redirect.DefaultHBONEPort), 0)
	expectAccepted(t, hbone, c)
	expectIdle(t, capture)
	expectCounter(t, e, redirect.CounterHBONE, 1)
	expectCounter(t, e, redirect.CounterInbound, 0)
}

// (d) A socket carrying the proxy's mark goes where it dials.
func testProxyMark(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	for _, ip := range []netip.Addr{peerIP4, peerIP6} {
		capture := listen(t, e.pod, ip, redirect.DefaultOutboundPort)
		real := listen(t, e.peer, ip, 80)
		c := e.dial(e.pod, netip.Addr{}, netip.AddrPortFrom(ip, 80), redirect.DefaultMark)
		expectAccepted(t, real, c)
		expectIdle(t, capture)
	}
	expectCounter(t, e, redirect.CounterProxy, 2)
	expectCounter(t, e, redirect.CounterOutbound, 0)
}

// Loopback traffic, to 127.0.0.1 or to the pod's own address, and a
// proxy-marked connection to the pod's own address (the proxy delivering
// to the app) are not redirected.
func testLoopback(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	// One set of listeners per family, opened once: closing and reopening
	// a port races with fork+exec in parallel tests (a child holds the
	// listening socket until it execs).
	type listeners struct{ out, in, app net.Listener }
	byFamily := map[bool]listeners{}
	for _, ip := range []netip.Addr{podIP4, podIP6} {
		byFamily[ip.Is4()] = listeners{
			out: listen(t, e.pod, ip, redirect.DefaultOutboundPort),
			in:  listen(t, e.pod, ip, redirect.DefaultInboundPort),
			app: listen(t, e.pod, ip, 8080),
		}
	}
	for _, tc := range []struct {
		dst  netip.Addr
		mark int
	}{
		{netip.MustParseAddr("127.0.0.1"), 0},
		{netip.MustParseAddr("::1"), 0},
		{podIP4, 0},
		{podIP6, 0},
		{podIP4, redirect.DefaultMark},
	} {
		ls := byFamily[tc.dst.Is4()]
		c := e.dial(e.pod, netip.Addr{}, netip.AddrPortFrom(tc.dst, 8080), tc.mark)
		expectAccepted(t, ls.app, c)
		expectIdle(t, ls.out)
		expectIdle(t, ls.in)
	}
	expectCounter(t, e, redirect.CounterOutbound, 0)
	expectCounter(t, e, redirect.CounterInbound, 0)
}

// (e) Connections from the kubelet probe SNAT address reach the app.
func testProbe(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	e.apply(redirect.DefaultRules())
	for _, tc := range []struct{ src, dst netip.Addr }{
		{redirect.DefaultProbeSNAT, podIP4},
		{redirect.DefaultProbeSNAT6, podIP6},
	} {
		capture := listen(t, e.pod, tc.dst, redirect.DefaultInboundPort)
		app := listen(t, e.pod, tc.dst, 8080)
		c := e.dial(e.peer, tc.src, netip.AddrPortFrom(tc.dst, 8080), 0)
		s := expectAccepted(t, app, c)
		if got := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != tc.src {
			t.Fatalf("app sees the probe from %v, want %v", got, tc.src)
		}
		expectIdle(t, capture)
	}
	expectCounter(t, e, redirect.CounterProbe, 2)
	expectCounter(t, e, redirect.CounterInbound, 0)
}

// DNS capture is off by default; with CaptureDNS, UDP and TCP to port 53
// go to the DNS port, and replies come back from the original address.
// Applying new Rules replaces the old ones.
func testDNS(t *testing.T, kind redirect.Kind) {
	e := newEnv(t, kind)
	r := redirect.DefaultRules()
	r.CaptureDNS = true
	e.apply(r)
	dns := netip.AddrPortFrom(peerIP4, 53)

	// REDIRECT sends locally generated packets to 127.0.0.1: a UDP server
	// must answer from there (bind it, or use IP_PKTINFO) for conntrack to
	// turn the answer back into one from the original server.
	udpCapture := netnstest.ListenPacket(t, e.pod, "udp4", "127.0.0.1:15053")
	exchangeUDP(t, e, udpCapture, dns)
	tcpCapture := listen(t, e.pod, podIP4, redirect.DefaultDNSPort)
	s := expectAccepted(t, tcpCapture, e.dial(e.pod, netip.Addr{}, dns, 0))
	expectOriginalDst(t, s, dns)
	expectCounter(t, e, redirect.CounterDNS, 2)

	e.apply(redirect.DefaultRules())
	udpReal := netnstest.ListenPacket(t, e.peer, "udp4", dns.String())
	exchangeUDP(t, e, udpReal, dns)
	outbound := listen(t, e.pod, podIP4, redirect.DefaultOutboundPort)
	s = expectAccepted(t, outbound, e.dial(e.pod, netip.Addr{}, dns, 0))
	expectOriginalDst(t, s, dns)
	expectIdle(t, tcpCapture)
	expectCounter(t, e, redirect.CounterDNS, 0)
}

// exchangeUDP sends a datagram from the pod to dst, expects it on server
// and the answer back at the client from dst.
func exchangeUDP(t *testing.T, e *env, server net.PacketConn, dst netip.AddrPort) {
	t.Helper()
	var c net.Conn
	e.pod.Run(t, func() (err error) {
		c, err = net.Dial("udp4", dst.String())
		return err
	})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	c.SetDeadline(deadline)
	server.SetDeadline(deadline)
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, from, err := server.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "query" {
		t.Fatalf("%v: read %q, %v", server.LocalAddr(), buf[:n], err)
	}
	if from.String() != c.LocalAddr().String() {
		t.Fatalf("%v: query from %v, want %v", server.LocalAddr(), from, c.LocalAddr())
	}
	if _, err := server.WriteTo([]byte("answer"), from); err != nil {
		t.Fatal(err)
	}
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("client read %q, %v", buf[:n], err)
	}
}

// (f) Apply replaces an older version of our ruleset and is idempotent,
// Installed tells, Remove takes exactly our rules away and restores plain
// behaviour, and foreign rules of either tool survive it all.
func testLifecycle(t *testing.T, kind redirect.Kind) {
	requireBinaries(t, "nft", "iptables", "iptables-save")
	e := newEnv(t, kind)
	sh := func(args ...string) string {
		t.Helper()
		var out []byte
		e.pod.Run(t, func() (err error) {
			out, err = exec.CommandContext(e.ctx, args[0], args[1:]...).CombinedOutput()
			if err != nil {
				err = errors.New(strings.Join(args, " ") + ": " + err.Error() + ": " + string(out))
			}
			return err
		})
		return string(out)
	}
	// Foreign rules, in nftables and in iptables.
	sh("nft", "add table ip foreign; add chain ip foreign out { type nat hook output priority 0; }; add rule ip foreign out tcp dport 9 counter accept")
	sh("iptables", "-w", "-t", "nat", "-N", "FOREIGN")
	sh("iptables", "-w", "-t", "nat", "-A", "FOREIGN", "-p", "tcp", "--dport", "9", "-j", "RETURN")
	sh("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "FOREIGN")
	foreign := func() string {
		t.Helper()
		return sh("nft", "list", "table", "ip", "foreign") + iptablesRules(sh("iptables-save", "-t", "nat"), "FOREIGN")
	}
	foreignBefore := foreign()

	ours := func() string {
		t.Helper()
		if kind == redirect.NFTables {
			return sh("nft", "list", "table", "inet", redirect.TableName)
		}
		var b strings.Builder
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			for _, table := range []string{"nat", "mangle"} {
				b.WriteString(iptablesRules(sh(bin, "-t", table), redirect.IPTablesChainPrefix))
			}
		}
		return b.String()
	}

	if e.installed() {
		t.Fatal("Installed before Apply")
	}
	if _, err := e.countersErr(); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Fatalf("Counters before Apply: %v, want ErrNotInstalled", err)
	}
	// An older version of our ruleset.
	if kind == redirect.NFTables {
		sh("nft", "add table inet strait; add chain inet strait old { type nat hook output priority -100; }; add rule inet strait old tcp dport 80 redirect to :1")
	} else {
		sh("iptables", "-w", "-t", "nat", "-N", "STRAIT_OLD")
		sh("iptables", "-w", "-t", "nat", "-A", "STRAIT_OLD", "-p", "tcp", "--dport", "80", "-j", "REDIRECT", "--to-ports", "1")
		sh("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-j", "STRAIT_OLD")
		sh("iptables", "-w", "-t", "nat", "-N", "STRAIT_OUTPUT")
		sh("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-j", "STRAIT_OUTPUT")
	}
	if e.installed() {
		t.Fatal("Installed reports an older version as current")
	}

	e.apply(redirect.DefaultRules())
	if !e.installed() {
		t.Fatal("not Installed after Apply")
	}
	first := ours()
	if strings.Contains(first, "old") || strings.Contains(first, "OLD") || strings.Contains(first, "to-ports 1\n") {
		t.Fatalf("Apply kept the older version:\n%s", first)
	}
	e.apply(redirect.DefaultRules())
	if second := ours(); second != first {
		t.Fatalf("second Apply changed the ruleset:\n%s\nfirst:\n%s", second, first)
	}
	if kind == redirect.IPTables {
		if n := strings.Count(first, "-j STRAIT_OUTPUT"); n != 4 {
			t.Fatalf("%d jumps to STRAIT_OUTPUT (want one in each of nat and mangle, IPv4 and IPv6):\n%s", n, first)
		}
	}
	if got := foreign(); got != foreignBefore {
		t.Fatalf("Apply changed foreign rules:\n%s\nwas:\n%s", got, foreignBefore)
	}

	// Redirected while installed, plain after Remove.
	capture := listen(t, e.pod, peerIP4, redirect.DefaultOutboundPort)
	real := listen(t, e.peer, peerIP4, 80)
	expectAccepted(t, capture, e.dial(e.pod, netip.Addr{}, netip.AddrPortFrom(peerIP4, 80), 0))

	e.remove()
	if e.installed() {
		t.Fatal("Installed after Remove")
	}
	if kind == redirect.IPTables {
		if got := ours(); got != "" {
			t.Fatalf("Remove left:\n%s", got)
		}
	} else {
		if out := sh("nft", "list", "tables"); strings.Contains(out, "inet "+redirect.TableName) {
			t.Fatalf("Remove left the table: %s", out)
		}
	}
	if got := foreign(); got != foreignBefore {
		t.Fatalf("Remove changed foreign rules:\n%s\nwas:\n%s", got, foreignBefore)
	}
	if _, err := e.countersErr(); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Fatalf("Counters after Remove: %v, want ErrNotInstalled", err)
	}
	expectAccepted(t, real, e.dial(e.pod, netip.Addr{}, netip.AddrPortFrom(peerIP4, 80), 0))
	expectIdle(t, capture)
	e.remove() // removing nothing is fine
}

func (e *env) countersErr() (map[string]redirect.Counter, error) {
	var c map[string]redirect.Counter
	err := e.pod.Do(func() (err error) {
		c, err = e.b.Counters(e.ctx)
		return err
	})
	return c, err
}

// iptablesRules keeps the lines of iptables-save output that declare or
// fill chains starting with chainPrefix, or jump to them.
func iptablesRules(save, chainPrefix string) string {
	var b strings.Builder
	for _, line := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(line, ":"+chainPrefix),
			strings.HasPrefix(line, "-A "+chainPrefix),
			strings.HasPrefix(line, "-A ") && strings.Contains(line, "-j "+chainPrefix):
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// (g) Auto picks nftables on a kernel that has it.
func TestAutoPicksNFTables(t *testing.T) {
	netnstest.RequireRoot(t)
	n := netnstest.New(t)
	var b redirect.Backend
	n.Run(t, func() (err error) {
		b, err = redirect.New(redirect.Auto, zaptest.NewLogger(t))
		return err
	})
	if b.Kind() != redirect.NFTables {
		t.Fatalf("Auto picked %v", b.Kind())
	}
	// The probe leaves nothing behind.
	requireBinaries(t, "nft")
	var out []byte
	n.Run(t, func() (err error) {
		out, err = exec.Command("nft", "list", "ruleset").CombinedOutput()
		return err
	})
	if strings.TrimSpace(string(out)) != "" {
		t.Fatalf("probe left rules:\n%s", out)
	}
}

func TestInNetNS(t *testing.T) {
	netnstest.RequireRoot(t)
	n := netnstest.NewNamed(t, fmt.Sprintf("strait-redirect-%d", os.Getpid()))
	want := inode(t, n.Path())
	check := func() error {
		if got := inode(t, "/proc/thread-self/ns/net"); got != want {
			t.Errorf("fn ran in netns %d, want %d", got, want)
		}
		return errors.New("from fn")
	}
	if err := redirect.InNetNS(n.Path(), check); err == nil || err.Error() != "from fn" {
		t.Fatalf("InNetNS(path) = %v", err)
	}
	f, err := os.Open(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := redirect.InNetNS(f, check); err == nil || err.Error() != "from fn" {
		t.Fatalf("InNetNS(file) = %v", err)
	}
	if err := redirect.InNetNS("/nonexistent", check); err == nil || !strings.HasPrefix(err.Error(), "redirect: ") {
		t.Fatalf("InNetNS(bad path) = %v", err)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the installed rulesets")

// TestRulesetGolden pins the exact rules each backend installs (with DNS
// capture on, so every rule shows) as the tools list them; the golden
// files double as documentation. Other nft/iptables versions may print
// them differently: rerun with -update and review the diff.
func TestRulesetGolden(t *testing.T) {
	for _, kind := range kinds() {
		t.Run(kind.String(), func(t *testing.T) {
			var tools []string
			if kind == redirect.NFTables {
				tools = []string{"nft"}
			} else {
				tools = []string{"iptables-save", "ip6tables-save"}
			}
			requireBinaries(t, tools...)
			e := newEnv(t, kind)
			r := redirect.DefaultRules()
			r.CaptureDNS = true
			e.apply(r)
			var cmds [][]string
			if kind == redirect.NFTables {
				cmds = [][]string{{"nft", "list", "table", "inet", redirect.TableName}}
			} else {
				for _, bin := range tools {
					for _, table := range []string{"mangle", "nat"} {
						cmds = append(cmds, []string{bin, "-t", table})
					}
				}
			}
			var got strings.Builder
			for _, cmd := range cmds {
				var out []byte
				e.pod.Run(t, func() (err error) {
					out, err = exec.Command(cmd[0], cmd[1:]...).Output()
					return err
				})
				got.WriteString("# " + strings.Join(cmd, " ") + "\n")
				for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
					if !strings.HasPrefix(line, "# ") { // iptables-save's dated header and footer
						got.WriteString(line + "\n")
					}
				}
			}
			path := filepath.Join("testdata", kind.String()+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != string(want) {
				t.Fatalf("installed ruleset differs from %s (rerun with -update if the change is intended):\n%s", path, got.String())
			}
		})
	}
}

// Without CAP_NET_ADMIN both backends fail with an error that says so.
func TestWithoutCapNetAdmin(t *testing.T) {
	for _, kind := range kinds() {
		t.Run(kind.String(), func(t *testing.T) {
			e := newEnv(t, kind)
			for name, op := range map[string]func() error{
				"Apply":     func() error { return e.b.Apply(e.ctx, redirect.DefaultRules()) },
				"Remove":    func() error { return e.b.Remove(e.ctx) },
				"Installed": func() error { _, err := e.b.Installed(e.ctx); return err },
			} {
				err := withoutNetAdmin(e.pod, op)
				t.Logf("%s: %v", name, err)
				if err == nil || !strings.HasPrefix(err.Error(), "redirect: "+kind.String()+": ") ||
					!strings.Contains(err.Error(), "(need CAP_NET_ADMIN in the pod netns)") {
					t.Fatalf("%s without CAP_NET_ADMIN: %v", name, err)
				}
			}
		})
	}
}

// withoutNetAdmin runs fn in n on a thread (and its children) without
// CAP_NET_ADMIN. The thread is never unlocked, so the runtime discards it.
func withoutNetAdmin(n *netnstest.NetNS, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(n.Fd(), unix.CLONE_NEWNET); err != nil {
			ch <- err
			return
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_NET_ADMIN, 0, 0, 0); err != nil {
			ch <- err
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			ch <- err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		data[0].Permitted &^= 1 << unix.CAP_NET_ADMIN
		data[0].Inheritable &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			ch <- err
			return
		}
		ch <- fn()
	}()
	return <-ch
}
