package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity/ca"
)

var (
	td        = spiffeid.RequireTrustDomainFromString("cluster.local")
	workload  = spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-a/sa/sa-a")
	fixedNow  = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	sentinels = []error{
		ca.ErrMalformedCSR, ca.ErrBadCSRSignature, ca.ErrUnsupportedKey, ca.ErrMissingURISAN,
		ca.ErrMultipleURISANs, ca.ErrNotSPIFFEID, ca.ErrForbiddenSAN, ca.ErrForeignTrustDomain,
		ca.ErrInvalidIdentity, ca.ErrNotAuthorized, ca.ErrInvalidTTL, ca.ErrIssuerExpired,
	}
)

// root is shared by tests: generating one per test is cheap, but sharing
// keeps certificates comparable.
var testRoot = sync.OnceValue(func() ca.Issuer {
	root, err := ca.NewSelfSignedRoot(td, 10*365*24*time.Hour, ca.WithIssuerNow(func() time.Time { return fixedNow.Add(-24 * time.Hour) }))
	if err != nil {
		panic(err)
	}
	return root
})

func newCA(t testing.TB, mutate func(*ca.Config)) *ca.CA {
	t.Helper()
	cfg := ca.Config{
		TrustDomain: td,
		Root:        testRoot(),
		Authorizer:  ca.AllowAll(),
		Now:         func() time.Time { return fixedNow },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := ca.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var p256Key = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// csr builds a CSR signed by key (default: a P-256 key) from tmpl.
func csr(t testing.TB, tmpl *x509.CertificateRequest, key crypto.Signer) []byte {
	t.Helper()
	if key == nil {
		key = p256Key()
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func uris(t testing.TB, ss ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func goodCSR(t testing.TB) []byte {
	return csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}, nil)
}

func TestSignIssuesSVIDProfile(t *testing.T) {
	c := newCA(t, nil)
	got, err := c.Sign(context.Background(), ca.Caller{}, goodCSR(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := got.Leaf()
	if got.ID != workload || len(got.Certificates) != 1 || !got.NotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("Issued = %+v", got)
	}
	checks := []struct {
		what string
		ok   bool
	}{
		{"exactly one URI SAN, the requested ID", len(leaf.URIs) == 1 && leaf.URIs[0].String() == workload.String()},
		{"no DNS/IP/email SANs", len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) == 0},
		{"keyUsage digitalSignature only", leaf.KeyUsage == x509.KeyUsageDigitalSignature},
		{"extKeyUsage serverAuth+clientAuth", slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})},
		{"basicConstraints CA=false", leaf.BasicConstraintsValid && !leaf.IsCA},
		{"ECDSA P-256 key from the CSR", p256Key().PublicKey.Equal(leaf.PublicKey)},
		{"default TTL 24h", leaf.NotAfter.Equal(fixedNow.Add(24 * time.Hour))},
		{"NotBefore backdated 5m", leaf.NotBefore.Equal(fixedNow.Add(-5 * time.Minute))},
		{"positive serial", leaf.SerialNumber.Sign() > 0},
		{"signed by the root", leaf.CheckSignatureFrom(testRoot().Cert) == nil},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("leaf: want %s", ch.what)
		}
	}
	id, _, err := x509svid.Verify(got.Certificates, c.Bundle(), x509svid.WithTime(fixedNow))
	if err != nil || id != workload {
		t.Errorf("go-spiffe Verify = %v, %v", id, err)
	}
	// Two signings of the same CSR get distinct serials.
	again, err := c.Sign(context.Background(), ca.Caller{}, goodCSR(t), 0)
	if err != nil || again.Leaf().SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("second signing: %v, same serial %v", err, again.Leaf().SerialNumber)
	}
}

