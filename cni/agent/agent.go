package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/strait-mesh/strait/cni/enroll"
	"github.com/strait-mesh/strait/cni/plugin"
	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/cni/zds"
)

// Config configures an agent. Node and Kube are required.
type Config struct {
	Node string       // this node's name
	Kube *rest.Config // API server access

	ZDSSocket string // ztunnel connects here (zds.DefaultSocketPath)
	CNISocket string // the plugin calls here (plugin.DefaultSocket)

	Proc      string // the host's /proc ("/proc")
	NetnsDir  string // bind-mounted pod namespaces ("/var/run/netns")
	SelfNetns string // the node's namespace, skipped when searching ("/proc/self/ns/net")

	Redirect redirect.Kind  // rule backend (Auto)
	Rules    redirect.Rules // zero: redirect.DefaultRules()
	// ProbeSNAT installs the host tables that SNAT the node's own
	// connections to enrolled pods (kubelet probes) to the probe address.
	ProbeSNAT bool

	// ProxyWait bounds how long a CNI ADD waits for a ztunnel to be
	// connected (20 s; the plugin's own timeout is 30 s).
	ProxyWait time.Duration
	// OpTimeout bounds one exchange with ztunnel (10 s).
	OpTimeout time.Duration
	// Resync is the informers' resync period (5 min): a missed event is
	// repaired within it.
	Resync time.Duration

	Logger *zap.Logger
}

func (c Config) populate() (Config, error) {
	if c.Node == "" {
		return c, errors.New("agent: no node name (set -node or NODE_NAME)")
	}
	if c.Kube == nil {
		return c, errors.New("agent: no API server configuration")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.ZDSSocket, zds.DefaultSocketPath)
	def(&c.CNISocket, plugin.DefaultSocket)
	def(&c.Proc, "/proc")
	def(&c.NetnsDir, "/var/run/netns")
	def(&c.SelfNetns, "/proc/self/ns/net")
	if c.Rules == (redirect.Rules{}) {
		c.Rules = redirect.DefaultRules()
	}
	if err := c.Rules.Validate(); err != nil {
		return c, fmt.Errorf("agent: %w", err)
	}
	if c.ProxyWait <= 0 {
		c.ProxyWait = 20 * time.Second
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 10 * time.Second
	}
	if c.Resync <= 0 {
		c.Resync = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c, nil
}

// member is an enrolled pod: its rules are in its namespace and every
// connected ztunnel serves it.
type member struct {
	key  string // namespace/name
	uid  types.UID
	info zds.WorkloadInfo
	ips  []netip.Addr
	ns   *os.File
}

// Agent is the node agent. Create it with New, then Run.
type Agent struct {
	cfg  Config
	log  *zap.Logger
	rdr  redirect.Backend
	find finder
	prox *proxies
	kube *kubeWatch
	m    *Metrics

	// mu serialises every change of membership with the replays to
	// ztunnels, so a ztunnel never misses a pod or sees one twice.
	mu      sync.Mutex
	members map[string]*member // by namespace/name

	ready chan struct{}
}

// New checks the configuration and picks the rule backend; Run starts
// the work.
func New(cfg Config, m *Metrics) (*Agent, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.Named("agent")
	rdr, err := redirect.New(cfg.Redirect, log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	kw, err := newKubeWatch(cfg)
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Agent{
		cfg: cfg, log: log, rdr: rdr, m: m, kube: kw,
		find:    finder{proc: cfg.Proc, netnsDir: cfg.NetnsDir, self: cfg.SelfNetns},
		prox:    newProxies(),
		members: map[string]*member{},
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once the agent has synced with the API server,
// reconciled the node's pods and listens on both sockets.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run serves until ctx ends. The plugin socket opens first (ADDs wait
// for the initial sync), ztunnels are accepted only after the node's pods
// are reconciled, so the first replay is complete.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	zsrv, err := zds.Listen(a.cfg.ZDSSocket, zds.ServerConfig{Logger: a.log.Named("zds")})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer zsrv.Close()
	csrv, err := a.listenCNI()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(1)
	go func() { defer wg.Done(); errc <- csrv.serve(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); errc <- a.kube.run(ctx) }()

	if err := a.kube.waitSynced(ctx); err != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("agent: initial sync with the API server: %w", err)
	}
	a.reconcile(ctx)
	wg.Add(1)
	go func() { defer wg.Done(); a.acceptProxies(ctx, zsrv) }()
	wg.Add(1)
	go func() { defer wg.Done(); a.kube.work(ctx, a.syncPod) }()
	close(a.ready)
	a.log.Info("node agent ready", zap.String("node", a.cfg.Node), zap.String("backend", a.rdr.Kind().String()),
		zap.Int("enrolled", a.enrolledCount()), zap.String("zds", a.cfg.ZDSSocket), zap.String("cni", a.cfg.CNISocket))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	zsrv.Close()
	a.prox.closeAll()
	wg.Wait()
	a.mu.Lock()
	for _, m := range a.members {
		m.ns.Close() // the rules stay: they are the state a restarted agent finds
	}
	a.members = map[string]*member{}
	a.mu.Unlock()
	return runErr
}

// acceptProxies takes ztunnel connections: each gets every enrolled pod,
// then snapshot-sent, and from then on every change.
func (a *Agent) acceptProxies(ctx context.Context, srv *zds.Server) {
	for {
		c, err := srv.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("ztunnel connection refused", zap.Error(err))
			select { // do not spin on a persistent error
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		a.mu.Lock()
		n, err := a.replay(ctx, c)
		if err != nil {
			a.mu.Unlock()
			c.Close()
			a.log.Warn("replay to ztunnel failed; it will reconnect", zap.Error(err))
			continue
		}
		a.prox.add(c)
		a.mu.Unlock()
		a.m.proxies.Set(float64(a.prox.count()))
		a.log.Info("ztunnel connected; snapshot sent", zap.Int("pods", n), zap.Int("ztunnels", a.prox.count()))
	}
}

func (a *Agent) replay(ctx context.Context, c *zds.AgentConn) (int, error) {
	for _, m := range a.members {
		octx, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
		err := c.Add(octx, string(m.uid), m.info, m.ns)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("agent: replay %s: %w", m.key, err)
		}
	}
	octx, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	if err := c.SnapshotSent(octx); err != nil {
		return 0, fmt.Errorf("agent: snapshot-sent: %w", err)
	}
	return len(a.members), nil
}

func (a *Agent) enrolledCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.members)
}

