package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/strait-mesh/strait/deploy"
	"github.com/strait-mesh/strait/deploy/manifest"
	"github.com/strait-mesh/strait/identity/caclient"
	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/internal/meshtest"
	"github.com/strait-mesh/strait/internal/netnstest"
	"github.com/strait-mesh/strait/ztunnel/inpod"
	"github.com/strait-mesh/strait/ztunnel/kube"
)

// kubeMesh is the Kubernetes e2e topology: a real API server, the CA and
// one ztunnel per node as processes (the built binaries), two node
// namespaces with a client pod on node-a and a server pod on node-b, and
// a node agent per node (meshtest) handing the pods to ztunnel over ZDS.
type kubeMesh struct {
	c        *kubetest.Cluster
	topo     *meshtest.Topology
	dyn      dynamic.Interface
	dir      string
	metrics  map[string]string // node → ztunnel metrics address
	admin    map[string]string
	token    map[string]string    // node → ztunnel token file
	zt       map[string]*exec.Cmd // node → its newest ztunnel process
	caAddr   string
	rootsPEM string
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func buildBin(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = "../../.." // the repository root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// procs numbers the processes' log files.
var procs atomic.Int32

// startProc runs a binary until the test ends (or the test stops it);
// its output goes to a log file that is printed if the test fails.
func startProc(t *testing.T, dir, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.log", filepath.Base(name), procs.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 30 {
				lines = lines[len(lines)-30:]
			}
			t.Logf("---- %s:\n%s", logf.Name(), strings.Join(lines, "\n"))
		}
	})
	return cmd
}

