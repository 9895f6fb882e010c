package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity"
)

// Config configures a CA.
type Config struct {
	// TrustDomain the CA signs for. Required.
	TrustDomain spiffeid.TrustDomain
	// Root is the trust anchor. Required. It signs leaves directly unless
	// Intermediate is set.
	Root Issuer
	// Intermediate, if set, signs the leaves; it must be issued by Root.
	// Issued chains then carry it after the leaf.
	Intermediate *Issuer
	// DefaultTTL is used when Sign is called with ttl 0. Default 24h.
	DefaultTTL time.Duration
	// MaxTTL caps any requested TTL. Default: DefaultTTL.
	MaxTTL time.Duration
	// ClockSkew is how far NotBefore is backdated. Default 5m; negative is
	// an error.
	ClockSkew time.Duration
	// Authorizer decides which caller may obtain which identity. Default:
	// DenyAll — a CA refuses everything until told otherwise.
	Authorizer Authorizer
	// Now is the clock (default time.Now); tests override it.
	Now func() time.Time
}

// CA signs X.509 SVIDs for one trust domain. It is safe for concurrent use.
type CA struct {
	td         spiffeid.TrustDomain
	root       Issuer
	signer     Issuer
	chain      []*x509.Certificate // certificates after the leaf in issued chains
	defaultTTL time.Duration
	maxTTL     time.Duration
	skew       time.Duration
	authz      Authorizer
	now        func() time.Time
}

// Issued is a freshly signed X.509 SVID (without its private key, which
// never leaves the requester).
type Issued struct {
	// ID is the SPIFFE ID in the leaf's URI SAN.
	ID spiffeid.ID
	// Certificates is the chain to present: the leaf first, then the
	// intermediate if the CA has one. The root is not included.
	Certificates []*x509.Certificate
	// NotAfter is the leaf's expiry.
	NotAfter time.Time
}

// Leaf returns the leaf certificate.
func (i *Issued) Leaf() *x509.Certificate { return i.Certificates[0] }

// New validates cfg and returns a CA.
func New(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("ca: new: trust domain is empty: %w", ErrInvalidConfig)
	}
	if err := cfg.Root.validate(cfg.TrustDomain); err != nil {
		return nil, fmt.Errorf("ca: new: root: %w", err)
	}
	if err := cfg.Root.Cert.CheckSignatureFrom(cfg.Root.Cert); err != nil {
		return nil, fmt.Errorf("ca: new: root is not self-signed: %w: %w", err, ErrInvalidConfig)
	}
	c := &CA{
		td:         cfg.TrustDomain,
		root:       cfg.Root,
		signer:     cfg.Root,
		defaultTTL: cfg.DefaultTTL,
		maxTTL:     cfg.MaxTTL,
		skew:       cfg.ClockSkew,
		authz:      cfg.Authorizer,
		now:        cfg.Now,
	}
	if cfg.Intermediate != nil {
		in := *cfg.Intermediate
		if err := in.validate(cfg.TrustDomain); err != nil {
			return nil, fmt.Errorf("ca: new: intermediate: %w", err)
		}
		if err := in.Cert.CheckSignatureFrom(cfg.Root.Cert); err != nil {
			return nil, fmt.Errorf("ca: new: intermediate is not signed by the root: %w: %w", err, ErrInvalidConfig)
		}
		c.signer = in
		c.chain = []*x509.Certificate{in.Cert}
	}
	if c.defaultTTL == 0 {
		c.defaultTTL = DefaultTTL
	}
	if c.maxTTL == 0 {
		c.maxTTL = c.defaultTTL
	}
	if c.skew == 0 {
		c.skew = DefaultClockSkew
	}
	switch {
	case c.defaultTTL < 0 || c.maxTTL < 0:
		return nil, fmt.Errorf("ca: new: DefaultTTL %v and MaxTTL %v must not be negative: %w", c.defaultTTL, c.maxTTL, ErrInvalidConfig)
	case c.defaultTTL > c.maxTTL:
		return nil, fmt.Errorf("ca: new: DefaultTTL %v exceeds MaxTTL %v: %w", c.defaultTTL, c.maxTTL, ErrInvalidConfig)
	case c.skew < 0:
		return nil, fmt.Errorf("ca: new: ClockSkew %v must not be negative: %w", c.skew, ErrInvalidConfig)
	}
	if c.authz == nil {
		c.authz = DenyAll()
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Bundle returns a new X.509 bundle holding the CA's root: what peers need
// to verify the SVIDs it issues.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.root.Cert})
}

