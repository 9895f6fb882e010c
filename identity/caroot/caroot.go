package caroot

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
)

// Defaults for Config fields left empty, and the keys of the Secret and
// ConfigMap.
const (
	DefaultNamespace  = "strait-system"
	DefaultSecretName = "strait-ca-root"
	DefaultBundleName = "strait-ca-bundle"

	KeyCert   = "ca.crt"     // Secret: the signing root
	KeyKey    = "ca.key"     // Secret: its private key
	KeyBundle = "bundle.pem" // Secret, optional: the bundle to publish
	KeyRoots  = "roots.pem"  // ConfigMap: the published bundle
)

// ErrInvalidSecret: the Secret exists but cannot be used as a root.
var ErrInvalidSecret = errors.New("invalid CA root secret")

// Config says where the root and bundle live.
type Config struct {
	// Client talks to the API server. Required.
	Client kubernetes.Interface
	// Namespace of the Secret and ConfigMap (default strait-system).
	Namespace string
	// SecretName (default strait-ca-root) and BundleName (default
	// strait-ca-bundle).
	SecretName, BundleName string
	// TrustDomain the root signs for. Required.
	TrustDomain spiffeid.TrustDomain
	// RootTTL is the lifetime of a generated root (default ca.DefaultRootTTL).
	RootTTL time.Duration
	// Logger (default: none).
	Logger *zap.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c Config) populate() (Config, error) {
	if c.Client == nil {
		return c, fmt.Errorf("caroot: Client is nil: %w", ca.ErrInvalidConfig)
	}
	if c.TrustDomain.IsZero() {
		return c, fmt.Errorf("caroot: trust domain is empty: %w", ca.ErrInvalidConfig)
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.SecretName == "" {
		c.SecretName = DefaultSecretName
	}
	if c.BundleName == "" {
		c.BundleName = DefaultBundleName
	}
	if c.RootTTL == 0 {
		c.RootTTL = ca.DefaultRootTTL
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Root is the loaded signing root and the bundle to publish.
type Root struct {
	// Issuer signs: ca.crt and ca.key.
	Issuer ca.Issuer
	// Bundle is every trusted root, Issuer.Cert first.
	Bundle []*x509.Certificate
	// Created is true when this call generated the root and created the Secret.
	Created bool
}

// Load returns the root kept in the Secret, creating the Secret with a new
// root if it does not exist (see the package documentation for the race
// between replicas).
func Load(ctx context.Context, cfg Config) (*Root, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	secrets := cfg.Client.CoreV1().Secrets(cfg.Namespace)
	where := cfg.Namespace + "/" + cfg.SecretName
	s, err := secrets.Get(ctx, cfg.SecretName, metav1.GetOptions{})
	if err == nil {
		return parseSecret(cfg, s)
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("caroot: get secret %s: %w", where, err)
	}

	iss, err := ca.NewSelfSignedRoot(cfg.TrustDomain, cfg.RootTTL, ca.WithIssuerNow(cfg.Now))
	if err != nil {
		return nil, fmt.Errorf("caroot: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(iss.Key)
	if err != nil {
		return nil, fmt.Errorf("caroot: marshal key: %w", err)
	}
	s = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: cfg.SecretName, Namespace: cfg.Namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "strait-ca", "app.kubernetes.io/part-of": "strait"},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			KeyCert: caapi.EncodeCertificates([]*x509.Certificate{iss.Cert}),
			KeyKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		},
	}
	_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	switch {
	case err == nil:
		cfg.Logger.Info("created a new CA root", zap.String("secret", where),
			zap.Time("not_after", iss.Cert.NotAfter), zap.String("serial", iss.Cert.SerialNumber.Text(16)))
		return &Root{Issuer: iss, Bundle: []*x509.Certificate{iss.Cert}, Created: true}, nil
	case apierrors.IsAlreadyExists(err):
		// Another replica created it between our Get and Create: use theirs.
		s, err = secrets.Get(ctx, cfg.SecretName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("caroot: get secret %s after losing the create race: %w", where, err)
		}
		cfg.Logger.Info("another replica created the CA root; using it", zap.String("secret", where))
		return parseSecret(cfg, s)
	default:
		return nil, fmt.Errorf("caroot: create secret %s: %w", where, err)
	}
}

func parseSecret(cfg Config, s *corev1.Secret) (*Root, error) {
	where := s.Namespace + "/" + s.Name
	certPEM, keyPEM := s.Data[KeyCert], s.Data[KeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("caroot: secret %s must hold both %s and %s (it has %s); restore it or delete it to create a new root: %w",
			where, KeyCert, KeyKey, keysOf(s.Data), ErrInvalidSecret)
	}
	certs, err := caapi.ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("caroot: secret %s: %s: %w: %w", where, KeyCert, err, ErrInvalidSecret)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("caroot: secret %s: %s holds %d certificates, want 1: %w", where, KeyCert, len(certs), ErrInvalidSecret)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("caroot: secret %s: %s: %w: %w", where, KeyKey, err, ErrInvalidSecret)
	}
	iss := ca.Issuer{Cert: certs[0], Key: key}
	// ca.New checks the rest (CA flag, certSign, key match, trust domain);
	// run it now so a bad Secret fails here with the Secret's name.
	if _, err := ca.New(ca.Config{TrustDomain: cfg.TrustDomain, Root: iss}); err != nil {
		return nil, fmt.Errorf("caroot: secret %s: %w: %w", where, err, ErrInvalidSecret)
	}
	if now := cfg.Now(); !now.Before(iss.Cert.NotAfter) {
		return nil, fmt.Errorf("caroot: secret %s: root expired at %s; rotate it (see docs/operations.md): %w",
			where, iss.Cert.NotAfter.UTC().Format(time.RFC3339), ca.ErrIssuerExpired)
	}
	bundle := []*x509.Certificate{iss.Cert}
	if b, ok := s.Data[KeyBundle]; ok {
		extra, err := caapi.ParseCertificates(b)
		if err != nil {
			return nil, fmt.Errorf("caroot: secret %s: %s: %w: %w", where, KeyBundle, err, ErrInvalidSecret)
		}
		found := false
		for _, c := range extra {
			if c.Equal(iss.Cert) {
				found = true
				continue
			}
			if !c.IsCA {
				return nil, fmt.Errorf("caroot: secret %s: %s holds %q, which is not a CA certificate: %w", where, KeyBundle, c.Subject, ErrInvalidSecret)
			}
			bundle = append(bundle, c)
		}
		if !found {
			// Publishing a bundle without the signing root would make every
			// certificate the CA issues unverifiable.
			return nil, fmt.Errorf("caroot: secret %s: %s does not contain %s: %w", where, KeyBundle, KeyCert, ErrInvalidSecret)
		}
	}
	return &Root{Issuer: iss, Bundle: bundle}, nil
}

func keysOf(m map[string][]byte) string {
	if len(m) == 0 {
		return "no keys"
	}
	return strings.Join(slices.Sorted(maps.Keys(m)), ", ")
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q, want PRIVATE KEY or EC PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", key)
	}
	return signer, nil
}

