package tlsconfig_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/identity/tlsconfig"
)

// result is what each side of a loopback handshake observed.
type result struct {
	client, server       tls.ConnectionState
	clientErr, serverErr error
	serverName           string // SNI the server saw
	sawHello             bool
}

// handshake runs a real TLS handshake over a 127.0.0.1 TCP socket. After a
// successful server handshake the server writes "ok" and closes; the client
// reads it, which is when a TLS 1.3 client learns that the server rejected
// its certificate (the client's Handshake returns before the server has
// verified it) and when it would process session tickets.
func handshake(t testing.TB, clientCfg, serverCfg *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var res result
	serverCfg = serverCfg.Clone()
	getCert := serverCfg.GetCertificate
	serverCfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		res.serverName, res.sawHello = hello.ServerName, true
		return getCert(hello)
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		raw, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer raw.Close()
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		conn := tls.Server(raw, serverCfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			res.serverErr = err
			return
		}
		res.server = conn.ConnectionState()
		if _, err := conn.Write([]byte("ok")); err != nil {
			res.serverErr = err
			return
		}
		_ = conn.Close()
	})

	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn := tls.Client(raw, clientCfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		res.clientErr = err
	} else {
		res.client = conn.ConnectionState()
		buf := make([]byte, 2)
		if _, err := io.ReadFull(conn, buf); err != nil {
			res.clientErr = err
		} else if string(buf) != "ok" {
			res.clientErr = errors.New("unexpected payload " + string(buf))
		}
	}
	_ = raw.Close()
	wg.Wait()
	return res
}

func TestHandshakeOK(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []identitytest.Option
	}{
		{name: "root signs leaves"},
		{name: "with intermediate", opts: []identitytest.Option{identitytest.WithIntermediate()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := identitytest.New(t, "cluster.local", tc.opts...)
			res := handshake(t,
				ca.ClientTLS(t, "ns-a", "sa-a", ca.ID("ns-b", "sa-b")),
				ca.ServerTLS(t, "ns-b", "sa-b"))
			if res.clientErr != nil || res.serverErr != nil {
				t.Fatalf("handshake failed: client: %v; server: %v", res.clientErr, res.serverErr)
			}
			for side, cs := range map[string]tls.ConnectionState{"client": res.client, "server": res.server} {
				if cs.Version != tls.VersionTLS13 {
					t.Errorf("%s: version %s, want TLS 1.3", side, tls.VersionName(cs.Version))
				}
				if cs.CipherSuite != tls.TLS_AES_128_GCM_SHA256 && cs.CipherSuite != tls.TLS_AES_256_GCM_SHA384 {
					t.Errorf("%s: cipher suite %s, want AES-GCM", side, tls.CipherSuiteName(cs.CipherSuite))
				}
				if cs.NegotiatedProtocol != "h2" {
					t.Errorf("%s: ALPN %q, want h2", side, cs.NegotiatedProtocol)
				}
				if cs.DidResume {
					t.Errorf("%s: resumed a session", side)
				}
			}
			if got, err := tlsconfig.PeerID(res.client); err != nil || got != ca.ID("ns-b", "sa-b") {
				t.Errorf("client PeerID = %v, %v; want %v", got, err, ca.ID("ns-b", "sa-b"))
			}
			if got, err := tlsconfig.PeerID(res.server); err != nil || got != ca.ID("ns-a", "sa-a") {
				t.Errorf("server PeerID = %v, %v; want %v", got, err, ca.ID("ns-a", "sa-a"))
			}
			if !res.sawHello || res.serverName != "" {
				t.Errorf("server saw SNI %q (hello seen: %v), want none", res.serverName, res.sawHello)
			}
		})
	}
}