// wantEnrolled: the pod runs on this node, not in the host's namespace,
// is not finished, and the labels put it in the mesh.
func (a *Agent) wantEnrolled(p *corev1.Pod, nsLabels map[string]string) bool {
	return p.Spec.NodeName == a.cfg.Node && !p.Spec.HostNetwork &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed &&
		enroll.Enrolled(p.Labels, nsLabels)
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, s := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(s.IP); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func podKey(ns, name string) string { return ns + "/" + name }

// enrollLocked hands the pod to every ztunnel, then installs its rules
// (in that order, so a running pod's new connections find the proxy
// listening). requireProxy: fail when no ztunnel is connected (a CNI ADD
// must not start a pod whose traffic would go nowhere); otherwise the pod
// is recorded and replayed when one connects. It takes ownership of ns.
func (a *Agent) enrollLocked(ctx context.Context, m *member, requireProxy bool) error {
	octx, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	_, err := a.prox.send(octx, func(ctx context.Context, c *zds.AgentConn) error {
		return c.Add(ctx, string(m.uid), m.info, m.ns)
	})
	a.m.proxies.Set(float64(a.prox.count()))
	switch {
	case errors.Is(err, errNoProxy) && !requireProxy:
		a.log.Warn("no ztunnel connected; the pod is redirected now and handed over when one connects", zap.String("pod", m.key))
	case err != nil:
		m.ns.Close()
		a.m.errors.WithLabelValues("ztunnel").Inc()
		return err
	}
	if err := a.applyRules(ctx, m.ns); err != nil {
		a.m.errors.WithLabelValues("rules").Inc()
		a.prox.send(octx, func(ctx context.Context, c *zds.AgentConn) error { return c.Del(ctx, string(m.uid)) })
		m.ns.Close()
		return err
	}
	a.members[m.key] = m
	a.afterChange()
	a.log.Info("pod enrolled", zap.String("pod", m.key), zap.String("uid", string(m.uid)), zap.Stringers("ips", m.ips))
	return nil
}

// unenrollLocked removes the pod's rules (if its namespace still exists),
// then tells every ztunnel, which drains the pod's connections.
func (a *Agent) unenrollLocked(ctx context.Context, m *member, why string) {
	if err := a.removeRules(ctx, m.ns); err != nil {
		a.m.errors.WithLabelValues("rules").Inc()
		a.log.Warn("removing the pod's rules failed", zap.String("pod", m.key), zap.Error(err))
	}
	octx, cancel := context.WithTimeout(ctx, a.cfg.OpTimeout)
	defer cancel()
	if _, err := a.prox.send(octx, func(ctx context.Context, c *zds.AgentConn) error { return c.Del(ctx, string(m.uid)) }); err != nil && !errors.Is(err, errNoProxy) {
		a.m.errors.WithLabelValues("ztunnel").Inc()
		a.log.Warn("ztunnel refused a delete", zap.String("pod", m.key), zap.Error(err))
	}
	m.ns.Close()
	delete(a.members, m.key)
	a.afterChange()
	a.log.Info("pod left the mesh", zap.String("pod", m.key), zap.String("uid", string(m.uid)), zap.String("why", why))
}

func (a *Agent) applyRules(ctx context.Context, ns *os.File) error {
	return redirect.InNetNS(ns, func() error {
		if err := a.rdr.Apply(ctx, a.cfg.Rules); err != nil {
			return err
		}
		if err := redirect.ApplyRoutes(); err != nil {
			return err
		}
		// A restarted ztunnel's listeners take over queued connections.
		return redirect.ApplySysctls()
	})
}

func (a *Agent) removeRules(ctx context.Context, ns *os.File) error {
	return redirect.InNetNS(ns, func() error {
		return errors.Join(a.rdr.Remove(ctx), redirect.RemoveRoutes())
	})
}

// afterChange updates the probe tables and the gauge (under mu).
func (a *Agent) afterChange() {
	a.m.enrolled.Set(float64(len(a.members)))
	if !a.cfg.ProbeSNAT {
		return
	}
	var ips []netip.Addr
	for _, m := range a.members {
		ips = append(ips, m.ips...)
	}
	if err := redirect.ApplyHostProbes(a.cfg.Rules, ips); err != nil {
		a.m.errors.WithLabelValues("probes").Inc()
		a.log.Error("updating the host's probe SNAT tables failed: kubelet probes of enrolled pods may fail in STRICT mode", zap.Error(err))
	}
}