func TestSignWithIntermediate(t *testing.T) {
	in, err := ca.NewIntermediate(testRoot(), td, 30*24*time.Hour, ca.WithIssuerNow(func() time.Time { return fixedNow.Add(-time.Hour) }))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Cert.IsCA || !in.Cert.MaxPathLenZero || in.Cert.CheckSignatureFrom(testRoot().Cert) != nil {
		t.Errorf("intermediate profile: CA=%v MaxPathLenZero=%v", in.Cert.IsCA, in.Cert.MaxPathLenZero)
	}
	c := newCA(t, func(cfg *ca.Config) { cfg.Intermediate = &in })
	got, err := c.Sign(context.Background(), ca.Caller{}, goodCSR(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Certificates) != 2 || got.Certificates[1] != in.Cert {
		t.Fatalf("chain = %d certificates, want leaf+intermediate", len(got.Certificates))
	}
	if _, chains, err := x509svid.Verify(got.Certificates, c.Bundle(), x509svid.WithTime(fixedNow)); err != nil || len(chains[0]) != 3 {
		t.Errorf("Verify: %v", err)
	}
	if b := c.Bundle().X509Authorities(); len(b) != 1 || !b[0].Equal(testRoot().Cert) {
		t.Error("bundle must hold only the root")
	}
}

func TestSignRefusals(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)

	tampered := goodCSR(t)
	tampered[len(tampered)-1] ^= 0xff // the DER ends inside the signature BIT STRING

	// A CSR whose body names one key but which is signed by another.
	swapped := func() []byte {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		a := csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}, other)
		parsed, err := x509.ParseCertificateRequest(a)
		if err != nil {
			t.Fatal(err)
		}
		b := goodCSR(t)
		pb, _ := x509.ParseCertificateRequest(b)
		// Same length TBS (same template, both P-256): splice b's signature into a.
		out := slices.Clone(a)
		copy(out[len(out)-len(parsed.Signature):], pb.Signature[:min(len(pb.Signature), len(parsed.Signature))])
		return out
	}()

	tests := []struct {
		name   string
		der    []byte
		ttl    time.Duration
		mutate func(*ca.Config)
		caller ca.Caller
		want   error
		msg    string
	}{
		{name: "not DER", der: []byte("hello"), want: ca.ErrMalformedCSR},
		{name: "a certificate, not a CSR", der: testRoot().Cert.Raw, want: ca.ErrMalformedCSR},
		{name: "tampered signature", der: tampered, want: ca.ErrBadCSRSignature},
		{name: "signature by another key", der: swapped, want: ca.ErrBadCSRSignature},
		{name: "RSA 2048 key", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}, rsaKey), want: ca.ErrUnsupportedKey, msg: "CSR key is RSA 2048"},
		{name: "P-384 key", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}, p384), want: ca.ErrUnsupportedKey, msg: "ECDSA P-384"},
		{name: "Ed25519 key", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}}, edKey), want: ca.ErrUnsupportedKey, msg: "Ed25519"},
		{name: "no URI SAN", der: csr(t, &x509.CertificateRequest{}, nil), want: ca.ErrMissingURISAN},
		{name: "https URI", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "https://cluster.local/ns/a/sa/b")}, nil), want: ca.ErrNotSPIFFEID},
		{name: "spiffe URI with query", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "spiffe://cluster.local/ns/a/sa/b?x=1")}, nil), want: ca.ErrNotSPIFFEID},
		{name: "two URI SANs", der: csr(t, &x509.CertificateRequest{URIs: uris(t, workload.String(), "spiffe://cluster.local/ns/ns-b/sa/sa-b")}, nil), want: ca.ErrMultipleURISANs, msg: "2 URI SANs"},
		{name: "foreign trust domain", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "spiffe://evil.example/ns/a/sa/b")}, nil), want: ca.ErrForeignTrustDomain, msg: `trust domain "evil.example"`},
		{name: "DNS SAN", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}, DNSNames: []string{"api.example.com"}}, nil), want: ca.ErrForbiddenSAN, msg: "DNS:api.example.com"},
		{name: "IP SAN", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, nil), want: ca.ErrForbiddenSAN, msg: "IP:10.0.0.1"},
		{name: "email SAN", der: csr(t, &x509.CertificateRequest{URIs: []*url.URL{workload.URL()}, EmailAddresses: []string{"a@b.c"}}, nil), want: ca.ErrForbiddenSAN, msg: "email:a@b.c"},
		{name: "trust domain ID", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "spiffe://cluster.local")}, nil), want: ca.ErrInvalidIdentity, msg: "path must be /ns/<namespace>/sa/<serviceaccount>"},
		{name: "non-workload path", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "spiffe://cluster.local/ns/a/sa/b/extra")}, nil), want: ca.ErrInvalidIdentity},
		{name: "bad namespace", der: csr(t, &x509.CertificateRequest{URIs: uris(t, "spiffe://cluster.local/ns/A_B/sa/b")}, nil), want: ca.ErrInvalidIdentity, msg: "namespace"},
		{name: "default authorizer denies", der: goodCSR(t), mutate: func(c *ca.Config) { c.Authorizer = nil }, want: ca.ErrNotAuthorized, msg: "no authorizer configured"},
		{name: "AllowSelf refuses another identity", der: goodCSR(t), mutate: func(c *ca.Config) { c.Authorizer = ca.AllowSelf() },
			caller: ca.Caller{Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-b/sa/sa-b"), Node: "node-1"},
			want:   ca.ErrNotAuthorized, msg: `for spiffe://cluster.local/ns/ns-b/sa/sa-b on node "node-1"`},
		{name: "AllowSelf refuses an unauthenticated caller", der: goodCSR(t), mutate: func(c *ca.Config) { c.Authorizer = ca.AllowSelf() }, want: ca.ErrNotAuthorized, msg: "<unauthenticated>"},
		{name: "custom authorizer refusal", der: goodCSR(t), mutate: func(c *ca.Config) {
			c.Authorizer = ca.AuthorizerFunc(func(context.Context, ca.Caller, spiffeid.ID) error { return errors.New("pod not on this node") })
		}, want: ca.ErrNotAuthorized, msg: "not authorized: pod not on this node"},
		{name: "negative TTL", der: goodCSR(t), ttl: -time.Second, want: ca.ErrInvalidTTL},
		{name: "root expired", der: goodCSR(t), mutate: func(c *ca.Config) {
			c.Now = func() time.Time { return testRoot().Cert.NotAfter.Add(time.Second) }
		}, want: ca.ErrIssuerExpired},
		{name: "root not yet valid", der: goodCSR(t), mutate: func(c *ca.Config) {
			c.Now = func() time.Time { return testRoot().Cert.NotBefore.Add(-time.Second) }
		}, want: ca.ErrIssuerExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCA(t, tt.mutate)
			got, err := c.Sign(context.Background(), tt.caller, tt.der, tt.ttl)
			if got != nil || !errors.Is(err, tt.want) {
				t.Fatalf("Sign = %v, %v; want %v", got, err, tt.want)
			}
			for _, s := range sentinels {
				if s != tt.want && errors.Is(err, s) {
					t.Errorf("error %q also matches %v; refusals must be distinct", err, s)
				}
			}
			if !strings.HasPrefix(err.Error(), "ca: sign") {
				t.Errorf("error %q lacks the ca: sign prefix", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q lacks %q", err, tt.msg)
			}
		})
	}
}

func TestSignCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := newCA(t, nil).Sign(ctx, ca.Caller{}, goodCSR(t), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Sign with cancelled ctx = %v", err)
	}
}

func TestAuthorizers(t *testing.T) {
	ctx := context.Background()
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-b/sa/sa-b")
	if err := ca.AllowAll().Authorize(ctx, ca.Caller{}, workload); err != nil {
		t.Errorf("AllowAll: %v", err)
	}
	if err := ca.AllowSelf().Authorize(ctx, ca.Caller{Identity: workload}, workload); err != nil {
		t.Errorf("AllowSelf own identity: %v", err)
	}
	if err := ca.AllowSelf().Authorize(ctx, ca.Caller{Identity: workload}, other); err == nil {
		t.Error("AllowSelf allowed another identity")
	}
	if err := ca.DenyAll().Authorize(ctx, ca.Caller{Identity: workload}, workload); err == nil {
		t.Error("DenyAll allowed")
	}
	// AllowSelf through the CA succeeds for the caller's own identity.
	c := newCA(t, func(cfg *ca.Config) { cfg.Authorizer = ca.AllowSelf() })
	if _, err := c.Sign(ctx, ca.Caller{Identity: workload}, goodCSR(t), 0); err != nil {
		t.Errorf("AllowSelf via Sign: %v", err)
	}
	// An authorizer that already wraps ErrNotAuthorized is not double-wrapped.
	c = newCA(t, func(cfg *ca.Config) {
		cfg.Authorizer = ca.AuthorizerFunc(func(context.Context, ca.Caller, spiffeid.ID) error {
			return errors.Join(ca.ErrNotAuthorized, errors.New("node mismatch"))
		})
	})
	_, err := c.Sign(ctx, ca.Caller{}, goodCSR(t), 0)
	if !errors.Is(err, ca.ErrNotAuthorized) || strings.Count(err.Error(), "not authorized") != 1 {
		t.Errorf("error %q", err)
	}
}

