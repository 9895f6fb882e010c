package caserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/caroot"
)

// Defaults for Config fields left zero.
const (
	DefaultNamespace       = caroot.DefaultNamespace
	DefaultTrustDomain     = "cluster.local"
	DefaultZtunnelSA       = "strait-system/ztunnel"
	DefaultServiceName     = "strait-ca"
	DefaultClusterDomain   = "cluster.local"
	DefaultMetricsPort     = 15014
	DefaultShutdownTimeout = 10 * time.Second
)

// Config configures a Server. The zero value (plus a Client) serves
// cluster.local from strait-system on :15012 with metrics on :15014.
type Config struct {
	// Client talks to the API server. Required.
	Client kubernetes.Interface
	// Namespace the CA runs in: its root Secret, bundle ConfigMap and
	// Service live there (default strait-system).
	Namespace string
	// TrustDomain of the mesh (default cluster.local).
	TrustDomain string
	// ZtunnelServiceAccount ("namespace/name") may ask for identities other
	// than its own (default strait-system/ztunnel).
	ZtunnelServiceAccount string
	// MaxTTL caps issued certificates' lifetime (default 24h); it is also
	// the default lifetime when it is shorter than 24h.
	MaxTTL time.Duration
	// Addr is the HTTPS listener (default ":15012").
	Addr string
	// MetricsAddr serves /metrics and /healthz/ready over plain HTTP
	// (default ":15014").
	MetricsAddr string
	// ServiceName and ClusterDomain make the serving certificate's DNS
	// names <svc>.<ns>.svc and <svc>.<ns>.svc.<cluster-domain> (defaults
	// strait-ca, cluster.local).
	ServiceName, ClusterDomain string
	// RootSecret and BundleConfigMap name the root Secret and the
	// published bundle (defaults strait-ca-root, strait-ca-bundle).
	RootSecret, BundleConfigMap string
	// TokenCacheTTL bounds the reuse of a positive TokenReview (default
	// 10 s; negative disables the cache).
	TokenCacheTTL time.Duration
	// ShutdownTimeout bounds the graceful shutdown in Run (default 10 s).
	ShutdownTimeout time.Duration
	// Logger (default: none).
	Logger *zap.Logger
}

