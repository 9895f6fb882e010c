package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"golang.org/x/net/http2/hpack"

	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/internal/netaddr"
	"github.com/strait-mesh/strait/ztunnel/hbone/internal/h2"
	"github.com/strait-mesh/strait/ztunnel/relay"
)

// InboundRequest is one authenticated CONNECT, handed to the Handler.
type InboundRequest struct {
	// Peer is the client's SPIFFE id, verified by the TLS handshake.
	Peer spiffeid.ID
	// Authority is the parsed :authority (the destination).
	Authority Authority
	// Arrival is the local address the TCP connection arrived at.
	Arrival netip.AddrPort
	// Source is the remote address of the TCP connection (the peer proxy).
	Source netip.AddrPort
	// Forwarded is the original client address from the forwarded header;
	// zero when absent.
	Forwarded netip.Addr
	// Baggage and TraceParent are passed through as sent.
	Baggage     string
	TraceParent string
	// Value is the Handler's own state for this tunnel (set in Connect),
	// handed back in StreamResult.Request.
	Value any
}

// Handler decides on an inbound tunnel and dials its destination. It
// returns the upstream connection, or an error: ErrDenied (401),
// ErrBadRequest (400), ErrUnknownDestination or any other error (503).
// The server answers 200 only after a successful dial.
type Handler interface {
	Connect(ctx context.Context, req *InboundRequest) (net.Conn, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *InboundRequest) (net.Conn, error)

// Connect calls f.
func (f HandlerFunc) Connect(ctx context.Context, req *InboundRequest) (net.Conn, error) {
	return f(ctx, req)
}

// StreamResult reports a finished tunnel to ServerConfig.OnStreamDone.
type StreamResult struct {
	Request *InboundRequest
	// Status is the CONNECT response code (200 for relayed tunnels).
	Status int
	// Reason says why a tunnel was refused ("" when relayed).
	Reason string
	// Received is bytes client→upstream, Sent upstream→client.
	Received, Sent int64
	Err            error
	Duration       time.Duration
}

// ServerConfig configures a Server. Zero values give the defaults.
type ServerConfig struct {
	// TLS must require and verify client certificates (identity/tlsconfig
	// Server); ALPN must offer h2.
	TLS     *tls.Config
	Handler Handler
	// PeerID extracts the verified peer identity; default: the URI SAN of
	// the verified leaf.
	PeerID func(tls.ConnectionState) (spiffeid.ID, error)
	// SkipAuthorityCheck disables "authority IP == arrival IP". Only a
	// waypoint, whose authorities are service VIPs, sets it.
	SkipAuthorityCheck bool
	// HandshakeTimeout bounds TLS handshake plus HTTP/2 preface (10 s).
	HandshakeTimeout time.Duration
	// DialTimeout bounds Handler.Connect (10 s).
	DialTimeout time.Duration
	// IdleTimeout closes a connection without streams after this long
	// (10 min).
	IdleTimeout time.Duration
	// MaxStreamsPerConn is advertised in SETTINGS (200).
	MaxStreamsPerConn uint32
	// MaxStreams bounds tunnels across all connections (65536); beyond it
	// CONNECTs get 503 "stream limit".
	MaxStreams int
	// MaxHandshakes bounds concurrent TLS handshakes (256); beyond it new
	// TCP connections are closed at once.
	MaxHandshakes int
	// OnStreamDone, if set, is called once per CONNECT (relayed or refused).
	OnStreamDone func(StreamResult)
	// H2 overrides HTTP/2 tuning (windows, frame size, pings).
	H2     h2.Config
	Logger *zap.Logger
}

func (c ServerConfig) populate() ServerConfig {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 10 * time.Minute
	}
	if c.MaxStreamsPerConn == 0 {
		c.MaxStreamsPerConn = h2.DefaultServerMaxStreams
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 1 << 16
	}
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = 256
	}
	if c.PeerID == nil {
		c.PeerID = tlsconfig.PeerID
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// ServerStats are counters for metrics.
type ServerStats struct {
	ConnsAccepted       uint64
	HandshakeFailures   uint64
	HandshakesRejected  uint64 // over MaxHandshakes
	StreamsRejectedFull uint64 // over MaxStreams
	ActiveStreams       int64
	ActiveConns         int64
}

// Server serves HBONE on one or more listeners.
type Server struct {
	cfg        ServerConfig
	log        *zap.Logger
	handshakes chan struct{}

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*h2.Conn]struct{}
	shutdown  bool
	drainCtx  context.Context // Shutdown's ctx (nil after Close)
	wg        sync.WaitGroup  // connection goroutines

	active     atomic.Int64
	activeConn atomic.Int64
	accepted   atomic.Uint64
	hsFailed   atomic.Uint64
	hsRejected atomic.Uint64
	fullReject atomic.Uint64
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = fmt.Errorf("hbone: server closed: %w", net.ErrClosed)

// NewServer checks the config and returns a server ready to Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLS == nil {
		return nil, errors.New("hbone: ServerConfig.TLS is required")
	}
	if cfg.Handler == nil {
		return nil, errors.New("hbone: ServerConfig.Handler is required")
	}
	if cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert && cfg.TLS.VerifyPeerCertificate == nil && cfg.TLS.VerifyConnection == nil {
		return nil, errors.New("hbone: server TLS config does not verify client certificates")
	}
	cfg = cfg.populate()
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		handshakes: make(chan struct{}, cfg.MaxHandshakes),
		ctx:        ctx,
		cancel:     cancel,
		listeners:  make(map[net.Listener]struct{}),
		conns:      make(map[*h2.Conn]struct{}),
	}, nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{
		ConnsAccepted:       s.accepted.Load(),
		HandshakeFailures:   s.hsFailed.Load(),
		HandshakesRejected:  s.hsRejected.Load(),
		StreamsRejectedFull: s.fullReject.Load(),
		ActiveStreams:       s.active.Load(),
		ActiveConns:         s.activeConn.Load(),
	}
}

