package netnstest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Listen opens a stream listener inside n (network "tcp", "tcp4" or
// "tcp6"); the cleanup closes it.
func Listen(t testing.TB, n *NetNS, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	n.Run(t, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacket opens a packet socket inside n (network "udp", "udp4" or
// "udp6"); the cleanup closes it.
func ListenPacket(t testing.TB, n *NetNS, network, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	n.Run(t, func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Dial connects from inside n with d (a zero Dialer when nil; set
// d.Control for socket options such as SO_MARK, d.LocalAddr to pick the
// source). Use IP literals: name resolution would run outside n.
func Dial(ctx context.Context, n *NetNS, d *net.Dialer, network, addr string) (net.Conn, error) {
	if d == nil {
		d = &net.Dialer{}
	}
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// OriginalDst returns the destination a redirected (REDIRECT or DNAT)
// connection was originally sent to, from the conntrack entry of an
// accepted socket: getsockopt SO_ORIGINAL_DST (SOL_IP) for IPv4 sockets,
// IP6T_SO_ORIGINAL_DST (SOL_IPV6) for IPv6 ones. It is a test helper; the
// proxy has its own.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	la, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("netnstest: original dst: local address %v", c.LocalAddr())
	}
	v6 := la.AddrPort().Addr().Is6() && !la.AddrPort().Addr().Is4In6()
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		ap    netip.AddrPort
		opErr error
	)
	err = rc.Control(func(fd uintptr) {
		if v6 {
			var sa unix.RawSockaddrInet6
			opErr = getsockopt(fd, unix.SOL_IPV6, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
			ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))
			return
		}
		var sa unix.RawSockaddrInet4
		opErr = getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netnstest: getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return ap, nil
}

func getsockopt(fd uintptr, level, name int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// ntohs reads a port stored in network byte order.
func ntohs(p uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:])
}
