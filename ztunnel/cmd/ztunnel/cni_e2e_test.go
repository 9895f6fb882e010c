package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/strait-mesh/strait/cni/install"
	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/internal/cnitest"
	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/internal/meshtest"
	"github.com/strait-mesh/strait/internal/netnstest"
	"github.com/strait-mesh/strait/ztunnel/inpod"
	"github.com/strait-mesh/strait/ztunnel/kube"
)

// cniMesh is the CNI end-to-end topology: the real API server, the CA,
// and per node (a network namespace, as in meshtest) the node agent
// strait-cni-agent running inside the node's namespace (a host-network
// DaemonSet), its ztunnel, a CNI configuration directory whose primary
// network is the reference bridge + host-local plugins, and a test
// "kubelet" that runs the chain through libcni for each pod.
type cniMesh struct {
	*kubeMesh
	nodes   map[string]*cniNode
	pods    map[string]*cniPod // namespace/name
	agentBn string
	ztBin   string
	root    *testing.T // owns what outlives a subtest (pod namespaces, apps)
	shared  string     // bin dir with bridge, host-local and strait-cni
}

type cniNode struct {
	*meshtest.Node
	dir, confDir, binDir string
	cniSock, zdsSock     string
	health               string // the agent's /ready and /metrics, in the node's namespace
	kubeconfig           string // reaches the API server from the node's namespace
	agent                *exec.Cmd
	agentLog             *os.File
}

type cniPod struct {
	ns, name, node string
	netns          *netnstest.NetNS
	ip             netip.Addr
	containerID    string
}

func (p *cniPod) key() string { return p.ns + "/" + p.name }

// forwardInto listens on 127.0.0.1 inside the namespace at nsPath and
// relays each connection to target from the test's namespace: the node
// agent runs in a node namespace, the API server on the host's loopback.
func forwardInto(t *testing.T, nsPath, target string) string {
	t.Helper()
	var ln net.Listener
	if err := redirect.InNetNS(nsPath, func() (err error) {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// nsHTTP is an HTTP client whose connections start inside a namespace.
func nsHTTP(nsPath string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ns, err := inpod.OpenNetNS(nsPath)
			if err != nil {
				return nil, err
			}
			defer ns.Close()
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return ns.Dial(ctx, netip.Addr{}, ap, inpod.SocketOpts{})
		},
	}}
}

