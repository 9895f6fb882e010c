package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	gstls "github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPNHTTP2 is the default (and HBONE's) application protocol.
const ALPNHTTP2 = "h2"

// DefaultALPN returns the default ALPN list, {"h2"}.
func DefaultALPN() []string { return []string{ALPNHTTP2} }

// Errors callers can branch on with errors.Is.
var (
	// ErrInvalidConfig: Client or Server was given unusable arguments.
	ErrInvalidConfig = errors.New("invalid TLS configuration")
	// ErrUnexpectedPeer: the peer's verified SPIFFE ID is not allowed
	// (not in the client's expected set, or not in the server's trust
	// domain). The concrete error is a *PeerError.
	ErrUnexpectedPeer = errors.New("unexpected peer identity")
	// ErrCipherSuite: the handshake negotiated a suite other than AES-GCM.
	ErrCipherSuite = errors.New("cipher suite not allowed")
	// ErrProtocolVersion: the handshake negotiated a version other than TLS 1.3.
	ErrProtocolVersion = errors.New("TLS version not allowed")
	// ErrALPN: the handshake negotiated none of the configured ALPN protocols.
	ErrALPN = errors.New("no allowed application protocol negotiated")
	// ErrNoPeerCertificate: the peer presented no certificate.
	ErrNoPeerCertificate = errors.New("peer presented no certificate")
	// ErrUnverifiedPeer: PeerID was given a connection state whose peer
	// certificate was not verified (handshake incomplete, or the connection
	// was not configured by this package).
	ErrUnverifiedPeer = errors.New("peer certificate not verified")
)

// PeerError reports a verified peer whose SPIFFE ID is not allowed. It
// matches ErrUnexpectedPeer with errors.Is.
type PeerError struct {
	// Peer is the peer's verified SPIFFE ID.
	Peer spiffeid.ID
	// Expected is the client's expected set (nil on the server side).
	Expected []spiffeid.ID
	// TrustDomain is the server's required trust domain (zero on the client side).
	TrustDomain spiffeid.TrustDomain
}

func (e *PeerError) Error() string {
	if len(e.Expected) > 0 || e.TrustDomain.IsZero() {
		ids := make([]string, len(e.Expected))
		for i, id := range e.Expected {
			ids[i] = id.String()
		}
		return fmt.Sprintf("tlsconfig: peer %s not in expected set [%s]", e.Peer, strings.Join(ids, " "))
	}
	return fmt.Sprintf("tlsconfig: peer %s not in trust domain %q", e.Peer, e.TrustDomain)
}

// Is makes errors.Is(err, ErrUnexpectedPeer) true.
func (e *PeerError) Is(target error) bool { return target == ErrUnexpectedPeer }

// Option adjusts Client and Server.
type Option func(*options)

type options struct {
	alpn     []string
	alpnSet  bool
	svidFunc func(context.Context) (*x509svid.SVID, error)
}

// WithALPN sets the ALPN protocols offered (client) or accepted (server), in
// preference order. The default is {"h2"}; QUIC passes "h3". At least one
// protocol is required.
func WithALPN(protos ...string) Option {
	return func(o *options) {
		o.alpn = slices.Clone(protos)
		o.alpnSet = true
	}
}

// WithSVIDFunc makes every handshake obtain the local X.509 SVID from fn,
// passing the handshake's context (the one given to HandshakeContext or
// DialContext), instead of from the svid source argument, which may then
// be nil. A certificate manager passes its per-identity getter here so that
// a first fetch is bounded by the dial's deadline and rotations need no
// new configuration.
func WithSVIDFunc(fn func(ctx context.Context) (*x509svid.SVID, error)) Option {
	return func(o *options) { o.svidFunc = fn }
}

func buildOptions(svid x509svid.Source, opts []Option) (*options, error) {
	o := &options{alpn: DefaultALPN()}
	for _, opt := range opts {
		opt(o)
	}
	if len(o.alpn) == 0 || slices.Contains(o.alpn, "") {
		return nil, fmt.Errorf("tlsconfig: ALPN list %q must name at least one non-empty protocol: %w", o.alpn, ErrInvalidConfig)
	}
	if o.svidFunc == nil {
		if svid == nil {
			return nil, fmt.Errorf("tlsconfig: no SVID source (pass one or use WithSVIDFunc): %w", ErrInvalidConfig)
		}
		o.svidFunc = func(context.Context) (*x509svid.SVID, error) { return svid.GetX509SVID() }
	}
	return o, nil
}