func TestHandshakeRefused(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	other := identitytest.New(t, "other.domain")
	impostor := identitytest.New(t, "cluster.local") // same name, different root
	serverID := ca.ID("ns-b", "sa-b")

	noClientCert := ca.ClientTLS(t, "ns-a", "sa-a", serverID)
	noClientCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil
	}

	tests := []struct {
		name                string
		client, server      *tls.Config
		clientErr           string // substring of the client's error
		serverErr           string // substring of the server's error
		clientIs, serverIs  error
		wantExactClientText string
	}{
		{
			name:      "server from another trust domain",
			client:    ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server:    other.ServerTLS(t, "ns-b", "sa-b"),
			clientErr: `tlsconfig: verify server certificate: x509svid: could not get X509 bundle: x509bundle: no X.509 bundle found for trust domain: "other.domain"`,
			serverErr: "bad certificate",
		},
		{
			name:      "server signed by an impostor root of the same trust domain",
			client:    ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server:    impostor.ServerTLS(t, "ns-b", "sa-b"),
			clientErr: "tlsconfig: verify server certificate: x509svid: could not verify leaf certificate: x509: certificate signed by unknown authority",
			serverErr: "bad certificate",
		},
		{
			name:      "server certificate expired",
			client:    ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server:    ca.ServerTLSFor(t, ca.Issue(t, "ns-b", "sa-b", identitytest.Expired())),
			clientErr: "certificate has expired or is not yet valid",
		},
		{
			name:      "server certificate not yet valid",
			client:    ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server:    ca.ServerTLSFor(t, ca.Issue(t, "ns-b", "sa-b", identitytest.WithNotBefore(time.Now().Add(time.Hour)))),
			clientErr: "certificate has expired or is not yet valid",
		},
		{
			name:                "chain valid but server identity not expected",
			client:              ca.ClientTLS(t, "ns-a", "sa-a", serverID, ca.ID("ns-x", "sa-x")),
			server:              ca.ServerTLS(t, "ns-c", "sa-c"),
			clientIs:            tlsconfig.ErrUnexpectedPeer,
			wantExactClientText: "tlsconfig: peer spiffe://cluster.local/ns/ns-c/sa/sa-c not in expected set [spiffe://cluster.local/ns/ns-b/sa/sa-b spiffe://cluster.local/ns/ns-x/sa/sa-x]",
			serverErr:           "bad certificate",
		},
		{
			name:      "server certificate with two URI SANs",
			client:    ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server:    ca.ServerTLSFor(t, ca.Issue(t, "ns-b", "sa-b", identitytest.WithURI(serverID.String(), "spiffe://cluster.local/ns/ns-x/sa/sa-x"))),
			clientErr: "more than one URI SAN",
		},
		{
			name:   "server certificate with CA=true",
			client: ca.ClientTLS(t, "ns-a", "sa-a", serverID),
			server: ca.ServerTLSFor(t, ca.Issue(t, "ns-b", "sa-b", identitytest.WithTemplate(func(c *x509.Certificate) {
				c.IsCA = true
			}))),
			clientErr: "leaf certificate with CA flag set to true",
		},
		{
			name:      "client presents no certificate",
			client:    noClientCert,
			server:    ca.ServerTLS(t, "ns-b", "sa-b"),
			serverErr: "tls: client didn't provide a certificate",
			clientErr: "certificate required",
		},
		{
			name:      "client from another trust domain",
			client:    mustClient(t, other.Issue(t, "ns-a", "sa-a"), ca.Bundle(), []spiffeid.ID{serverID}),
			server:    ca.ServerTLS(t, "ns-b", "sa-b"),
			serverErr: `tlsconfig: verify client certificate: x509svid: could not get X509 bundle: x509bundle: no X.509 bundle found for trust domain: "other.domain"`,
			clientErr: "bad certificate",
		},
		{
			name:      "client certificate expired",
			client:    ca.ClientTLSFor(t, ca.Issue(t, "ns-a", "sa-a", identitytest.Expired()), []spiffeid.ID{serverID}),
			server:    ca.ServerTLS(t, "ns-b", "sa-b"),
			serverErr: "certificate has expired or is not yet valid",
			clientErr: "bad certificate",
		},
		{
			name:      "client certificate without URI SAN",
			client:    ca.ClientTLSFor(t, ca.Issue(t, "ns-a", "sa-a", identitytest.WithURI()), []spiffeid.ID{serverID}),
			server:    ca.ServerTLS(t, "ns-b", "sa-b"),
			serverErr: "certificate contains no URI SAN",
		},
		{
			name:      "ALPN mismatch",
			client:    ca.ClientTLSFor(t, ca.Issue(t, "ns-a", "sa-a"), []spiffeid.ID{serverID}, tlsconfig.WithALPN("h3")),
			server:    ca.ServerTLS(t, "ns-b", "sa-b"),
			serverErr: "unsupported application protocols",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, tt.client, tt.server)
			if res.clientErr == nil && res.serverErr == nil {
				t.Fatal("handshake succeeded, want refusal")
			}
			check := func(side string, err error, substr string, is error) {
				t.Helper()
				if substr == "" && is == nil {
					return
				}
				if err == nil {
					t.Errorf("%s: no error, want %q", side, substr)
					return
				}
				if substr != "" && !strings.Contains(err.Error(), substr) {
					t.Errorf("%s error:\n got %q\nwant substring %q", side, err, substr)
				}
				if is != nil && !errors.Is(err, is) {
					t.Errorf("%s error %q is not %v", side, err, is)
				}
			}
			check("client", res.clientErr, tt.clientErr, tt.clientIs)
			check("server", res.serverErr, tt.serverErr, tt.serverIs)
			if tt.wantExactClientText != "" && (res.clientErr == nil || res.clientErr.Error() != tt.wantExactClientText) {
				t.Errorf("client error:\n got %v\nwant %s", res.clientErr, tt.wantExactClientText)
			}
			if tt.wantExactClientText != "" {
				var pe *tlsconfig.PeerError
				if !errors.As(res.clientErr, &pe) || pe.Peer != ca.ID("ns-c", "sa-c") {
					t.Errorf("client error %v is not a *PeerError for ns-c/sa-c", res.clientErr)
				}
			}
		})
	}
}