func TestSignTTL(t *testing.T) {
	shortRoot, err := ca.NewSelfSignedRoot(td, 3*time.Hour, ca.WithIssuerNow(func() time.Time { return fixedNow.Add(-time.Hour) }))
	if err != nil {
		t.Fatal(err)
	}
	in, err := ca.NewIntermediate(testRoot(), td, 90*time.Minute, ca.WithIssuerNow(func() time.Time { return fixedNow.Add(-time.Minute) }))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		mutate func(*ca.Config)
		ttl    time.Duration
		want   time.Time // NotAfter
	}{
		{name: "zero means default 24h", want: fixedNow.Add(24 * time.Hour)},
		{name: "explicit shorter TTL", ttl: time.Hour, want: fixedNow.Add(time.Hour)},
		{name: "capped at default MaxTTL (= DefaultTTL)", ttl: 72 * time.Hour, want: fixedNow.Add(24 * time.Hour)},
		{name: "custom DefaultTTL", mutate: func(c *ca.Config) { c.DefaultTTL = 2 * time.Hour }, want: fixedNow.Add(2 * time.Hour)},
		{name: "capped at MaxTTL", mutate: func(c *ca.Config) { c.MaxTTL = 48 * time.Hour }, ttl: 72 * time.Hour, want: fixedNow.Add(48 * time.Hour)},
		{name: "within MaxTTL", mutate: func(c *ca.Config) { c.MaxTTL = 48 * time.Hour }, ttl: 36 * time.Hour, want: fixedNow.Add(36 * time.Hour)},
		{name: "never beyond the root", mutate: func(c *ca.Config) { c.Root = shortRoot }, want: shortRoot.Cert.NotAfter},
		{name: "never beyond the intermediate", mutate: func(c *ca.Config) { c.Intermediate = &in }, want: in.Cert.NotAfter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newCA(t, tt.mutate).Sign(context.Background(), ca.Caller{}, goodCSR(t), tt.ttl)
			if err != nil {
				t.Fatal(err)
			}
			if !got.NotAfter.Equal(tt.want) {
				t.Errorf("NotAfter = %v, want %v", got.NotAfter, tt.want)
			}
		})
	}
}