func httpGet(addr, path string) (string, int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startKube starts what every Kubernetes e2e shares: the API server
// with the CRDs, the namespaces shop (labelled ambient) and
// strait-system, and the CA as a process. The caller adds a topology.
func startKube(t *testing.T) *kubeMesh {
	t.Helper()
	netnstest.RequireRoot(t)
	dir := t.TempDir()
	caBin := buildBin(t, dir, "./identity/cmd/strait-ca")
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	crds, err := manifest.Load(deploy.Files, "crds")
	if err != nil {
		t.Fatal(err)
	}
	ap, err := manifest.NewApplier(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.Apply(ctx, crds, false); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	m := &kubeMesh{c: c, dyn: dyn, dir: dir, metrics: map[string]string{}, admin: map[string]string{}, token: map[string]string{}, zt: map[string]*exec.Cmd{}}
	for _, ns := range []string{"shop", "strait-system"} {
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	m.label(t, kube.ModeAmbient)

	m.caAddr = freePort(t)
	caMetrics := freePort(t)
	startProc(t, dir, caBin, "-kubeconfig", c.KubeconfigPath, "-namespace", "strait-system", "-listen", m.caAddr, "-metrics-addr", caMetrics)
	eventually(t, 30*time.Second, "strait-ca ready", func() bool { _, code, err := httpGet(caMetrics, "/healthz/ready"); return err == nil && code == 200 })
	cm, err := c.Client.CoreV1().ConfigMaps("strait-system").Get(ctx, "strait-ca-bundle", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m.rootsPEM = filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(m.rootsPEM, []byte(cm.Data["roots.pem"]), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

// startZtunnel runs node's ztunnel (the i-th node) as a process with a
// token bound to its own pod on that node, fed over ZDS at sock; it
// returns the readiness address. Called again for a node, it starts a
// second process beside the first (a restart), which m.zt then names.
func (m *kubeMesh) startZtunnel(ctx context.Context, t *testing.T, ztBin, node string, i int, sock string) string {
	t.Helper()
	if m.token[node] == "" {
		m.ztunnelToken(ctx, t, node, i)
	}
	m.metrics[node], m.admin[node] = freePort(t), freePort(t)
	ready := freePort(t)
	m.zt[node] = startProc(t, m.dir, ztBin, "-kube", "-kubeconfig", m.c.KubeconfigPath, "-node", node,
		"-ca-addr", m.caAddr, "-ca-server-name", "strait-ca.strait-system.svc", "-ca-token-file", m.token[node], "-ca-roots-file", m.rootsPEM,
		"-zds-socket", sock, "-admin-addr", m.admin[node], "-ready-addr", ready, "-metrics-addr", m.metrics[node], "-drain-grace", "2s")
	return ready
}

// ztunnelToken creates node's ztunnel pod and a CA token bound to it.
func (m *kubeMesh) ztunnelToken(ctx context.Context, t *testing.T, node string, i int) {
	t.Helper()
	zp, err := m.c.CreatePod(ctx, kubetest.PodSpec{Namespace: "strait-system", Name: "ztunnel-" + node, Node: node,
		ServiceAccount: "ztunnel", IP: fmt.Sprintf("192.0.2.%d", 10+i), Labels: map[string]string{kube.LabelDataplaneMode: kube.ModeNone}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := m.c.ServiceAccountToken(ctx, "strait-system", "ztunnel", []string{kubetest.CAAudience}, zp)
	if err != nil {
		t.Fatal(err)
	}
	m.token[node] = filepath.Join(m.dir, node+".token")
	if err := os.WriteFile(m.token[node], []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientServerTopology builds two nodes with shop/client on node-a and
// shop/server on node-b, removed when the test ends.
func clientServerTopology(t *testing.T, prefix string) *meshtest.Topology {
	t.Helper()
	topo, err := meshtest.Build(fmt.Sprintf("%s%d", prefix, os.Getpid()%100000), meshtest.Spec{
		Nodes: []string{"node-a", "node-b"},
		Pods: []meshtest.PodSpec{
			{Name: "client", Namespace: "shop", ServiceAccount: "client", Node: "node-a"},
			{Name: "server", Namespace: "shop", ServiceAccount: "server", Node: "node-b"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	return topo
}

func startKubeMesh(t *testing.T) *kubeMesh {
	t.Helper()
	m := startKube(t)
	ztBin := buildBin(t, m.dir, "./ztunnel/cmd/ztunnel")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topo := clientServerTopology(t, "ke")
	m.topo = topo

	// The API objects a kubelet would make: the pods with the netns' IPs
	// (the agent hands ztunnel the API's pod UID).
	for _, p := range topo.Pods {
		kp, err := m.c.CreatePod(ctx, kubetest.PodSpec{Namespace: "shop", Name: p.Name, Node: p.Node.Name, ServiceAccount: p.ServiceAccount,
			Labels: map[string]string{"app": p.Name}, IP: p.IP.String()})
		if err != nil {
			t.Fatal(err)
		}
		p.UID = string(kp.UID)
	}
	ln, err := meshtest.Serve(topo.Pod("server"), 8080, meshtest.Echo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	// One ztunnel per node, fed by a node agent (meshtest's).
	for i, n := range topo.Nodes {
		sock := filepath.Join(m.dir, n.Name+".sock")
		agent, err := meshtest.StartAgent(sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { agent.Close() })
		ready := m.startZtunnel(ctx, t, ztBin, n.Name, i, sock)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		if err := agent.WaitProxy(wctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range topo.Pods {
			if p.Node == n {
				if err := agent.Enroll(wctx, p); err != nil {
					t.Fatalf("enroll %s: %v", p.Name, err)
				}
			}
		}
		if err := agent.SnapshotSent(wctx); err != nil {
			t.Fatal(err)
		}
		wcancel()
		eventually(t, 30*time.Second, "ztunnel on "+n.Name+" ready", func() bool { _, code, err := httpGet(ready, "/healthz/ready"); return err == nil && code == 200 })
	}
	return m
}

func (m *kubeMesh) label(t *testing.T, v string) {
	t.Helper()
	setLabel(t, m, "shop", v)
}

// roundTrip sends msg from the client pod to the server's echo and
// reports whether it came back whole.
func (m *kubeMesh) roundTrip(msg string) error {
	return sendFrom(m.topo.Pod("client").NetNSPath(), netip.AddrPortFrom(m.topo.Pod("server").IP, 8080), msg, msg)
}

// counter sums a metric's samples whose labels contain every sub.
func counter(t *testing.T, addr, name string, subs ...string) float64 {
	t.Helper()
	body, _, err := httpGet(addr, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+"{") {
			continue
		}
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if f := strings.Fields(l); ok && len(f) >= 2 {
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestKubernetesEndToEnd: ztunnel and the CA as processes against a real
// API server, pods in network namespaces on two nodes.
func TestKubernetesEndToEnd(t *testing.T) {
	m := startKubeMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const clientID, serverID = `spiffe://cluster.local/ns/shop/sa/client`, `spiffe://cluster.local/ns/shop/sa/server`

	t.Run("tunneled with the pods' identities", func(t *testing.T) {
		if p := m.protocol(t, "node-a", "client"); p != "HBONE" {
			t.Fatalf("client pod is %q on node-a, want HBONE", p)
		}
		if err := m.roundTrip("hello through the mesh"); err != nil {
			t.Fatal(err)
		}
		// node-b's inbound saw the client's identity on an mTLS tunnel.
		if n := counter(t, m.metrics["node-b"], "istio_tcp_connections_opened_total", `source_principal="`+clientID+`"`, `destination_principal="`+serverID+`"`, `connection_security_policy="mutual_tls"`); n < 1 {
			body, _, _ := httpGet(m.metrics["node-b"], "/metrics")
			t.Fatalf("node-b counted no mTLS connection from %s to %s:\n%s", clientID, serverID, grepLines(body, "istio_tcp_connections_opened"))
		}
	})

	t.Run("AuthorizationPolicy from the API denies within 1 s, deleting it allows", func(t *testing.T) {
		obj := map[string]any{"apiVersion": "security.strait.dev/v1alpha1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "deny-client", "namespace": "shop"},
			"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "server"}}, "action": "DENY",
				"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/client"}}}}}}}}
		if _, err := m.dyn.Resource(kube.AuthorizationPolicies).Namespace("shop").Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		eventually(t, time.Second, "the policy to deny", func() bool { return m.roundTrip("x") != nil })
		t.Logf("denied %v after the policy was created", time.Since(start).Round(time.Millisecond))
		if n := counter(t, m.metrics["node-b"], "strait_connection_failures_total", `reason="denied"`); n < 1 {
			t.Error("no denied connection counted on node-b")
		}
		if err := m.dyn.Resource(kube.AuthorizationPolicies).Namespace("shop").Delete(ctx, "deny-client", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		eventually(t, time.Second, "allowed again", func() bool { return m.roundTrip("y") == nil })
		t.Logf("allowed %v after the policy was deleted", time.Since(start).Round(time.Millisecond))
	})

	t.Run("a ztunnel cannot get an identity that has pods only on another node", func(t *testing.T) {
		cc, err := caclient.New(caclient.Config{Addr: m.caAddr, ServerName: "strait-ca.strait-system.svc", TokenFile: m.token["node-a"],
			RootsFile: m.rootsPEM, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		for _, c := range []struct {
			sa   string
			want error
		}{{"server", caclient.ErrPermissionDenied}, {"client", nil}} {
			id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/" + c.sa)
			_, err := cc.Fetch(ctx, id, csrFor(t, id))
			if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
				t.Errorf("node-a asking for %s: %v, want %v", id, err, c.want)
			}
			if c.want != nil && (err == nil || !strings.Contains(err.Error(), "node-a")) {
				t.Errorf("refusal does not name the node: %v", err)
			}
		}
	})

	t.Run("API server and etcd restart under traffic: no connection lost, resync", func(t *testing.T) {
		ns, err := m.topo.Pod("client").OpenNetNS()
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		long, err := ns.Dial(ctx, netip.Addr{}, netip.AddrPortFrom(m.topo.Pod("server").IP, 8080), inpod.SocketOpts{})
		if err != nil {
			t.Fatal(err)
		}
		defer long.Close()
		ping := func(c net.Conn, s string) error {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, s); err != nil {
				return err
			}
			b := make([]byte, len(s))
			if _, err := io.ReadFull(c, b); err != nil {
				return err
			}
			if !bytes.Equal(b, []byte(s)) {
				return fmt.Errorf("got %q", b)
			}
			return nil
		}
		if err := ping(long, "before"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var fails, oks int
		var mu sync.Mutex
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := m.roundTrip("during")
				mu.Lock()
				if err != nil {
					fails++
				} else {
					oks++
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
		m.c.RestartAll(t)
		close(stop)
		wg.Wait()
		if fails > 0 || oks == 0 {
			t.Errorf("during the API server and etcd restart: %d connections ok, %d failed", oks, fails)
		}
		if err := ping(long, "after"); err != nil {
			t.Fatalf("the connection opened before the restart broke: %v", err)
		}
		// Resync: a change made after the restart reaches ztunnel.
		m.label(t, "")
		eventually(t, 30*time.Second, "un-labelling seen after the restart", func() bool {
			return m.protocol(t, "node-a", "client") == "TCP"
		})
		t.Logf("during the restart: %d connections ok, %d failed", oks, fails)
	})

	t.Run("un-labelled pods are plain TCP workloads", func(t *testing.T) {
		before := counter(t, m.metrics["node-b"], "istio_tcp_connections_opened_total", `source_principal="`+clientID+`"`)
		if err := m.roundTrip("plain"); err != nil {
			t.Fatal(err)
		}
		if after := counter(t, m.metrics["node-b"], "istio_tcp_connections_opened_total", `source_principal="`+clientID+`"`); after != before {
			t.Errorf("an un-labelled pod's connection was still tunneled with its identity (%v → %v)", before, after)
		}
	})
}

// protocol is a workload's protocol in a ztunnel's /config_dump.
func (m *kubeMesh) protocol(t *testing.T, node, name string) string {
	t.Helper()
	body, _, err := httpGet(m.admin[node], "/config_dump")
	if err != nil {
		return ""
	}
	var dump struct {
		Workloads []struct{ Name, Namespace, Protocol string } `json:"workloads"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	for _, w := range dump.Workloads {
		if w.Namespace == "shop" && w.Name == name {
			return w.Protocol
		}
	}
	return ""
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func csrFor(t *testing.T, id spiffeid.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u := id.URL()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
