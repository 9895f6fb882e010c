package agent

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/netnstest"
)

func veth(t *testing.T, x, y *netnstest.NetNS, name, addrX, addrY string) {
	t.Helper()
	netnstest.Veth(t,
		netnstest.End{NS: x, Name: name, Addrs: []netip.Prefix{netip.MustParsePrefix(addrX)}},
		netnstest.End{NS: y, Name: name, Addrs: []netip.Prefix{netip.MustParsePrefix(addrY)}})
}

func TestFinderByIP(t *testing.T) {
	netnstest.RequireRoot(t)
	a := netnstest.NewNamed(t, "strait-find-a")
	b := netnstest.NewNamed(t, "strait-find-b")
	host := netnstest.NewNamed(t, "strait-find-host")
	veth(t, a, b, "v0", "10.240.1.2/32", "10.240.1.3/32")
	veth(t, a, b, "v1", "10.240.1.9/32", "10.240.1.9/32") // in both: ambiguous
	veth(t, host, a, "v2", "10.240.1.4/32", "10.240.1.5/32")
	f := finder{proc: "/proc", netnsDir: netnstest.RunDir, self: host.Path()}

	got, err := f.byIP([]netip.Addr{netip.MustParseAddr("10.240.1.3")})
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if ino, want := fileIno(t, got), pathIno(t, b.Path()); ino != want {
		t.Fatalf("10.240.1.3 found in netns inode %d, want b's %d", ino, want)
	}
	if _, err := f.byIP([]netip.Addr{netip.MustParseAddr("10.240.1.9")}); err == nil || !strings.Contains(err.Error(), "more than one") {
		t.Fatalf("address in two namespaces: %v, want a refusal to guess", err)
	}
	// The node's own namespace is never a pod's.
	if _, err := f.byIP([]netip.Addr{netip.MustParseAddr("10.240.1.4")}); err == nil {
		t.Fatal("found a pod IP in the node's own namespace")
	}
	if _, err := f.byIP([]netip.Addr{netip.MustParseAddr("10.240.7.7")}); err == nil {
		t.Fatal("found an address nobody has")
	}
}

// A namespace with no bind mount, held only by a process (a pod whose
// runtime does not mount it under /var/run/netns): found through /proc.
func TestFinderThroughProc(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "sh", "-c",
		"ip link add v0 type veth peer name v1 && ip addr add 10.240.2.2/32 dev v0 && echo up && exec sleep 30")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "up\n" {
		t.Fatalf("unshare: %q, %v", l, err)
	}
	f := finder{proc: "/proc", netnsDir: t.TempDir(), self: "/proc/self/ns/net"}
	got, err := f.byIP([]netip.Addr{netip.MustParseAddr("10.240.2.2")})
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	want := pathIno(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/ns/net")
	if ino := fileIno(t, got); ino != want {
		t.Fatalf("found inode %d, want the process's %d", ino, want)
	}
}

func fileIno(t *testing.T, f *os.File) uint64 {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func pathIno(t *testing.T, path string) uint64 {
	t.Helper()
	ino, err := nsIno(path)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}
