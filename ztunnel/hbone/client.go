package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"golang.org/x/net/http2/hpack"

	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/hbone/internal/h2"
)

// Request describes one tunnel to open.
type Request struct {
	Key Key
	// Authority is the CONNECT target, "<podIP>:<port>" (or VIP/host).
	Authority string
	// Forwarded is the original client address (forwarded: for=...);
	// zero omits the header.
	Forwarded netip.Addr
	// Baggage and TraceParent are sent when not empty.
	Baggage     string
	TraceParent string
}

// ClientConfig configures a Client. Zero values give the defaults.
type ClientConfig struct {
	// TLS returns the client TLS config for a pool key: the certificate of
	// Key.SrcIdentity and verification that the server's id is in
	// Key.DstIdentities (identity/tlsconfig Client). Required.
	TLS func(ctx context.Context, key Key) (*tls.Config, error)
	// DialTCP opens the TCP connection for key; the default dials
	// key.DstAddr from key.SrcIP (when set).
	DialTCP func(ctx context.Context, key Key) (net.Conn, error)
	// MaxStreamsPerConn caps streams per connection (100); the server's
	// SETTINGS may lower it.
	MaxStreamsPerConn uint32
	// IdleTimeout releases a connection without streams (5 min).
	IdleTimeout time.Duration
	// HandshakeTimeout bounds TCP connect + TLS handshake (10 s).
	HandshakeTimeout time.Duration
	// H2 overrides HTTP/2 tuning (windows, frame size, pings).
	H2     h2.Config
	Logger *zap.Logger
}

func (c ClientConfig) populate() ClientConfig {
	if c.MaxStreamsPerConn == 0 {
		c.MaxStreamsPerConn = h2.DefaultClientMaxStreams
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.DialTCP == nil {
		c.DialTCP = defaultDialTCP
	}
	return c
}

func defaultDialTCP(ctx context.Context, key Key) (net.Conn, error) {
	d := net.Dialer{}
	if key.SrcIP.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: key.SrcIP.AsSlice()}
	}
	return d.DialContext(ctx, "tcp", key.DstAddr.String())
}

// Client opens HBONE tunnels over pooled connections. It is safe for
// concurrent use.
type Client struct {
	cfg ClientConfig
	log *zap.Logger

	mu      sync.Mutex
	pools   map[Key]*pool
	closed  bool
	watches sync.WaitGroup
}

type pool struct {
	conns   []*clientConn
	dialing *dialCall // a connection being opened for this key, shared
}

type clientConn struct {
	h2   *h2.Conn
	peer spiffeid.ID
}

type dialCall struct {
	done chan struct{}
	cc   *clientConn
	err  error
}

// ErrClientClosed is returned by Dial after Close.
var ErrClientClosed = fmt.Errorf("hbone: client closed: %w", net.ErrClosed)

// NewClient returns a client; cfg.TLS is required.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.TLS == nil {
		return nil, errors.New("hbone: ClientConfig.TLS is required")
	}
	cfg = cfg.populate()
	return &Client{cfg: cfg, log: cfg.Logger, pools: make(map[Key]*pool)}, nil
}

// Conn is an open tunnel: a net.Conn with CloseWrite (half-close) whose
// bytes travel in one HTTP/2 stream.
type Conn struct {
	*h2.Stream
	peer spiffeid.ID
}

// Peer is the verified identity of the server end.
func (c *Conn) Peer() spiffeid.ID { return c.peer }

var _ net.Conn = (*Conn)(nil)

const maxDialAttempts = 3

// Dial opens a tunnel: it picks (or opens) a pooled connection for
// req.Key, sends CONNECT and waits for 200. A non-200 answer is a
// *ConnectError. Streams the server refused before processing (GOAWAY,
// REFUSED_STREAM) are retried on another connection.
func (c *Client) Dial(ctx context.Context, req Request) (*Conn, error) {
	if _, err := ParseAuthority(req.Authority); err != nil {
		return nil, err
	}
	if !req.Key.DstAddr.IsValid() {
		return nil, errors.New("hbone: dial: Key.DstAddr is required")
	}
	if req.Key.DstIdentities == "" {
		return nil, errors.New("hbone: dial: Key.DstIdentities is empty; refusing a tunnel to an unverified peer")
	}
	fields := requestFields(req)
	var lastErr error
	for attempt := 0; attempt < maxDialAttempts; attempt++ {
		cc, err := c.reserve(ctx, req.Key)
		if err != nil {
			return nil, err
		}
		st, err := cc.h2.OpenStream(fields)
		if err != nil {
			lastErr = err
			if refusedStream(err) || errors.Is(err, net.ErrClosed) {
				continue
			}
			return nil, fmt.Errorf("hbone: dial %s via %s: %w", req.Authority, req.Key.DstAddr, err)
		}
		status, resp, err := st.AwaitResponse(ctx)
		if err != nil {
			st.Close()
			lastErr = err
			if refusedStream(err) && ctx.Err() == nil {
				continue
			}
			return nil, fmt.Errorf("hbone: dial %s via %s: %w", req.Authority, req.Key.DstAddr, err)
		}
		if status != http.StatusOK {
			st.Close()
			ce := &ConnectError{Authority: req.Authority, Status: status}
			for _, f := range resp {
				if f.Name == ReasonHeader {
					ce.Reason = f.Value
				}
			}
			return nil, ce
		}
		return &Conn{Stream: st, peer: cc.peer}, nil
	}
	return nil, fmt.Errorf("hbone: dial %s via %s: gave up after %d attempts: %w",
		req.Authority, req.Key.DstAddr, maxDialAttempts, lastErr)
}