func mustClient(t *testing.T, svid x509svid.Source, bundle x509bundle.Source, expected []spiffeid.ID, opts ...tlsconfig.Option) *tls.Config {
	t.Helper()
	cfg, err := tlsconfig.Client(svid, bundle, expected, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustServer(t *testing.T, svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain, opts ...tlsconfig.Option) *tls.Config {
	t.Helper()
	cfg, err := tlsconfig.Server(svid, bundle, td, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// recordingCache is a ClientSessionCache that counts stored tickets.
type recordingCache struct{ puts atomic.Int32 }

func (c *recordingCache) Get(string) (*tls.ClientSessionState, bool) { return nil, false }
func (c *recordingCache) Put(_ string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts.Add(1)
	}
}

func TestNoSessionTickets(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	serverID := ca.ID("ns-b", "sa-b")

	client := ca.ClientTLS(t, "ns-a", "sa-a", serverID)
	if !client.SessionTicketsDisabled || client.ClientSessionCache != nil {
		t.Fatalf("client: SessionTicketsDisabled=%v ClientSessionCache=%v", client.SessionTicketsDisabled, client.ClientSessionCache)
	}
	server := ca.ServerTLS(t, "ns-b", "sa-b")
	if !server.SessionTicketsDisabled {
		t.Fatal("server: SessionTicketsDisabled=false")
	}

	// Our server issues no ticket even to a client that would store one.
	greedy := client.Clone()
	greedy.SessionTicketsDisabled = false
	cache := &recordingCache{}
	greedy.ClientSessionCache = cache
	for range 2 {
		res := handshake(t, greedy, server)
		if res.clientErr != nil || res.serverErr != nil {
			t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
		}
		if res.client.DidResume {
			t.Error("connection resumed a session")
		}
	}
	if n := cache.puts.Load(); n != 0 {
		t.Errorf("server issued %d session tickets, want 0", n)
	}

	// Our client stores no ticket even from a server that issues them.
	generous := server.Clone()
	generous.SessionTicketsDisabled = false
	cache2 := &recordingCache{}
	withCache := client.Clone()
	withCache.ClientSessionCache = cache2 // ignored: SessionTicketsDisabled stays true
	if res := handshake(t, withCache, generous); res.clientErr != nil || res.serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
	}
	if n := cache2.puts.Load(); n != 0 {
		t.Errorf("client stored %d session tickets, want 0", n)
	}
}

func TestALPNOption(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	serverID := ca.ID("ns-b", "sa-b")
	client := ca.ClientTLSFor(t, ca.Issue(t, "ns-a", "sa-a"), []spiffeid.ID{serverID}, tlsconfig.WithALPN("h3"))
	server := ca.ServerTLSFor(t, ca.Issue(t, "ns-b", "sa-b"), tlsconfig.WithALPN("h3", "h2"))
	res := handshake(t, client, server)
	if res.clientErr != nil || res.serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
	}
	if res.client.NegotiatedProtocol != "h3" || res.server.NegotiatedProtocol != "h3" {
		t.Errorf("negotiated %q/%q, want h3", res.client.NegotiatedProtocol, res.server.NegotiatedProtocol)
	}

	// With no ALPN offered the server negotiates none; our client refuses that…
	bare := ca.ClientTLS(t, "ns-a", "sa-a", serverID)
	bare.NextProtos = nil
	res = handshake(t, bare, ca.ServerTLS(t, "ns-b", "sa-b"))
	if !errors.Is(res.clientErr, tlsconfig.ErrALPN) {
		t.Errorf("client error = %v, want ErrALPN", res.clientErr)
	}
	// …and so does our server, facing a client without our VerifyConnection.
	bare.VerifyConnection = nil
	res = handshake(t, bare, ca.ServerTLS(t, "ns-b", "sa-b"))
	if !errors.Is(res.serverErr, tlsconfig.ErrALPN) {
		t.Errorf("server error = %v, want ErrALPN", res.serverErr)
	}
}

// TestRotation checks that certificates come from the source on every
// handshake, so a rotated SVID is used without rebuilding the config, and
// that WithSVIDFunc receives the handshake context.
func TestRotation(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	serverID := ca.ID("ns-b", "sa-b")
	var current atomic.Pointer[x509svid.SVID]
	current.Store(ca.Issue(t, "ns-b", "sa-b"))
	type ctxKey struct{}
	var sawCtx atomic.Bool
	server := mustServer(t, nil, ca.Bundle(), ca.TrustDomain(), tlsconfig.WithSVIDFunc(func(ctx context.Context) (*x509svid.SVID, error) {
		if ctx != nil {
			sawCtx.Store(true)
		}
		return current.Load(), nil
	}))
	clientSVID := ca.Issue(t, "ns-a", "sa-a")
	client := mustClient(t, nil, ca.Bundle(), []spiffeid.ID{serverID}, tlsconfig.WithSVIDFunc(func(ctx context.Context) (*x509svid.SVID, error) {
		if ctx.Value(ctxKey{}) != nil {
			t.Error("unexpected context value")
		}
		return clientSVID, nil
	}))

	first := handshake(t, client, server)
	current.Store(ca.Issue(t, "ns-b", "sa-b"))
	second := handshake(t, client, server)
	for _, r := range []result{first, second} {
		if r.clientErr != nil || r.serverErr != nil {
			t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
		}
	}
	s1, s2 := first.client.PeerCertificates[0].SerialNumber, second.client.PeerCertificates[0].SerialNumber
	if s1.Cmp(s2) == 0 {
		t.Error("second handshake presented the old certificate")
	}
	if s2.Cmp(current.Load().Certificates[0].SerialNumber) != 0 {
		t.Error("second handshake did not present the rotated certificate")
	}
	if !sawCtx.Load() {
		t.Error("WithSVIDFunc got no context")
	}

	// A failing source fails the handshake with a clear error.
	failing := mustServer(t, nil, ca.Bundle(), ca.TrustDomain(), tlsconfig.WithSVIDFunc(func(context.Context) (*x509svid.SVID, error) {
		return nil, errors.New("CA unreachable")
	}))
	res := handshake(t, client, failing)
	if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "tlsconfig: get local certificate: CA unreachable") {
		t.Errorf("server error = %v", res.serverErr)
	}
}

