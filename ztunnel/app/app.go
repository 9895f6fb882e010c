// Package app assembles the ztunnel node proxy: the workload store fed by
// the config file, the CA and certificate manager, the HBONE client pool,
// inbound and outbound handling, the in-pod manager fed by the node agent
// (ZDS), metrics, admin and readiness, and the drain on shutdown.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"k8s.io/client-go/rest"

	"github.com/strait-mesh/strait/cni/zds"
	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/certs"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/admin"
	"github.com/strait-mesh/strait/ztunnel/config"
	"github.com/strait-mesh/strait/ztunnel/hbone"
	"github.com/strait-mesh/strait/ztunnel/inbound"
	"github.com/strait-mesh/strait/ztunnel/inpod"
	"github.com/strait-mesh/strait/ztunnel/kube"
	"github.com/strait-mesh/strait/ztunnel/metrics"
	"github.com/strait-mesh/strait/ztunnel/outbound"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// Config is the proxy's configuration (flags of cmd/ztunnel).
type Config struct {
	// ConfigFile is the workloads/services/policies YAML (watched);
	// unused with Kube.
	ConfigFile string
	// Kube, if set, reaches the Kubernetes API server the store is fed
	// from (ztunnel/kube: workloads, services and the policy CRDs) instead
	// of ConfigFile.
	Kube *rest.Config
	// ClusterDomain names services (<name>.<ns>.svc.<ClusterDomain>) with
	// Kube (cluster.local).
	ClusterDomain string
	// Node is the node this proxy serves.
	Node string
	// TrustDomain of the mesh (cluster.local).
	TrustDomain string
	// CADir holds the file-backed root CA (created on first start).
	CADir string
	// RemoteCA, if set, replaces the embedded file-backed CA (CADir is then
	// unused): it signs the certificates and its bundle verifies peers.
	RemoteCA RemoteCA
	// ZDSSocket is the node agent's socket; empty disables in-pod mode
	// (tests then call Pods() directly).
	ZDSSocket string
	// AdminAddr (127.0.0.1:15000), ReadyAddr (:15021), MetricsAddr (:15020).
	AdminAddr, ReadyAddr, MetricsAddr string
	// OutboundPort (15001), InboundPort (15006), HBONEPort (15008) inside
	// each pod's netns.
	OutboundPort, InboundPort, HBONEPort uint16
	// DrainGrace bounds the drain on shutdown and pod removal (30 s).
	DrainGrace time.Duration
	// PreserveSourceIP dials pods from the original client address.
	PreserveSourceIP bool
	// LB is random or round-robin.
	LB string
	// MaxConns and MaxConnsPerWorkload bound connections (0 = defaults).
	MaxConns, MaxConnsPerWorkload int
	Logger                        *zap.Logger
	Level                         zap.AtomicLevel
}

