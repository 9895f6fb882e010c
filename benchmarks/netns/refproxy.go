package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"embed"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/strait-mesh/strait/internal/haproxyhbone"
	"github.com/strait-mesh/strait/internal/meshtest"
)

// The reference systems: the same client and servers, the same topology
// shape, but the two node proxies are stock haproxy (an HBONE peer pair:
// HTTP/2 CONNECT over TLS 1.3 mTLS) or stunnel (plain TLS 1.3 tunnel, no
// HTTP/2). The pods are not enrolled: the client connects to node-a's
// proxy explicitly (node-a's pod gateway address, same ports as the
// server), which tunnels to node-b's proxy, which connects to the server
// pod.

//go:embed refproxy
var refFiles embed.FS

const (
	haproxyBin  = "/usr/sbin/haproxy"
	hbonePort   = 15008
	stunnelBase = 20000 // node-b's stunnel listens on stunnelBase+i for the i-th server port
)

// refSystems are the reference systems -systems accepts.
var refSystems = []string{"haproxy", "stunnel", "istio-go"}

// istioRelayModule is the nested module with Istio's Go HBONE relay
// (internal/istiointerop/cmd/istio-hbone-relay), relative to the
// repository root the harness runs from.
const istioRelayModule = "internal/istiointerop"

// refProxy is one reference proxy process.
type refProxy struct {
	kind  string // haproxy, stunnel
	node  *meshtest.Node
	p     *proc
	ready *upWatch // process start → its listener accepts
}

func (r *refProxy) name() string { return r.kind + "-" + r.node.Name }

// refBinary finds a reference system's binary ("" if missing).
func refBinary(kind string) string {
	switch kind {
	case "haproxy":
		if _, err := os.Stat(haproxyBin); err == nil {
			return haproxyBin
		}
		p, _ := exec.LookPath("haproxy")
		return p
	case "stunnel":
		for _, n := range []string{"stunnel4", "stunnel"} {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
	}
	return ""
}

// refCerts is a CA and two SPIFFE-style leaves, as PEM files.
type refCerts struct {
	CA                   string // CA certificate
	ClientPEM, ServerPEM string // cert + key in one file (haproxy, stunnel)
}

// makeRefCerts writes an ECDSA P-256 CA and two leaf certificates
// (spiffe://cluster.local/ns/bench/sa/{client,server}) into dir.
func makeRefCerts(dir string) (*refCerts, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: "bench reference CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	c := &refCerts{CA: filepath.Join(dir, "ref-ca.pem")}
	if err := os.WriteFile(c.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return nil, err
	}
	for i, sa := range []string{"client", "server"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		id, _ := url.Parse("spiffe://cluster.local/ns/bench/sa/" + sa)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{Organization: []string{"cluster.local"}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), URIs: []*url.URL{id},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		f := filepath.Join(dir, "ref-"+sa+".pem")
		data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})...)
		if err := os.WriteFile(f, data, 0o600); err != nil {
			return nil, err
		}
		if sa == "client" {
			c.ClientPEM = f
		} else {
			c.ServerPEM = f
		}
	}
	return c, nil
}

// serverPorts are the server pod's ports every system carries.
var serverPorts = []int{fortioPort, iperfPort, echoPort}

