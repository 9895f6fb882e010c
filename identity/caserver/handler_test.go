package caserver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/caserver"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func sid(ns, sa string) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+sa)
}

// pods is a PodFinder over a fixed list of "node/ns/sa".
type pods struct {
	mu  sync.Mutex
	on  map[string]bool
	err error
}

func (p *pods) HasPod(_ context.Context, node, ns, sa string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.on[node+"/"+ns+"/"+sa], p.err
}

// tokens is an Authenticator over a fixed table.
type tokens map[string]ca.Caller

func (t tokens) Authenticate(_ context.Context, token string) (ca.Caller, error) {
	if token == "broken" {
		return ca.Caller{}, errors.New("the API server is down")
	}
	c, ok := t[token]
	if !ok {
		return ca.Caller{}, fmt.Errorf("unknown token: %w", caserver.ErrUnauthenticated)
	}
	return c, nil
}

type fixture struct {
	url     string
	root    *x509.Certificate
	bundle  *x509bundle.Bundle
	pods    *pods
	gather  prometheus.Gatherer
	maxTTL  time.Duration
	created time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root, err := ca.NewSelfSignedRoot(td, time.Hour*24*365)
	if err != nil {
		t.Fatal(err)
	}
	p := &pods{on: map[string]bool{
		"node-a/strait-system/ztunnel": true,
		"node-a/shop/web":              true,
		"node-b/shop/db":               true,
	}}
	authz, err := caserver.NewNodeAuthorizer(td, "strait-system/ztunnel", p)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ca.New(ca.Config{TrustDomain: td, Root: root, Authorizer: authz, DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h, err := caserver.NewHandler(caserver.HandlerConfig{
		CA: signer, Metrics: caserver.NewMetrics(reg),
		Authenticator: tokens{
			"zt-a":     {Identity: sid("strait-system", "ztunnel"), Node: "node-a"},
			"zt-none":  {Identity: sid("strait-system", "ztunnel")},
			"web-a":    {Identity: sid("shop", "web"), Node: "node-a"},
			"web-none": {Identity: sid("shop", "web")},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{url: srv.URL + caapi.Path, root: root.Cert, bundle: signer.Bundle(), pods: p, gather: reg, maxTTL: 2 * time.Hour, created: time.Now()}
}

func csrPEM(t testing.TB, uris ...string) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

type answer struct {
	status int
	ok     caapi.CertificateResponse
	err    caapi.Error
	raw    string
}

func post(t testing.TB, url, token string, body any) answer {
	t.Helper()
	var b []byte
	switch v := body.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(raw)}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if a.status == http.StatusOK {
		err = json.Unmarshal(raw, &a.ok)
	} else {
		err = json.Unmarshal(raw, &a.err)
	}
	if err != nil {
		t.Fatalf("status %d body %q: %v", a.status, raw, err)
	}
	return a
}

// counter reads one sample of the text exposition, e.g.
// strait_ca_denied_total{reason="no_node"}.
func counter(t testing.TB, g prometheus.Gatherer, sample string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(g, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s in\n%s", sample, rec.Body.String())
	return 0
}

func chainOf(t testing.TB, a answer) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	for _, p := range a.ok.CertChain {
		certs, err := caapi.ParseCertificates([]byte(p))
		if err != nil || len(certs) != 1 {
			t.Fatalf("certChain element: %v (%d certificates)", err, len(certs))
		}
		chain = append(chain, certs[0])
	}
	return chain
}

func TestHandler(t *testing.T) {
	f := newFixture(t)
	web, _ := csrPEM(t, sid("shop", "web").String())
	db, _ := csrPEM(t, sid("shop", "db").String())
	dnsCSR := func() string {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{sid("shop", "web").URL()}, DNSNames: []string{"evil.example"}}, key)
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}()
	foreign, _ := csrPEM(t, "spiffe://evil.example/ns/shop/sa/web")

	tests := []struct {
		name    string
		token   string
		body    any
		status  int
		reason  caapi.Reason
		msg     string
		result  string // strait_ca_requests_total result label
		denied  caserver.DenyReason
		wantID  spiffeid.ID
		wantTTL time.Duration
	}{
		{name: "ztunnel gets a pod's identity on its node", token: "zt-a", body: caapi.CertificateRequest{CSR: web},
			status: 200, result: caserver.ResultIssued, wantID: sid("shop", "web"), wantTTL: time.Hour},
		{name: "TTL honoured", token: "zt-a", body: caapi.CertificateRequest{CSR: web, TTLSeconds: 600},
			status: 200, result: caserver.ResultIssued, wantID: sid("shop", "web"), wantTTL: 10 * time.Minute},
		{name: "TTL capped at the maximum", token: "zt-a", body: caapi.CertificateRequest{CSR: web, TTLSeconds: 1 << 62},
			status: 200, result: caserver.ResultIssued, wantID: sid("shop", "web"), wantTTL: 2 * time.Hour},
		{name: "ztunnel refused an identity without a pod on its node", token: "zt-a", body: caapi.CertificateRequest{CSR: db},
			status: 403, reason: caapi.ReasonPermissionDenied, msg: "no pod with service account shop/db on node node-a",
			result: caserver.ResultDenied, denied: caserver.DenyNoPodOnNode},
		{name: "a pod gets its own identity", token: "web-a", body: caapi.CertificateRequest{CSR: web},
			status: 200, result: caserver.ResultIssued, wantID: sid("shop", "web"), wantTTL: time.Hour},
		{name: "a pod refused another identity", token: "web-a", body: caapi.CertificateRequest{CSR: db},
			status: 403, reason: caapi.ReasonPermissionDenied, msg: "spiffe://cluster.local/ns/shop/sa/web may only obtain its own identity",
			result: caserver.ResultDenied, denied: caserver.DenyNotSelf},
		{name: "ztunnel without a node", token: "zt-none", body: caapi.CertificateRequest{CSR: web},
			status: 403, reason: caapi.ReasonPermissionDenied, msg: "not bound to a pod scheduled on a node",
			result: caserver.ResultDenied, denied: caserver.DenyNoNode},
		{name: "a pod without a node", token: "web-none", body: caapi.CertificateRequest{CSR: web},
			status: 403, reason: caapi.ReasonPermissionDenied, msg: "not bound to a pod scheduled on a node",
			result: caserver.ResultDenied, denied: caserver.DenyNoNode},
		{name: "no token", body: caapi.CertificateRequest{CSR: web},
			status: 401, reason: caapi.ReasonUnauthenticated, msg: "missing Authorization: Bearer", result: caserver.ResultUnauthenticated},
		{name: "unknown token", token: "nope", body: caapi.CertificateRequest{CSR: web},
			status: 401, reason: caapi.ReasonUnauthenticated, msg: "unknown token", result: caserver.ResultUnauthenticated},
		{name: "authenticator failure", token: "broken", body: caapi.CertificateRequest{CSR: web},
			status: 500, reason: caapi.ReasonInternal, msg: "the API server is down", result: caserver.ResultError},
		{name: "not JSON", token: "zt-a", body: "{csr:",
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "not a certificate request", result: caserver.ResultInvalid},
		{name: "CSR not PEM", token: "zt-a", body: caapi.CertificateRequest{CSR: "MIIB..."},
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "CERTIFICATE REQUEST", result: caserver.ResultInvalid},
		{name: "two PEM blocks", token: "zt-a", body: caapi.CertificateRequest{CSR: web + web},
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "exactly one", result: caserver.ResultInvalid},
		{name: "negative TTL", token: "zt-a", body: caapi.CertificateRequest{CSR: web, TTLSeconds: -1},
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "negative", result: caserver.ResultInvalid},
		{name: "DNS SAN", token: "zt-a", body: caapi.CertificateRequest{CSR: dnsCSR},
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "DNS:evil.example", result: caserver.ResultInvalid},
		{name: "foreign trust domain", token: "zt-a", body: caapi.CertificateRequest{CSR: foreign},
			status: 400, reason: caapi.ReasonInvalidRequest, msg: "evil.example", result: caserver.ResultInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sample := fmt.Sprintf(`strait_ca_requests_total{result=%q}`, tt.result)
			before := counter(t, f.gather, sample)
			var deniedBefore float64
			if tt.denied != "" {
				deniedBefore = counter(t, f.gather, fmt.Sprintf(`strait_ca_denied_total{reason=%q}`, tt.denied))
			}
			a := post(t, f.url, tt.token, tt.body)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.raw)
			}
			if got := counter(t, f.gather, sample); got != before+1 {
				t.Errorf("%s went from %v to %v", sample, before, got)
			}
			if tt.denied != "" {
				if got := counter(t, f.gather, fmt.Sprintf(`strait_ca_denied_total{reason=%q}`, tt.denied)); got != deniedBefore+1 {
					t.Errorf("denied{%s} went from %v to %v", tt.denied, deniedBefore, got)
				}
			}
			if tt.status != 200 {
				if a.err.Reason != tt.reason || !strings.Contains(a.err.Error, tt.msg) {
					t.Errorf("error %+v, want reason %s and %q", a.err, tt.reason, tt.msg)
				}
				return
			}
			chain := chainOf(t, a)
			id, _, err := x509svid.Verify(chain, f.bundle)
			if err != nil || id != tt.wantID {
				t.Fatalf("Verify = %v, %v; want %v", id, err, tt.wantID)
			}
			leaf := chain[0]
			if life := leaf.NotAfter.Sub(f.created); life < tt.wantTTL-time.Minute || life > tt.wantTTL+time.Minute {
				t.Errorf("lifetime %v, want about %v", life, tt.wantTTL)
			}
			if roots, err := caapi.ParseCertificates([]byte(strings.Join(a.ok.Roots, ""))); err != nil || len(roots) != 1 || !roots[0].Equal(f.root) {
				t.Errorf("roots = %d certificates, %v; want the root", len(roots), err)
			}
		})
	}
}

