package netnstest

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
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
// ends to their bridges and brings both up, with permanent neighbour
// entries for each other's addresses. The pair disappears with the
// namespaces.
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
	// Each end knows the other's addresses: no ARP or neighbour discovery,
	// whose first IPv6 solicitations right after link-up can go unanswered
	// for a second or two.
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
