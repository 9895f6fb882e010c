package caapi_test

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
)

func TestCertificatesPEM(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	var roots []*x509.Certificate
	for range 2 {
		r, err := ca.NewSelfSignedRoot(td, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, r.Cert)
	}
	data := caapi.EncodeCertificates(roots)
	got, err := caapi.ParseCertificates(data)
	if err != nil || len(got) != 2 || !got[0].Equal(roots[0]) || !got[1].Equal(roots[1]) {
		t.Fatalf("round trip: %v, %d certificates", err, len(got))
	}
	for _, tt := range []struct{ in, want string }{
		{"", "no PEM certificate"},
		{"garbage", "no PEM certificate"},
		{string(data) + "garbage", "trailing data"},
		{"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `"PRIVATE KEY"`},
		{"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x509"},
	} {
		if _, err := caapi.ParseCertificates([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseCertificates(%.20q) = %v, want %q", tt.in, err, tt.want)
		}
	}
}
