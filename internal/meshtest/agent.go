package meshtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/cni/zds"
)

// Agent plays the node agent for one node: it owns the ZDS socket,
// installs the redirection rules in each enrolled pod's namespace and
// hands the namespace to the node's ztunnel.
type Agent struct {
	srv  *zds.Server
	conn *zds.AgentConn
	rdr  redirect.Backend
}

// StartAgent listens on the ZDS socket at path.
func StartAgent(path string) (*Agent, error) {
	srv, err := zds.Listen(path, zds.ServerConfig{})
	if err != nil {
		return nil, err
	}
	rdr, err := redirect.New(redirect.Auto, nil)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &Agent{srv: srv, rdr: rdr}, nil
}

// Backend is the redirection backend in use (nftables or iptables).
func (a *Agent) Backend() redirect.Backend { return a.rdr }

// WaitProxy waits for the node's ztunnel to connect.
func (a *Agent) WaitProxy(ctx context.Context) error {
	c, err := a.srv.Accept(ctx)
	if err != nil {
		return err
	}
	a.conn = c
	return nil
}

// Enroll redirects the pod's traffic and hands it to ztunnel.
func (a *Agent) Enroll(ctx context.Context, p *Pod) error {
	if err := redirect.InNetNS(p.NetNSPath(), func() error {
		if err := a.rdr.Apply(ctx, redirect.DefaultRules()); err != nil {
			return err
		}
		return redirect.ApplyRoutes()
	}); err != nil {
		return fmt.Errorf("meshtest: redirect %s: %w", p.Name, err)
	}
	f, err := os.Open(p.NetNSPath())
	if err != nil {
		return err
	}
	defer f.Close()
	return a.conn.Add(ctx, p.UID, zds.WorkloadInfo{Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}, f)
}

// Unenroll tells ztunnel the pod is gone and removes its rules.
func (a *Agent) Unenroll(ctx context.Context, p *Pod) error {
	if err := a.conn.Del(ctx, p.UID); err != nil {
		return err
	}
	return redirect.InNetNS(p.NetNSPath(), func() error {
		return errors.Join(a.rdr.Remove(ctx), redirect.RemoveRoutes())
	})
}

// SnapshotSent ends the initial replay.
func (a *Agent) SnapshotSent(ctx context.Context) error { return a.conn.SnapshotSent(ctx) }

// Close stops listening.
func (a *Agent) Close() error {
	if a.conn != nil {
		a.conn.Close()
	}
	return a.srv.Close()
}

// WorkloadsYAML renders the ztunnel config for the topology: every pod is
// a workload (HBONE when enrolled is nil or lists it, TCP otherwise);
// extra is appended verbatim (services, policies).
func (t *Topology) WorkloadsYAML(enrolled map[string]bool, extra string) []byte {
	var b strings.Builder
	b.WriteString("trustDomain: cluster.local\nworkloads:\n")
	for _, p := range t.Pods {
		proto := "HBONE"
		if enrolled != nil && !enrolled[p.Name] {
			proto = "TCP"
		}
		fmt.Fprintf(&b, "- uid: %s\n  name: %s\n  namespace: %s\n  serviceAccount: %s\n  node: %s\n  ips: [%s]\n  protocol: %s\n  labels: {app: %s}\n",
			p.UID, p.Name, p.Namespace, p.ServiceAccount, p.Node.Name, p.IP, proto, p.Name)
	}
	b.WriteString(extra)
	return []byte(b.String())
}

// AddRaw sends an add for uid with the given namespace file without
// installing rules: tests use it to send what a buggy agent would.
func (a *Agent) AddRaw(ctx context.Context, uid string, netns *os.File) error {
	return a.conn.Add(ctx, uid, zds.WorkloadInfo{Name: uid}, netns)
}
