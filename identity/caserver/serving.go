package caserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/strait-mesh/strait/identity/ca"
)

// DefaultServingTTL is the lifetime of the CA's own serving certificate;
// it is replaced at half-life.
const DefaultServingTTL = 30 * 24 * time.Hour

// servingCert issues and renews the CA's TLS serving certificate for its
// Service DNS names, signed directly by the root (identity/ca signs only
// SPIFFE SVIDs, never DNS names).
type servingCert struct {
	root  ca.Issuer
	names []string
	ttl   time.Duration
	now   func() time.Time

	mu   sync.Mutex
	cert *tls.Certificate
	renw time.Time
}

func newServingCert(root ca.Issuer, names []string, ttl time.Duration, now func() time.Time) (*servingCert, error) {
	s := &servingCert{root: root, names: names, ttl: ttl, now: now}
	if _, err := s.get(); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (s *servingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.get() }

func (s *servingCert) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cert != nil && now.Before(s.renw) {
		return s.cert, nil
	}
	c, err := issueServing(s.root, s.names, s.ttl, now)
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			return s.cert, nil // keep serving the current one; retry next handshake
		}
		return nil, err
	}
	s.cert = c
	s.renw = c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore) / 2)
	return c, nil
}

func issueServing(root ca.Issuer, names []string, ttl time.Duration, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("caserver: serving certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("caserver: serving certificate: %w", err)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)),
		Subject:      pkix.Name{Organization: []string{"strait"}, CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-ca.DefaultClockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, key.Public(), root.Key)
	if err != nil {
		return nil, fmt.Errorf("caserver: serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("caserver: serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