func requestFields(req Request) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 5)
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: req.Authority})
	if req.Forwarded.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: formatForwarded(req.Forwarded)})
	}
	if req.Baggage != "" {
		fields = append(fields, hpack.HeaderField{Name: "baggage", Value: req.Baggage})
	}
	if req.TraceParent != "" {
		fields = append(fields, hpack.HeaderField{Name: "traceparent", Value: req.TraceParent})
	}
	return fields
}

// reserve returns a pooled connection with a stream reserved on it,
// opening a new connection when every pooled one is full. Concurrent
// callers for the same key share one dial.
func (c *Client) reserve(ctx context.Context, key Key) (*clientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClientClosed
		}
		p := c.pools[key]
		if p == nil {
			p = &pool{}
			c.pools[key] = p
		}
		for _, cc := range p.conns {
			if cc.h2.TryReserve() {
				c.mu.Unlock()
				return cc, nil
			}
		}
		call := p.dialing
		if call == nil {
			call = &dialCall{done: make(chan struct{})}
			p.dialing = call
			go c.dial(key, p, call)
		}
		c.mu.Unlock()

		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("hbone: dial %s: %w", key.DstAddr, ctx.Err())
		}
		if call.err != nil {
			return nil, call.err
		}
		if call.cc.h2.TryReserve() {
			return call.cc, nil
		}
		// The new connection filled up already; go round again.
	}
}

// dial opens one connection for key. It does not follow any caller's
// context (callers share it), only the handshake timeout.
func (c *Client) dial(key Key, p *pool, call *dialCall) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandshakeTimeout)
	defer cancel()
	cc, err := c.openConn(ctx, key)
	c.mu.Lock()
	p.dialing = nil
	if err == nil && c.closed {
		cc.h2.Close()
		err = ErrClientClosed
	}
	if err == nil {
		p.conns = append(p.conns, cc)
		c.watches.Add(1)
		go c.watch(key, p, cc)
	}
	call.cc, call.err = cc, err
	c.mu.Unlock()
	close(call.done)
}

func (c *Client) openConn(ctx context.Context, key Key) (*clientConn, error) {
	tcfg, err := c.cfg.TLS(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("hbone: tls config for %s: %w", key, err)
	}
	nc, err := c.cfg.DialTCP(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("hbone: connect %s: %w", key.DstAddr, err)
	}
	tc := tls.Client(nc, tcfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("hbone: TLS handshake with %s: %w", key.DstAddr, err)
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != "h2" {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s did not negotiate ALPN h2 (got %q)", key.DstAddr, state.NegotiatedProtocol)
	}
	peer, err := tlsconfig.PeerID(state)
	if err != nil {
		tc.Close()
		return nil, err
	}
	// Defence in depth: the TLS config must have checked this already.
	want, err := key.DstIdentities.IDs()
	if err != nil {
		tc.Close()
		return nil, err
	}
	if !slices.Contains(want, peer) {
		tc.Close()
		return nil, fmt.Errorf("hbone: %s presented %s, expected one of [%s]", key.DstAddr, peer, key.DstIdentities)
	}
	cfg := c.cfg.H2
	cfg.MaxConcurrentStreams = c.cfg.MaxStreamsPerConn
	cfg.IdleTimeout = c.cfg.IdleTimeout
	cfg.Logger = c.log
	hc, err := h2.NewClientConn(tc, cfg)
	if err != nil {
		return nil, err
	}
	return &clientConn{h2: hc, peer: peer}, nil
}

// watch removes a connection from the pool when it dies, and closes it
// once it has drained after a GOAWAY.
func (c *Client) watch(key Key, p *pool, cc *clientConn) {
	defer c.watches.Done()
	select {
	case <-cc.h2.Done():
	case <-cc.h2.Drained():
		cc.h2.Close()
	}
	c.mu.Lock()
	if i := slices.Index(p.conns, cc); i >= 0 {
		p.conns = slices.Delete(p.conns, i, i+1)
	}
	if len(p.conns) == 0 && p.dialing == nil && c.pools[key] == p {
		delete(c.pools, key)
	}
	c.mu.Unlock()
	if err := cc.h2.Err(); err != nil && !errors.Is(err, net.ErrClosed) {
		c.log.Debug("hbone: pooled connection closed", zap.Stringer("key", key), zap.Error(err))
	}
}

// PoolStats describes the pool for metrics.
type PoolStats struct {
	Keys, Conns, Streams int
}

// Stats returns the pool size.
func (c *Client) Stats() PoolStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := PoolStats{Keys: len(c.pools)}
	for _, p := range c.pools {
		st.Conns += len(p.conns)
		for _, cc := range p.conns {
			st.Streams += cc.h2.State().Streams
		}
	}
	return st
}

// Shutdown sends GOAWAY on every pooled connection and waits for their
// streams to finish until ctx is done; then everything is closed.
func (c *Client) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	var conns []*clientConn
	for _, p := range c.pools {
		conns = append(conns, p.conns...)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var first error
	for _, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cc.h2.Shutdown(ctx); err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	c.watches.Wait()
	return first
}

// Close closes every pooled connection at once.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	var conns []*clientConn
	for _, p := range c.pools {
		conns = append(conns, p.conns...)
	}
	c.mu.Unlock()
	for _, cc := range conns {
		cc.h2.Close()
	}
	c.watches.Wait()
	return nil
}
