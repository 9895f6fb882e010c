// Package netaddr has the few address and socket helpers shared by the
// data path packages.
package netaddr

import (
	"net"
	"net/netip"
)

// AddrPort converts a net.Addr (TCP or UDP) to a netip.AddrPort, with
// IPv4-mapped IPv6 addresses unmapped. Other or nil addresses give the
// zero value.
func AddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	case nil:
		return netip.AddrPort{}
	default:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ResetClose closes c with a TCP RST (SO_LINGER 0), so a refused client
// sees the refusal at once rather than a clean end of stream.
func ResetClose(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	c.Close()
}
