// Package netnstest is a small harness for tests that need real Linux
// network namespaces: create them (anonymous or named, removed by
// t.Cleanup), run code inside them on a locked OS thread, wire them with
// veth pairs and bridges, and open sockets inside them.
//
// Every helper needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests call
// RequireRoot first so that they skip elsewhere. CI runs as root.
//
// A socket keeps the network namespace it was created in, so a listener
// opened with Listen, or a connection opened with Dial, can be used from
// any goroutine afterwards. Code that creates sockets or netlink handles
// itself must run inside NetNS.Do.
//
// Only addresses inside namespaces the test creates (for example
// 10.200.0.0/16 or fd00:200::/32 on veth pairs) are ever used.
//
// A typical topology:
//
//	netnstest.RequireRoot(t)
//	pod, peer := netnstest.New(t), netnstest.New(t)
//	netnstest.Veth(t,
//		netnstest.End{NS: pod, Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.200.1.2/24")}},
//		netnstest.End{NS: peer, Name: "veth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.200.1.1/24")}})
//	ln := netnstest.Listen(t, peer, "tcp4", "10.200.1.1:80")
//	c, err := netnstest.Dial(ctx, pod, nil, "tcp4", "10.200.1.1:80")
package netnstest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where NewNamed bind-mounts named namespaces, the directory
// `ip netns` uses, so `ip netns exec NAME ...` works on them.
const RunDir = "/var/run/netns"

// SkipMessage is the reason RequireRoot gives when it skips.
const SkipMessage = "needs root for network namespaces (CI runs as root)"

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip(SkipMessage)
	}
}

// NetNS is a network namespace created for a test. It stays alive until
// the test's cleanup runs.
type NetNS struct {
	name string   // "" when anonymous
	path string   // a path naming the namespace while the test runs
	keep *os.File // anonymous: the fd that keeps it alive and backs path
	ns   ns.NetNS // handle used by Do
	nl   *netlink.Handle
}

// New creates an anonymous network namespace with lo up and IPv6 duplicate
// address detection off for interfaces added later. It lives until
// the test ends; Path names it (as /proc/<pid>/fd/<fd>) meanwhile.
func New(t testing.TB) *NetNS {
	t.Helper()
	f, err := unshareNetNS("")
	if err != nil {
		t.Fatalf("netnstest: create netns: %v", err)
	}
	n := &NetNS{keep: f, path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())}
	n.open(t)
	return n
}

// NewNamed creates a network namespace bind-mounted at RunDir/name, as
// `ip netns add name` would, with lo up. The name must not exist yet;
// since tests of several packages run at once, include something unique
// in it. The cleanup unmounts and removes it.
func NewNamed(t testing.TB, name string) *NetNS {
	t.Helper()
	if name == "" || filepath.Base(name) != name {
		t.Fatalf("netnstest: bad netns name %q", name)
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		t.Fatalf("netnstest: %v", err)
	}
	path := filepath.Join(RunDir, name)
	mp, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		t.Fatalf("netnstest: create netns %q: %v", name, err)
	}
	mp.Close()
	f, err := unshareNetNS(path)
	if err != nil {
		os.Remove(path)
		t.Fatalf("netnstest: create netns %q: %v", name, err)
	}
	f.Close() // the bind mount keeps it alive
	n := &NetNS{name: name, path: path}
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			t.Errorf("netnstest: unmount %s: %v", path, err)
		}
		if err := os.Remove(path); err != nil {
			t.Errorf("netnstest: %v", err)
		}
	})
	n.open(t)
	return n
}

// open takes the handles every NetNS has and brings lo up. Cleanups run
// last-in first-out, so these close before a named netns is unmounted.
func (n *NetNS) open(t testing.TB) {
	t.Helper()
	if n.keep != nil {
		t.Cleanup(func() { n.keep.Close() })
	}
	h, err := ns.GetNS(n.path)
	if err != nil {
		t.Fatalf("netnstest: open %s: %v", n.path, err)
	}
	n.ns = h
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(netns.NsHandle(int(h.Fd())))
	if err != nil {
		t.Fatalf("netnstest: netlink handle in %s: %v", n.path, err)
	}
	n.nl = nl
	t.Cleanup(nl.Close)
	LinkUp(t, n, "lo")
	// No duplicate address detection on interfaces created later: their
	// IPv6 link-local addresses, which neighbour discovery uses, work at
	// once instead of after a second or two.
	n.Run(t, func() error {
		for _, conf := range []string{"all", "default"} {
			err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/accept_dad", []byte("0"), 0)
			if err != nil && !os.IsNotExist(err) { // no IPv6: nothing to do
				return err
			}
		}
		return nil
	})
}

// unshareNetNS creates a network namespace on a locked OS thread, bind
// mounts it at bindTo when that is not empty, returns an open fd to it and
// puts the thread back in its namespace. If that fails the thread stays
// locked, and the runtime discards it when the goroutine returns.
func unshareNetNS(bindTo string) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("unshare(CLONE_NEWNET): %w", err)}
			return
		}
		var r result
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if bindTo != "" {
			if err := unix.Mount(self, bindTo, "none", unix.MS_BIND, ""); err != nil {
				r.err = fmt.Errorf("bind mount at %s: %w", bindTo, err)
			}
		}
		if r.err == nil {
			r.f, r.err = os.Open(self)
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		ch <- r
	}()
	r := <-ch
	return r.f, r.err
}

// Name is the name given to NewNamed, or "" for an anonymous namespace.
func (n *NetNS) Name() string { return n.name }

// Path names the namespace while the test runs: RunDir/name, or
// /proc/<pid>/fd/<fd> for an anonymous one. Tools such as
// `nsenter --net=PATH` accept it.
func (n *NetNS) Path() string { return n.path }

// Fd is an open file descriptor of the namespace, valid until cleanup.
func (n *NetNS) Fd() int { return int(n.ns.Fd()) }

// Handle is a netlink handle bound to the namespace (closed by cleanup);
// it can be used from any goroutine.
func (n *NetNS) Handle() *netlink.Handle { return n.nl }

// Do runs fn inside the namespace on a locked OS thread and returns its
// error. Sockets fn creates stay in the namespace; goroutines fn starts
// do not run in it. Processes fn starts (os/exec) inherit it.
func (n *NetNS) Do(fn func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return fn() })
}

// Run is Do that fails the test on error. Call it from the test goroutine.
func (n *NetNS) Run(t testing.TB, fn func() error) {
	t.Helper()
	if err := n.Do(fn); err != nil {
		t.Fatalf("netnstest: in %s: %v", n.path, err)
	}
}

func (n *NetNS) String() string {
	if n.name != "" {
		return n.name
	}
	return n.path
}
