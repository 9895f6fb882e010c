package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// finder finds pod network namespaces on the node: every namespace some
// process is in (/proc/PID/ns/net of the host's /proc) and every
// bind-mounted one (/var/run/netns, where container runtimes such as
// containerd keep pod sandboxes). The node's own namespace is skipped.
type finder struct {
	proc     string // the host's /proc
	netnsDir string // the host's /var/run/netns
	self     string // a path to the node's namespace (the agent's own)
}

func nsIno(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// openNS opens path and checks it is a network namespace.
func openNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: open netns %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("agent: %s is not a network namespace", path)
	}
	return f, nil
}

// candidates lists one path per distinct namespace other than the node's,
// keyed by inode. Entries vanish while we look (processes exit): those
// are skipped.
func (f *finder) candidates() (map[uint64]string, error) {
	host, err := nsIno(f.self)
	if err != nil {
		return nil, fmt.Errorf("agent: the node's netns %s: %w", f.self, err)
	}
	out := map[uint64]string{}
	add := func(path string) {
		ino, err := nsIno(path)
		if err != nil || ino == host {
			return
		}
		if _, ok := out[ino]; !ok {
			out[ino] = path
		}
	}
	if entries, err := os.ReadDir(f.netnsDir); err == nil {
		for _, e := range entries {
			add(filepath.Join(f.netnsDir, e.Name()))
		}
	}
	procs, err := os.ReadDir(f.proc)
	if err != nil {
		return nil, fmt.Errorf("agent: list %s: %w", f.proc, err)
	}
	seen := map[string]bool{}
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		p := filepath.Join(f.proc, e.Name(), "ns", "net")
		// readlink ("net:[INODE]") is cheaper than stat and needs no
		// ptrace access; only new namespaces are stat'ed.
		l, err := os.Readlink(p)
		if err != nil || seen[l] {
			continue
		}
		seen[l] = true
		if strings.HasPrefix(l, "net:[") {
			add(p)
		}
	}
	return out, nil
}

// addrs lists the addresses of every interface in the namespace at path.
func addrs(path string) ([]netip.Addr, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	list, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// errNoNetns means no namespace on the node holds the pod's address.
var errNoNetns = errors.New("no network namespace on this node has the pod's IP")

// byIP opens the namespace holding one of ips (a running pod's).
func (f *finder) byIP(ips []netip.Addr) (*os.File, error) {
	all, err := f.index()
	if err != nil {
		return nil, err
	}
	for _, ip := range ips {
		switch path, ok := all[ip]; {
		case ok && path == "":
			return nil, fmt.Errorf("agent: %s is in more than one network namespace on this node: not guessing which is the pod's", ip)
		case ok:
			return openNS(path)
		}
	}
	return nil, fmt.Errorf("agent: %v: %w", ips, errNoNetns)
}

// index maps every non-loopback address in every pod namespace to a path
// of its namespace (one scan serves many pods); an address found in two
// namespaces maps to "".
func (f *finder) index() (map[netip.Addr]string, error) {
	cands, err := f.candidates()
	if err != nil {
		return nil, err
	}
	out := map[netip.Addr]string{}
	for _, path := range cands {
		list, err := addrs(path)
		if err != nil {
			continue // gone meanwhile, or not ours to read
		}
		for _, a := range list {
			if a.IsLoopback() || a.IsLinkLocalUnicast() {
				continue
			}
			if _, dup := out[a]; dup {
				out[a] = ""
			} else {
				out[a] = path
			}
		}
	}
	return out, nil
}