func TestConstructionErrors(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	svid := ca.Issue(t, "ns-a", "sa-a")
	bundle := ca.Bundle()
	id := ca.ID("ns-b", "sa-b")
	td := ca.TrustDomain()
	tests := []struct {
		name string
		fn   func() (*tls.Config, error)
		msg  string
	}{
		{"client: empty expected set", func() (*tls.Config, error) { return tlsconfig.Client(svid, bundle, nil) }, "expected peer set is empty"},
		{"client: zero expected id", func() (*tls.Config, error) { return tlsconfig.Client(svid, bundle, []spiffeid.ID{{}}) }, "zero SPIFFE ID"},
		{"client: nil bundle", func() (*tls.Config, error) { return tlsconfig.Client(svid, nil, []spiffeid.ID{id}) }, "bundle source is nil"},
		{"client: nil svid", func() (*tls.Config, error) { return tlsconfig.Client(nil, bundle, []spiffeid.ID{id}) }, "no SVID source"},
		{"client: empty ALPN", func() (*tls.Config, error) {
			return tlsconfig.Client(svid, bundle, []spiffeid.ID{id}, tlsconfig.WithALPN())
		}, "ALPN"},
		{"server: zero trust domain", func() (*tls.Config, error) { return tlsconfig.Server(svid, bundle, spiffeid.TrustDomain{}) }, "trust domain is empty"},
		{"server: nil bundle", func() (*tls.Config, error) { return tlsconfig.Server(svid, nil, td) }, "bundle source is nil"},
		{"server: nil svid", func() (*tls.Config, error) { return tlsconfig.Server(nil, bundle, td) }, "no SVID source"},
		{"server: empty ALPN protocol", func() (*tls.Config, error) { return tlsconfig.Server(svid, bundle, td, tlsconfig.WithALPN("")) }, "ALPN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.fn()
			if cfg != nil || !errors.Is(err, tlsconfig.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "tlsconfig: ") {
				t.Fatalf("got %v, %v; want ErrInvalidConfig mentioning %q", cfg, err, tt.msg)
			}
		})
	}
}

