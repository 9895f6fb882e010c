package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Default addresses, as Istio's ztunnel uses them.
const (
	DefaultAdminAddr   = "127.0.0.1:15000"
	DefaultReadyAddr   = ":15021"
	DefaultMetricsAddr = ":15020"
)

var (
	// ErrNonLoopback: the admin address is not loopback and
	// Config.AllowNonLoopback is not set.
	ErrNonLoopback = errors.New("admin: admin address is not loopback")
	// ErrStarted: Start was already called.
	ErrStarted = errors.New("admin: already started")
	// ErrClosed: Start after Shutdown.
	ErrClosed = errors.New("admin: shut down")
	// ErrPrivateKey: the config dump holds private key material.
	ErrPrivateKey = errors.New("admin: config dump holds private key material")
)

// Check is one readiness condition: nil when satisfied, else why not. It
// runs on every probe, so it must be quick and must not block.
type Check func() error

// Config is what the app hands the admin servers. Zero fields take
// defaults: the Default*Addr addresses, a no-op logger, a fresh info
// AtomicLevel; a nil ConfigDump, Quit or Metrics makes its endpoints answer
// 501 Not Implemented.
type Config struct {
	AdminAddr   string // loopback only unless AllowNonLoopback
	ReadyAddr   string
	MetricsAddr string

	// AllowNonLoopback lets the admin server bind a non-loopback address
	// (and drops its Host header check). Its endpoints are unauthenticated.
	AllowNonLoopback bool

	// ConfigDump returns the value served as JSON by /config_dump. It
	// must be a redacted view: no private keys (see the package doc).
	ConfigDump func() any
	// Level is the level /logging shows and changes.
	Level zap.AtomicLevel
	// Quit starts graceful shutdown; /quitquitquit calls it once, in its
	// own goroutine (so it may call Server.Shutdown).
	Quit func()
	// Metrics serves /metrics and /stats/prometheus on MetricsAddr.
	Metrics http.Handler
	Logger  *zap.Logger
}

// Addrs are the addresses the servers are bound to ("host:port").
type Addrs struct {
	Admin, Ready, Metrics string
}

// Server is the admin, readiness and metrics servers.
type Server struct {
	cfg      Config
	log      *zap.Logger
	loopback bool // admin server restricted to loopback

	checksMu sync.RWMutex
	checks   map[string]Check
	lastOK   atomic.Int32 // last probe result: 0 none yet, 1 ready, 2 not ready

	quitOnce sync.Once

	mu      sync.Mutex
	state   int // 0 new, 1 started, 2 shut down
	servers []*server
	addrs   Addrs
	serving sync.WaitGroup
}

type server struct {
	name string
	http *http.Server
	ln   net.Listener
}

// timeouts of one server.
type timeouts struct {
	readHeader, read, write, idle time.Duration
}

var (
	adminTimeouts = timeouts{readHeader: 5 * time.Second, read: 30 * time.Second, write: time.Minute, idle: 2 * time.Minute}
	probeTimeouts = timeouts{readHeader: 5 * time.Second, read: 10 * time.Second, write: 30 * time.Second, idle: 2 * time.Minute}
)

const maxHeaderBytes = 64 << 10

// New checks the configuration and builds the servers; Start binds them.
func New(cfg Config) (*Server, error) {
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = DefaultAdminAddr
	}
	if cfg.ReadyAddr == "" {
		cfg.ReadyAddr = DefaultReadyAddr
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = DefaultMetricsAddr
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Level == (zap.AtomicLevel{}) {
		cfg.Level = zap.NewAtomicLevel()
	}
	for _, a := range []struct{ name, addr string }{
		{"admin", cfg.AdminAddr}, {"ready", cfg.ReadyAddr}, {"metrics", cfg.MetricsAddr},
	} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return nil, fmt.Errorf("admin: %s address %q: %w", a.name, a.addr, err)
		}
	}
	host, _, _ := net.SplitHostPort(cfg.AdminAddr)
	loopback := isLoopbackHost(host)
	if !loopback && !cfg.AllowNonLoopback {
		return nil, fmt.Errorf("%w: %q; the admin endpoints (config dump, log level, pprof, quitquitquit) are unauthenticated, "+
			"so bind 127.0.0.1, [::1] or localhost, or set AllowNonLoopback", ErrNonLoopback, cfg.AdminAddr)
	}
	return &Server{
		cfg:      cfg,
		log:      cfg.Logger.Named("admin"),
		loopback: loopback && !cfg.AllowNonLoopback,
		checks:   make(map[string]Check),
	}, nil
}