func TestSignBackdating(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*ca.Config)
		want   time.Time
	}{
		{name: "default 5m", want: fixedNow.Add(-5 * time.Minute)},
		{name: "configured 30s", mutate: func(c *ca.Config) { c.ClockSkew = 30 * time.Second }, want: fixedNow.Add(-30 * time.Second)},
		{name: "never before the signing certificate", mutate: func(c *ca.Config) {
			c.Now = func() time.Time { return testRoot().Cert.NotBefore.Add(time.Minute) }
		}, want: testRoot().Cert.NotBefore},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newCA(t, tt.mutate).Sign(context.Background(), ca.Caller{}, goodCSR(t), 0)
			if err != nil {
				t.Fatal(err)
			}
			if nb := got.Leaf().NotBefore; !nb.Equal(tt.want) {
				t.Errorf("NotBefore = %v, want %v", nb, tt.want)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	otherRoot, err := ca.NewSelfSignedRoot(spiffeid.RequireTrustDomainFromString("other.domain"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	unrelated, err := ca.NewSelfSignedRoot(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignIntermediate, err := ca.NewIntermediate(unrelated, td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leafAsRoot := func() ca.Issuer {
		got, err := newCA(t, nil).Sign(context.Background(), ca.Caller{}, goodCSR(t), 0)
		if err != nil {
			t.Fatal(err)
		}
		return ca.Issuer{Cert: got.Leaf(), Key: p256Key()}
	}()
	tests := []struct {
		name   string
		mutate func(*ca.Config)
		msg    string
	}{
		{"no trust domain", func(c *ca.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is empty"},
		{"no root", func(c *ca.Config) { c.Root = ca.Issuer{} }, "certificate is nil"},
		{"root without key", func(c *ca.Config) { c.Root.Key = nil }, "private key is nil"},
		{"key does not match", func(c *ca.Config) { c.Root.Key = p256Key() }, "does not match"},
		{"root of another trust domain", func(c *ca.Config) { c.Root = otherRoot }, `trust domain "other.domain"`},
		{"leaf as root", func(c *ca.Config) { c.Root = leafAsRoot }, "not a CA"},
		{"intermediate from another root", func(c *ca.Config) { c.Intermediate = &foreignIntermediate }, "not signed by the root"},
		{"default above max", func(c *ca.Config) { c.DefaultTTL, c.MaxTTL = 2*time.Hour, time.Hour }, "exceeds MaxTTL"},
		{"negative TTL", func(c *ca.Config) { c.DefaultTTL = -time.Hour }, "must not be negative"},
		{"negative skew", func(c *ca.Config) { c.ClockSkew = -time.Second }, "ClockSkew"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ca.Config{TrustDomain: td, Root: testRoot()}
			tt.mutate(&cfg)
			c, err := ca.New(cfg)
			if c != nil || !errors.Is(err, ca.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "ca: new: ") {
				t.Fatalf("New = %v, %v; want ErrInvalidConfig mentioning %q", c, err, tt.msg)
			}
		})
	}
}

func TestNewSelfSignedRoot(t *testing.T) {
	now := time.Now()
	root, err := ca.NewSelfSignedRoot(td, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := root.Cert
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	checks := []struct {
		what string
		ok   bool
	}{
		{"ECDSA P-256", ok && pub.Curve == elliptic.P256()},
		{"CA=true", cert.BasicConstraintsValid && cert.IsCA},
		{"keyUsage certSign|cRLSign", cert.KeyUsage == x509.KeyUsageCertSign|x509.KeyUsageCRLSign},
		{"URI SAN spiffe://cluster.local", len(cert.URIs) == 1 && cert.URIs[0].String() == "spiffe://cluster.local"},
		{"subject O=strait", slices.Equal(cert.Subject.Organization, []string{"strait"})},
		{"self-signed", cert.CheckSignatureFrom(cert) == nil},
		{"backdated", cert.NotBefore.Before(now.Add(-4 * time.Minute))},
		{"ttl", cert.NotAfter.Sub(now) > 47*time.Hour && cert.NotAfter.Sub(now) <= 48*time.Hour},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("root: want %s", ch.what)
		}
	}
	if _, err := ca.NewSelfSignedRoot(spiffeid.TrustDomain{}, time.Hour); !errors.Is(err, ca.ErrInvalidConfig) {
		t.Errorf("zero trust domain: %v", err)
	}
	if _, err := ca.NewSelfSignedRoot(td, 0); !errors.Is(err, ca.ErrInvalidConfig) {
		t.Errorf("zero ttl: %v", err)
	}
	in, err := ca.NewIntermediate(root, td, 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !in.Cert.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("intermediate outlives its root: %v > %v", in.Cert.NotAfter, root.Cert.NotAfter)
	}
	if _, err := ca.NewIntermediate(root, td, time.Hour, ca.WithIssuerNow(func() time.Time { return root.Cert.NotAfter })); !errors.Is(err, ca.ErrIssuerExpired) {
		t.Errorf("intermediate from expired root: %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	c := newCA(b, nil)
	der := goodCSR(b)
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if _, err := c.Sign(ctx, ca.Caller{}, der, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "signs/s")
}