func TestConfigFields(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	client := ca.ClientTLS(t, "ns-a", "sa-a", ca.ID("ns-b", "sa-b"))
	server := ca.ServerTLS(t, "ns-b", "sa-b")
	for name, cfg := range map[string]*tls.Config{"client": client, "server": server} {
		if cfg.MinVersion != tls.VersionTLS13 || cfg.MaxVersion != tls.VersionTLS13 {
			t.Errorf("%s: versions %x-%x, want TLS 1.3 only", name, cfg.MinVersion, cfg.MaxVersion)
		}
		if !cfg.SessionTicketsDisabled {
			t.Errorf("%s: session tickets enabled", name)
		}
		if len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "h2" {
			t.Errorf("%s: NextProtos %q, want [h2]", name, cfg.NextProtos)
		}
		if cfg.ServerName != "" {
			t.Errorf("%s: ServerName %q, want empty", name, cfg.ServerName)
		}
		if cfg.VerifyConnection == nil || cfg.VerifyPeerCertificate == nil {
			t.Errorf("%s: verification hooks missing", name)
		}
	}
	if server.ClientAuth != tls.RequireAnyClientCert {
		t.Errorf("server ClientAuth = %v", server.ClientAuth)
	}
}

// TestVerifyConnectionContract exercises the VerifyConnection hook directly
// for states a Go peer on AES-capable hardware never negotiates (ChaCha20,
// TLS 1.2), which cannot be forced through crypto/tls.
func TestVerifyConnectionContract(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	leaf := ca.Issue(t, "ns-b", "sa-b").Certificates[0]
	good := tls.ConnectionState{
		Version:            tls.VersionTLS13,
		CipherSuite:        tls.TLS_AES_128_GCM_SHA256,
		NegotiatedProtocol: "h2",
		PeerCertificates:   []*x509.Certificate{leaf},
	}
	for name, cfg := range map[string]*tls.Config{
		"client": ca.ClientTLS(t, "ns-a", "sa-a", ca.ID("ns-b", "sa-b")),
		"server": ca.ServerTLS(t, "ns-b", "sa-b"),
	} {
		t.Run(name, func(t *testing.T) {
			tests := []struct {
				name   string
				modify func(*tls.ConnectionState)
				want   error
				msg    string
			}{
				{"AES-128-GCM", func(*tls.ConnectionState) {}, nil, ""},
				{"AES-256-GCM", func(cs *tls.ConnectionState) { cs.CipherSuite = tls.TLS_AES_256_GCM_SHA384 }, nil, ""},
				{"ChaCha20 refused", func(cs *tls.ConnectionState) { cs.CipherSuite = tls.TLS_CHACHA20_POLY1305_SHA256 }, tlsconfig.ErrCipherSuite,
					"tlsconfig: negotiated TLS_CHACHA20_POLY1305_SHA256, only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384 are allowed"},
				{"TLS 1.2 refused", func(cs *tls.ConnectionState) {
					cs.Version = tls.VersionTLS12
					cs.CipherSuite = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
				}, tlsconfig.ErrProtocolVersion, "only TLS 1.3"},
				{"no ALPN refused", func(cs *tls.ConnectionState) { cs.NegotiatedProtocol = "" }, tlsconfig.ErrALPN, `negotiated ALPN ""`},
				{"no peer certificate refused", func(cs *tls.ConnectionState) { cs.PeerCertificates = nil }, tlsconfig.ErrNoPeerCertificate, ""},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					cs := good
					tt.modify(&cs)
					err := cfg.VerifyConnection(cs)
					if !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
						t.Fatalf("VerifyConnection = %v, want %v", err, tt.want)
					}
					if tt.msg != "" && !strings.Contains(err.Error(), tt.msg) {
						t.Errorf("error %q lacks %q", err, tt.msg)
					}
				})
			}
		})
	}
}

