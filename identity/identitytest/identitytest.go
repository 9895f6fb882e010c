package identitytest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity"
	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/tlsconfig"
)

// rootBackdate is how far the test root's NotBefore lies in the past, so
// that WithNotBefore and Expired can issue certificates dated up to this
// long ago.
const rootBackdate = 365 * 24 * time.Hour

// CA is an in-memory certificate authority for one trust domain.
type CA struct {
	td     spiffeid.TrustDomain
	root   ca.Issuer
	signer ca.Issuer // root, or the intermediate
	chain  []*x509.Certificate
	ca     *ca.CA
	cfg    ca.Config
}

// Option adjusts New.
type Option func(*newOptions)

type newOptions struct{ intermediate bool }

// WithIntermediate makes the CA sign leaves with an intermediate, so issued
// chains are leaf + intermediate.
func WithIntermediate() Option { return func(o *newOptions) { o.intermediate = true } }

// New creates a CA for trustDomain (a bare name such as "cluster.local")
// with a fresh ECDSA P-256 root valid from a year ago to a year ahead.
func New(tb testing.TB, trustDomain string, opts ...Option) *CA {
	tb.Helper()
	var o newOptions
	for _, opt := range opts {
		opt(&o)
	}
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil || td.Name() != trustDomain {
		tb.Fatalf("identitytest: trust domain %q is not a bare trust domain name: %v", trustDomain, err)
	}
	now := time.Now()
	root, err := ca.NewSelfSignedRoot(td, 2*rootBackdate, ca.WithIssuerNow(func() time.Time { return now.Add(-rootBackdate) }), ca.WithNotBefore(now.Add(-rootBackdate)))
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	c := &CA{td: td, root: root, signer: root}
	c.cfg = ca.Config{
		TrustDomain: td,
		Root:        root,
		DefaultTTL:  ca.DefaultTTL,
		MaxTTL:      rootBackdate,
		Authorizer:  ca.AllowAll(),
	}
	if o.intermediate {
		in, err := ca.NewIntermediate(root, td, 2*rootBackdate, ca.WithIssuerNow(func() time.Time { return now.Add(-rootBackdate) }), ca.WithNotBefore(now.Add(-rootBackdate)))
		if err != nil {
			tb.Fatalf("identitytest: %v", err)
		}
		c.cfg.Intermediate = &in
		c.signer = in
		c.chain = []*x509.Certificate{in.Cert}
	}
	c.ca, err = ca.New(c.cfg)
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	return c
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// CA returns the real signer behind this test CA (authorizer AllowAll,
// MaxTTL one year).
func (c *CA) CA() *ca.CA { return c.ca }

// Root returns the root certificate.
func (c *CA) Root() *x509.Certificate { return c.root.Cert }

// Bundle returns a new bundle holding the CA's root.
func (c *CA) Bundle() *x509bundle.Bundle { return c.ca.Bundle() }

// ID returns spiffe://<td>/ns/<ns>/sa/<sa>. It panics if ns or sa is
// invalid: test inputs are constants.
func (c *CA) ID(ns, sa string) spiffeid.ID {
	id, err := identity.New(c.td.Name(), ns, sa)
	if err != nil {
		panic("identitytest: " + err.Error())
	}
	return id.SPIFFEID()
}

// IssueOption adjusts Issue.
type IssueOption func(*issueOptions)

type issueOptions struct {
	ttl       time.Duration
	notBefore time.Time
	uris      []string
	urisSet   bool
	mutate    []func(*x509.Certificate)
}

// WithTTL sets the certificate lifetime (default 24h).
func WithTTL(ttl time.Duration) IssueOption { return func(o *issueOptions) { o.ttl = ttl } }

// WithNotBefore issues the certificate as if the CA's clock read
// t+ca.DefaultClockSkew: NotBefore is t and NotAfter is
// t+ca.DefaultClockSkew+ttl. t may lie up to a year in the past, or in the
// future (a not-yet-valid certificate).
func WithNotBefore(t time.Time) IssueOption { return func(o *issueOptions) { o.notBefore = t } }

// Expired issues a certificate that expired about an hour ago (NotBefore two
// hours ago, TTL 55 minutes).
func Expired() IssueOption {
	return func(o *issueOptions) {
		o.notBefore = time.Now().Add(-2 * time.Hour)
		o.ttl = 55 * time.Minute
	}
}

// WithURI replaces the certificate's URI SANs with uris (none at all if
// called with no arguments). The certificate is signed directly with the
// CA key, bypassing the CA's checks, to build hostile certificates; the
// returned SVID's ID is whatever the first URI parses to, or zero.
func WithURI(uris ...string) IssueOption {
	return func(o *issueOptions) {
		o.uris = uris
		o.urisSet = true
	}
}

// WithTemplate lets fn modify the leaf template before it is signed
// directly with the CA key (bypassing the CA's checks), to build hostile
// certificates: extra SANs, CA=true, wrong key usages.
func WithTemplate(fn func(*x509.Certificate)) IssueOption {
	return func(o *issueOptions) { o.mutate = append(o.mutate, fn) }
}

// Issue returns an X.509 SVID (leaf, intermediate if any, and private key)
// for spiffe://<td>/ns/<ns>/sa/<sa>. Without WithURI or WithTemplate it is
// issued by the real identity/ca signer from a CSR.
func (c *CA) Issue(tb testing.TB, ns, sa string, opts ...IssueOption) *x509svid.SVID {
	tb.Helper()
	var o issueOptions
	for _, opt := range opts {
		opt(&o)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("identitytest: generate key: %v", err)
	}
	if o.urisSet || len(o.mutate) > 0 {
		return c.issueDirect(tb, ns, sa, key, o)
	}
	id, err := identity.New(c.td.Name(), ns, sa)
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.SPIFFEID().URL()}}, key)
	if err != nil {
		tb.Fatalf("identitytest: create CSR: %v", err)
	}
	signer := c.ca
	if !o.notBefore.IsZero() {
		cfg := c.cfg
		cfg.Now = func() time.Time { return o.notBefore.Add(ca.DefaultClockSkew) }
		if signer, err = ca.New(cfg); err != nil {
			tb.Fatalf("identitytest: %v", err)
		}
	}
	issued, err := signer.Sign(context.Background(), ca.Caller{}, csr, o.ttl)
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	return &x509svid.SVID{ID: issued.ID, Certificates: issued.Certificates, PrivateKey: key}
}