func (c Config) populate() (Config, error) {
	if c.Client == nil {
		return c, fmt.Errorf("caserver: Client is nil: %w", ca.ErrInvalidConfig)
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.ZtunnelServiceAccount == "" {
		c.ZtunnelServiceAccount = DefaultZtunnelSA
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = ca.DefaultTTL
	}
	if c.MaxTTL < 0 {
		return c, fmt.Errorf("caserver: MaxTTL %v is negative: %w", c.MaxTTL, ca.ErrInvalidConfig)
	}
	if c.Addr == "" {
		c.Addr = fmt.Sprintf(":%d", caapi.DefaultPort)
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = fmt.Sprintf(":%d", DefaultMetricsPort)
	}
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c, nil
}

// DNSNames are the names in the CA's serving certificate.
func (c Config) DNSNames() []string {
	base := c.ServiceName + "." + c.Namespace + ".svc"
	return []string{base, base + "." + c.ClusterDomain}
}

// Server is a running CA.
type Server struct {
	cfg     Config
	log     *zap.Logger
	td      spiffeid.TrustDomain
	reg     *prometheus.Registry
	metrics *Metrics
	pods    *PodCache

	mu          sync.Mutex
	started     bool
	root        *caroot.Root
	https, mon  *http.Server
	lnTLS, lnMo net.Listener
	served      sync.WaitGroup
}

// New validates cfg; nothing is read or listened on until Start.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("caserver: trust domain %q: %w", cfg.TrustDomain, err)
	}
	if _, _, err := SplitServiceAccount(cfg.ZtunnelServiceAccount); err != nil {
		return nil, fmt.Errorf("caserver: ztunnel service account: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, td: td, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = NewMetrics(s.reg)
	s.pods, err = NewPodCache(cfg.Client, s.metrics, s.log.Named("pods"))
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Start loads (or creates) the root, publishes the bundle, starts the pod
// informer and both listeners, and returns. The server reports ready once
// the pod cache has synced. Call Shutdown to stop it.
func (s *Server) Start(ctx context.Context) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("caserver: already started")
	}
	s.started = true
	rc := caroot.Config{
		Client: s.cfg.Client, Namespace: s.cfg.Namespace, SecretName: s.cfg.RootSecret, BundleName: s.cfg.BundleConfigMap,
		TrustDomain: s.td, Logger: s.log.Named("root"),
	}
	root, err := caroot.Load(ctx, rc)
	if err != nil {
		return err
	}
	if err := caroot.PublishBundle(ctx, rc, root.Bundle); err != nil {
		return err
	}
	authz, err := NewNodeAuthorizer(s.td, s.cfg.ZtunnelServiceAccount, s.pods)
	if err != nil {
		return err
	}
	signer, err := ca.New(ca.Config{
		TrustDomain: s.td, Root: root.Issuer, Authorizer: authz,
		DefaultTTL: min(ca.DefaultTTL, s.cfg.MaxTTL), MaxTTL: s.cfg.MaxTTL,
	})
	if err != nil {
		return fmt.Errorf("caserver: %w", err)
	}
	authn, err := NewTokenReviewer(TokenReviewConfig{Client: s.cfg.Client, TrustDomain: s.td, CacheTTL: s.cfg.TokenCacheTTL})
	if err != nil {
		return err
	}
	h, err := NewHandler(HandlerConfig{CA: signer, Authenticator: authn, Roots: root.Bundle, Metrics: s.metrics, Logger: s.log.Named("sign")})
	if err != nil {
		return err
	}
	serving, err := newServingCert(root.Issuer, s.cfg.DNSNames(), DefaultServingTTL, time.Now)
	if err != nil {
		return err
	}

	lc := net.ListenConfig{}
	lnTLS, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("caserver: listen %s: %w", s.cfg.Addr, err)
	}
	lnMon, err := lc.Listen(ctx, "tcp", s.cfg.MetricsAddr)
	if err != nil {
		_ = lnTLS.Close()
		return fmt.Errorf("caserver: listen %s: %w", s.cfg.MetricsAddr, err)
	}
	s.pods.Start(context.WithoutCancel(ctx))

	api := http.NewServeMux()
	api.Handle(caapi.Path, h)
	api.HandleFunc(caapi.ReadyPath, s.ready)
	s.https = &http.Server{
		Handler:           api,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: serving.GetCertificate},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          zap.NewStdLog(s.log.Named("https")),
	}
	mon := http.NewServeMux()
	mon.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mon.HandleFunc(caapi.ReadyPath, s.ready)
	s.mon = &http.Server{Handler: mon, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(s.log.Named("metrics"))}
	s.root, s.lnTLS, s.lnMo = root, lnTLS, lnMon
	s.served.Go(func() { s.serve("https", func() error { return s.https.ServeTLS(lnTLS, "", "") }) })
	s.served.Go(func() { s.serve("metrics", func() error { return s.mon.Serve(lnMon) }) })
	s.log.Info("strait CA started",
		zap.String("addr", lnTLS.Addr().String()), zap.String("metrics_addr", lnMon.Addr().String()),
		zap.String("trust_domain", s.td.Name()), zap.Strings("dns_names", s.cfg.DNSNames()),
		zap.Int("roots", len(root.Bundle)), zap.Bool("root_created", root.Created))
	return nil
}

func (s *Server) serve(name string, fn func() error) {
	if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("listener stopped", zap.String("listener", name), zap.Error(err))
	}
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if !s.pods.Synced() {
		http.Error(w, "pod cache not synced yet", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Ready reports whether the pod cache has synced.
func (s *Server) Ready() bool { return s.pods.Synced() }

// Addr is the bound HTTPS address (after Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lnTLS == nil {
		return nil
	}
	return s.lnTLS.Addr()
}

// MetricsAddr is the bound metrics address (after Start).
func (s *Server) MetricsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lnMo == nil {
		return nil
	}
	return s.lnMo.Addr()
}

// Bundle is the published trust bundle, signing root first (after Start).
func (s *Server) Bundle() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.root == nil {
		return nil
	}
	return s.root.Bundle
}

// Gatherer exposes the server's metrics registry.
func (s *Server) Gatherer() prometheus.Gatherer { return s.reg }

// Shutdown stops accepting requests, lets in-flight ones finish until ctx
// ends, and stops the pod informer.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	https, mon := s.https, s.mon
	s.mu.Unlock()
	var errs []error
	if https != nil {
		errs = append(errs, https.Shutdown(ctx))
	}
	if mon != nil {
		errs = append(errs, mon.Shutdown(ctx))
	}
	s.served.Wait()
	s.pods.Stop()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("caserver: shutdown: %w", err)
	}
	return nil
}

// Run starts the server, serves until ctx ends, then shuts down within
// ShutdownTimeout.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		s.pods.Stop()
		return err
	}
	<-ctx.Done()
	s.log.Info("strait CA shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	return s.Shutdown(sctx)
}
