package caroot

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func newRoot(t *testing.T, td spiffeid.TrustDomain, ttl time.Duration, opts ...ca.IssuerOption) (ca.Issuer, []byte, []byte) {
	t.Helper()
	iss, err := ca.NewSelfSignedRoot(td, ttl, opts...)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(iss.Key)
	if err != nil {
		t.Fatal(err)
	}
	return iss, caapi.EncodeCertificates([]*x509.Certificate{iss.Cert}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func secret(data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "strait-system", Name: "strait-ca-root"}, Data: data}
}

// nopClient satisfies Config.Client; parseSecret never calls it.
type nopClient struct{ kubernetes.Interface }

func TestParseSecret(t *testing.T) {
	cfg, err := Config{Client: nopClient{}, TrustDomain: td}.populate()
	if err != nil {
		t.Fatal(err)
	}
	cur, curCrt, curKey := newRoot(t, td, 24*time.Hour)
	old, oldCrt, _ := newRoot(t, td, 24*time.Hour)
	_, otherCrt, otherKey := newRoot(t, spiffeid.RequireTrustDomainFromString("other.example"), 24*time.Hour)
	_, expCrt, expKey := newRoot(t, td, time.Hour, ca.WithIssuerNow(func() time.Time { return time.Now().Add(-2 * time.Hour) }))
	sec1DER, err := x509.MarshalECPrivateKey(cur.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1DER})

	ok, err := parseSecret(cfg, secret(map[string][]byte{KeyCert: curCrt, KeyKey: curKey}))
	if err != nil || !ok.Issuer.Cert.Equal(cur.Cert) || len(ok.Bundle) != 1 {
		t.Fatalf("plain root: %v", err)
	}
	if _, err := parseSecret(cfg, secret(map[string][]byte{KeyCert: curCrt, KeyKey: sec1})); err != nil {
		t.Errorf("SEC1 key (openssl ecparam -genkey): %v", err)
	}
	rot, err := parseSecret(cfg, secret(map[string][]byte{KeyCert: curCrt, KeyKey: curKey, KeyBundle: append(append([]byte{}, oldCrt...), curCrt...)}))
	if err != nil || len(rot.Bundle) != 2 || !rot.Bundle[0].Equal(cur.Cert) || !rot.Bundle[1].Equal(old.Cert) {
		t.Fatalf("rotation bundle: %v (%d roots)", err, len(rot.Bundle))
	}

	tests := []struct {
		name string
		data map[string][]byte
		want string
	}{
		{"no keys", map[string][]byte{}, "must hold both ca.crt and ca.key (it has no keys)"},
		{"cert only", map[string][]byte{KeyCert: curCrt}, "(it has ca.crt)"},
		{"key only", map[string][]byte{KeyKey: curKey}, "(it has ca.key)"},
		{"two certs in ca.crt", map[string][]byte{KeyCert: append(append([]byte{}, curCrt...), oldCrt...), KeyKey: curKey}, "holds 2 certificates"},
		{"garbage cert", map[string][]byte{KeyCert: []byte("nope"), KeyKey: curKey}, "no PEM certificate"},
		{"garbage key", map[string][]byte{KeyCert: curCrt, KeyKey: []byte("nope")}, "no PEM block"},
		{"mismatched key", map[string][]byte{KeyCert: curCrt, KeyKey: otherKey}, "does not match"},
		{"other trust domain", map[string][]byte{KeyCert: otherCrt, KeyKey: otherKey}, `"other.example"`},
		{"expired", map[string][]byte{KeyCert: expCrt, KeyKey: expKey}, "expired"},
		{"bundle without the signing root", map[string][]byte{KeyCert: curCrt, KeyKey: curKey, KeyBundle: oldCrt}, "bundle.pem does not contain ca.crt"},
		{"bundle garbage", map[string][]byte{KeyCert: curCrt, KeyKey: curKey, KeyBundle: []byte("x")}, "bundle.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSecret(cfg, secret(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "strait-system/strait-ca-root") {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalidSecret) && !errors.Is(err, ca.ErrIssuerExpired) {
				t.Errorf("error %v matches neither ErrInvalidSecret nor ca.ErrIssuerExpired", err)
			}
		})
	}
}
