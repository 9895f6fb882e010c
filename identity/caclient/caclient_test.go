package caclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/caclient"
	"github.com/strait-mesh/strait/identity/certs"
)

const serverName = "strait-ca.strait-system.svc"

var (
	td  = spiffeid.RequireTrustDomainFromString("cluster.local")
	web = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
)

// fakeCA is an HTTPS server speaking caapi with a real identity/ca signer.
type fakeCA struct {
	srv    *httptest.Server
	dir    string
	tokens chan string // Authorization headers seen

	mu      sync.Mutex
	root    ca.Issuer
	signer  *ca.CA
	serving tls.Certificate
	reply   func(w http.ResponseWriter, r *http.Request) bool // true: handled
}

func newRoot(t testing.TB) ca.Issuer {
	t.Helper()
	r, err := ca.NewSelfSignedRoot(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func servingCert(t testing.TB, root ca.Issuer, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root.Cert, key.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newFakeCA(t *testing.T) *fakeCA {
	t.Helper()
	f := &fakeCA{dir: t.TempDir(), tokens: make(chan string, 100)}
	f.setRoot(t, newRoot(t))
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		c := f.serving
		return &c, nil
	}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	f.writeToken(t, "token-1")
	return f
}

// setRoot switches the signer and serving certificate to root and writes
// it to the roots file.
func (f *fakeCA) setRoot(t testing.TB, root ca.Issuer) {
	t.Helper()
	signer, err := ca.New(ca.Config{TrustDomain: td, Root: root, Authorizer: ca.AllowAll()})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.root, f.signer, f.serving = root, signer, servingCert(t, root, serverName)
	f.mu.Unlock()
	f.writeRoots(t, root.Cert)
}

func (f *fakeCA) writeRoots(t testing.TB, roots ...*x509.Certificate) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "roots.pem"), caapi.EncodeCertificates(roots), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeCA) writeToken(t testing.TB, tok string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, "token"), []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeCA) serve(w http.ResponseWriter, r *http.Request) {
	f.tokens <- r.Header.Get("Authorization")
	f.mu.Lock()
	reply, signer := f.reply, f.signer
	f.mu.Unlock()
	if reply != nil && reply(w, r) {
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != caapi.Path {
		http.Error(w, "wrong endpoint", http.StatusNotFound)
		return
	}
	var req caapi.CertificateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	block, _ := pem.Decode([]byte(req.CSR))
	if block == nil {
		http.Error(w, "no PEM", http.StatusBadRequest)
		return
	}
	issued, err := signer.Sign(r.Context(), ca.Caller{}, block.Bytes, time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var resp caapi.CertificateResponse
	for _, c := range issued.Certificates {
		resp.CertChain = append(resp.CertChain, string(caapi.EncodeCertificates([]*x509.Certificate{c})))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (f *fakeCA) setReply(fn func(w http.ResponseWriter, r *http.Request) bool) {
	f.mu.Lock()
	f.reply = fn
	f.mu.Unlock()
}

func (f *fakeCA) client(t testing.TB, mutate func(*caclient.Config)) *caclient.Client {
	t.Helper()
	cfg := caclient.Config{
		Addr: f.srv.Listener.Addr().String(), ServerName: serverName,
		TokenFile: filepath.Join(f.dir, "token"), RootsFile: filepath.Join(f.dir, "roots.pem"),
		TrustDomain: td, Timeout: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := caclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func manager(t testing.TB, c *caclient.Client) *certs.Manager {
	t.Helper()
	m, err := certs.New(certs.Config{Fetcher: c, FetchTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestFetchThroughCertManager(t *testing.T) {
	f := newFakeCA(t)
	c := f.client(t, func(cfg *caclient.Config) { cfg.TTL = time.Hour })
	svid, err := manager(t, c).Get(ctxT(t), web)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := c.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id != web {
		t.Fatalf("Verify = %v, %v", id, err)
	}
	if life := time.Until(svid.Certificates[0].NotAfter); life > time.Hour || life < 50*time.Minute {
		t.Errorf("requested TTL 1h, lifetime %v", life)
	}
	if got := <-f.tokens; got != "Bearer token-1" {
		t.Errorf("Authorization %q", got)
	}

	// The token file is read on every request: the kubelet rotates it.
	f.writeToken(t, "token-2")
	csr := newCSR(t, web)
	if _, err := c.Fetch(ctxT(t), web, csr); err != nil {
		t.Fatal(err)
	}
	if got := <-f.tokens; got != "Bearer token-2" {
		t.Errorf("after rotation, Authorization %q", got)
	}
}

func newCSR(t testing.TB, id spiffeid.ID) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestStatusErrors(t *testing.T) {
	f := newFakeCA(t)
	c := f.client(t, nil)
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
		is     error
		want   string
	}{
		{"403 with reason", 403, "application/json", `{"error":"no pod with service account shop/web on node node-b","reason":"PermissionDenied"}`,
			caclient.ErrPermissionDenied, "caclient: fetch spiffe://cluster.local/ns/shop/sa/web from " + f.srv.Listener.Addr().String() + ": 403 PermissionDenied: no pod with service account shop/web on node node-b"},
		{"401", 401, "application/json", `{"error":"token rejected","reason":"Unauthenticated"}`, caclient.ErrUnauthenticated, "401 Unauthenticated: token rejected"},
		{"400", 400, "application/json", `{"error":"bad CSR","reason":"InvalidRequest"}`, caclient.ErrInvalidRequest, "400 InvalidRequest: bad CSR"},
		{"500 not JSON", 500, "text/plain", "boom", caclient.ErrServer, "500: Internal Server Error: boom"},
		{"503 empty", 503, "", "", caclient.ErrServer, "503: Service Unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.setReply(func(w http.ResponseWriter, _ *http.Request) bool {
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
				return true
			})
			_, err := c.Fetch(ctxT(t), web, newCSR(t, web))
			var se *caclient.StatusError
			if !errors.Is(err, tt.is) || !errors.As(err, &se) || se.Code != tt.status || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %v containing %q", err, tt.is, tt.want)
			}
			if strings.Contains(err.Error(), "token-1") {
				t.Error("the token leaked into the error")
			}
		})
	}
}

func TestBadResponses(t *testing.T) {
	f := newFakeCA(t)
	c := f.client(t, nil)
	other := newRoot(t)
	otherCA, err := ca.New(ca.Config{TrustDomain: td, Root: other, Authorizer: ca.AllowAll()})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		body func(csr []byte) string
		want string
	}{
		{"not JSON", func([]byte) string { return "{" }, "unusable response"},
		{"empty chain", func([]byte) string { return `{"certChain":[]}` }, "empty certChain"},
		{"not PEM", func([]byte) string { return `{"certChain":["x"]}` }, "certChain[0]"},
		{"chain to a root not in the roots file", func(csr []byte) string {
			issued, err := otherCA.Sign(context.Background(), ca.Caller{}, csr, 0)
			if err != nil {
				t.Error(err)
			}
			b, _ := json.Marshal(caapi.CertificateResponse{CertChain: []string{string(caapi.EncodeCertificates(issued.Certificates))}})
			return string(b)
		}, "does not verify against the roots in"},
		{"another identity", func([]byte) string {
			f.mu.Lock()
			signer := f.signer
			f.mu.Unlock()
			issued, err := signer.Sign(context.Background(), ca.Caller{}, newCSR(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db")), 0)
			if err != nil {
				t.Error(err)
			}
			b, _ := json.Marshal(caapi.CertificateResponse{CertChain: []string{string(caapi.EncodeCertificates(issued.Certificates))}})
			return string(b)
		}, "certificate is for spiffe://cluster.local/ns/shop/sa/db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr := newCSR(t, web)
			f.setReply(func(w http.ResponseWriter, _ *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(tt.body(csr)))
				return true
			})
			_, err := c.Fetch(ctxT(t), web, csr)
			if !errors.Is(err, caclient.ErrBadResponse) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want ErrBadResponse with %q", err, tt.want)
			}
		})
	}
}

func TestTLSVerification(t *testing.T) {
	f := newFakeCA(t)
	// A server name the serving certificate does not carry.
	c := f.client(t, func(cfg *caclient.Config) { cfg.ServerName = "strait-ca.elsewhere.svc" })
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); err == nil || !strings.Contains(err.Error(), "certificate is valid for strait-ca.strait-system.svc") {
		t.Errorf("wrong server name: %v", err)
	}
	// Roots that do not include the CA's.
	dir := t.TempDir()
	foreign := filepath.Join(dir, "roots.pem")
	if err := os.WriteFile(foreign, caapi.EncodeCertificates([]*x509.Certificate{newRoot(t).Cert}), 0o644); err != nil {
		t.Fatal(err)
	}
	c = f.client(t, func(cfg *caclient.Config) { cfg.RootsFile = foreign })
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("foreign roots: %v", err)
	}
}

