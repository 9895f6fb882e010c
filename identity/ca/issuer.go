package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults used when a Config or constructor leaves a value zero.
const (
	// DefaultTTL is the lifetime of an issued workload certificate.
	DefaultTTL = 24 * time.Hour
	// DefaultClockSkew is how far NotBefore is backdated so that peers whose
	// clocks lag slightly still accept a fresh certificate.
	DefaultClockSkew = 5 * time.Minute
	// DefaultRootTTL is the lifetime of a root created by LoadOrCreateFileRoot.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// DefaultIntermediateTTL is a conventional intermediate lifetime.
	DefaultIntermediateTTL = 365 * 24 * time.Hour
)

// Issuer is a signing certificate and its private key: a root or an
// intermediate CA.
type Issuer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// IssuerOption adjusts NewSelfSignedRoot and NewIntermediate.
type IssuerOption func(*issuerOptions)

type issuerOptions struct {
	now       func() time.Time
	notBefore time.Time
}

// WithIssuerNow sets the clock used to compute the validity window (default time.Now).
func WithIssuerNow(now func() time.Time) IssuerOption {
	return func(o *issuerOptions) { o.now = now }
}

// WithNotBefore sets NotBefore explicitly instead of now minus DefaultClockSkew;
// tests use it to backdate a root so they can issue already-expired leaves.
func WithNotBefore(t time.Time) IssuerOption {
	return func(o *issuerOptions) { o.notBefore = t }
}

// NewSelfSignedRoot generates an ECDSA P-256 root CA for td, valid from now
// (minus DefaultClockSkew) for ttl: CA=true, keyUsage certSign|cRLSign, URI
// SAN spiffe://<td>, subject O=strait.
func NewSelfSignedRoot(td spiffeid.TrustDomain, ttl time.Duration, opts ...IssuerOption) (Issuer, error) {
	if td.IsZero() {
		return Issuer{}, fmt.Errorf("ca: new root: trust domain is empty: %w", ErrInvalidConfig)
	}
	if ttl <= 0 {
		return Issuer{}, fmt.Errorf("ca: new root: ttl %v must be positive: %w", ttl, ErrInvalidConfig)
	}
	o := applyIssuerOptions(opts)
	now := o.now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new root: generate key: %w", err)
	}
	tmpl, err := caTemplate(td, pkix.Name{Organization: []string{"strait"}}, o.notBeforeOr(now), now.Add(ttl))
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new root: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new root: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new root: parse: %w", err)
	}
	return Issuer{Cert: cert, Key: key}, nil
}

// NewIntermediate generates an ECDSA P-256 intermediate CA for td signed by
// parent, valid for ttl but never beyond parent's NotAfter. It may sign
// leaves only (MaxPathLen 0).
func NewIntermediate(parent Issuer, td spiffeid.TrustDomain, ttl time.Duration, opts ...IssuerOption) (Issuer, error) {
	if err := parent.validate(td); err != nil {
		return Issuer{}, fmt.Errorf("ca: new intermediate: parent: %w", err)
	}
	if ttl <= 0 {
		return Issuer{}, fmt.Errorf("ca: new intermediate: ttl %v must be positive: %w", ttl, ErrInvalidConfig)
	}
	o := applyIssuerOptions(opts)
	now := o.now()
	notAfter := now.Add(ttl)
	if notAfter.After(parent.Cert.NotAfter) {
		notAfter = parent.Cert.NotAfter
	}
	if !now.Before(notAfter) {
		return Issuer{}, fmt.Errorf("ca: new intermediate: parent expired at %s: %w", parent.Cert.NotAfter.UTC().Format(time.RFC3339), ErrIssuerExpired)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new intermediate: generate key: %w", err)
	}
	tmpl, err := caTemplate(td, pkix.Name{Organization: []string{"strait"}, CommonName: "strait intermediate CA"}, o.notBeforeOr(now), notAfter)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new intermediate: %w", err)
	}
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, key.Public(), parent.Key)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new intermediate: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Issuer{}, fmt.Errorf("ca: new intermediate: parse: %w", err)
	}
	return Issuer{Cert: cert, Key: key}, nil
}

func applyIssuerOptions(opts []IssuerOption) issuerOptions {
	o := issuerOptions{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	return o
}

func (o issuerOptions) notBeforeOr(now time.Time) time.Time {
	if !o.notBefore.IsZero() {
		return o.notBefore
	}
	return now.Add(-DefaultClockSkew)
}

func caTemplate(td spiffeid.TrustDomain, subject pkix.Name, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{td.ID().URL()},
	}, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// validate checks that iss can sign for td: a CA certificate with certSign,
// whose key matches, and whose URI SANs (if any) name td.
func (iss Issuer) validate(td spiffeid.TrustDomain) error {
	switch {
	case iss.Cert == nil:
		return fmt.Errorf("certificate is nil: %w", ErrInvalidConfig)
	case iss.Key == nil:
		return fmt.Errorf("private key is nil: %w", ErrInvalidConfig)
	case !iss.Cert.BasicConstraintsValid || !iss.Cert.IsCA:
		return fmt.Errorf("certificate %q is not a CA (basicConstraints CA=false): %w", iss.Cert.Subject, ErrInvalidConfig)
	case iss.Cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("certificate %q lacks keyUsage certSign: %w", iss.Cert.Subject, ErrInvalidConfig)
	}
	pub, ok := iss.Key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(iss.Cert.PublicKey) {
		return fmt.Errorf("private key does not match certificate %q: %w", iss.Cert.Subject, ErrInvalidConfig)
	}
	for _, u := range iss.Cert.URIs {
		got, err := spiffeid.TrustDomainFromURI(u)
		if err != nil {
			return fmt.Errorf("certificate URI SAN %q is not a SPIFFE ID: %w: %w", u, err, ErrInvalidConfig)
		}
		if got != td {
			return fmt.Errorf("certificate is for trust domain %q, not %q: %w", got, td, ErrInvalidConfig)
		}
	}
	return nil
}