// Serve accepts connections on ln until Shutdown/Close or an accept error.
// It closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isShutdown() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isFDExhaustion(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("hbone: accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					return ErrServerClosed
				}
			}
			return fmt.Errorf("hbone: accept: %w", err)
		}
		backoff = 0
		s.accepted.Add(1)
		select {
		case s.handshakes <- struct{}{}:
		default:
			s.hsRejected.Add(1)
			s.log.Info("hbone: refusing connection: too many handshakes in progress",
				zap.Stringer("peer", nc.RemoteAddr()), zap.Int("limit", s.cfg.MaxHandshakes))
			nc.Close()
			continue
		}
		s.wg.Add(1)
		go s.serveConn(nc)
	}
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func (s *Server) serveConn(nc net.Conn) {
	defer s.wg.Done()
	hc, err := s.handshake(nc)
	// Free the handshake slot before the peer can observe the outcome (a
	// closed socket), so a client retrying at once finds the slot free.
	<-s.handshakes
	if err != nil {
		s.hsFailed.Add(1)
		s.log.Info("hbone: handshake refused", zap.Stringer("peer", nc.RemoteAddr()), zap.Error(err))
		nc.Close()
		return
	}

	s.mu.Lock()
	if s.shutdown {
		drain := s.drainCtx
		s.mu.Unlock()
		if drain == nil { // Close
			hc.Close()
			hc.Wait()
			return
		}
		// Accepted before the listener closed, handshaken after Shutdown
		// began: rather than cut it, send GOAWAY before reading a single
		// frame, so it takes no stream; the peer retries them all on a
		// new connection (to the proxy now bound in this one's place, on
		// a restart). A stream read first would race the GOAWAY.
		hc.GoAway()
		hc.Start()
		_ = hc.Shutdown(drain)
		hc.Wait()
		return
	}
	s.conns[hc] = struct{}{}
	s.mu.Unlock()
	s.activeConn.Add(1)
	hc.Start() // registered first: a concurrent Shutdown drains it, never cuts it

	<-hc.Done()
	hc.Wait()
	s.activeConn.Add(-1)
	s.mu.Lock()
	delete(s.conns, hc)
	s.mu.Unlock()
}