func TestRootsFileRotation(t *testing.T) {
	f := newFakeCA(t)
	c := f.client(t, func(cfg *caclient.Config) { cfg.BundleRefresh = time.Nanosecond })
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); err != nil {
		t.Fatal(err)
	}
	old := f.root
	// The CA moves to a new root; the mounted bundle now holds both.
	next := newRoot(t)
	f.setRoot(t, next)
	f.writeRoots(t, next.Cert, old.Cert)
	chain, err := c.Fetch(ctxT(t), web, newCSR(t, web))
	if err != nil {
		t.Fatalf("after the roots file changed: %v", err)
	}
	if chain[0].CheckSignatureFrom(next.Cert) != nil {
		t.Error("not signed by the new root")
	}
	b, err := c.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) != 2 {
		t.Fatalf("bundle: %v, %d roots", err, len(b.X509Authorities()))
	}
	if _, err := c.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err == nil {
		t.Error("bundle for a foreign trust domain")
	}
	// A roots file that turns to garbage keeps the last good roots.
	if err := os.WriteFile(filepath.Join(f.dir, "roots.pem"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); err != nil {
		t.Errorf("garbage roots file: %v", err)
	}
}

func TestTimeoutsAndMissingFiles(t *testing.T) {
	f := newFakeCA(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f.setReply(func(w http.ResponseWriter, r *http.Request) bool {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	c := f.client(t, func(cfg *caclient.Config) { cfg.Timeout = 200 * time.Millisecond })
	start := time.Now()
	_, err := c.Fetch(context.Background(), web, newCSR(t, web))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Errorf("hung server: %v after %v", err, time.Since(start))
	}
	// The caller's context is honoured too.
	c = f.client(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Fetch(ctx, web, newCSR(t, web)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("caller deadline: %v", err)
	}

	if err := os.Remove(filepath.Join(f.dir, "token")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); !errors.Is(err, caclient.ErrTokenUnavailable) {
		t.Errorf("missing token: %v", err)
	}
	f.writeToken(t, "  ")
	if _, err := c.Fetch(ctxT(t), web, newCSR(t, web)); !errors.Is(err, caclient.ErrTokenUnavailable) {
		t.Errorf("empty token: %v", err)
	}
}

func TestConfig(t *testing.T) {
	f := newFakeCA(t)
	roots := filepath.Join(f.dir, "roots.pem")
	tests := []struct {
		name string
		cfg  caclient.Config
		is   error
	}{
		{"no addr", caclient.Config{RootsFile: roots, TrustDomain: td}, caclient.ErrInvalidConfig},
		{"no roots", caclient.Config{Addr: "ca:15012", TrustDomain: td}, caclient.ErrInvalidConfig},
		{"no trust domain", caclient.Config{Addr: "ca:15012", RootsFile: roots}, caclient.ErrInvalidConfig},
		{"http scheme", caclient.Config{Addr: "http://ca:15012", RootsFile: roots, TrustDomain: td}, caclient.ErrInvalidConfig},
		{"path", caclient.Config{Addr: "https://ca:15012/v1", RootsFile: roots, TrustDomain: td}, caclient.ErrInvalidConfig},
		{"negative TTL", caclient.Config{Addr: "ca:15012", RootsFile: roots, TrustDomain: td, TTL: -1}, caclient.ErrInvalidConfig},
		{"missing roots file", caclient.Config{Addr: "ca:15012", RootsFile: roots + ".missing", TrustDomain: td}, caclient.ErrRootsUnavailable},
	}
	for _, tt := range tests {
		if _, err := caclient.New(tt.cfg); !errors.Is(err, tt.is) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.is)
		}
	}
	for _, addr := range []string{"strait-ca.strait-system.svc:15012", "https://strait-ca.strait-system.svc:15012", "https://strait-ca.strait-system.svc:15012/"} {
		if _, err := caclient.New(caclient.Config{Addr: addr, RootsFile: roots, TrustDomain: td}); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
}
