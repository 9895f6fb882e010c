package redirect_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/internal/netnstest"
)

const migrateReq = "/proc/sys/net/ipv4/tcp_migrate_req"

// readMigrateReq reads tcp_migrate_req as seen from inside n (nil: the
// test's own namespace).
func readMigrateReq(t *testing.T, n *netnstest.NetNS) string {
	t.Helper()
	var v string
	read := func() error {
		b, err := os.ReadFile(migrateReq)
		v = strings.TrimSpace(string(b))
		return err
	}
	if n == nil {
		if err := read(); err != nil {
			t.Fatal(err)
		}
		return v
	}
	n.Run(t, read)
	return v
}

// TestApplySysctlsLandsInThePodNetNS: the value changes in the namespace
// InNetNS entered, not in the test's (host) namespace nor in another one.
func TestApplySysctlsLandsInThePodNetNS(t *testing.T) {
	netnstest.RequireRoot(t)
	if _, err := os.Stat(migrateReq); err != nil {
		t.Fatalf("this kernel has no tcp_migrate_req (Linux 5.14+): %v", err)
	}
	host := readMigrateReq(t, nil)
	pod, other := netnstest.New(t), netnstest.New(t)
	if v := readMigrateReq(t, pod); v != "0" {
		t.Fatalf("a new namespace starts with tcp_migrate_req=%s, want 0", v)
	}
	for range 2 { // idempotent
		if err := redirect.InNetNS(pod.Path(), redirect.ApplySysctls); err != nil {
			t.Fatal(err)
		}
	}
	if v := readMigrateReq(t, pod); v != "1" {
		t.Fatalf("pod namespace: tcp_migrate_req=%s after ApplySysctls, want 1", v)
	}
	if v := readMigrateReq(t, nil); v != host {
		t.Fatalf("host namespace: tcp_migrate_req changed from %s to %s", host, v)
	}
	if v := readMigrateReq(t, other); v != "0" {
		t.Fatalf("another namespace: tcp_migrate_req=%s, want 0", v)
	}
}

// TestMigrateReqKeepsQueuedConnections is what the sysctl is for: two
// SO_REUSEPORT listeners (an old and a new proxy), connections queued on
// both, the old one closes without accepting. With ApplySysctls the new
// listener accepts every connection; without it the old one's queue is
// reset.
func TestMigrateReqKeepsQueuedConnections(t *testing.T) {
	netnstest.RequireRoot(t)
	const n = 64
	for _, apply := range []bool{true, false} {
		name := map[bool]string{true: "with ApplySysctls", false: "without"}[apply]
		t.Run(name, func(t *testing.T) {
			ns := netnstest.New(t)
			if apply {
				if err := redirect.InNetNS(ns.Path(), redirect.ApplySysctls); err != nil {
					t.Fatal(err)
				}
			}
			accepted, reset := queueAndClose(t, ns, n)
			t.Logf("%s: %d of %d queued connections accepted by the sibling, %d reset", name, accepted, n, reset)
			if apply && (accepted != n || reset != 0) {
				t.Fatalf("with tcp_migrate_req: %d of %d accepted, %d reset; want all accepted", accepted, n, reset)
			}
			if !apply && reset == 0 {
				t.Fatalf("without tcp_migrate_req no connection was reset: the test does not exercise the migration")
			}
		})
	}
}

// queueAndClose binds two SO_REUSEPORT listeners in ns, makes n
// connections (the kernel spreads them over both queues), closes the
// first listener and accepts everything from the second. It returns how
// many the second accepted and how many clients saw a reset.
func queueAndClose(t *testing.T, ns *netnstest.NetNS, n int) (accepted, reset int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	var oldLn, newLn net.Listener
	clients := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	ns.Run(t, func() error {
		var err error
		if oldLn, err = lc.Listen(ctx, "tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		if newLn, err = lc.Listen(ctx, "tcp4", oldLn.Addr().String()); err != nil {
			return err
		}
		for range n {
			c, err := net.Dial("tcp4", oldLn.Addr().String())
			if err != nil {
				return err
			}
			clients = append(clients, c)
		}
		return nil
	})
	defer newLn.Close()
	// Every handshake is complete (connect returned); nothing is accepted.
	oldLn.Close()
	got := make(map[string]bool)
	for {
		newLn.(*net.TCPListener).SetDeadline(time.Now().Add(300 * time.Millisecond))
		c, err := newLn.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			t.Fatal(err)
		}
		got[c.RemoteAddr().String()] = true
		c.Close()
	}
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if errors.Is(err, syscall.ECONNRESET) {
			reset++
		}
	}
	return len(got), reset
}