// startRef starts a reference system's two proxies on s's topology and
// points s's clients at node-a's proxy.
func (b *bench) startRef(s *system, bin string, certs *refCerts) error {
	na, nb := s.topo.Node("node-a"), s.topo.Node("node-b")
	dir := filepath.Join(b.env.dir, s.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var cfgA, cfgB []string // argument lists, node-a then node-b
	switch s.name {
	case "haproxy":
		lua, err := haproxyhbone.Write(dir)
		if err != nil {
			return err
		}
		type port struct {
			Port      int
			Authority string
		}
		var ports []port
		for _, p := range serverPorts {
			ports = append(ports, port{p, fmt.Sprintf("%s:%d", s.server.IP, p)})
		}
		data := map[string]any{
			"ClientLua": lua.Client, "ServerLua": lua.Server,
			"Listen": na.Gateway.String(), "Ports": ports, "Loop": fmt.Sprintf("strait-bench-%d-a", os.Getpid()),
			"Peer": fmt.Sprintf("%s:%d", nb.IP, hbonePort), "Cert": certs.ClientPEM, "CA": certs.CA,
		}
		a, err := writeTemplate(dir, "haproxy-client.cfg", data)
		if err != nil {
			return err
		}
		data = map[string]any{
			"ServerLua": lua.Server, "Listen": fmt.Sprintf("%s:%d", nb.IP, hbonePort),
			"Loop": fmt.Sprintf("strait-bench-%d-b", os.Getpid()), "Cert": certs.ServerPEM, "CA": certs.CA,
		}
		bcfg, err := writeTemplate(dir, "haproxy-server.cfg", data)
		if err != nil {
			return err
		}
		// -db: foreground, no master process, so the pid is the proxy.
		cfgA = []string{bin, "-db", "-f", a}
		cfgB = []string{bin, "-db", "-f", bcfg}
	case "istio-go":
		var routes []string
		for _, p := range serverPorts {
			routes = append(routes, fmt.Sprintf("%s:%d=%s:%d", na.Gateway, p, s.server.IP, p))
		}
		cfgB = []string{bin, "-mode", "server", "-listen", fmt.Sprintf("%s:%d", nb.IP, hbonePort), "-cert", certs.ServerPEM, "-ca", certs.CA}
		cfgA = []string{bin, "-mode", "client", "-listen", strings.Join(routes, ","), "-peer", fmt.Sprintf("%s:%d", nb.IP, hbonePort),
			"-cert", certs.ClientPEM, "-ca", certs.CA}
	case "stunnel":
		common := "foreground = yes\npid =\nsyslog = no\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
		tls := "sslVersionMin = TLSv1.3\nCAfile = %s\nverifyChain = yes\ncert = %s\n"
		var ca, cb strings.Builder
		ca.WriteString(common)
		fmt.Fprintf(&ca, tls, certs.CA, certs.ClientPEM)
		cb.WriteString(common)
		fmt.Fprintf(&cb, tls, certs.CA, certs.ServerPEM)
		for i, p := range serverPorts {
			fmt.Fprintf(&ca, "\n[p%d]\nclient = yes\naccept = %s:%d\nconnect = %s:%d\n", p, na.Gateway, p, nb.IP, stunnelBase+i)
			fmt.Fprintf(&cb, "\n[p%d]\naccept = %s:%d\nconnect = %s:%d\n", p, nb.IP, stunnelBase+i, s.server.IP, p)
		}
		a, bb := filepath.Join(dir, "stunnel-client.conf"), filepath.Join(dir, "stunnel-server.conf")
		if err := os.WriteFile(a, []byte(ca.String()), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(bb, []byte(cb.String()), 0o644); err != nil {
			return err
		}
		cfgA, cfgB = []string{bin, a}, []string{bin, bb}
	default:
		return fmt.Errorf("unknown reference system %q", s.name)
	}
	// node-b first, so node-a's proxy finds its peer.
	listenB := fmt.Sprintf("%s:%d", nb.IP, hbonePort)
	if s.name == "stunnel" {
		listenB = fmt.Sprintf("%s:%d", nb.IP, stunnelBase)
	}
	for _, st := range []struct {
		node   *meshtest.Node
		args   []string
		listen string // where it accepts once up
	}{
		{nb, cfgB, listenB},
		{na, cfgA, fmt.Sprintf("%s:%d", na.Gateway, serverPorts[0])},
	} {
		r := &refProxy{kind: s.name, node: st.node}
		started := time.Now()
		p, err := b.env.start(r.name(), st.node.NS, nil, nil, st.args...)
		if err != nil {
			return err
		}
		r.p = p
		r.ready = watchUp(b.ctx, started, tcpUp(st.node.NS, st.listen))
		if _, err := r.ready.wait(); err != nil {
			return fmt.Errorf("%s: %w (log: %s)", r.name(), err, tail(p.log.Name()))
		}
		s.refs = append(s.refs, r)
	}
	for _, r := range s.refs {
		// `ip netns exec` execs the proxy: wait until it has.
		c := procComm(r.p.pid())
		for deadline := time.Now().Add(5 * time.Second); c == "ip" && time.Now().Before(deadline) && !r.p.exited(); c = procComm(r.p.pid()) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.HasPrefix(filepath.Base(bin), c) {
			return fmt.Errorf("%s: pid %d is %q, not the proxy (log: %s)", r.name(), r.p.pid(), c, tail(r.p.log.Name()))
		}
	}
	for _, p := range serverPorts {
		if err := meshtest.WaitTCP(b.ctx, na.NS, fmt.Sprintf("%s:%d", na.Gateway, p)); err != nil {
			return fmt.Errorf("%s on node-a, port %d: %w (log: %s)", s.name, p, err, tail(s.refs[1].p.log.Name()))
		}
	}
	if err := b.checkAlive(s); err != nil {
		return err
	}
	s.dst = na.Gateway
	return nil
}

func writeTemplate(dir, name string, data any) (string, error) {
	src, err := refFiles.ReadFile("refproxy/" + name + ".tmpl")
	if err != nil {
		return "", err
	}
	t, err := template.New(name).Parse(string(src))
	if err != nil {
		return "", err
	}
	var out strings.Builder
	if err := t.Execute(&out, data); err != nil {
		return "", err
	}
	f := filepath.Join(dir, name)
	return f, os.WriteFile(f, []byte(out.String()), 0o644)
}

// startRefs builds the topology of every reference system chosen with
// -systems whose binary is present and starts its servers and proxies.
func (b *bench) startRefs(machine map[string]string) ([]*system, error) {
	var refs []*system
	var certs *refCerts
	for _, name := range refSystems {
		if !slices.Contains(b.set.Systems, name) {
			continue
		}
		bin := refBinary(name)
		if name == "istio-go" {
			var err error
			if bin, err = b.buildIstioRelay(); err != nil {
				b.note("reference system istio-go skipped: %v", err)
				continue
			}
		}
		if bin == "" {
			pkg := map[string]string{"haproxy": "haproxy", "stunnel": "stunnel4"}[name]
			b.note("reference system %s skipped: binary not found (apt-get install %s)", name, pkg)
			continue
		}
		switch name {
		case "haproxy":
			machine[name] = toolVersion(b.ctx, bin, "-v")
		case "stunnel":
			machine[name] = toolVersion(b.ctx, bin, "-version")
		case "istio-go":
			machine[name] = istioModuleVersion()
		}
		if certs == nil {
			var err error
			if certs, err = makeRefCerts(b.env.dir); err != nil {
				return nil, fmt.Errorf("reference certificates: %w", err)
			}
		}
		t, err := b.env.build(name)
		if err != nil {
			return nil, fmt.Errorf("%s topology: %w", name, err)
		}
		s := &system{name: name, topo: t, client: t.Pod("client"), server: t.Pod("server")}
		if err := b.startServers(s, true); err != nil {
			return nil, fmt.Errorf("%s servers: %w", name, err)
		}
		if err := b.startRef(s, bin, certs); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		b.log("%-6s topology: client %s (netns %s) → %s %s:{%d,%d,%d} (node-a) → node-b → server %s", name, s.client.IP, s.client.NS,
			name, s.dst, fortioPort, iperfPort, echoPort, s.server.IP)
		refs = append(refs, s)
	}
	return refs, nil
}

// buildIstioRelay builds Istio's Go HBONE relay from the nested module
// (which pins istio.io/istio) into the run's directory.
func (b *bench) buildIstioRelay() (string, error) {
	if _, err := os.Stat(filepath.Join(istioRelayModule, "go.mod")); err != nil {
		return "", fmt.Errorf("%s not found (run from the repository root): %w", istioRelayModule, err)
	}
	out := filepath.Join(b.env.dir, "istio-hbone-relay")
	b.log("building Istio's Go HBONE relay (%s/cmd/istio-hbone-relay)", istioRelayModule)
	cmd := exec.CommandContext(b.ctx, "go", "build", "-C", istioRelayModule, "-o", out, "./cmd/istio-hbone-relay")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w: %s", err, lastLines(msg, 5))
	}
	return out, nil
}

// istioModuleVersion is the istio.io/istio version the relay module pins.
func istioModuleVersion() string {
	mod, err := os.ReadFile(filepath.Join(istioRelayModule, "go.mod"))
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "istio.io/istio" {
			return "istio.io/istio " + f[1] + " pkg/hbone"
		}
	}
	return "unknown"
}