// handshake runs TLS, checks ALPN and the peer identity, and reads the
// HTTP/2 preface, all within HandshakeTimeout. The connection is not yet
// serving streams when it returns (see h2.Conn.Start).
func (s *Server) handshake(nc net.Conn) (*h2.Conn, error) {
	tc := tls.Server(nc, s.cfg.TLS)
	// The socket deadline bounds the handshake. The context only serves
	// server shutdown: crypto/tls closes the socket when a context ends,
	// which would reach the peer before the handshake slot is freed.
	_ = nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	err := tc.HandshakeContext(s.ctx)
	if err != nil {
		return nil, fmt.Errorf("hbone: TLS handshake: %w", err)
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != "h2" {
		return nil, fmt.Errorf("hbone: peer did not negotiate ALPN h2 (got %q)", state.NegotiatedProtocol)
	}
	peer, err := s.cfg.PeerID(state)
	if err != nil {
		return nil, err
	}
	meta := &connMeta{
		peer:    peer,
		arrival: netaddr.AddrPort(nc.LocalAddr()),
		source:  netaddr.AddrPort(nc.RemoteAddr()),
	}
	cfg := s.cfg.H2
	cfg.MaxConcurrentStreams = s.cfg.MaxStreamsPerConn
	cfg.IdleTimeout = s.cfg.IdleTimeout
	cfg.Logger = s.log
	cfg.OnStream = func(st *h2.Stream) { s.serveStream(st, meta) }
	hc, err := h2.NewServerConn(tc, cfg)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return hc, nil
}

type connMeta struct {
	peer            spiffeid.ID
	arrival, source netip.AddrPort
}

func (s *Server) serveStream(st *h2.Stream, meta *connMeta) {
	start := time.Now()
	res := StreamResult{}
	admitted, handedOff := false, false
	finish := func(res StreamResult) {
		if admitted {
			s.active.Add(-1)
		}
		if s.cfg.OnStreamDone != nil {
			res.Duration = time.Since(start)
			s.cfg.OnStreamDone(res)
		}
	}
	defer func() {
		if !handedOff {
			finish(res)
		}
	}()
	refuse := func(status int, reason string, err error) {
		res.Status, res.Reason, res.Err = status, reason, err
		s.log.Info("hbone: refusing CONNECT", zap.Int("status", status), zap.String("reason", reason),
			zap.Stringer("peer", meta.source), zap.String("identity", meta.peer.String()), zap.Error(err))
		_ = st.WriteResponse(status, []hpack.HeaderField{{Name: ReasonHeader, Value: reason}}, true)
		st.Close()
	}

	if n := s.active.Add(1); n > int64(s.cfg.MaxStreams) {
		s.active.Add(-1)
		s.fullReject.Add(1)
		refuse(http.StatusServiceUnavailable, "stream limit", ErrOverloaded)
		return
	}
	admitted = true

	req, reason, err := parseRequest(st, meta, s.cfg.SkipAuthorityCheck)
	res.Request = req
	if err != nil {
		refuse(http.StatusBadRequest, reason, err)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	upstream, err := s.cfg.Handler.Connect(ctx, req)
	cancel()
	if err != nil {
		status := statusFor(err)
		reason := "upstream dial failed"
		switch {
		case errors.Is(err, ErrDenied):
			reason = "denied"
		case errors.Is(err, ErrUnknownDestination):
			reason = "unknown destination"
		case errors.Is(err, ErrBadRequest):
			reason = "bad request"
		case errors.Is(err, ErrOverloaded):
			reason = "overloaded"
		}
		refuse(status, reason, err)
		return
	}
	if err := st.WriteResponse(http.StatusOK, nil, false); err != nil {
		upstream.Close()
		st.Close()
		res.Status, res.Err = http.StatusOK, err
		return
	}
	res.Status = http.StatusOK
	// The tunnel lives on fresh goroutines; this one (deep stack from the
	// handshake of the request and the dial) exits now.
	handedOff = true
	relay.Start(st, upstream, func(r relay.Result) {
		res.Received, res.Sent, res.Err = r.AToB, r.BToA, r.Err
		if r.Err != nil {
			s.log.Debug("hbone: tunnel ended with error", zap.String("authority", req.Authority.Host), zap.Error(r.Err))
		}
		finish(res)
	})
}

// parseRequest validates a CONNECT and builds the InboundRequest.
func parseRequest(st *h2.Stream, meta *connMeta, skipAuthority bool) (*InboundRequest, string, error) {
	req := &InboundRequest{Peer: meta.peer, Arrival: meta.arrival, Source: meta.source}
	if st.HeadersTruncated() {
		return req, "header list too large", fmt.Errorf("%w: header list over the limit", ErrBadRequest)
	}
	var method, authority string
	for _, f := range st.RequestHeaders() {
		switch f.Name {
		case ":method":
			method = f.Value
		case ":authority":
			authority = f.Value
		case "forwarded":
			req.Forwarded = parseForwarded(f.Value)
		case "baggage":
			req.Baggage = f.Value
		case "traceparent":
			req.TraceParent = f.Value
		}
	}
	if method != http.MethodConnect {
		return req, "method must be CONNECT", fmt.Errorf("%w: method %q", ErrBadRequest, method)
	}
	a, err := ParseAuthority(authority)
	if err != nil {
		return req, "bad authority", fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	req.Authority = a
	if !skipAuthority && a.IsIP() && a.Addr.Addr() != meta.arrival.Addr() {
		return req, "authority does not match arrival address",
			fmt.Errorf("%w: authority %s arrived at %s", ErrBadRequest, a.Addr.Addr(), meta.arrival.Addr())
	}
	return req, "", nil
}

// Shutdown stops accepting, sends GOAWAY on every connection, waits for
// open tunnels to finish until ctx is done, then closes everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.shutdown {
		s.drainCtx = ctx
	}
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*h2.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Shutdown(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	// Connections still in their TLS handshake finish it and drain on
	// their own (serveConn); only the end of ctx cuts them.
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	s.cancel()
	<-done
	var first error
	for err := range errs {
		if err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("hbone: shutdown: %w", first)
	}
	return nil
}

// Close stops everything at once; open tunnels are reset.
func (s *Server) Close() error {
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// refusedStream reports whether err means the peer never processed the
// stream, so the request can be retried on another connection.
func refusedStream(err error) bool {
	var se *h2.StreamError
	if errors.As(err, &se) {
		return se.Retryable()
	}
	var ga *h2.GoAwayError
	return errors.As(err, &ga) || errors.Is(err, h2.ErrNoCapacity)
}
