package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/strait-mesh/strait/internal/meshtest"
	"github.com/strait-mesh/strait/internal/netnstest"
	"github.com/strait-mesh/strait/ztunnel/inpod"
)

type mesh struct {
	topo  *meshtest.Topology
	apps  map[string]*App
	agent map[string]*meshtest.Agent
}

// startMesh builds two nodes: client and intruder pods on node a, the
// server and a non-enrolled outsider on node b, one ztunnel per node fed
// by a node agent over ZDS.
func startMesh(t *testing.T) *mesh { t.Helper(); return startMeshWith(t, nil) }

// startMeshWith lets a test adjust each node's Config.
func startMeshWith(t *testing.T, mod func(*Config)) *mesh {
	t.Helper()
	netnstest.RequireRoot(t)
	prefix := fmt.Sprintf("e2e%d", os.Getpid()%100000)
	topo, err := meshtest.Build(prefix, meshtest.ShopSpec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "workloads.yaml")
	enrolled := meshtest.ShopEnrolled()
	if err := os.WriteFile(cfgPath, topo.WorkloadsYAML(enrolled, meshtest.ShopPolicies), 0o644); err != nil {
		t.Fatal(err)
	}
	serveEcho(t, topo.Pod("server"), 8080)
	serveWhoAmI(t, topo.Pod("server"), 8081)

	m := &mesh{topo: topo, apps: map[string]*App{}, agent: map[string]*meshtest.Agent{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, node := range topo.Nodes {
		sock := filepath.Join(dir, node.Name+".sock")
		agent, err := meshtest.StartAgent(sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { agent.Close() })
		cfg := Config{
			ConfigFile: cfgPath, Node: node.Name, CADir: filepath.Join(dir, "ca"), ZDSSocket: sock,
			AdminAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
			DrainGrace: 2 * time.Second, PreserveSourceIP: true, Logger: zaptest.NewLogger(t).Named(node.Name),
		}
		if mod != nil {
			mod(&cfg)
		}
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				t.Errorf("%s: %v", node.Name, err)
			}
		}()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		if err := agent.WaitProxy(wctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range topo.Pods {
			if p.Node == node && enrolled[p.Name] {
				if err := agent.Enroll(wctx, p); err != nil {
					t.Fatalf("enroll %s: %v", p.Name, err)
				}
			}
		}
		if err := agent.SnapshotSent(wctx); err != nil {
			t.Fatal(err)
		}
		wcancel()
		m.apps[node.Name], m.agent[node.Name] = a, agent
	}
	return m
}

// servePod runs a server inside a pod's namespace until the test ends.
func servePod(t *testing.T, p *meshtest.Pod, port int, handle func(net.Conn)) {
	ln, err := meshtest.Serve(p, port, handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
}

// serveEcho echoes and half-closes after EOF.
func serveEcho(t *testing.T, p *meshtest.Pod, port int) { servePod(t, p, port, meshtest.Echo) }

// serveWhoAmI answers each connection with the peer address it sees.
func serveWhoAmI(t *testing.T, p *meshtest.Pod, port int) {
	servePod(t, p, port, func(c net.Conn) {
		fmt.Fprint(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
	})
}

// dialFrom connects from inside a pod, as the pod's own process would.
func dialFrom(t *testing.T, p *meshtest.Pod, dst string) (net.Conn, error) {
	ns, err := p.OpenNetNS()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return ns.Dial(ctx, netip.Addr{}, netip.MustParseAddrPort(dst), inpod.SocketOpts{})
}

func echo(t *testing.T, c net.Conn, size int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	msg := make([]byte, size)
	rand.Read(msg)
	want := sha256.Sum256(msg)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("read back %d of %d bytes: %v", n, size, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo of %d bytes came back as %d bytes with another checksum", size, n)
	}
}

// refused asserts that a connection attempt through the mesh yields no
// byte: reset or closed.
func refused(t *testing.T, p *meshtest.Pod, dst string) {
	t.Helper()
	c, err := dialFrom(t, p, dst)
	if err != nil {
		return // refused at connect
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("hello?"))
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Fatalf("%s → %s: got %q, want a refusal", p.Name, dst, b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s → %s: hung instead of being refused", p.Name, dst)
	}
}

func scrape(t *testing.T, a *App) string {
	t.Helper()
	resp, err := http.Get("http://" + a.AdminAddrs().Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// nodeLinkAudit counts TCP leaving a node on its link to the other nodes:
// to or from port 15008, and anything else (which must stay 0).
func nodeLinkAudit(t *testing.T, n *meshtest.Node) func() (hbone, other int) {
	t.Helper()
	rules := `table inet audit {
	set seen { type ipv4_addr . ipv4_addr . inet_service . inet_service; flags dynamic; size 1024; }
	chain linkaudit {
		type filter hook forward priority 0; policy accept;
		oifname != "eth0" return
		meta l4proto != tcp return
		tcp dport 15008 counter return
		tcp sport 15008 counter return
		counter add @seen { ip saddr . ip daddr . tcp sport . tcp dport }
	}
}`
	cmd := exec.Command("ip", "netns", "exec", n.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	return func() (int, int) {
		out, err := exec.Command("ip", "netns", "exec", n.NS, "nft", "list", "chain", "inet", "audit", "linkaudit").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		re := regexp.MustCompile(`counter packets (\d+)`)
		m := re.FindAllStringSubmatch(string(out), -1)
		if len(m) != 3 {
			t.Fatalf("audit counters: %s", out)
		}
		v := func(i int) int { n, _ := strconv.Atoi(m[i][1]); return n }
		return v(0) + v(1), v(2)
	}
}

func TestMeshEndToEnd(t *testing.T) {
	m := startMesh(t)
	client, server := m.topo.Pod("client"), m.topo.Pod("server")
	serverAddr := server.IP.String() + ":8080"
	audit := nodeLinkAudit(t, m.topo.Node("node-a"))

	t.Run("bytes intact across nodes", func(t *testing.T) {
		for _, size := range []int{1, 64 << 10, 32 << 20} {
			c, err := dialFrom(t, client, serverAddr)
			if err != nil {
				t.Fatal(err)
			}
			echo(t, c, size)
			c.Close()
		}
	})
	t.Run("source IP preserved end to end", func(t *testing.T) {
		c, err := dialFrom(t, client, server.IP.String()+":8081")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != client.IP.String() {
			t.Fatalf("server saw the connection from %q (%v), want the client pod's %s", b, err, client.IP)
		}
	})
	t.Run("service VIP", func(t *testing.T) {
		c, err := dialFrom(t, client, "10.96.0.10:80")
		if err != nil {
			t.Fatal(err)
		}
		echo(t, c, 4096)
		c.Close()
	})
	t.Run("half-close", func(t *testing.T) {
		c, err := dialFrom(t, client, serverAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("first half"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "first half" {
			t.Fatalf("got %q, %v", b, err)
		}
	})
	t.Run("many concurrent connections", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dialFrom(t, client, serverAddr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				echo(t, c, 10000+i)
			}()
		}
		wg.Wait()
	})
	t.Run("no plaintext on the node link", func(t *testing.T) {
		hb, other := audit()
		if hb == 0 {
			t.Fatal("no HBONE packet counted: the audit does not see the traffic")
		}
		if other != 0 {
			out, _ := exec.Command("ip", "netns", "exec", m.topo.Node("node-a").NS, "nft", "list", "set", "inet", "audit", "seen").CombinedOutput()
			t.Fatalf("%d TCP packets to ports other than 15008 left node-a:\n%s", other, out)
		}
		t.Logf("node-a link: %d packets on 15008, %d other", hb, other)
	})
	t.Run("authorization policy denies another identity", func(t *testing.T) {
		refused(t, m.topo.Pod("intruder"), serverAddr)
	})
	t.Run("STRICT refuses plaintext", func(t *testing.T) {
		refused(t, m.topo.Pod("outsider"), serverAddr)
	})
	t.Run("metrics", func(t *testing.T) {
		src := scrape(t, m.apps["node-a"])
		if !strings.Contains(src, `istio_tcp_connections_opened_total{`) || !strings.Contains(src, `source_principal="spiffe://cluster.local/ns/shop/sa/frontend"`) {
			t.Fatalf("node-a metrics lack the client's connections:\n%s", grep(src, "istio_tcp"))
		}
		dst := scrape(t, m.apps["node-b"])
		if !strings.Contains(dst, `reason="denied"`) || !strings.Contains(dst, `reason="plaintext_strict"`) {
			t.Fatalf("node-b metrics lack the refusals:\n%s", grep(dst, "strait_connection_failures"))
		}
	})
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestMeshReloadAndLifecycle: a config change under traffic keeps open
// connections and takes effect; an invalid change is rejected and the old
// config stays; the agent's mistakes get a nack; a removed pod's
// listeners go away.
func TestMeshReloadAndLifecycle(t *testing.T) {
	m := startMesh(t)
	client, intruder, server := m.topo.Pod("client"), m.topo.Pod("intruder"), m.topo.Pod("server")
	serverAddr := server.IP.String() + ":8080"
	cfgPath := m.apps["node-b"].cfg.ConfigFile
	enrolled := meshtest.ShopEnrolled()

	long, err := dialFrom(t, client, serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	roundTrip := func(c net.Conn, msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write on the long-lived connection: %v", err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("long-lived connection: %q, %v", buf, err)
		}
	}
	roundTrip(long, "before reload")
	refused(t, intruder, serverAddr)

	// Valid change: let attic/scraper in as well.
	v := m.apps["node-b"].Store().Load().Version()
	allowBoth := strings.Replace(meshtest.ShopPolicies, `principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]`,
		`principals: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/attic/sa/scraper"]`, 1)
	if err := os.WriteFile(cfgPath, m.topo.WorkloadsYAML(enrolled, allowBoth), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "node-b to apply the new config", func() bool { return m.apps["node-b"].Store().Load().Version() > v })
	roundTrip(long, "after reload")
	c, err := dialFrom(t, intruder, serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, 1000)
	c.Close()

	// Invalid change: rejected, the previous config stays in force.
	v = m.apps["node-b"].Store().Load().Version()
	if err := os.WriteFile(cfgPath, []byte("workloads:\n- uid: x\n  ips: [not-an-ip]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the invalid config to be rejected", func() bool {
		return strings.Contains(scrape(t, m.apps["node-b"]), `strait_config_reloads_total{result="rejected"} 1`)
	})
	if got := m.apps["node-b"].Store().Load().Version(); got != v {
		t.Fatalf("config version moved from %d to %d on an invalid file", v, got)
	}
	c, err = dialFrom(t, intruder, serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, 1000)
	c.Close()
	roundTrip(long, "after a rejected reload")

	// PERMISSIVE without an identity-based policy lets plaintext in.
	refused(t, m.topo.Pod("outsider"), serverAddr)
	v = m.apps["node-b"].Store().Load().Version()
	permissive := meshtest.ShopPolicies[:strings.Index(meshtest.ShopPolicies, "authorizationPolicies:")] +
		"peerAuthentications:\n- name: permissive-shop\n  namespace: shop\n  mode: PERMISSIVE\n"
	if err := os.WriteFile(cfgPath, m.topo.WorkloadsYAML(enrolled, permissive), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "node-b to apply PERMISSIVE", func() bool { return m.apps["node-b"].Store().Load().Version() > v })
	c, err = dialFrom(t, m.topo.Pod("outsider"), serverAddr)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, 1000)
	c.Close()

	// The agent sends a pod ztunnel does not know: nack with the reason.
	f, err := os.Open(client.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = m.agent["node-a"].AddRaw(ctx, "no-such-uid", f)
	if err == nil || !strings.Contains(err.Error(), "unknown workload uid") {
		t.Fatalf("add of an unknown uid: %v, want a nack naming the unknown uid", err)
	}

	// Removing the client pod closes its listeners: the long-lived
	// connection ends within the drain grace, and the pod's 15001 is gone.
	if err := m.agent["node-a"].Unenroll(ctx, client); err != nil {
		t.Fatal(err)
	}
	if got := m.apps["node-a"].Pods().NetNS(client.UID); got != nil {
		t.Fatal("client pod still enrolled after removal")
	}
	// Its identity (no other pod has it) is no longer renewed.
	clientID := m.apps["node-a"].Store().Load().WorkloadByUID(client.UID).Identity()
	waitUntil(t, "the removed pod's identity to be forgotten", func() bool {
		_, ok := m.apps["node-a"].certs.Expiries()[clientID]
		return !ok
	})
	if _, ok := m.apps["node-a"].certs.Expiries()[m.apps["node-a"].Store().Load().WorkloadByUID(intruder.UID).Identity()]; !ok {
		t.Fatal("the intruder pod, still enrolled, lost its certificate")
	}
	long.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(long); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection of a removed pod was not drained")
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMeshConnectionLimit: beyond the limit, connections are refused at
// once and counted; those already open keep working; freeing them lets
// new ones in.
func TestMeshConnectionLimit(t *testing.T) {
	const limit = 200
	m := startMeshWith(t, func(c *Config) {
		if c.Node == "node-a" {
			c.MaxConns = limit
		}
	})
	client, server := m.topo.Pod("client"), m.topo.Pod("server")
	serverAddr := server.IP.String() + ":8080"
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < limit; i++ {
		c, err := dialFrom(t, client, serverAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("connection %d under the limit: %v", i, err)
		}
		held = append(held, c)
	}
	for i := 0; i < 50; i++ {
		refused(t, client, serverAddr)
	}
	if !strings.Contains(scrape(t, m.apps["node-a"]), `strait_connection_failures_total{direction="outbound",reason="connection_limit"} 50`) {
		t.Fatalf("refusals not counted:\n%s", grep(scrape(t, m.apps["node-a"]), "connection_failures"))
	}
	// The held connections still work.
	for _, c := range held[:10] {
		if _, err := c.Write([]byte{2}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("held connection broken by refusals: %v", err)
		}
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	waitUntil(t, "a slot to free up", func() bool {
		c, err := dialFrom(t, client, serverAddr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte{3})
		_, err = io.ReadFull(c, make([]byte, 1))
		return err == nil
	})
}