func TestPeerIDRefusesUnverified(t *testing.T) {
	ca := identitytest.New(t, "cluster.local")
	cert := ca.Cert(t, "ns-b", "sa-b")

	if _, err := tlsconfig.PeerID(tls.ConnectionState{}); !errors.Is(err, tlsconfig.ErrUnverifiedPeer) {
		t.Errorf("zero state: %v, want ErrUnverifiedPeer", err)
	}
	if _, err := tlsconfig.PeerID(tls.ConnectionState{HandshakeComplete: true}); !errors.Is(err, tlsconfig.ErrNoPeerCertificate) {
		t.Errorf("no certificates: %v, want ErrNoPeerCertificate", err)
	}

	// A plain crypto/tls connection that skipped verification: PeerID must
	// not trust the certificate it saw.
	plainServer := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }}
	plainClient := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} //nolint:gosec // the point of the test
	res := handshake(t, plainClient, plainServer)
	if res.clientErr != nil || res.serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", res.clientErr, res.serverErr)
	}
	if _, err := tlsconfig.PeerID(res.client); !errors.Is(err, tlsconfig.ErrUnverifiedPeer) {
		t.Errorf("unverified connection: PeerID error = %v, want ErrUnverifiedPeer", err)
	}

	// When Go itself verified the chain, VerifiedChains[0][0] is used.
	verifiedByGo := tls.ConnectionState{HandshakeComplete: true, VerifiedChains: [][]*x509.Certificate{{cert.Leaf}}}
	if id, err := tlsconfig.PeerID(verifiedByGo); err != nil || id != ca.ID("ns-b", "sa-b") {
		t.Errorf("VerifiedChains: PeerID = %v, %v", id, err)
	}
}

func BenchmarkHandshake(b *testing.B) {
	ca := identitytest.New(b, "cluster.local")
	client := ca.ClientTLS(b, "ns-a", "sa-a", ca.ID("ns-b", "sa-b"))
	server := ca.ServerTLS(b, "ns-b", "sa-b")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer func() {
		_ = ln.Close()
		wg.Wait()
	}()
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			conn := tls.Server(raw, server)
			if err := conn.Handshake(); err == nil {
				_, _ = conn.Write([]byte{1})
			}
			_ = conn.Close()
		}
	})
	addr := ln.Addr().String()
	buf := make([]byte, 1)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conn := tls.Client(raw, client)
		// Reading the server's byte proves the server accepted our certificate.
		if _, err := io.ReadFull(conn, buf); err != nil {
			b.Fatal(err)
		}
		_ = conn.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
}
