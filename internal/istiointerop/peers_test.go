package istiointerop

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/hbone"
)

// The two ends of each interop pair, built from one in-memory CA:
// Strait's hbone.Client / hbone.Server with identity/tlsconfig, and
// Istio's pkg/hbone server and dialer with the same certificates.

const trustDomain = "cluster.local"

// forwardedFor is the original-client address the Strait client announces.
// It is a loopback address other than the real source (127.0.0.1), so a
// test can tell the header from the TCP source.
var forwardedFor = netip.MustParseAddr("127.0.0.9")

// istioServer is Istio's pkg/hbone server behind a TLS listener, as Istio's
// own echo server runs it (pkg/test/echo/server/endpoint/hbone.go).
type istioServer struct {
	id   spiffeid.ID
	addr netip.AddrPort
	ln   *countingListener

	mu   sync.Mutex
	seen []seenCONNECT
}

// seenCONNECT is what Istio's server was asked, recorded by a wrapper
// around its handler (Istio's handler itself records nothing).
type seenCONNECT struct {
	method, proto, authority, forwarded string
	peer                                spiffeid.ID
	peerErr                             error
}

// startIstioServer serves Istio's hbone.NewServer() with the production
// server TLS config of ns/sa. Istio's server dials :authority itself; it
// checks neither the client's identity nor the authority.
func startIstioServer(t *testing.T, ca *identitytest.CA, ns, sa string) *istioServer {
	t.Helper()
	s := &istioServer{id: ca.ID(ns, sa), ln: listenLoopback(t)}
	s.addr = netip.MustParseAddrPort(s.ln.Addr().String())

	srv := istiohbone.NewServer()
	inner := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := seenCONNECT{method: r.Method, proto: r.Proto, authority: r.Host, forwarded: r.Header.Get("Forwarded")}
		if r.TLS != nil {
			rec.peer, rec.peerErr = tlsconfig.PeerID(*r.TLS)
		} else {
			rec.peerErr = errors.New("not a TLS connection")
		}
		s.mu.Lock()
		s.seen = append(s.seen, rec)
		s.mu.Unlock()
		inner.ServeHTTP(w, r)
	})
	// NewServer enables HTTP/1 and cleartext HTTP/2 only, so ServeTLS would
	// not offer ALPN h2 (Strait's client then fails the handshake with "no
	// application protocol"). Istio's echo server terminates TLS in its own
	// listener instead, whose NextProtos (h2) make net/http speak HTTP/2.
	tlsLn := tls.NewListener(s.ln, ca.ServerTLS(t, ns, sa))
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(tlsLn)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	return s
}

func (s *istioServer) requests() []seenCONNECT {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenCONNECT(nil), s.seen...)
}

// straitClient is a Strait hbone.Client presenting the SVID of ns/sa; the
// TLS config of each pool key accepts exactly the key's DstIdentities.
type straitClient struct {
	*hbone.Client
	id spiffeid.ID
}

func newStraitClient(t *testing.T, ca *identitytest.CA, ns, sa string) *straitClient {
	t.Helper()
	svid := ca.Issue(t, ns, sa)
	c, err := hbone.NewClient(hbone.ClientConfig{
		TLS: func(_ context.Context, k hbone.Key) (*tls.Config, error) {
			ids, err := k.DstIdentities.IDs()
			if err != nil {
				return nil, err
			}
			return tlsconfig.Client(svid, ca.Bundle(), ids)
		},
		Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("hbone.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &straitClient{Client: c, id: svid.ID}
}

// dial opens a tunnel through the HBONE server at via (whose identity must be
// one of expected) to authority.
func (c *straitClient) dial(ctx context.Context, via netip.AddrPort, authority string, expected ...spiffeid.ID) (*hbone.Conn, error) {
	return c.Dial(ctx, hbone.Request{
		Key: hbone.Key{
			SrcIdentity:   c.id,
			DstIdentities: hbone.NewIdentities(expected...),
			DstAddr:       via,
		},
		Authority: authority,
		Forwarded: forwardedFor,
	})
}

// straitServer is a Strait hbone.Server whose handler records every
// InboundRequest and dials its authority, as ztunnel's inbound does for a
// local pod.
type straitServer struct {
	id   spiffeid.ID
	srv  *hbone.Server
	addr netip.AddrPort
	ln   *countingListener

	mu   sync.Mutex
	seen []hbone.InboundRequest
}

func startStraitServer(t *testing.T, ca *identitytest.CA, ns, sa string) *straitServer {
	t.Helper()
	s := &straitServer{id: ca.ID(ns, sa), ln: listenLoopback(t)}
	s.addr = netip.MustParseAddrPort(s.ln.Addr().String())
	srv, err := hbone.NewServer(hbone.ServerConfig{
		TLS: ca.ServerTLS(t, ns, sa),
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.InboundRequest) (net.Conn, error) {
			s.mu.Lock()
			s.seen = append(s.seen, *r)
			s.mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Authority.Addr.String())
		}),
		Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("hbone.NewServer: %v", err)
	}
	s.srv = srv
	served := make(chan error, 1)
	go func() { served <- srv.Serve(s.ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("hbone server shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, hbone.ErrServerClosed) {
			t.Errorf("hbone server Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s
}

func (s *straitServer) requests() []hbone.InboundRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hbone.InboundRequest(nil), s.seen...)
}

// newIstioDialer is Istio's HBONE dialer to the HBONE server at server with
// the given client TLS config. Istio's dialer verifies nothing itself beyond
// what the TLS config does. headers is passed as Config.Headers.
func newIstioDialer(server netip.AddrPort, headers http.Header, cfg *tls.Config) istiohbone.Dialer {
	return istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: server.String(),
		Headers:      headers,
		TLS:          cfg,
	})
}

// withTimeout is the context every dial in these tests runs under.
func withTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// waitUntil polls cond every few milliseconds and fails the test if it does
// not hold within 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func describe(reqs []seenCONNECT) string {
	s := ""
	for _, r := range reqs {
		s += fmt.Sprintf("\n  %s %s %s forwarded=%q peer=%s", r.proto, r.method, r.authority, r.forwarded, r.peer)
	}
	return s
}