// issueDirect signs a leaf template with the CA key without any checks.
func (c *CA) issueDirect(tb testing.TB, ns, sa string, key crypto.Signer, o issueOptions) *x509svid.SVID {
	tb.Helper()
	var uris []*url.URL
	if o.urisSet {
		for _, s := range o.uris {
			u, err := url.Parse(s)
			if err != nil {
				tb.Fatalf("identitytest: WithURI(%q): %v", s, err)
			}
			uris = append(uris, u)
		}
	} else {
		uris = []*url.URL{c.ID(ns, sa).URL()}
	}
	now := time.Now()
	if !o.notBefore.IsZero() {
		now = o.notBefore.Add(ca.DefaultClockSkew)
	}
	ttl := o.ttl
	if ttl == 0 {
		ttl = ca.DefaultTTL
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("identitytest: serial: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		NotBefore:             now.Add(-ca.DefaultClockSkew),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  uris,
	}
	for _, fn := range o.mutate {
		fn(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.signer.Cert, key.Public(), c.signer.Key)
	if err != nil {
		tb.Fatalf("identitytest: sign hostile certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("identitytest: parse hostile certificate: %v", err)
	}
	s := &x509svid.SVID{Certificates: append([]*x509.Certificate{leaf}, c.chain...), PrivateKey: key}
	if id, err := x509svid.IDFromCert(leaf); err == nil {
		s.ID = id
	}
	return s
}

// TLSCertificate converts an SVID into a tls.Certificate (chain and key).
func TLSCertificate(svid *x509svid.SVID) tls.Certificate {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// TLSCertificate converts an SVID into a tls.Certificate; same as the
// package-level TLSCertificate.
func (c *CA) TLSCertificate(svid *x509svid.SVID) tls.Certificate { return TLSCertificate(svid) }

// Cert issues a certificate for ns/sa and returns it as a tls.Certificate.
func (c *CA) Cert(tb testing.TB, ns, sa string, opts ...IssueOption) tls.Certificate {
	tb.Helper()
	return TLSCertificate(c.Issue(tb, ns, sa, opts...))
}

// ServerTLS returns the production server configuration (identity/tlsconfig
// Server) presenting a fresh SVID for ns/sa and accepting clients of this
// CA's trust domain.
func (c *CA) ServerTLS(tb testing.TB, ns, sa string, opts ...tlsconfig.Option) *tls.Config {
	tb.Helper()
	return c.ServerTLSFor(tb, c.Issue(tb, ns, sa), opts...)
}

// ClientTLS returns the production client configuration (identity/tlsconfig
// Client) presenting a fresh SVID for ns/sa and accepting only servers
// whose SPIFFE ID is one of expected. Like production, an empty expected
// set is refused (the test fails).
func (c *CA) ClientTLS(tb testing.TB, ns, sa string, expected ...spiffeid.ID) *tls.Config {
	tb.Helper()
	return c.ClientTLSFor(tb, c.Issue(tb, ns, sa), expected)
}

// ServerTLSFor is ServerTLS presenting a given SVID (for example an expired
// or hostile one from Issue) with extra tlsconfig options.
func (c *CA) ServerTLSFor(tb testing.TB, svid *x509svid.SVID, opts ...tlsconfig.Option) *tls.Config {
	tb.Helper()
	cfg, err := tlsconfig.Server(svid, c.Bundle(), c.td, opts...)
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	return cfg
}

// ClientTLSFor is ClientTLS presenting a given SVID with extra tlsconfig
// options.
func (c *CA) ClientTLSFor(tb testing.TB, svid *x509svid.SVID, expected []spiffeid.ID, opts ...tlsconfig.Option) *tls.Config {
	tb.Helper()
	cfg, err := tlsconfig.Client(svid, c.Bundle(), expected, opts...)
	if err != nil {
		tb.Fatalf("identitytest: %v", err)
	}
	return cfg
}
