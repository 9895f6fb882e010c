package hbone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2/hpack"

	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/hbone/internal/h2"
)

const td = "cluster.local"

// echoServer accepts TCP connections on loopback and echoes each one,
// half-closing after EOF. It counts accepted connections.
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newEcho(t testing.TB) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

// dialTo is a handler that dials a fixed upstream and records requests.
type dialTo struct {
	target string
	mu     sync.Mutex
	reqs   []InboundRequest
	err    error // returned instead of dialing when set
}

func (d *dialTo) Connect(ctx context.Context, r *InboundRequest) (net.Conn, error) {
	d.mu.Lock()
	d.reqs = append(d.reqs, *r)
	err := d.err
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.target)
}

func (d *dialTo) requests() []InboundRequest {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]InboundRequest(nil), d.reqs...)
}

type fixture struct {
	ca      *identitytest.CA
	srv     *Server
	addr    netip.AddrPort
	handler *dialTo
	echo    *echoServer
	results chan StreamResult
}

func newFixture(t testing.TB, mod func(*ServerConfig)) *fixture {
	t.Helper()
	ca := identitytest.New(t, td)
	echo := newEcho(t)
	f := &fixture{ca: ca, echo: echo, handler: &dialTo{target: echo.addr()}, results: make(chan StreamResult, 1024)}
	cfg := ServerConfig{
		TLS:          ca.ServerTLS(t, "ns-b", "sa-b"),
		Handler:      f.handler,
		OnStreamDone: func(r StreamResult) { f.results <- r },
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f.srv = srv
	f.addr = netip.MustParseAddrPort(ln.Addr().String())
	return f
}

// client returns a Client presenting ns/sa and a Request to the fixture's
// server expecting the given identities (default: the server's own).
func (f *fixture) client(t testing.TB, ns, sa string) *Client {
	t.Helper()
	svid := f.ca.Issue(t, ns, sa)
	c, err := NewClient(ClientConfig{TLS: func(ctx context.Context, k Key) (*tls.Config, error) {
		ids, err := k.DstIdentities.IDs()
		if err != nil {
			return nil, err
		}
		return tlsconfig.Client(svid, f.ca.Bundle(), ids)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) request(expected ...spiffeid.ID) Request {
	if len(expected) == 0 {
		expected = []spiffeid.ID{f.ca.ID("ns-b", "sa-b")}
	}
	return Request{
		Key:       Key{SrcIdentity: f.ca.ID("ns-a", "sa-a"), DstIdentities: NewIdentities(expected...), DstAddr: f.addr},
		Authority: "127.0.0.1:" + portOf(f.echo.addr()),
		Forwarded: netip.MustParseAddr("10.244.1.7"),
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func echoRoundTrip(t testing.TB, c net.Conn, size int) {
	t.Helper()
	msg := make([]byte, size)
	rand.Read(msg)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes came back as %d different bytes", size, len(got))
	}
}

func TestTunnelEchoAndRequestMetadata(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	req := f.request()
	req.Baggage = "k8s.namespace.name=ns-a"
	req.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	conn, err := c.Dial(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Peer() != f.ca.ID("ns-b", "sa-b") {
		t.Fatalf("peer %v", conn.Peer())
	}
	echoRoundTrip(t, conn, 3<<20)

	reqs := f.handler.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.Peer != f.ca.ID("ns-a", "sa-a") {
		t.Errorf("handler saw peer %v", r.Peer)
	}
	if r.Forwarded != netip.MustParseAddr("10.244.1.7") {
		t.Errorf("forwarded %v", r.Forwarded)
	}
	if r.Authority.Addr.String() != req.Authority || r.Arrival != f.addr {
		t.Errorf("authority %v arrival %v", r.Authority.Addr, r.Arrival)
	}
	if r.Baggage != req.Baggage || r.TraceParent != req.TraceParent {
		t.Errorf("baggage %q traceparent %q", r.Baggage, r.TraceParent)
	}
	res := <-f.results
	if res.Status != 200 || res.Received != 3<<20 || res.Sent != 3<<20 || res.Err != nil {
		t.Errorf("result %+v", res)
	}
}

// TestTLSRejections: every way a peer's identity can be wrong ends the
// handshake; the handler is never consulted and no byte reaches upstream.
func TestTLSRejections(t *testing.T) {
	f := newFixture(t, nil)
	other := identitytest.New(t, "other.domain")
	sameTDOtherRoot := identitytest.New(t, td)
	for _, tc := range []struct {
		name string
		tls  func(t *testing.T) *tls.Config
	}{
		{"client from another trust domain", func(t *testing.T) *tls.Config {
			return other.ClientTLSFor(t, other.Issue(t, "ns-a", "sa-a"), []spiffeid.ID{f.ca.ID("ns-b", "sa-b")})
		}},
		{"client chained to another root of the same trust domain", func(t *testing.T) *tls.Config {
			return sameTDOtherRoot.ClientTLSFor(t, sameTDOtherRoot.Issue(t, "ns-a", "sa-a"), []spiffeid.ID{f.ca.ID("ns-b", "sa-b")})
		}},
		{"expired client certificate", func(t *testing.T) *tls.Config {
			return f.ca.ClientTLSFor(t, f.ca.Issue(t, "ns-a", "sa-a", identitytest.Expired()), []spiffeid.ID{f.ca.ID("ns-b", "sa-b")})
		}},
		{"no client certificate", func(t *testing.T) *tls.Config {
			cfg := f.ca.ClientTLS(t, "ns-a", "sa-a", f.ca.ID("ns-b", "sa-b"))
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
			return cfg
		}},
		{"server identity not expected (valid chain, wrong SAN)", func(t *testing.T) *tls.Config {
			return f.ca.ClientTLS(t, "ns-a", "sa-a", f.ca.ID("ns-x", "sa-x"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.tls(t)
			c, err := NewClient(ClientConfig{TLS: func(context.Context, Key) (*tls.Config, error) { return cfg, nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			before := len(f.handler.requests())
			conn, err := c.Dial(ctxT(t), f.request())
			if err == nil {
				conn.Close()
				t.Fatal("tunnel opened")
			}
			t.Logf("refused: %v", err)
			if n := len(f.handler.requests()); n != before {
				t.Fatalf("handler called for a refused peer")
			}
		})
	}
	if f.echo.accepted.Load() != 0 {
		t.Fatalf("upstream saw %d connections", f.echo.accepted.Load())
	}
}

func TestWrongSANErrorNamesIdentities(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	_, err := c.Dial(ctxT(t), f.request(f.ca.ID("ns-x", "sa-x")))
	if !errors.Is(err, tlsconfig.ErrUnexpectedPeer) {
		t.Fatalf("err = %v, want ErrUnexpectedPeer", err)
	}
}

// rawStream opens an HTTP/2 stream with arbitrary headers over a real
// mTLS connection to the fixture, bypassing the Client's own checks.
func (f *fixture) rawStream(t testing.TB, fields []hpack.HeaderField) (int, string) {
	t.Helper()
	cfg := f.ca.ClientTLS(t, "ns-a", "sa-a", f.ca.ID("ns-b", "sa-b"))
	tc, err := tls.Dial("tcp", f.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := h2.NewClientConn(tc, h2.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.TryReserve()
	st, err := hc.OpenStream(fields)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	status, resp, err := st.AwaitResponse(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	reason := ""
	for _, h := range resp {
		if h.Name == ReasonHeader {
			reason = h.Value
		}
	}
	return status, reason
}

func TestRequestRejections(t *testing.T) {
	f := newFixture(t, nil)
	echoPort := portOf(f.echo.addr())
	for _, tc := range []struct {
		name       string
		fields     []hpack.HeaderField
		wantStatus int
		wantReason string
	}{
		{"not CONNECT", []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"}, {Name: ":path", Value: "/"}, {Name: ":authority", Value: "127.0.0.1:" + echoPort}}, 400, "method must be CONNECT"},
		{"authority without port", []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "127.0.0.1"}}, 400, "bad authority"},
		{"authority port zero", []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "127.0.0.1:0"}}, 400, "bad authority"},
		{"authority junk", []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "a b:80"}}, 400, "bad authority"},
		{"authority IP is not the arrival IP (no open relay)", []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.1.2.3:" + echoPort}}, 400, "authority does not match arrival address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, reason := f.rawStream(t, tc.fields)
			if status != tc.wantStatus || reason != tc.wantReason {
				t.Fatalf("got %d %q, want %d %q", status, reason, tc.wantStatus, tc.wantReason)
			}
		})
	}
	if n := len(f.handler.requests()); n != 0 {
		t.Fatalf("handler consulted %d times for malformed requests", n)
	}
}

func TestHandlerDecisions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		target     string
		wantStatus int
		wantReason string
		wantIs     error
	}{
		{"denied by policy", ErrDenied, "", 401, "denied", ErrDenied},
		{"unknown destination", ErrUnknownDestination, "", 503, "unknown destination", nil},
		{"upstream dial failure", nil, "127.0.0.1:1", 503, "upstream dial failed", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.handler.err = tc.err
			if tc.target != "" {
				f.handler.target = tc.target
			}
			c := f.client(t, "ns-a", "sa-a")
			_, err := c.Dial(ctxT(t), f.request())
			var ce *ConnectError
			if !errors.As(err, &ce) || ce.Status != tc.wantStatus || ce.Reason != tc.wantReason {
				t.Fatalf("err = %v, want status %d reason %q", err, tc.wantStatus, tc.wantReason)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Fatalf("errors.Is(%v, %v) false", err, tc.wantIs)
			}
			// The refusal does not hurt the pooled connection.
			f.handler.err, f.handler.target = nil, f.echo.addr()
			conn, err := c.Dial(ctxT(t), f.request())
			if err != nil {
				t.Fatalf("dial after refusal: %v", err)
			}
			echoRoundTrip(t, conn, 1000)
			conn.Close()
			if st := c.Stats(); st.Conns != 1 {
				t.Fatalf("pool has %d connections, want 1", st.Conns)
			}
		})
	}
}

func TestPoolReuseAndGrowth(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	for i := 0; i < 5; i++ {
		conn, err := c.Dial(ctxT(t), f.request())
		if err != nil {
			t.Fatal(err)
		}
		echoRoundTrip(t, conn, 100)
		conn.Close()
	}
	if st := c.Stats(); st.Conns != 1 || f.srv.Stats().ConnsAccepted != 1 {
		t.Fatalf("sequential tunnels used %d client conns / %d accepted, want 1", st.Conns, f.srv.Stats().ConnsAccepted)
	}
	// 150 concurrent tunnels: at most 100 streams per connection → 2 conns.
	var conns []*Conn
	for i := 0; i < 150; i++ {
		conn, err := c.Dial(ctxT(t), f.request())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	if st := c.Stats(); st.Conns != 2 || st.Streams != 150 {
		t.Fatalf("pool %+v, want 2 conns 150 streams", st)
	}
	for _, conn := range conns {
		conn.Close()
	}
	// A different source identity must not share the connection.
	c2 := f.client(t, "ns-a", "sa-other")
	req := f.request()
	req.Key.SrcIdentity = f.ca.ID("ns-a", "sa-other")
	conn, err := c2.Dial(ctxT(t), req)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if got := f.handler.requests(); got[len(got)-1].Peer != f.ca.ID("ns-a", "sa-other") {
		t.Fatalf("server saw %v", got[len(got)-1].Peer)
	}
}

func TestConcurrentDialsShareOneHandshake(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(ctxT(t), f.request())
			if err != nil {
				errs <- err
				return
			}
			conn.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := f.srv.Stats().ConnsAccepted; n != 1 {
		t.Fatalf("50 concurrent first dials made %d connections, want 1", n)
	}
}

// TestDeadConnectionFailsOnlyItsStreams kills one pooled connection's TCP
// socket: its tunnels fail, the other connection's tunnels carry on, and
// the next Dial opens a fresh connection.
func TestDeadConnectionFailsOnlyItsStreams(t *testing.T) {
	f := newFixture(t, nil)
	var mu sync.Mutex
	var raw []net.Conn
	svid := f.ca.Issue(t, "ns-a", "sa-a")
	c, err := NewClient(ClientConfig{
		TLS: func(ctx context.Context, k Key) (*tls.Config, error) {
			ids, _ := k.DstIdentities.IDs()
			return f.ca.ClientTLSFor(t, svid, ids), nil
		},
		DialTCP: func(ctx context.Context, k Key) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", k.DstAddr.String())
			if err == nil {
				mu.Lock()
				raw = append(raw, nc)
				mu.Unlock()
			}
			return nc, err
		},
		MaxStreamsPerConn: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(raw) != 2 {
		t.Fatalf("%d connections, want 2 (one stream each)", len(raw))
	}
	raw[0].Close() // the connection carrying a
	mu.Unlock()
	if _, err := a.Read(make([]byte, 1)); err == nil {
		t.Fatal("stream on the dead connection still readable")
	}
	echoRoundTrip(t, b, 64<<10)
	waitFor(t, "dead connection leaves the pool", func() bool { return c.Stats().Conns == 1 })
	d, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatalf("dial after a dead connection: %v", err)
	}
	echoRoundTrip(t, d, 100)
}

func TestPeerResetMidStream(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	conn, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(make([]byte, 1<<20))
	conn.Close() // RST_STREAM with data in flight
	res := <-f.results
	if res.Status != 200 || res.Err == nil {
		t.Fatalf("server result after client reset: %+v", res)
	}
	// Other tunnels on the same connection are unaffected.
	conn2, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	echoRoundTrip(t, conn2, 1<<20)
	if st := c.Stats(); st.Conns != 1 {
		t.Fatalf("pool has %d connections", st.Conns)
	}
}

func TestStreamLimitAnswers503(t *testing.T) {
	f := newFixture(t, func(c *ServerConfig) { c.MaxStreams = 1 })
	c := f.client(t, "ns-a", "sa-a")
	first, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = c.Dial(ctxT(t), f.request())
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Status != 503 || ce.Reason != "stream limit" {
		t.Fatalf("second tunnel: %v", err)
	}
	if f.srv.Stats().StreamsRejectedFull != 1 {
		t.Fatalf("stats %+v", f.srv.Stats())
	}
}

func TestHandshakeLimitAndTimeout(t *testing.T) {
	f := newFixture(t, func(c *ServerConfig) {
		c.MaxHandshakes = 1
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	// A client that connects and never speaks holds the only slot.
	idle, err := net.Dial("tcp", f.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, "idle connection accepted", func() bool { return f.srv.Stats().ConnsAccepted == 1 })
	second, err := net.Dial("tcp", f.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection over the handshake limit: read %v, want EOF", err)
	}
	if f.srv.Stats().HandshakesRejected != 1 {
		t.Fatalf("stats %+v", f.srv.Stats())
	}
	// The silent one is dropped at the handshake timeout, freeing the slot.
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent client: read %v, want EOF after the handshake timeout", err)
	}
	// Slowloris at scale: many silent TCP clients are all dropped and
	// leave no goroutine behind.
	base := runtime.NumGoroutine()
	var silent []net.Conn
	for i := 0; i < 100; i++ {
		c, err := net.Dial("tcp", f.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("silent client: %v, want EOF", err)
		}
		c.Close()
	}
	waitFor(t, "goroutines of dropped handshakes to exit", func() bool { return runtime.NumGoroutine() <= base })
	c := f.client(t, "ns-a", "sa-a")
	conn, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatalf("dial after the slot freed: %v", err)
	}
	conn.Close()
}

func TestGracefulShutdown(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	conn, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctxT(t)) }()
	// The listener closes: new connections are refused...
	waitFor(t, "listener closed", func() bool {
		nc, err := net.Dial("tcp", f.addr.String())
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	// ...while the open tunnel finishes its work.
	echoRoundTrip(t, conn, 1<<20)
	conn.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last tunnel closed")
	}
	if _, err := c.Dial(ctxT(t), f.request()); err == nil {
		t.Fatal("dial succeeded after shutdown")
	}
}

func TestClientRefusesEmptyExpectedSet(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	req := f.request()
	req.Key.DstIdentities = ""
	if _, err := c.Dial(ctxT(t), req); err == nil {
		t.Fatal("dial without expected identities succeeded")
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestGoAwayMovesNewTunnelsToANewConnection: one server connection sends
// GOAWAY. The tunnel already on it finishes; new tunnels go to a fresh
// connection, whether the client saw the GOAWAY first or its stream was
// refused (REFUSED_STREAM) and retried.
func TestGoAwayMovesNewTunnelsToANewConnection(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, "ns-a", "sa-a")
	old, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatal(err)
	}
	var first *h2.Conn
	waitFor(t, "the server to register the connection", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		for hc := range f.srv.conns {
			first = hc
		}
		return first != nil
	})
	drained := make(chan error, 1)
	go func() { drained <- first.Shutdown(ctxT(t)) }()
	waitFor(t, "server side to stop taking streams", func() bool { return !first.State().Usable })

	for i := 0; i < 5; i++ {
		conn, err := c.Dial(ctxT(t), f.request())
		if err != nil {
			t.Fatalf("dial %d after GOAWAY: %v", i, err)
		}
		echoRoundTrip(t, conn, 1000)
		conn.Close()
	}
	if n := f.srv.Stats().ConnsAccepted; n != 2 {
		t.Fatalf("server accepted %d connections, want 2 (the drained one and one new)", n)
	}
	echoRoundTrip(t, old, 256<<10) // the old tunnel still works while draining
	old.Close()
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	waitFor(t, "drained connection to leave the pool", func() bool { return c.Stats().Conns == 1 })
}

func TestWaypointSkipsAuthorityCheck(t *testing.T) {
	f := newFixture(t, func(c *ServerConfig) { c.SkipAuthorityCheck = true })
	// A VIP-style authority that is not the arrival address is accepted;
	// the handler decides where it goes.
	status, reason := f.rawStream(t, []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "10.96.0.10:" + portOf(f.echo.addr())}})
	if status != 200 {
		t.Fatalf("got %d %q", status, reason)
	}
	reqs := f.handler.requests()
	if len(reqs) != 1 || reqs[0].Authority.Addr.String() != "10.96.0.10:"+portOf(f.echo.addr()) {
		t.Fatalf("handler saw %+v", reqs)
	}
}

func TestHostnameAuthorityReachesHandler(t *testing.T) {
	f := newFixture(t, nil)
	status, _ := f.rawStream(t, []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: "checkout.shop.svc.cluster.local:80"}})
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	reqs := f.handler.requests()
	if len(reqs) != 1 || reqs[0].Authority.Host != "checkout.shop.svc.cluster.local" || reqs[0].Authority.IsIP() {
		t.Fatalf("handler saw %+v", reqs)
	}
}