// Sign validates csrDER, asks the Authorizer whether caller may obtain the
// requested identity, and issues an X.509 SVID for it.
//
// ttl 0 means the default TTL; any ttl is capped at MaxTTL and never
// extends beyond the signing certificate's NotAfter. Each refusal wraps a
// distinct sentinel: ErrMalformedCSR, ErrBadCSRSignature, ErrUnsupportedKey,
// ErrMissingURISAN, ErrMultipleURISANs, ErrNotSPIFFEID, ErrForbiddenSAN,
// ErrForeignTrustDomain, ErrInvalidIdentity, ErrNotAuthorized,
// ErrInvalidTTL, ErrIssuerExpired.
func (c *CA) Sign(ctx context.Context, caller Caller, csrDER []byte, ttl time.Duration) (*Issued, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("ca: sign: ttl %v is negative: %w", ttl, ErrInvalidTTL)
	}
	csr, id, err := c.checkCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if err := c.authz.Authorize(ctx, caller, id); err != nil {
		if errors.Is(err, ErrNotAuthorized) {
			return nil, fmt.Errorf("ca: sign %s for %s: %w", id, caller, err)
		}
		return nil, fmt.Errorf("ca: sign %s for %s: %w: %w", id, caller, ErrNotAuthorized, err)
	}

	now := c.now()
	for _, iss := range append([]Issuer{c.signer}, c.root) {
		if now.Before(iss.Cert.NotBefore) || !now.Before(iss.Cert.NotAfter) {
			return nil, fmt.Errorf("ca: sign %s: signing certificate %q is valid from %s to %s, not at %s: %w",
				id, iss.Cert.Subject, iss.Cert.NotBefore.UTC().Format(time.RFC3339), iss.Cert.NotAfter.UTC().Format(time.RFC3339),
				now.UTC().Format(time.RFC3339), ErrIssuerExpired)
		}
	}
	if ttl == 0 {
		ttl = c.defaultTTL
	}
	ttl = min(ttl, c.maxTTL)
	notAfter := now.Add(ttl)
	for _, iss := range []Issuer{c.signer, c.root} {
		if notAfter.After(iss.Cert.NotAfter) {
			notAfter = iss.Cert.NotAfter
		}
	}
	notBefore := now.Add(-c.skew)
	if notBefore.Before(c.signer.Cert.NotBefore) {
		notBefore = c.signer.Cert.NotBefore
	}

	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.signer.Cert, csr.PublicKey, c.signer.Key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: sign %s: parse issued certificate: %w", id, err)
	}
	return &Issued{
		ID:           id,
		Certificates: append([]*x509.Certificate{leaf}, c.chain...),
		NotAfter:     leaf.NotAfter,
	}, nil
}

// checkCSR parses and validates a CSR and returns the requested identity.
func (c *CA) checkCSR(der []byte) (*x509.CertificateRequest, spiffeid.ID, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: %w: %w", ErrMalformedCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: %w: %w", ErrBadCSRSignature, err)
	}
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: CSR key is %s: %w", describeKey(csr), ErrUnsupportedKey)
	}
	var forbidden []string
	for _, n := range csr.DNSNames {
		forbidden = append(forbidden, "DNS:"+n)
	}
	for _, ip := range csr.IPAddresses {
		forbidden = append(forbidden, "IP:"+ip.String())
	}
	for _, e := range csr.EmailAddresses {
		forbidden = append(forbidden, "email:"+e)
	}
	if len(forbidden) > 0 {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: CSR has %s; only one spiffe:// URI SAN is allowed: %w", strings.Join(forbidden, ", "), ErrForbiddenSAN)
	}
	switch len(csr.URIs) {
	case 0:
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: CSR must carry one spiffe://%s/ns/<namespace>/sa/<serviceaccount> URI SAN: %w", c.td, ErrMissingURISAN)
	case 1:
	default:
		uris := make([]string, len(csr.URIs))
		for i, u := range csr.URIs {
			uris[i] = u.String()
		}
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: CSR has %d URI SANs %q: %w", len(uris), uris, ErrMultipleURISANs)
	}
	sid, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: URI SAN %q: %w: %w", csr.URIs[0], ErrNotSPIFFEID, err)
	}
	if !sid.MemberOf(c.td) {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: %s is in trust domain %q, this CA signs for %q: %w", sid, sid.TrustDomain(), c.td, ErrForeignTrustDomain)
	}
	if _, err := identity.FromSPIFFEID(sid); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("ca: sign: %w: %w", ErrInvalidIdentity, err)
	}
	return csr, sid, nil
}

func describeKey(csr *x509.CertificateRequest) string {
	switch pub := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + pub.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", pub.N.BitLen())
	default:
		return csr.PublicKeyAlgorithm.String()
	}
}
