// Package meshtest builds a small mesh on one machine for end-to-end tests
// and the demo: "nodes" and "pods" as network namespaces, nodes joined by a
// bridge in a switch namespace, pods on a per-node bridge, and a node
// agent that installs the redirection rules in each pod and hands its
// netns to the node's ztunnel over ZDS. Needs root and iproute2.
//
// All addresses live inside namespaces it creates: nodes 10.200.0.0/24,
// pods of node i in 10.201.i.0/24 (Spec.Net moves both).
package meshtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"github.com/strait-mesh/strait/ztunnel/inpod"
)

// Spec names the nodes and the pods on each.
type Spec struct {
	Nodes []string
	Pods  []PodSpec
	// Net is the second octet of the node network 10.Net.0.0/24; pods of
	// node i get 10.(Net+1).i.0/24. Zero means 200. Tests that search
	// namespaces by address (the node agent does) pick their own, so a
	// topology of a concurrent test never holds the same addresses.
	Net byte
}

// PodSpec is one pod: its node, namespace and service account.
type PodSpec struct {
	Name, Namespace, ServiceAccount, Node string
}

// Topology is a built mesh; Close removes everything it made.
type Topology struct {
	Prefix string
	Switch string
	Nodes  []*Node
	Pods   []*Pod
	made   []string // netns names, in creation order
}

// Node is a node namespace.
type Node struct {
	Name    string
	NS      string // netns name under /var/run/netns
	IP      netip.Addr
	PodCIDR netip.Prefix
	Gateway netip.Addr
	pods    int
}

// Pod is a pod namespace on a node.
type Pod struct {
	PodSpec
	UID  string
	NS   string
	IP   netip.Addr
	Node *Node
}

// NetNSPath is the pod's namespace file.
func (p *Pod) NetNSPath() string { return "/var/run/netns/" + p.NS }

// OpenNetNS opens the pod's namespace.
func (p *Pod) OpenNetNS() (*inpod.NetNS, error) { return inpod.OpenNetNS(p.NetNSPath()) }

// Pod returns the pod named name, or nil.
func (t *Topology) Pod(name string) *Pod {
	for _, p := range t.Pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Node returns the node named name, or nil.
func (t *Topology) Node(name string) *Node {
	for _, n := range t.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// ip runs iproute2 (optionally inside netns ns) and wraps its output
// into the error.
func ip(ns string, args ...string) error {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	return run("ip", args...)
}

func run(name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("meshtest: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// sysctl sets a sysctl inside a namespace.
func sysctl(ns, key, val string) error {
	return run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", key+"="+val)
}

// Build creates the namespaces, links, addresses and routes. prefix keeps
// concurrent topologies apart (it should be short: interface names are
// limited to 15 bytes, but only namespace names carry it).
func Build(prefix string, spec Spec) (t *Topology, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("meshtest: building network namespaces needs root")
	}
	if len(spec.Nodes) == 0 || len(spec.Nodes) > 50 {
		return nil, errors.New("meshtest: between 1 and 50 nodes")
	}
	if spec.Net == 0 {
		spec.Net = 200
	}
	if spec.Net == 255 {
		return nil, errors.New("meshtest: Net must leave room for the pod network (Net+1)")
	}
	t = &Topology{Prefix: prefix, Switch: prefix + "sw"}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := t.addNS(t.Switch); err != nil {
		return nil, err
	}
	if err := ip(t.Switch, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := ip(t.Switch, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	for i, name := range spec.Nodes {
		n := &Node{
			Name:    name,
			NS:      fmt.Sprintf("%sn%d", prefix, i),
			IP:      netip.AddrFrom4([4]byte{10, spec.Net, 0, byte(i + 1)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, spec.Net + 1, byte(i + 1), 0}), 24),
			Gateway: netip.AddrFrom4([4]byte{10, spec.Net + 1, byte(i + 1), 1}),
		}
		if err := t.addNode(n, i); err != nil {
			return nil, err
		}
		t.Nodes = append(t.Nodes, n)
	}
	// Each node routes the other nodes' pod ranges via their node address.
	for _, n := range t.Nodes {
		for _, o := range t.Nodes {
			if o != n {
				if err := ip(n.NS, "route", "add", o.PodCIDR.String(), "via", o.IP.String()); err != nil {
					return nil, err
				}
			}
		}
	}
	for j, ps := range spec.Pods {
		n := t.Node(ps.Node)
		if n == nil {
			return nil, fmt.Errorf("meshtest: pod %s on unknown node %q", ps.Name, ps.Node)
		}
		n.pods++
		p := &Pod{
			PodSpec: ps,
			UID:     fmt.Sprintf("%s-%s-uid", ps.Namespace, ps.Name),
			NS:      fmt.Sprintf("%sp%d", prefix, j),
			IP:      netip.AddrFrom4([4]byte{10, spec.Net + 1, n.PodCIDR.Addr().As4()[2], byte(n.pods + 1)}),
			Node:    n,
		}
		if err := t.addPod(p, j); err != nil {
			return nil, err
		}
		t.Pods = append(t.Pods, p)
	}
	return t, nil
}

func (t *Topology) addNS(name string) error {
	if err := ip("", "netns", "add", name); err != nil {
		return err
	}
	t.made = append(t.made, name)
	return ip(name, "link", "set", "lo", "up")
}

func (t *Topology) addNode(n *Node, i int) error {
	if err := t.addNS(n.NS); err != nil {
		return err
	}
	swPort := fmt.Sprintf("n%d", i)
	steps := [][]string{
		{"link", "add", "eth0", "netns", n.NS, "type", "veth", "peer", "name", swPort, "netns", t.Switch},
	}
	for _, s := range steps {
		if err := ip("", s...); err != nil {
			return err
		}
	}
	if err := ip(t.Switch, "link", "set", swPort, "master", "br0", "up"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"addr", "add", n.IP.String() + "/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "add", "cni0", "type", "bridge"},
		{"addr", "add", n.Gateway.String() + "/24", "dev", "cni0"},
		{"link", "set", "cni0", "up"},
	} {
		if err := ip(n.NS, s...); err != nil {
			return err
		}
	}
	return sysctl(n.NS, "net.ipv4.ip_forward", "1")
}

func (t *Topology) addPod(p *Pod, j int) error {
	if err := t.addNS(p.NS); err != nil {
		return err
	}
	hostSide := fmt.Sprintf("veth%d", j)
	if err := ip("", "link", "add", "eth0", "netns", p.NS, "type", "veth", "peer", "name", hostSide, "netns", p.Node.NS); err != nil {
		return err
	}
	if err := ip(p.Node.NS, "link", "set", hostSide, "master", "cni0", "up"); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"addr", "add", p.IP.String() + "/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", "default", "via", p.Node.Gateway.String()},
	} {
		if err := ip(p.NS, s...); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes every namespace the topology made (their links go with
// them). It is safe to call twice.
func (t *Topology) Close() error {
	var errs []error
	for i := len(t.made) - 1; i >= 0; i-- {
		if err := ip("", "netns", "del", t.made[i]); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	t.made = nil
	return errors.Join(errs...)
}

// Exec runs a command inside a pod's (or node's) namespace.
func Exec(ctx context.Context, ns string, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
