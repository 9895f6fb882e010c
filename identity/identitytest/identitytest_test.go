package identitytest_test

import (
	"crypto/x509"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/identitytest"
)

func TestIssue(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []identitytest.Option
		wantChain int
	}{
		{name: "root", wantChain: 2},
		{name: "intermediate", opts: []identitytest.Option{identitytest.WithIntermediate()}, wantChain: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := identitytest.New(t, "cluster.local", tc.opts...)
			svid := c.Issue(t, "ns", "sa")
			if want := c.ID("ns", "sa"); svid.ID != want {
				t.Errorf("ID = %v, want %v", svid.ID, want)
			}
			id, chains, err := x509svid.Verify(svid.Certificates, c.Bundle())
			if err != nil || id != svid.ID {
				t.Fatalf("Verify = %v, %v", id, err)
			}
			if len(chains[0]) != tc.wantChain {
				t.Errorf("verified chain length %d, want %d", len(chains[0]), tc.wantChain)
			}
			leaf := svid.Certificates[0]
			if ttl := leaf.NotAfter.Sub(leaf.NotBefore); ttl != ca.DefaultTTL+ca.DefaultClockSkew {
				t.Errorf("validity %v, want 24h5m", ttl)
			}
			if _, err := x509svid.ParseRaw(rawChain(svid), mustPKCS8(t, svid)); err != nil {
				t.Errorf("SVID does not parse as a go-spiffe X509-SVID: %v", err)
			}
			if c.CA().TrustDomain() != c.TrustDomain() || c.Root() == nil {
				t.Error("accessors disagree")
			}
			cert := c.Cert(t, "ns", "sa")
			if cert.Leaf == nil || len(cert.Certificate) != len(svid.Certificates) || cert.PrivateKey == nil {
				t.Errorf("Cert returned %d certs, leaf %v", len(cert.Certificate), cert.Leaf != nil)
			}
		})
	}
}

func TestIssueOptions(t *testing.T) {
	c := identitytest.New(t, "cluster.local")
	now := time.Now()

	expired := c.Issue(t, "ns", "sa", identitytest.Expired()).Certificates[0]
	if !expired.NotAfter.Before(now) {
		t.Errorf("Expired(): NotAfter %v is not in the past", expired.NotAfter)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{expired}, c.Bundle()); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired certificate verifies: %v", err)
	}

	nb := now.Add(-48 * time.Hour).Truncate(time.Second)
	old := c.Issue(t, "ns", "sa", identitytest.WithNotBefore(nb), identitytest.WithTTL(time.Hour)).Certificates[0]
	if !old.NotBefore.Equal(nb) || !old.NotAfter.Equal(nb.Add(ca.DefaultClockSkew+time.Hour)) {
		t.Errorf("WithNotBefore: validity %v..%v", old.NotBefore, old.NotAfter)
	}

	long := c.Issue(t, "ns", "sa", identitytest.WithTTL(72*time.Hour)).Certificates[0]
	if got := long.NotAfter.Sub(long.NotBefore); got != 72*time.Hour+ca.DefaultClockSkew {
		t.Errorf("WithTTL(72h): validity %v", got)
	}

	hostile := c.Issue(t, "ns", "sa", identitytest.WithURI("spiffe://evil.example/ns/ns/sa/sa", "https://example.com"))
	if n := len(hostile.Certificates[0].URIs); n != 2 {
		t.Errorf("WithURI: %d URIs", n)
	}
	if !hostile.ID.IsZero() {
		t.Errorf("WithURI with two URIs: ID %v, want zero", hostile.ID)
	}
	foreign := c.Issue(t, "ns", "sa", identitytest.WithURI("spiffe://evil.example/ns/ns/sa/sa"))
	if foreign.ID.String() != "spiffe://evil.example/ns/ns/sa/sa" {
		t.Errorf("WithURI: ID %v", foreign.ID)
	}
	none := c.Issue(t, "ns", "sa", identitytest.WithURI())
	if len(none.Certificates[0].URIs) != 0 {
		t.Error("WithURI(): certificate has URIs")
	}
	dns := c.Issue(t, "ns", "sa", identitytest.WithTemplate(func(c *x509.Certificate) { c.DNSNames = []string{"x.example"} }))
	if got := dns.Certificates[0].DNSNames; len(got) != 1 || dns.ID != c.ID("ns", "sa") {
		t.Errorf("WithTemplate: DNS %v, ID %v", got, dns.ID)
	}
}

func TestIDPanicsOnInvalidInput(t *testing.T) {
	c := identitytest.New(t, "cluster.local")
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "identitytest: identity: namespace") {
			t.Errorf("recover() = %v", r)
		}
	}()
	c.ID("Bad_NS", "sa")
}

// fakeTB captures Fatalf; it ends the calling goroutine like testing does.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func failMessage(fn func(tb testing.TB)) string {
	f := &fakeTB{TB: nil}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.msg
}

func TestHelpersFailClearly(t *testing.T) {
	c := identitytest.New(t, "cluster.local")
	tests := []struct {
		name string
		fn   func(tb testing.TB)
		want string
	}{
		{"bad trust domain", func(tb testing.TB) { identitytest.New(tb, "spiffe://x") }, `identitytest: trust domain "spiffe://x"`},
		{"bad service account", func(tb testing.TB) { c.Issue(tb, "ns", "Bad") }, "identitytest: identity: service account"},
		{"empty expected set", func(tb testing.TB) { c.ClientTLS(tb, "ns", "sa") }, "expected peer set is empty"},
		{"not-before too old", func(tb testing.TB) {
			c.Issue(tb, "ns", "sa", identitytest.WithNotBefore(time.Now().Add(-2*365*24*time.Hour)))
		}, "signing certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := failMessage(tt.fn); !strings.Contains(got, tt.want) {
				t.Errorf("failure message %q lacks %q", got, tt.want)
			}
		})
	}
}

func rawChain(s *x509svid.SVID) []byte {
	var out []byte
	for _, c := range s.Certificates {
		out = append(out, c.Raw...)
	}
	return out
}

func mustPKCS8(t *testing.T, s *x509svid.SVID) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(s.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
