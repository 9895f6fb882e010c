package netnstest

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// End is one end of a veth pair.
type End struct {
	NS     *NetNS
	Name   string         // interface name inside NS
	Addrs  []netip.Prefix // addresses to assign (IPv6 ones skip DAD)
	Master string         // optional: bridge in NS to attach this end to
}

// Veth creates a veth pair with one end in a.NS and the other in b.NS
// (they may be the same namespace), assigns the addresses, attaches the
// ends to their bridges, brings both up and waits until they (and their
// bridges) are ready (see WaitReady), with permanent neighbour entries for
// each other's addresses. The pair disappears with the namespaces.
func Veth(t testing.TB, a, b End) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.Name}, PeerName: b.Name}
	if a.NS != b.NS {
		v.PeerNamespace = netlink.NsFd(b.NS.Fd())
	}
	if err := a.NS.nl.LinkAdd(v); err != nil {
		t.Fatalf("netnstest: veth %s/%s <-> %s/%s: %v", a.NS, a.Name, b.NS, b.Name, err)
	}
	for _, e := range []End{a, b} {
		for _, p := range e.Addrs {
			AddAddr(t, e.NS, e.Name, p)
		}
		if e.Master != "" {
			link, master := linkByName(t, e.NS, e.Name), linkByName(t, e.NS, e.Master)
			if err := e.NS.nl.LinkSetMaster(link, master); err != nil {
				t.Fatalf("netnstest: attach %s/%s to %s: %v", e.NS, e.Name, e.Master, err)
			}
		}
		LinkUp(t, e.NS, e.Name)
	}
	for _, e := range []End{a, b} {
		WaitReady(t, e.NS, e.Name)
		if e.Master != "" {
			WaitReady(t, e.NS, e.Master)
		}
	}
	// Each end knows the other's addresses: no ARP or neighbour discovery
	// on the first packets.
	for _, pair := range [][2]End{{a, b}, {b, a}} {
		self, other := pair[0], pair[1]
		mac := linkByName(t, other.NS, other.Name).Attrs().HardwareAddr
		idx := linkByName(t, self.NS, self.Name).Attrs().Index
		for _, p := range other.Addrs {
			n := &netlink.Neigh{LinkIndex: idx, IP: net.IP(p.Addr().AsSlice()), HardwareAddr: mac, State: netlink.NUD_PERMANENT}
			if err := self.NS.nl.NeighSet(n); err != nil {
				t.Fatalf("netnstest: neighbour %s on %s/%s: %v", p.Addr(), self.NS, self.Name, err)
			}
		}
	}
}

// Bridge creates a bridge in n (for example a "node" namespace that pods
// attach to with Veth and End.Master), assigns the addresses and brings
// it up.
func Bridge(t testing.TB, n *NetNS, name string, addrs ...netip.Prefix) {
	t.Helper()
	if err := n.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("netnstest: bridge %s/%s: %v", n, name, err)
	}
	for _, p := range addrs {
		AddAddr(t, n, name, p)
	}
	LinkUp(t, n, name)
}

// LinkUp brings an interface of n up (New and NewNamed do it for lo).
func LinkUp(t testing.TB, n *NetNS, name string) {
	t.Helper()
	if err := n.nl.LinkSetUp(linkByName(t, n, name)); err != nil {
		t.Fatalf("netnstest: set %s/%s up: %v", n, name, err)
	}
}

// AddAddr assigns an address to an interface of n. IPv6 addresses are
// added without duplicate address detection so they are usable at once.
func AddAddr(t testing.TB, n *NetNS, dev string, p netip.Prefix) {
	t.Helper()
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := n.nl.AddrAdd(linkByName(t, n, dev), a); err != nil {
		t.Fatalf("netnstest: add %s to %s/%s: %v", p, n, dev, err)
	}
}

// AddRoute adds a route to dst in n, out of dev, through via when via is
// valid (on-link otherwise). Use 0.0.0.0/0 or ::/0 for a default route.
func AddRoute(t testing.TB, n *NetNS, dst netip.Prefix, dev string, via netip.Addr) {
	t.Helper()
	r := &netlink.Route{Dst: ipNet(dst), LinkIndex: linkByName(t, n, dev).Attrs().Index}
	if via.IsValid() {
		r.Gw = net.IP(via.AsSlice())
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := n.nl.RouteAdd(r); err != nil {
		t.Fatalf("netnstest: route %s dev %s via %v in %s: %v", dst, dev, via, n, err)
	}
}

// WaitReady blocks until the interface is operationally up and none of its
// IPv6 addresses is tentative, re-checking on every link or address event
// of n (no polling). The kernel finishes bringing a link up asynchronously
// (linkwatch, up to a second later under load); until then its IPv6
// addresses are tentative and a redirect to them is dropped.
func WaitReady(t testing.TB, n *NetNS, name string) {
	t.Helper()
	h := netns.NsHandle(n.Fd())
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 16)
	addrs := make(chan netlink.AddrUpdate, 16)
	// The subscriptions report errors here, also when done closes their
	// sockets; only the last one matters, for a timeout message.
	var (
		mu      sync.Mutex
		lastErr error
	)
	fail := func(err error) {
		mu.Lock()
		lastErr = err
		mu.Unlock()
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		t.Fatalf("netnstest: subscribe to links of %s: %v", n, err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &h, ErrorCallback: fail}); err != nil {
		close(done)
		for range links {
		}
		t.Fatalf("netnstest: subscribe to addresses of %s: %v", n, err)
	}
	defer func() {
		close(done)
		for range links {
		}
		for range addrs {
		}
	}()
	timeout := time.NewTimer(readyTimeout)
	defer timeout.Stop()
	for {
		why := notReady(t, n, name)
		if why == "" {
			return
		}
		select {
		case <-links:
		case <-addrs:
		case <-timeout.C:
			mu.Lock()
			err := lastErr
			mu.Unlock()
			t.Fatalf("netnstest: %s/%s not ready after %v: %s (watch error: %v)", n, name, readyTimeout, why, err)
		}
	}
}

const readyTimeout = 10 * time.Second

func notReady(t testing.TB, n *NetNS, name string) string {
	t.Helper()
	l := linkByName(t, n, name)
	if st := l.Attrs().OperState; st != netlink.OperUp {
		return "operstate " + st.String()
	}
	list, err := n.nl.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		t.Fatalf("netnstest: addresses of %s/%s: %v", n, name, err)
	}
	for _, a := range list {
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return a.IPNet.String() + " tentative"
		}
	}
	return ""
}

func linkByName(t testing.TB, n *NetNS, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("netnstest: link %s in %s: %v", name, n, err)
	}
	return l
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 128
	if p.Addr().Is4() {
		bits = 32
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}