// Client returns a TLS configuration for dialing a mesh peer. It presents
// the local SVID, sends no SNI, verifies the server's chain against bundle
// and requires the server's SPIFFE ID to be one of expected. An empty
// expected set is an error: there is no "accept anyone" mode.
func Client(svid x509svid.Source, bundle x509bundle.Source, expected []spiffeid.ID, opts ...Option) (*tls.Config, error) {
	o, err := buildOptions(svid, opts)
	if err != nil {
		return nil, err
	}
	if bundle == nil {
		return nil, fmt.Errorf("tlsconfig: client: bundle source is nil: %w", ErrInvalidConfig)
	}
	if len(expected) == 0 {
		return nil, fmt.Errorf("tlsconfig: client: expected peer set is empty; name the server identities to accept: %w", ErrInvalidConfig)
	}
	for _, id := range expected {
		if id.IsZero() {
			return nil, fmt.Errorf("tlsconfig: client: expected peer set contains the zero SPIFFE ID: %w", ErrInvalidConfig)
		}
	}
	expected = slices.Clone(expected)
	allowed := gstls.AuthorizeOneOf(expected...)
	authorize := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		if allowed(id, chains) != nil {
			return &PeerError{Peer: id, Expected: expected}
		}
		return nil
	}
	cfg := baseConfig(o)
	// No SNI: ServerName stays empty, which Go only allows with
	// InsecureSkipVerify. Host name verification is replaced by SPIFFE
	// verification in VerifyPeerCertificate (chain to the bundle, then the
	// expected-ID check), exactly as go-spiffe's MTLSClientConfig does.
	cfg.InsecureSkipVerify = true
	cfg.VerifyPeerCertificate = verifyPeer("server", bundle, authorize)
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return localCertificate(cri.Context(), o.svidFunc)
	}
	cfg.ClientSessionCache = nil
	return cfg, nil
}

// Server returns a TLS configuration for accepting mesh connections. It
// presents the local SVID and requires a client certificate that chains to
// bundle and whose SPIFFE ID is in trustDomain.
func Server(svid x509svid.Source, bundle x509bundle.Source, trustDomain spiffeid.TrustDomain, opts ...Option) (*tls.Config, error) {
	o, err := buildOptions(svid, opts)
	if err != nil {
		return nil, err
	}
	if bundle == nil {
		return nil, fmt.Errorf("tlsconfig: server: bundle source is nil: %w", ErrInvalidConfig)
	}
	if trustDomain.IsZero() {
		return nil, fmt.Errorf("tlsconfig: server: trust domain is empty: %w", ErrInvalidConfig)
	}
	member := gstls.AuthorizeMemberOf(trustDomain)
	authorize := func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		if member(id, chains) != nil {
			return &PeerError{Peer: id, TrustDomain: trustDomain}
		}
		return nil
	}
	cfg := baseConfig(o)
	cfg.ClientAuth = tls.RequireAnyClientCert // verified by VerifyPeerCertificate against the bundle
	cfg.VerifyPeerCertificate = verifyPeer("client", bundle, authorize)
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return localCertificate(hello.Context(), o.svidFunc)
	}
	return cfg, nil
}

func baseConfig(o *options) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		NextProtos:             slices.Clone(o.alpn),
		SessionTicketsDisabled: true,
		VerifyConnection:       verifyConnection(slices.Clone(o.alpn)),
	}
}

// verifyPeer is go-spiffe's VerifyPeerCertificate (parse, verify the chain
// against the bundle of the peer's trust domain, authorize the ID) with
// errors prefixed by this package's name.
func verifyPeer(role string, bundle x509bundle.Source, authorize gstls.Authorizer) func([][]byte, [][]*x509.Certificate) error {
	verify := gstls.VerifyPeerCertificate(bundle, authorize)
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return fmt.Errorf("tlsconfig: %s: %w", role, ErrNoPeerCertificate)
		}
		err := verify(raw, chains)
		if err == nil {
			return nil
		}
		if _, ok := errors.AsType[*PeerError](err); ok {
			return err
		}
		return fmt.Errorf("tlsconfig: verify %s certificate: %w", role, err)
	}
}

// allowedSuites are the TLS 1.3 suites HBONE permits.
var allowedSuites = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384}

// verifyConnection runs after the peer's certificate has been verified (Go
// calls VerifyPeerCertificate first and aborts the handshake if it fails).
// It enforces the version, cipher suite and ALPN contract and records the
// peer leaf as verified for PeerID.
func verifyConnection(alpn []string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if cs.Version != tls.VersionTLS13 {
			return fmt.Errorf("tlsconfig: negotiated %s, only TLS 1.3 is allowed: %w", tls.VersionName(cs.Version), ErrProtocolVersion)
		}
		if !slices.Contains(allowedSuites, cs.CipherSuite) {
			return fmt.Errorf("tlsconfig: negotiated %s, only TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384 are allowed: %w",
				tls.CipherSuiteName(cs.CipherSuite), ErrCipherSuite)
		}
		if !slices.Contains(alpn, cs.NegotiatedProtocol) {
			return fmt.Errorf("tlsconfig: negotiated ALPN %q, want one of %q: %w", cs.NegotiatedProtocol, alpn, ErrALPN)
		}
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("tlsconfig: %w", ErrNoPeerCertificate)
		}
		markVerified(cs.PeerCertificates[0])
		return nil
	}
}

func localCertificate(ctx context.Context, get func(context.Context) (*x509svid.SVID, error)) (*tls.Certificate, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	s, err := get(ctx)
	if err != nil {
		return nil, fmt.Errorf("tlsconfig: get local certificate: %w", err)
	}
	if s == nil || len(s.Certificates) == 0 || s.PrivateKey == nil {
		return nil, fmt.Errorf("tlsconfig: get local certificate: source returned an empty SVID: %w", ErrInvalidConfig)
	}
	cert := &tls.Certificate{
		Certificate: make([][]byte, len(s.Certificates)),
		PrivateKey:  s.PrivateKey,
		Leaf:        s.Certificates[0],
	}
	for i, c := range s.Certificates {
		cert.Certificate[i] = c.Raw
	}
	return cert, nil
}