func TestHandlerMethodAndLookupFailure(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
	}

	// The pod lookup failing is the server's fault, not a refusal.
	f.pods.mu.Lock()
	f.pods.err = errors.New("etcd is on fire")
	f.pods.mu.Unlock()
	web, _ := csrPEM(t, sid("shop", "web").String())
	before := counter(t, f.gather, `strait_ca_requests_total{result="error"}`)
	a := post(t, f.url, "zt-a", caapi.CertificateRequest{CSR: web})
	if a.status != 500 || a.err.Reason != caapi.ReasonInternal || !strings.Contains(a.err.Error, "etcd is on fire") {
		t.Errorf("lookup failure: %d %+v", a.status, a.err)
	}
	if got := counter(t, f.gather, `strait_ca_requests_total{result="error"}`); got != before+1 {
		t.Errorf("error count %v -> %v", before, got)
	}
	if got := counter(t, f.gather, `strait_ca_requests_total{result="denied"}`); got != 0 {
		t.Errorf("a lookup failure counted as denied (%v)", got)
	}
}

func TestNodeAuthorizerConfig(t *testing.T) {
	for _, sa := range []string{"", "ztunnel", "/ztunnel", "strait-system/", "Bad_NS/ztunnel"} {
		if _, err := caserver.NewNodeAuthorizer(td, sa, &pods{}); err == nil {
			t.Errorf("ztunnel SA %q accepted", sa)
		}
	}
	if _, err := caserver.NewNodeAuthorizer(td, "strait-system/ztunnel", nil); err == nil {
		t.Error("nil PodFinder accepted")
	}
}