// PublishBundle writes bundle to the ConfigMap's roots.pem, creating or
// updating it (retrying on conflicts); it does nothing if it already holds
// exactly that.
func PublishBundle(ctx context.Context, cfg Config, bundle []*x509.Certificate) error {
	cfg, err := cfg.populate()
	if err != nil {
		return err
	}
	if len(bundle) == 0 {
		return fmt.Errorf("caroot: publish: empty bundle: %w", ca.ErrInvalidConfig)
	}
	cms := cfg.Client.CoreV1().ConfigMaps(cfg.Namespace)
	where := cfg.Namespace + "/" + cfg.BundleName
	want := string(caapi.EncodeCertificates(bundle))
	var lastErr error
	for range 5 {
		cm, err := cms.Get(ctx, cfg.BundleName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{
					Name: cfg.BundleName, Namespace: cfg.Namespace,
					Labels: map[string]string{"app.kubernetes.io/name": "strait-ca", "app.kubernetes.io/part-of": "strait"},
				},
				Data: map[string]string{KeyRoots: want},
			}, metav1.CreateOptions{})
			if err == nil {
				cfg.Logger.Info("published the trust bundle", zap.String("configmap", where), zap.Int("roots", len(bundle)))
				return nil
			}
			if !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("caroot: create configmap %s: %w", where, err)
			}
			lastErr = err
		case err != nil:
			return fmt.Errorf("caroot: get configmap %s: %w", where, err)
		case cm.Data[KeyRoots] == want:
			return nil
		default:
			cm = cm.DeepCopy()
			if cm.Data == nil {
				cm.Data = map[string]string{}
			}
			cm.Data[KeyRoots] = want
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
			if err == nil {
				cfg.Logger.Info("updated the trust bundle", zap.String("configmap", where), zap.Int("roots", len(bundle)))
				return nil
			}
			if !apierrors.IsConflict(err) {
				return fmt.Errorf("caroot: update configmap %s: %w", where, err)
			}
			lastErr = err
		}
	}
	return fmt.Errorf("caroot: publish configmap %s: gave up after repeated races: %w", where, lastErr)
}
