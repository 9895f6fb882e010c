package inpod

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mark is the SO_MARK on every socket the proxy opens inside a pod's
// netns, so the pod's redirection rules let it through (0x539).
const Mark = 1337

// NetNS is an open handle on a network namespace (a pod's). Sockets
// created inside it (Listen, Dial) stay in it for their whole life.
type NetNS struct {
	f *os.File
}

// OpenNetNS opens a namespace by path (/var/run/netns/x, /proc/PID/ns/net).
func OpenNetNS(path string) (*NetNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("inpod: open netns: %w", err)
	}
	return NetNSFromFile(f)
}

// NetNSFromFile takes ownership of f, which must be a network namespace.
func NetNSFromFile(f *os.File) (*NetNS, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("inpod: netns fd: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("inpod: %s is not a namespace file", f.Name())
	}
	return &NetNS{f: f}, nil
}

// Close releases the handle (not the namespace, which lives while any
// process or socket uses it).
func (n *NetNS) Close() error { return n.f.Close() }

// Fd is the namespace file descriptor.
func (n *NetNS) Fd() uintptr { return n.f.Fd() }

// hostNetNS is the namespace the process started in, opened once: every
// thread returns to it after Do. (Opening /proc/thread-self/ns/net on
// each call cost a noticeable share of the per-connection CPU.)
var hostNetNS = sync.OnceValues(func() (*os.File, error) {
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("inpod: open the process netns: %w", err)
	}
	return f, nil
})

// Do runs fn with the calling goroutine's OS thread switched into the
// namespace. If switching back fails, the thread is left locked so that
// the runtime discards it rather than reuse a thread in the wrong netns.
func (n *NetNS) Do(fn func() error) error {
	orig, err := hostNetNS()
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("inpod: enter netns: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Never unlock: the thread dies with the goroutine.
		return errors.Join(ferr, fmt.Errorf("inpod: restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// SocketOpts are applied to sockets created in a pod's netns.
type SocketOpts struct {
	Mark        uint32 // SO_MARK; 0 = none
	ReusePort   bool   // SO_REUSEPORT, so a new proxy can bind beside the old one
	Transparent bool   // IP_TRANSPARENT, to bind a non-local source address
}

func (o SocketOpts) control(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if o.Mark != 0 {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); serr != nil {
				serr = fmt.Errorf("SO_MARK: %w", serr)
				return
			}
		}
		if o.ReusePort {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("SO_REUSEPORT: %w", serr)
				return
			}
		}
		if o.Transparent {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr != nil {
				serr = fmt.Errorf("IP_TRANSPARENT: %w", serr)
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Listen opens a TCP listener inside the namespace.
func (n *NetNS) Listen(ctx context.Context, addr string, o SocketOpts) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		lc := net.ListenConfig{Control: o.control}
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: listen %s in pod netns: %w", addr, err)
	}
	return ln, nil
}

// Dial connects from inside the namespace. A valid src binds the local
// address (with Transparent, a non-local one such as the original client).
//
// Only the socket is created inside the namespace (a socket keeps the
// namespace it was created in); the connect runs outside, through the
// netpoller, so no OS thread stays locked while it completes.
func (n *NetNS) Dial(ctx context.Context, src netip.Addr, dst netip.AddrPort, o SocketOpts) (net.Conn, error) {
	c, err := n.dial(ctx, src, dst, o)
	if err != nil {
		return nil, fmt.Errorf("inpod: dial %s in pod netns: %w", dst, err)
	}
	return c, nil
}

func (n *NetNS) dial(ctx context.Context, src netip.Addr, dst netip.AddrPort, o SocketOpts) (net.Conn, error) {
	family := unix.AF_INET
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	var fd int
	err := n.Do(func() error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tcp")
	defer f.Close() // net.FileConn below keeps its own duplicate
	if err := setSockopts(fd, family, o); err != nil {
		return nil, err
	}
	if src.IsValid() {
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(src, 0), family)); err != nil {
			return nil, fmt.Errorf("bind %s: %w", src, err)
		}
	}
	if err := unix.Connect(fd, sockaddr(dst, family)); err != nil && err != unix.EINPROGRESS {
		return nil, fmt.Errorf("connect: %w", err)
	}
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	c := fc.(*net.TCPConn)
	if err := waitConnected(ctx, c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// waitConnected waits until a non-blocking connect finishes (the socket
// becomes writable) and reports its outcome.
func waitConnected(ctx context.Context, c *net.TCPConn) error {
	if dl, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(dl)
		defer c.SetWriteDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var soErr error
	werr := rc.Write(func(fd uintptr) bool {
		// Check the real state on every call: the poller may have seen
		// the connect complete before this wait began.
		if _, err := unix.Getpeername(int(fd)); err == nil {
			return true
		}
		e, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			soErr = err
		case e != 0:
			soErr = syscall.Errno(e)
		default:
			return false // still connecting: wait for writability
		}
		return true
	})
	if werr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("connect: %w", ctx.Err())
		}
		return fmt.Errorf("connect: %w", werr)
	}
	if soErr != nil {
		return fmt.Errorf("connect: %w", soErr)
	}
	c.SetNoDelay(true)
	return nil
}

func setSockopts(fd, family int, o SocketOpts) error {
	if o.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
			return fmt.Errorf("SO_MARK: %w", err)
		}
	}
	if o.Transparent {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if family == unix.AF_INET6 {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
			return fmt.Errorf("IP_TRANSPARENT: %w", err)
		}
	}
	return nil
}

func sockaddr(ap netip.AddrPort, family int) unix.Sockaddr {
	if family == unix.AF_INET6 {
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
}

// OriginalDst returns the destination a redirected connection was
// addressed to before REDIRECT (SO_ORIGINAL_DST).
func OriginalDst(c syscall.Conn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: original dst: %w", err)
	}
	var ap netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		// SO_ORIGINAL_DST (80) fills a sockaddr_in; x/sys exposes it via
		// GetsockoptIPv6Mreq's 20-byte buffer, the same trick Envoy uses.
		mreq, e := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if e != nil {
			serr = e
			return
		}
		b := mreq.Multiaddr
		port := uint16(b[2])<<8 | uint16(b[3])
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), port)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("inpod: getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return ap, nil
}

// Addrs lists the namespace's own addresses, without loopback and
// link-local ones: a pod's IPs, as its primary CNI configured them.
func (n *NetNS) Addrs() ([]netip.Addr, error) {
	var out []netip.Addr
	err := n.Do(func() error {
		list, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range list {
			p, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			if ip := p.Addr().Unmap(); !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				out = append(out, ip)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inpod: addresses in netns: %w", err)
	}
	return out, nil
}