func (c Config) populate() (Config, error) {
	if c.ConfigFile == "" && c.Kube == nil {
		return c, errors.New("app: a config file or a Kubernetes client is required")
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local"
	}
	if c.Node == "" {
		return c, errors.New("app: the node name is required")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.CADir == "" && c.RemoteCA == nil {
		return c, errors.New("app: a CA directory or a remote CA is required")
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = 15001
	}
	if c.InboundPort == 0 {
		c.InboundPort = 15006
	}
	if c.HBONEPort == 0 {
		c.HBONEPort = hbone.Port
	}
	if c.DrainGrace == 0 {
		c.DrainGrace = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Level == (zap.AtomicLevel{}) {
		c.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	}
	return c, nil
}

// RemoteCA is a CA outside the process, such as identity/caclient.Client
// talking to the in-cluster strait-ca.
type RemoteCA interface {
	certs.Fetcher
	x509bundle.Source
}

// source feeds the store: the config file watcher or the Kubernetes
// source. Ready is closed once the first snapshot is in the store.
type source interface {
	Run(ctx context.Context) error
	Ready() <-chan struct{}
}

// App is a running ztunnel.
type App struct {
	cfg Config
	log *zap.Logger
	td  spiffeid.TrustDomain
	// early maps the IPs of pods started before the config knew them
	// (netip.Addr → uid), until the pod stops.
	early   sync.Map
	store   *store.Store
	metrics *metrics.Metrics
	ca      *ca.CA // nil with a RemoteCA
	bundle  x509bundle.Source
	certs   *certs.Manager
	client  *hbone.Client
	in      *inbound.Inbound
	out     *outbound.Outbound
	pods    *inpod.Manager
	admin   *admin.Server
	source  source
	quit    chan struct{}
	quitMu  sync.Once
}

// New builds the proxy; nothing listens until Run.
func New(cfg Config) (*App, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("app: trust domain: %w", err)
	}
	a := &App{cfg: cfg, log: cfg.Logger, td: td, store: store.New(), metrics: metrics.New(), quit: make(chan struct{})}

	var fetcher certs.Fetcher = cfg.RemoteCA
	a.bundle = cfg.RemoteCA
	if cfg.RemoteCA == nil {
		root, err := ca.LoadOrCreateFileRoot(cfg.CADir, cfg.TrustDomain)
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		a.ca, err = ca.New(ca.Config{TrustDomain: td, Root: root, Authorizer: a.nodeAuthorizer()})
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
		a.bundle = a.ca.Bundle()
		fetcher = certs.FromCA(a.ca, ca.Caller{Node: cfg.Node})
	}
	a.certs, err = certs.New(certs.Config{Fetcher: fetcher, Logger: a.log.Named("certs")})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.client, err = hbone.NewClient(hbone.ClientConfig{TLS: a.clientTLS, DialTCP: a.dialFromPod, Logger: a.log.Named("hbone")})
	if err != nil {
		return nil, err
	}
	a.in, err = inbound.New(inbound.Config{
		Store: a.store, Dial: a.dialPod, OrigDst: origDst, Node: cfg.Node,
		PreserveSourceIP: cfg.PreserveSourceIP, MaxConns: cfg.MaxConns, MaxConnsPerWorkload: cfg.MaxConnsPerWorkload,
		Metrics: a.metrics, Logger: a.log.Named("inbound"),
	})
	if err != nil {
		return nil, err
	}
	a.out, err = outbound.New(outbound.Config{
		Store: a.store, HBONE: a.client, Passthrough: a.passthrough, OrigDst: origDst,
		LB: outbound.LoadBalancing(cfg.LB), HBONEPort: cfg.HBONEPort, MaxConns: cfg.MaxConns,
		Metrics: a.metrics, Logger: a.log.Named("outbound"),
	})
	if err != nil {
		return nil, err
	}
	a.pods = inpod.NewManager(a, cfg.DrainGrace, a.log.Named("inpod"))
	if cfg.Kube != nil {
		a.source, err = kube.New(kube.Options{
			Config: cfg.Kube, Policies: true, WriteStatus: true, Store: a.store, Logger: a.log.Named("kube"),
			Translator: kube.Translator{TrustDomain: cfg.TrustDomain, ClusterDomain: cfg.ClusterDomain},
			OnRebuild: func(st kube.Stats) {
				a.metrics.ConfigReload(st.Err == nil)
				if st.Err == nil {
					a.metrics.SetWorkloads(st.Workloads)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
	} else {
		a.source = config.NewWatcher(cfg.ConfigFile, a.store, a.log.Named("config"), config.OnReload(func(ok bool, err error) {
			a.metrics.ConfigReload(ok)
			if ok {
				a.metrics.SetWorkloads(len(a.store.Load().Workloads()))
			}
		}))
	}
	a.admin, err = admin.New(admin.Config{
		AdminAddr: cfg.AdminAddr, ReadyAddr: cfg.ReadyAddr, MetricsAddr: cfg.MetricsAddr,
		ConfigDump: a.configDump, Level: cfg.Level, Quit: a.Quit, Metrics: a.metrics.Handler(),
		Logger: a.log.Named("admin"),
	})
	if err != nil {
		return nil, err
	}
	a.admin.AddCheck("config", func() error {
		if a.store.Load().Version() == 0 {
			return errors.New("config not loaded yet")
		}
		return nil
	})
	a.admin.AddCheck("certificates", a.certsReady)
	if cfg.ZDSSocket != "" {
		// In-pod mode: ready once the node agent's snapshot is in, i.e.
		// every pod it knows of has its listeners bound. A restart or
		// upgrade (DaemonSet maxSurge) waits for this before stopping the
		// old process.
		a.admin.AddCheck("pods", func() error {
			if !a.pods.Synced() {
				return errors.New("no pod snapshot from the node agent yet")
			}
			return nil
		})
	}
	return a, nil
}

// Store is the workload store (for tests and the admin dump).
func (a *App) Store() *store.Store { return a.store }

// Pods is the in-pod manager; tests without a node agent drive it directly.
func (a *App) Pods() *inpod.Manager { return a.pods }

// Metrics is the metrics registry.
func (a *App) Metrics() *metrics.Metrics { return a.metrics }

// AdminAddrs are the bound admin, readiness and metrics addresses.
func (a *App) AdminAddrs() admin.Addrs { return a.admin.Addrs() }

// Quit starts a graceful shutdown (admin /quitquitquit).
func (a *App) Quit() { a.quitMu.Do(func() { close(a.quit) }) }

// Run serves until ctx is done or Quit, then drains for DrainGrace and
// returns. It fails early if the config cannot be loaded.
func (a *App) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	werr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		werr <- a.source.Run(ctx)
	}()
	select {
	case <-a.source.Ready():
	case err := <-werr:
		cancel()
		wg.Wait()
		return fmt.Errorf("app: initial config: %w", err)
	}
	a.metrics.SetWorkloads(len(a.store.Load().Workloads()))
	if err := a.admin.Start(ctx); err != nil {
		cancel()
		wg.Wait()
		return fmt.Errorf("app: %w", err)
	}
	if a.cfg.ZDSSocket != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			zc := zds.NewClient(zds.ClientConfig{Logger: a.log.Named("zds")})
			_ = zc.Serve(ctx, a.cfg.ZDSSocket, a.pods)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.publishGauges(ctx)
	}()
	a.log.Info("ztunnel ready", zap.String("node", a.cfg.Node), zap.String("config", a.cfg.ConfigFile))
	select {
	case <-ctx.Done():
	case <-a.quit:
	}
	a.admin.AddCheck("draining", func() error { return errors.New("shutting down") })
	a.log.Info("ztunnel draining", zap.Duration("grace", a.cfg.DrainGrace))
	start := time.Now()
	// No more pods from the agent (a new ztunnel takes them), no more
	// config: the drain works with what it has.
	cancel()
	drainCtx, drainCancel := context.WithTimeout(context.Background(), a.cfg.DrainGrace)
	defer drainCancel()
	// The pods first: their listeners close and their connections,
	// inbound and outbound, finish; outbound tunnels ride the client
	// pool, which is shut down (GOAWAY) only once they are done.
	errs := []error{a.pods.StopAll(drainCtx), a.client.Shutdown(drainCtx)}
	if drainCtx.Err() != nil {
		// The grace is the bound the operator chose, not a failure.
		a.log.Warn("ztunnel drain grace over: connections still open were closed",
			zap.Duration("grace", a.cfg.DrainGrace), zap.Error(errors.Join(errs...)))
		errs = nil
	} else {
		a.log.Info("ztunnel drained", zap.Duration("took", time.Since(start)))
	}
	wg.Wait()
	a.certs.Close()
	adminCtx, adminCancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer adminCancel()
	errs = append(errs, a.admin.Shutdown(adminCtx))
	a.log.Info("ztunnel stopped")
	return errors.Join(errs...)
}

func (a *App) publishGauges(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		st := a.client.Stats()
		a.metrics.SetPool(st.Conns, st.Streams)
		for id, exp := range a.certs.Expiries() {
			a.metrics.SetCertExpiry(id.String(), exp)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nodeAuthorizer lets the embedded CA sign only identities of workloads
// scheduled on this node.
func (a *App) nodeAuthorizer() ca.Authorizer {
	return ca.AuthorizerFunc(func(_ context.Context, caller ca.Caller, id spiffeid.ID) error {
		for _, w := range a.store.Load().Workloads() {
			if w.Node == caller.Node && w.Identity() == id {
				return nil
			}
		}
		return fmt.Errorf("no workload with identity %s on node %q", id, caller.Node)
	})
}

// forgetIfUnused stops renewing id once no running pod has it, so the
// manager and the expiry gauge do not keep identities of departed pods.
func (a *App) forgetIfUnused(id spiffeid.ID) {
	snap := a.store.Load()
	for _, uid := range a.pods.UIDs() {
		if w := snap.WorkloadByUID(uid); w != nil && w.Identity() == id {
			return
		}
	}
	a.certs.Forget(id)
	a.metrics.DeleteCertExpiry(id.String())
}

func (a *App) certsReady() error {
	exp := a.certs.Expiries()
	snap := a.store.Load()
	for _, uid := range a.pods.UIDs() {
		w := snap.WorkloadByUID(uid)
		if w == nil {
			continue
		}
		if t, ok := exp[w.Identity()]; !ok || time.Now().After(t) {
			return fmt.Errorf("no valid certificate for %s yet", w.Identity())
		}
	}
	return nil
}

func (a *App) clientTLS(_ context.Context, k hbone.Key) (*tls.Config, error) {
	ids, err := k.DstIdentities.IDs()
	if err != nil {
		return nil, err
	}
	return tlsconfig.Client(a.certs.Source(k.SrcIdentity), a.bundle, ids, tlsconfig.WithSVIDFunc(a.certs.SVIDFunc(k.SrcIdentity)))
}

// podNetNS finds the netns of the running local pod that owns ip.
func (a *App) podNetNS(ip netip.Addr) (*store.Workload, *inpod.NetNS, error) {
	w := a.store.Load().WorkloadByIP(ip)
	if w == nil {
		// A pod started before its IP reached the config (StartPod).
		if uid, ok := a.early.Load(ip); ok {
			if ns := a.pods.NetNS(uid.(string)); ns != nil {
				return nil, ns, nil
			}
		}
		return nil, nil, fmt.Errorf("app: no workload has %s", ip)
	}
	ns := a.pods.NetNS(w.UID)
	if ns == nil {
		return nil, nil, fmt.Errorf("app: pod %s/%s is not running on this node", w.Namespace, w.Name)
	}
	return w, ns, nil
}

// dialFromPod opens the HBONE connection from inside the source pod's
// netns, marked so its own redirection lets it through.
func (a *App) dialFromPod(ctx context.Context, k hbone.Key) (net.Conn, error) {
	_, ns, err := a.podNetNS(k.SrcIP)
	if err != nil {
		return nil, err
	}
	return ns.Dial(ctx, netip.Addr{}, k.DstAddr, inpod.SocketOpts{Mark: inpod.Mark})
}

// dialPod reaches a local pod from inside its netns (inbound last leg).
func (a *App) dialPod(ctx context.Context, w *store.Workload, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	ns := a.pods.NetNS(w.UID)
	if ns == nil {
		return nil, fmt.Errorf("app: pod %s/%s is not running on this node", w.Namespace, w.Name)
	}
	return ns.Dial(ctx, src, dst, inpod.SocketOpts{Mark: inpod.Mark, Transparent: src.IsValid()})
}

// passthrough dials a non-mesh destination from the source pod's netns.
func (a *App) passthrough(ctx context.Context, src *store.Workload, dst netip.AddrPort) (net.Conn, error) {
	ns := a.pods.NetNS(src.UID)
	if ns == nil {
		return nil, fmt.Errorf("app: pod %s/%s is not running on this node", src.Namespace, src.Name)
	}
	return ns.Dial(ctx, netip.Addr{}, dst, inpod.SocketOpts{Mark: inpod.Mark})
}

func origDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("app: original destination of a %T", c)
	}
	return inpod.OriginalDst(sc)
}

// StartPod implements inpod.Starter: it binds the pod's three listeners
// inside its netns and serves them.
func (a *App) StartPod(ctx context.Context, uid string, info zds.WorkloadInfo, ns *inpod.NetNS) (inpod.Handle, error) {
	w := a.store.Load().WorkloadByUID(uid)
	if w == nil {
		// A pod being created: the agent enrolls it during its CNI ADD,
		// before the kubelet publishes its IP, so the configuration does
		// not have it yet. Serve it with the identity the agent gave; the
		// data path picks up the full workload by uid once it arrives.
		if info.Name == "" || info.Namespace == "" || info.ServiceAccount == "" {
			return nil, fmt.Errorf("%w %q (not in the config, and the agent gave no name, namespace and service account)", inpod.ErrUnknownWorkload, uid)
		}
		ips, err := ns.Addrs()
		if err != nil {
			return nil, err
		}
		w = &store.Workload{UID: uid, Name: info.Name, Namespace: info.Namespace, ServiceAccount: info.ServiceAccount,
			Node: a.cfg.Node, IPs: ips, Protocol: store.ProtocolHBONE, TrustDomain: a.td.Name(), Healthy: true}
		if w.Identity().IsZero() {
			return nil, fmt.Errorf("app: pod %s/%s: service account %q makes no valid identity", info.Namespace, info.Name, info.ServiceAccount)
		}
		for _, ip := range ips {
			a.early.Store(ip, uid)
		}
		a.log.Debug("pod not in the config yet: serving it with the agent's identity", zap.String("pod", info.Namespace+"/"+info.Name),
			zap.Stringer("identity", w.Identity()), zap.Stringers("ips", ips))
	}
	if w.Node != a.cfg.Node {
		return nil, fmt.Errorf("app: pod %s/%s is scheduled on node %q, not %q", w.Namespace, w.Name, w.Node, a.cfg.Node)
	}
	id := w.Identity()
	// Fetch the certificate now so the first connection does not wait.
	if _, err := a.certs.Get(ctx, id); err != nil {
		return nil, fmt.Errorf("app: certificate for %s: %w", id, err)
	}
	srvTLS, err := tlsconfig.Server(a.certs.Source(id), a.bundle, a.td, tlsconfig.WithSVIDFunc(a.certs.SVIDFunc(id)))
	if err != nil {
		return nil, err
	}
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLS: srvTLS, Handler: a.in, OnStreamDone: a.in.Done, Logger: a.log.Named("hbone-server"),
	})
	if err != nil {
		return nil, err
	}
	opts := inpod.SocketOpts{Mark: inpod.Mark, ReusePort: true}
	p := &podRun{srv: srv, log: a.log.Named("inpod").With(zap.String("pod", w.Namespace+"/"+w.Name))}
	for _, l := range []struct {
		port uint16
		dst  *net.Listener
	}{{a.cfg.OutboundPort, &p.out}, {a.cfg.InboundPort, &p.plain}, {a.cfg.HBONEPort, &p.hbone}} {
		ln, err := ns.Listen(ctx, ":"+strconv.Itoa(int(l.port)), opts)
		if err != nil {
			p.closeListeners()
			return nil, err
		}
		*l.dst = newTracking(ln, &p.conns)
	}
	podCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.stopped = func() {
		for _, ip := range w.IPs {
			a.early.CompareAndDelete(ip, uid)
		}
		a.forgetIfUnused(id)
	}
	p.wg.Add(3)
	go func() { defer p.wg.Done(); _ = a.out.Serve(podCtx, p.out, w) }()
	go func() { defer p.wg.Done(); _ = a.in.ServePlaintext(podCtx, p.plain, w) }()
	go func() { defer p.wg.Done(); _ = srv.Serve(p.hbone) }()
	return p, nil
}

// configDump is the admin /config_dump: the store, enrolled pods and
// certificate expiries, never key material.
func (a *App) configDump() any {
	snap := a.store.Load()
	expiries := map[string]time.Time{}
	for id, t := range a.certs.Expiries() {
		expiries[id.String()] = t
	}
	return struct {
		Node         string               `json:"node"`
		Version      uint64               `json:"configVersion"`
		Workloads    []*store.Workload    `json:"workloads"`
		Services     []*store.Service     `json:"services"`
		EnrolledPods []string             `json:"enrolledPods"`
		Certificates map[string]time.Time `json:"certificateExpiry"`
		Pool         hbone.PoolStats      `json:"hbonePool"`
	}{a.cfg.Node, snap.Version(), snap.Workloads(), snap.Services(), a.pods.UIDs(), expiries, a.client.Stats()}
}
