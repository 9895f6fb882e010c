package meshtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/cni/zds"
)

// Agent plays the node agent for one node: it owns the ZDS socket,
// installs the redirection rules (and sysctls) in each enrolled pod's
// namespace and hands the namespace to the node's ztunnel.
//
// Like the real agent it serves any number of ztunnel connections, over
// time and at once (a restarted or upgraded ztunnel connects next to the
// old one): each new connection is replayed every enrolled pod (an add
// with a fresh netns fd), then snapshot-sent; Enroll and Unenroll go to
// every connected ztunnel; a connection that fails is dropped (its
// ztunnel, if still alive, reconnects and is replayed).
type Agent struct {
	srv    *zds.Server
	rdr    redirect.Backend
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// opMu serialises what is sent to the ztunnels: each connection's
	// replay and every Enroll, Unenroll, AddRaw and SnapshotSent. A pod
	// enrolled while a ztunnel connects thus reaches it exactly once.
	opMu sync.Mutex

	mu      sync.Mutex
	pods    []*Pod           // enrolled, in order
	conns   []*zds.AgentConn // connected ztunnels that acked their snapshot
	synced  int              // connections that ever acked their snapshot
	changed chan struct{}    // closed (and replaced) when conns or synced change
}

// StartAgent listens on the ZDS socket at path and accepts ztunnels until
// Close.
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
	a := &Agent{srv: srv, rdr: rdr, changed: make(chan struct{})}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.acceptLoop()
	return a, nil
}

// Backend is the redirection backend in use (nftables or iptables).
func (a *Agent) Backend() redirect.Backend { return a.rdr }

func (a *Agent) acceptLoop() {
	defer a.wg.Done()
	for {
		c, err := a.srv.Accept(a.ctx)
		if err != nil {
			if a.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A refused hello concerns that connection only.
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.attach(c)
		}()
	}
}

// attach replays every enrolled pod to a new connection, then sends
// snapshot-sent; once acked the connection receives what comes next.
func (a *Agent) attach(c *zds.AgentConn) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
	defer cancel()
	a.mu.Lock()
	pods := slices.Clone(a.pods)
	a.mu.Unlock()
	for _, p := range pods {
		// A nack (ztunnel refuses that pod) leaves the connection usable;
		// any other failure ends it.
		if err := a.add(ctx, c, p); err != nil && !isNack(err) {
			c.Close()
			return
		}
	}
	if err := c.SnapshotSent(ctx); err != nil {
		c.Close()
		return
	}
	a.mu.Lock()
	if a.ctx.Err() != nil {
		a.mu.Unlock()
		c.Close()
		return
	}
	a.conns = append(a.conns, c)
	a.synced++
	a.notifyLocked()
	a.mu.Unlock()
}

func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func isNack(err error) bool {
	var nack *zds.NackError
	return errors.As(err, &nack)
}

// add sends pod p to one ztunnel with a fresh handle on its namespace.
func (a *Agent) add(ctx context.Context, c *zds.AgentConn, p *Pod) error {
	f, err := os.Open(p.NetNSPath())
	if err != nil {
		return err
	}
	defer f.Close()
	return c.Add(ctx, p.UID, zds.WorkloadInfo{Name: p.Name, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}, f)
}

// each runs fn on every connected ztunnel (opMu held). Nacks are
// returned; a connection that fails otherwise is dropped, and its error
// returned only if ctx ended (a ztunnel that went away is no error: a
// live one reconnects and gets the replay).
func (a *Agent) each(ctx context.Context, fn func(*zds.AgentConn) error) error {
	a.mu.Lock()
	conns := slices.Clone(a.conns)
	a.mu.Unlock()
	var errs []error
	for _, c := range conns {
		err := fn(c)
		switch {
		case err == nil:
		case isNack(err):
			errs = append(errs, err)
		default:
			a.drop(c)
			if ctx.Err() != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) drop(c *zds.AgentConn) {
	c.Close()
	a.mu.Lock()
	if i := slices.Index(a.conns, c); i >= 0 {
		a.conns = slices.Delete(a.conns, i, i+1)
		a.notifyLocked()
	}
	a.mu.Unlock()
}

// WaitProxy waits until a ztunnel is connected and has acked its
// snapshot (the replay of every pod enrolled so far); at once if one
// already has. Callers that enroll afterwards reach it through Enroll.
func (a *Agent) WaitProxy(ctx context.Context) error {
	for {
		a.mu.Lock()
		n, ch := len(a.conns), a.changed
		a.mu.Unlock()
		if n > 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("meshtest: no ztunnel connected to %s: %w", a.srv.Path(), ctx.Err())
		}
	}
}

// Synced is how many ztunnel connections have acked their snapshot since
// the agent started (a restarted ztunnel counts again).
func (a *Agent) Synced() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.synced
}

// Enroll redirects the pod's traffic (rules, routes, sysctls) and hands
// it to every connected ztunnel; ztunnels that connect later get it in
// their replay. It returns the nacks.
func (a *Agent) Enroll(ctx context.Context, p *Pod) error {
	if err := redirect.InNetNS(p.NetNSPath(), func() error {
		if err := a.rdr.Apply(ctx, redirect.DefaultRules()); err != nil {
			return err
		}
		if err := redirect.ApplyRoutes(); err != nil {
			return err
		}
		return redirect.ApplySysctls()
	}); err != nil {
		return fmt.Errorf("meshtest: redirect %s: %w", p.Name, err)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	a.mu.Lock()
	a.pods = slices.DeleteFunc(a.pods, func(q *Pod) bool { return q.UID == p.UID })
	a.pods = append(a.pods, p)
	a.mu.Unlock()
	return a.each(ctx, func(c *zds.AgentConn) error { return a.add(ctx, c, p) })
}

// Unenroll tells every ztunnel the pod is gone and removes its rules.
func (a *Agent) Unenroll(ctx context.Context, p *Pod) error {
	a.opMu.Lock()
	a.mu.Lock()
	a.pods = slices.DeleteFunc(a.pods, func(q *Pod) bool { return q.UID == p.UID })
	a.mu.Unlock()
	err := a.each(ctx, func(c *zds.AgentConn) error { return c.Del(ctx, p.UID) })
	a.opMu.Unlock()
	if err != nil {
		return err
	}
	return redirect.InNetNS(p.NetNSPath(), func() error {
		return errors.Join(a.rdr.Remove(ctx), redirect.RemoveRoutes())
	})
}

// SnapshotSent sends snapshot-sent to every connected ztunnel. The agent
// already sends one after each connection's replay; callers that enroll
// after WaitProxy may still call it (ztunnel keeps every pod added since
// it connected).
func (a *Agent) SnapshotSent(ctx context.Context) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	return a.each(ctx, func(c *zds.AgentConn) error { return c.SnapshotSent(ctx) })
}

// Close stops listening and closes every ztunnel connection.
func (a *Agent) Close() error {
	a.cancel()
	err := a.srv.Close()
	a.mu.Lock()
	conns := a.conns
	a.conns = nil
	a.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	a.wg.Wait()
	return err
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

// AddRaw sends an add for uid with the given namespace file to every
// connected ztunnel, without installing rules or remembering the pod:
// tests use it to send what a buggy agent would.
func (a *Agent) AddRaw(ctx context.Context, uid string, netns *os.File) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	return a.each(ctx, func(c *zds.AgentConn) error { return c.Add(ctx, uid, zds.WorkloadInfo{Name: uid}, netns) })
}