func (n *cniNode) get(path string) (string, int, error) {
	resp, err := nsHTTP("/var/run/netns/" + n.NS).Get("http://" + n.health + path)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// agentMetric reads one unlabelled sample of the node agent's metrics.
func (n *cniNode) agentMetric(t *testing.T, name string) float64 {
	t.Helper()
	body, _, err := n.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("agent metrics on %s have no %s", n.Name, name)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// startAgent runs strait-cni-agent inside the node's namespace, as the
// host-network DaemonSet does, and waits until it is ready.
func (m *cniMesh) startAgent(t *testing.T, n *cniNode) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(n.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", n.NS, m.agentBn, "-node", n.Name, "-kubeconfig", n.kubeconfig,
		"-zds-socket", n.zdsSock, "-cni-socket", n.cniSock, "-cni-bin-dir", n.binDir, "-cni-conf-dir", n.confDir,
		"-cni-plugin", filepath.Join(m.shared, install.PluginType), "-proc", "/proc", "-netns-dir", netnstest.RunDir,
		"-health-addr", n.health, "-log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.agent, n.agentLog = cmd, logf
	eventually(t, 30*time.Second, "the node agent on "+n.Name+" ready", func() bool {
		_, code, err := n.get("/ready")
		return err == nil && code == 200
	})
}

// stopAgent stops the agent (SIGTERM, as the kubelet does).
func (n *cniNode) stopAgent(t *testing.T) {
	t.Helper()
	if n.agent == nil {
		return
	}
	n.agent.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- n.agent.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		n.agent.Process.Kill()
		<-done
		t.Errorf("the agent on %s did not stop within 15 s of SIGTERM", n.Name)
	}
	n.agent = nil
	n.agentLog.Close()
}

func (n *cniNode) printLog(t *testing.T) {
	b, _ := os.ReadFile(filepath.Join(n.dir, "agent.log"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("---- agent on %s:\n%s", n.Name, strings.Join(lines, "\n"))
}

func startCNIMesh(t *testing.T) *cniMesh {
	t.Helper()
	netnstest.RequireRoot(t)
	km := startKube(t)
	m := &cniMesh{kubeMesh: km, nodes: map[string]*cniNode{}, pods: map[string]*cniPod{}, root: t}
	m.agentBn = buildBin(t, km.dir, "./cni/cmd/strait-cni-agent")
	m.shared = filepath.Join(km.dir, "cnibin")
	cnitest.Install(t, m.shared, "../../..")
	m.ztBin = buildBin(t, km.dir, "./ztunnel/cmd/ztunnel")

	// Addresses of their own (10.230/10.231): the agent finds running
	// pods' namespaces by IP among all of this machine's namespaces.
	topo, err := meshtest.Build(fmt.Sprintf("kc%d", os.Getpid()%100000), meshtest.Spec{Nodes: []string{"node-a", "node-b"}, Net: 230})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	km.topo = topo
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ns := range []string{"shop", "legacy"} {
		if err := km.c.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	km.label(t, kube.ModeAmbient) // shop
	for i, tn := range topo.Nodes {
		if _, err := km.c.EnsureNode(ctx, tn.Name, tn.IP.String()); err != nil {
			t.Fatal(err)
		}
		n := &cniNode{Node: tn, dir: filepath.Join(km.dir, tn.Name)}
		n.confDir, n.binDir = filepath.Join(n.dir, "net.d"), filepath.Join(n.dir, "bin")
		n.cniSock, n.zdsSock = filepath.Join(n.dir, "cni.sock"), filepath.Join(n.dir, "ztunnel.sock")
		n.health = tn.IP.String() + ":15022"
		for _, d := range []string{n.confDir, n.binDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// A bridge keeps a MAC set by hand; otherwise it takes its lowest
		// port's and the bridge plugin's CHECK sees it change.
		if out, err := exec.Command("ip", "-n", tn.NS, "link", "set", "cni0", "address", fmt.Sprintf("02:00:00:00:23:%02x", i+1)).CombinedOutput(); err != nil {
			t.Fatalf("cni0 address: %v: %s", err, out)
		}
		// The primary CNI's configuration, as a CNI daemonset writes it.
		primary := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "podnet", "plugins": [
			{"type": "bridge", "bridge": "cni0", "isGateway": true,
			 "ipam": {"type": "host-local", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}],
			          "ranges": [[{"subnet": %q, "gateway": %q}]]}}]}`, filepath.Join(n.dir, "ipam"), tn.PodCIDR, tn.Gateway)
		if err := os.WriteFile(filepath.Join(n.confDir, "10-podnet.conflist"), []byte(primary), 0o644); err != nil {
			t.Fatal(err)
		}
		kc, err := os.ReadFile(km.c.KubeconfigPath)
		if err != nil {
			t.Fatal(err)
		}
		fwd := forwardInto(t, "/var/run/netns/"+tn.NS, strings.TrimPrefix(km.c.Config.Host, "https://"))
		n.kubeconfig = filepath.Join(n.dir, "kubeconfig")
		if err := os.WriteFile(n.kubeconfig, bytes.ReplaceAll(kc, []byte(km.c.Config.Host), []byte("https://"+fwd)), 0o600); err != nil {
			t.Fatal(err)
		}
		m.nodes[tn.Name] = n
		m.startAgent(t, n)
		t.Cleanup(func() {
			n.stopAgent(t)
			if t.Failed() {
				n.printLog(t)
			}
		})
		ready := km.startZtunnel(ctx, t, m.ztBin, tn.Name, i, n.zdsSock)
		eventually(t, 30*time.Second, "ztunnel on "+tn.Name+" ready", func() bool { _, code, err := httpGet(ready, "/healthz/ready"); return err == nil && code == 200 })
	}
	return m
}

// runPod plays the kubelet for a new pod: the API object (Pending), a
// sandbox namespace bind-mounted under /var/run/netns as containerd
// does, the CNI chain through libcni in the node's namespace, then the
// pod's status with its IP.
func (m *cniMesh) runPod(t *testing.T, ns, name, node string) (*cniPod, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := m.pods[ns+"/"+name]
	if p == nil {
		if _, err := m.c.CreatePod(ctx, podSpec(ns, name, node)); err != nil {
			t.Fatal(err)
		}
		p = &cniPod{ns: ns, name: name, node: node, netns: netnstest.NewNamed(m.root, fmt.Sprintf("%s-%s-%d", ns, name, os.Getpid()%100000))}
		m.pods[p.key()] = p
	}
	p.containerID = fmt.Sprintf("sandbox-%s-%s-%d", ns, name, time.Now().UnixNano())
	res, err := m.cni(ctx, t, "ADD", p)
	if err != nil {
		// The runtime tears a failed sandbox down before the retry.
		if _, derr := m.cni(ctx, t, "DEL", p); derr != nil {
			t.Errorf("DEL after the failed ADD of %s: %v", p.key(), derr)
		}
		return p, err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("ADD of %s gave %d IPs", p.key(), len(r.IPs))
	}
	p.ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if _, err := m.c.StartPod(ctx, ns, name, p.ip); err != nil {
		t.Fatal(err)
	}
	return p, nil
}

func podSpec(ns, name, node string) kubetest.PodSpec {
	return kubetest.PodSpec{Namespace: ns, Name: name, Node: node, ServiceAccount: name, Labels: map[string]string{"app": name}}
}

// cni runs one command of the node's chain, loaded from the node's
// configuration directory as the kubelet does (the agent chained
// strait-cni into it).
func (m *cniMesh) cni(ctx context.Context, t *testing.T, cmd string, p *cniPod) (res cnitypes.Result, err error) {
	t.Helper()
	n := m.nodes[p.node]
	list, err := libcni.LoadConfList(n.confDir, "podnet")
	if err != nil {
		t.Fatal(err)
	}
	// Our plugin from the node's bin dir (the agent copied it there),
	// the reference plugins from the shared one.
	cni := libcni.NewCNIConfigWithCacheDir([]string{n.binDir, m.shared}, filepath.Join(n.dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: p.containerID, NetNS: p.netns.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.ns}, {"K8S_POD_NAME", p.name}, {"K8S_POD_INFRA_CONTAINER_ID", p.containerID}}}
	err = redirect.InNetNS("/var/run/netns/"+n.NS, func() error {
		switch cmd {
		case "ADD":
			var e error
			res, e = cni.AddNetworkList(ctx, list, rt)
			return e
		case "DEL":
			return cni.DelNetworkList(ctx, list, rt)
		case "CHECK":
			return cni.CheckNetworkList(ctx, list, rt)
		}
		return fmt.Errorf("unknown command %s", cmd)
	})
	return res, err
}

// rulesIn reports whether the pod's namespace holds our ruleset.
func rulesIn(t *testing.T, p *cniPod) bool {
	t.Helper()
	b, err := redirect.New(redirect.NFTables, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	p.netns.Run(t, func() (err error) {
		ok, err = b.Installed(context.Background())
		return err
	})
	return ok
}

// echoFrom sends msg from the pod to dst's echo server (8080) and checks
// it comes back.
func echoFrom(p *cniPod, dst netip.Addr, msg string) error {
	return sendFrom(p.netns.Path(), netip.AddrPortFrom(dst, 8080), msg, msg)
}

// sendFrom connects from the namespace at nsPath, writes msg, half-closes
// and expects want back.
func sendFrom(nsPath string, dst netip.AddrPort, msg, want string) error {
	ns, err := inpod.OpenNetNS(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, netip.Addr{}, dst, inpod.SocketOpts{})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != want {
		return fmt.Errorf("%s answered %q, want %q", dst, b, want)
	}
	return nil
}

// linkCounters counts, on node-a's link to the other nodes, the TCP
// packets to node-b's pods: to the HBONE port and to any other port.
type linkCounters struct{ hbone, plain uint64 }

func installLinkCounters(t *testing.T, node, peer *meshtest.Node) {
	t.Helper()
	rules := fmt.Sprintf(`table inet strait-e2e {
	counter hbone {}
	counter plain {}
	chain count {
		type filter hook forward priority 0; policy accept;
		oifname "eth0" ip daddr %[1]s tcp dport 15008 counter name hbone
		oifname "eth0" ip daddr %[1]s tcp dport != 15008 counter name plain
	}
}
`, peer.PodCIDR)
	cmd := exec.Command("ip", "netns", "exec", node.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
}

func readLinkCounters(t *testing.T, node *meshtest.Node) linkCounters {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", node.NS, "nft", "-j", "list", "counters", "table", "inet", "strait-e2e").Output()
	if err != nil {
		t.Fatalf("nft list counters: %v", err)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var c linkCounters
	for _, e := range doc.Nftables {
		if e.Counter == nil {
			continue
		}
		switch e.Counter.Name {
		case "hbone":
			c.hbone = e.Counter.Packets
		case "plain":
			c.plain = e.Counter.Packets
		}
	}
	return c
}

// onlyHBONE runs traffic and reports what crossed node-a's link meanwhile.
func onlyHBONE(t *testing.T, node *meshtest.Node, traffic func() error) (linkCounters, error) {
	t.Helper()
	before := readLinkCounters(t, node)
	err := traffic()
	after := readLinkCounters(t, node)
	return linkCounters{hbone: after.hbone - before.hbone, plain: after.plain - before.plain}, err
}

// TestCNIEndToEnd: the whole capture path with real parts: libcni
// running bridge + host-local + strait-cni, the node agent and ztunnel as
// processes, the real API server; only the kubelet and the container
// runtime are the test.
func TestCNIEndToEnd(t *testing.T) {
	m := startCNIMesh(t)
	a, b := m.nodes["node-a"], m.nodes["node-b"]
	installLinkCounters(t, a.Node, b.Node)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	t.Run("the agent chained strait-cni into the primary configuration", func(t *testing.T) {
		for _, n := range m.nodes {
			list, err := libcni.LoadConfList(n.confDir, "podnet")
			if err != nil {
				t.Fatal(err)
			}
			if last := list.Plugins[len(list.Plugins)-1].Network.Type; last != install.PluginType || len(list.Plugins) != 2 {
				t.Fatalf("%s: chain ends with %q (%d plugins), want bridge then %s", n.Name, last, len(list.Plugins), install.PluginType)
			}
			if _, err := os.Stat(filepath.Join(n.binDir, install.PluginType)); err != nil {
				t.Fatalf("%s: plugin binary not copied: %v", n.Name, err)
			}
		}
	})

	var shopClient, shopServer, legacyClient, legacyServer *cniPod
	t.Run("pods of a labelled namespace are captured, others are not", func(t *testing.T) {
		var err error
		for _, p := range []struct {
			dst            **cniPod
			ns, name, node string
		}{{&shopClient, "shop", "client", "node-a"}, {&shopServer, "shop", "server", "node-b"},
			{&legacyClient, "legacy", "client", "node-a"}, {&legacyServer, "legacy", "server", "node-b"}} {
			if *p.dst, err = m.runPod(t, p.ns, p.name, p.node); err != nil {
				t.Fatalf("ADD %s/%s: %v", p.ns, p.name, err)
			}
		}
		for _, p := range []*cniPod{shopServer, legacyServer} {
			mp := &meshtest.Pod{NS: p.netns.Name()}
			for port, h := range map[int]func(net.Conn){8080: meshtest.Echo, 8081: tellSource} {
				ln, err := meshtest.Serve(mp, port, h)
				if err != nil {
					t.Fatal(err)
				}
				m.root.Cleanup(func() { ln.Close() })
			}
		}
		if !rulesIn(t, shopClient) || !rulesIn(t, shopServer) {
			t.Fatal("no redirection rules in the shop pods")
		}
		if rulesIn(t, legacyClient) || rulesIn(t, legacyServer) {
			t.Fatal("redirection rules in pods of the unlabelled namespace")
		}
		c, err := onlyHBONE(t, a.Node, func() error { return echoFrom(shopClient, shopServer.ip, "hello through the mesh") })
		if err != nil {
			t.Fatal(err)
		}
		if c.plain != 0 || c.hbone == 0 {
			t.Fatalf("node-a's link carried %d packets to 15008 and %d to other ports; want only 15008", c.hbone, c.plain)
		}
		const clientID, serverID = `spiffe://cluster.local/ns/shop/sa/client`, `spiffe://cluster.local/ns/shop/sa/server`
		if n := counter(t, m.metrics["node-b"], "istio_tcp_connections_opened_total", `source_principal="`+clientID+`"`, `destination_principal="`+serverID+`"`, `connection_security_policy="mutual_tls"`); n < 1 {
			t.Fatalf("node-b's ztunnel saw no mTLS connection from %s", clientID)
		}
		c, err = onlyHBONE(t, a.Node, func() error { return echoFrom(legacyClient, legacyServer.ip, "plain") })
		if err != nil {
			t.Fatal(err)
		}
		if c.plain == 0 || c.hbone != 0 {
			t.Fatalf("unlabelled namespace: %d packets to 15008, %d plain; want plain TCP only", c.hbone, c.plain)
		}
		if got := a.agentMetric(t, "strait_cni_agent_enrolled_pods"); got != 1 {
			t.Errorf("node-a agent: %v enrolled pods, want 1", got)
		}
	})

	t.Run("STRICT: plaintext refused, kubelet probes pass (SNAT to 169.254.7.127)", func(t *testing.T) {
		pa := map[string]any{"apiVersion": "security.strait.dev/v1alpha1", "kind": "PeerAuthentication",
			"metadata": map[string]any{"name": "strict", "namespace": "shop"},
			"spec":     map[string]any{"mtls": map[string]any{"mode": "STRICT"}}}
		if _, err := m.dyn.Resource(kube.PeerAuthentications).Namespace("shop").Create(ctx, &unstructured.Unstructured{Object: pa}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "plaintext from an unenrolled pod refused", func() bool {
			return echoFrom(legacyClient, shopServer.ip, "x") != nil
		})
		// The node's own connection, as a kubelet probe: SNATed by the
		// agent's host tables, let through by the pod's rules.
		probe := netip.AddrPortFrom(shopServer.ip, 8081)
		if err := sendFrom("/var/run/netns/"+b.NS, probe, "", "169.254.7.127"); err != nil {
			t.Fatalf("probe from node-b: %v", err)
		}
		if err := echoFrom(shopClient, shopServer.ip, "mesh still works"); err != nil {
			t.Fatal(err)
		}
		if err := m.dyn.Resource(kube.PeerAuthentications).Namespace("shop").Delete(ctx, "strict", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("label and unlabel a namespace with running pods", func(t *testing.T) {
		setLabel(t, m.kubeMesh, "legacy", kube.ModeAmbient)
		eventually(t, 10*time.Second, "running legacy pods enrolled", func() bool { return rulesIn(t, legacyClient) && rulesIn(t, legacyServer) })
		eventually(t, 10*time.Second, "legacy traffic through ztunnel", func() bool { return echoFrom(legacyClient, legacyServer.ip, "now meshed") == nil })
		// ztunnel learns the label from its own watch: both converge.
		eventually(t, 10*time.Second, "legacy traffic only over HBONE", func() bool {
			c, err := onlyHBONE(t, a.Node, func() error { return echoFrom(legacyClient, legacyServer.ip, "meshed") })
			return err == nil && c.plain == 0 && c.hbone > 0
		})
		setLabel(t, m.kubeMesh, "legacy", "")
		eventually(t, 10*time.Second, "legacy pods' rules removed", func() bool { return !rulesIn(t, legacyClient) && !rulesIn(t, legacyServer) })
		eventually(t, 10*time.Second, "legacy traffic plain again", func() bool {
			c, err := onlyHBONE(t, a.Node, func() error { return echoFrom(legacyClient, legacyServer.ip, "plain again") })
			return err == nil && c.plain > 0 && c.hbone == 0
		})
	})

	t.Run("agent down: ADD fails clearly, traffic flows; back: reconciled, ADD works", func(t *testing.T) {
		a.stopAgent(t)
		if !rulesIn(t, shopClient) {
			t.Fatal("stopping the agent removed a pod's rules")
		}
		if err := echoFrom(shopClient, shopServer.ip, "agent away"); err != nil {
			t.Fatalf("traffic while the agent is down: %v", err)
		}
		_, err := m.runPod(t, "shop", "late", "node-a")
		if err == nil || !strings.Contains(err.Error(), "node agent") || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("ADD with the agent down = %v, want a clear 'node agent ... unreachable' error", err)
		}
		// While it is away the namespace is unlabelled and relabelled:
		// the restarted agent must converge anyway.
		m.startAgent(t, a)
		if err := echoFrom(shopClient, shopServer.ip, "agent back"); err != nil {
			t.Fatalf("traffic after the agent restarted (ztunnel got the replay?): %v", err)
		}
		late, err := m.runPod(t, "shop", "late", "node-a") // the kubelet's retry
		if err != nil {
			t.Fatalf("ADD after the agent came back: %v", err)
		}
		if !rulesIn(t, late) {
			t.Fatal("the retried pod has no rules")
		}
		c, err := onlyHBONE(t, a.Node, func() error { return echoFrom(late, shopServer.ip, "late pod") })
		if err != nil || c.plain != 0 || c.hbone == 0 {
			t.Fatalf("late pod: %v; %d to 15008, %d plain", err, c.hbone, c.plain)
		}
		if got := a.agentMetric(t, "strait_cni_agent_enrolled_pods"); got != 2 {
			t.Errorf("after the restart node-a's agent has %v enrolled pods, want 2 (client, late)", got)
		}
	})

	t.Run("un-labelled while the agent is down: rules removed when it is back", func(t *testing.T) {
		setLabel(t, m.kubeMesh, "legacy", kube.ModeAmbient)
		eventually(t, 10*time.Second, "legacy client enrolled", func() bool { return rulesIn(t, legacyClient) })
		a.stopAgent(t)
		setLabel(t, m.kubeMesh, "legacy", "")
		m.startAgent(t, a)
		if rulesIn(t, legacyClient) {
			t.Fatal("the restarted agent kept rules of a pod that left the mesh while it was away")
		}
		eventually(t, 10*time.Second, "legacy plain again", func() bool { return echoFrom(legacyClient, legacyServer.ip, "x") == nil })
	})

	t.Run("ztunnel restarted beside the old one: the agent replays, nothing is dropped", func(t *testing.T) {
		ns, err := inpod.OpenNetNS(shopClient.netns.Path())
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		long, err := ns.Dial(ctx, netip.Addr{}, netip.AddrPortFrom(shopServer.ip, 8080), inpod.SocketOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer long.Close()
		ping := func(msg string) {
			t.Helper()
			long.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, len(msg))
			if _, err := io.WriteString(long, msg); err != nil {
				t.Fatalf("long-lived connection, %s: %v", msg, err)
			}
			if _, err := io.ReadFull(long, buf); err != nil || string(buf) != msg {
				t.Fatalf("long-lived connection, %s: %q, %v", msg, buf, err)
			}
		}
		ping("before the restart")
		old := m.zt["node-a"]
		ready := m.startZtunnel(ctx, t, m.ztBin, "node-a", 0, a.zdsSock)
		eventually(t, 30*time.Second, "the new ztunnel ready (snapshot replayed, listeners bound)", func() bool {
			_, code, err := httpGet(ready, "/healthz/ready")
			return err == nil && code == 200
		})
		if got := a.agentMetric(t, "strait_cni_agent_ztunnel_connections"); got != 2 {
			t.Errorf("the agent serves %v ztunnels, want 2 (old and new)", got)
		}
		old.Process.Signal(syscall.SIGTERM)
		ping("while the old one drains")
		for i := range 20 {
			if err := echoFrom(shopClient, shopServer.ip, fmt.Sprintf("new connection %d", i)); err != nil {
				t.Fatalf("new connection %d during the handover: %v", i, err)
			}
		}
		long.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(long); err != nil || len(rest) != 0 {
			t.Fatalf("closing the long-lived connection: %q, %v", rest, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- old.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("the old ztunnel exited with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the old ztunnel did not exit within its 2 s grace (+8 s)")
		}
		if n := counter(t, m.metrics["node-a"], "istio_tcp_connections_opened_total"); n < 20 {
			t.Errorf("the new ztunnel opened %v connections, want the 20 made during the handover", n)
		}
		if err := echoFrom(shopClient, shopServer.ip, "after the old one left"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ztunnel killed: a new pod's ADD waits for the next one", func(t *testing.T) {
		dead := m.zt["node-a"]
		dead.Process.Kill()
		dead.Wait()
		// The agent still counts the dead connection; it learns on sending.
		m.startZtunnel(ctx, t, m.ztBin, "node-a", 0, a.zdsSock)
		p, err := m.runPod(t, "shop", "after-crash", "node-a")
		if err != nil {
			t.Fatalf("ADD while ztunnel restarts after a crash: %v", err)
		}
		eventually(t, 10*time.Second, "the new pod's traffic through the new ztunnel", func() bool {
			return echoFrom(p, shopServer.ip, "after the crash") == nil
		})
		if got := a.agentMetric(t, "strait_cni_agent_ztunnel_connections"); got != 1 {
			t.Errorf("the agent counts %v ztunnels, want 1 (the dead one dropped)", got)
		}
	})

	t.Run("DEL cleans every rule", func(t *testing.T) {
		probesBefore := hostProbePods(t, a)
		if !slices.Contains(probesBefore, shopClient.ip) {
			t.Fatalf("host probe set %v lacks the enrolled client %s", probesBefore, shopClient.ip)
		}
		if _, err := m.cni(ctx, t, "CHECK", shopClient); err != nil {
			t.Fatalf("CHECK of an enrolled pod: %v", err)
		}
		if _, err := m.cni(ctx, t, "DEL", shopClient); err != nil {
			t.Fatal(err)
		}
		if rulesIn(t, shopClient) {
			t.Fatal("DEL left the ruleset")
		}
		var rules string
		shopClient.netns.Run(t, func() error {
			out, err := exec.Command("ip", "rule", "show").CombinedOutput()
			rules = string(out)
			return err
		})
		if strings.Contains(rules, strconv.Itoa(redirect.RouteTable)) {
			t.Fatalf("DEL left the policy route:\n%s", rules)
		}
		if slices.Contains(hostProbePods(t, a), shopClient.ip) {
			t.Fatal("DEL left the pod in the host probe set")
		}
		if got := a.agentMetric(t, "strait_cni_agent_enrolled_pods"); got != 2 {
			t.Errorf("after DEL node-a's agent has %v enrolled pods, want 2 (late, after-crash)", got)
		}
	})
}

func hostProbePods(t *testing.T, n *cniNode) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	if err := redirect.InNetNS("/var/run/netns/"+n.NS, func() (err error) {
		out, err = redirect.HostProbePods()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// tellSource answers with the address the connection came from.
func tellSource(c net.Conn) {
	io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
}

func setLabel(t *testing.T, m *kubeMesh, ns, v string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, kube.LabelDataplaneMode, v)
	if v == "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, kube.LabelDataplaneMode)
	}
	if _, err := m.c.Client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}