// isLoopbackHost: "localhost" or a loopback IP literal. An empty host
// (all interfaces) and other names are not.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Level is the level /logging changes (Config.Level, or the one New made).
func (s *Server) Level() zap.AtomicLevel { return s.cfg.Level }

// AddCheck registers (or replaces) the readiness check name; a nil c
// removes it. Safe to call at any time, also while serving.
func (s *Server) AddCheck(name string, c Check) {
	s.checksMu.Lock()
	defer s.checksMu.Unlock()
	if c == nil {
		delete(s.checks, name)
		return
	}
	s.checks[name] = c
}

// CheckError is a failed readiness check.
type CheckError struct {
	Name string
	Err  error
}

func (e *CheckError) Error() string { return "admin: check " + e.Name + ": " + e.Err.Error() }
func (e *CheckError) Unwrap() error { return e.Err }

// Ready runs every check in name order and returns nil when all pass,
// else the failures (errors.Join of *CheckError). No check means ready.
func (s *Server) Ready() error {
	s.checksMu.RLock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := make([]Check, 0, len(names))
	sort.Strings(names)
	for _, n := range names {
		checks = append(checks, s.checks[n])
	}
	s.checksMu.RUnlock()

	var errs []error
	for i, c := range checks {
		if err := c(); err != nil {
			errs = append(errs, &CheckError{Name: names[i], Err: err})
		}
	}
	return errors.Join(errs...)
}

// Start binds the three servers and serves them in the background until
// Shutdown. A bind error is returned at once, with nothing left bound. ctx
// bounds the binding; request contexts carry its values but not its
// cancellation.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case 1:
		return ErrStarted
	case 2:
		return ErrClosed
	}
	specs := []struct {
		name, addr string
		handler    http.Handler
		t          timeouts
	}{
		{"admin", s.cfg.AdminAddr, s.adminHandler(), adminTimeouts},
		{"ready", s.cfg.ReadyAddr, s.readyHandler(), probeTimeouts},
		{"metrics", s.cfg.MetricsAddr, s.metricsHandler(), probeTimeouts},
	}
	var lc net.ListenConfig
	servers := make([]*server, 0, len(specs))
	closeAll := func() {
		for _, sv := range servers {
			sv.ln.Close()
		}
	}
	for _, sp := range specs {
		ln, err := lc.Listen(ctx, "tcp", sp.addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("admin: listen %s on %s: %w", sp.name, sp.addr, err)
		}
		servers = append(servers, &server{name: sp.name, ln: ln, http: s.newHTTPServer(ctx, sp.name, sp.handler, sp.t)})
		if sp.name == "admin" && !s.cfg.AllowNonLoopback {
			// "localhost" could resolve to something else: check what we got.
			if ap, err := netip.ParseAddrPort(ln.Addr().String()); err != nil || !ap.Addr().Unmap().IsLoopback() {
				closeAll()
				return fmt.Errorf("%w: %s resolved to %s", ErrNonLoopback, sp.addr, ln.Addr())
			}
		}
	}

	s.state = 1
	s.servers = servers
	s.addrs = Addrs{Admin: servers[0].ln.Addr().String(), Ready: servers[1].ln.Addr().String(), Metrics: servers[2].ln.Addr().String()}
	for _, sv := range servers {
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			if err := sv.http.Serve(sv.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("serve", zap.String("server", sv.name), zap.Error(err))
			}
		}()
	}
	s.log.Info("serving", zap.String("admin", s.addrs.Admin), zap.String("ready", s.addrs.Ready), zap.String("metrics", s.addrs.Metrics))
	return nil
}

func (s *Server) newHTTPServer(ctx context.Context, name string, h http.Handler, t timeouts) *http.Server {
	base := context.WithoutCancel(ctx)
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          zap.NewStdLog(s.log.With(zap.String("server", name))),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
}

// Addrs returns the bound addresses (zero before Start), so tests can
// configure ":0".
func (s *Server) Addrs() Addrs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs
}

// Shutdown stops the servers gracefully: listeners close at once, running
// requests finish. When ctx ends first the remaining connections are
// closed and the error wraps ctx's. Calling it before Start, or again, is
// a no-op.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.state = 2
	s.mu.Unlock()

	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, sv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sv.http.Shutdown(ctx); err != nil {
				sv.http.Close()
				errs[i] = fmt.Errorf("admin: shutdown %s: %w", sv.name, err)
			}
		}()
	}
	wg.Wait()
	s.serving.Wait()
	return errors.Join(errs...)
}
