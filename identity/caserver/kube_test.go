package caserver_test

// Tests against a real etcd + kube-apiserver (internal/kubetest; binaries
// from `make kube-bins`). One cluster is shared by the package; each test
// uses its own CA namespace and its own node names.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap/zaptest"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/caclient"
	"github.com/strait-mesh/strait/identity/caroot"
	"github.com/strait-mesh/strait/identity/caserver"
	"github.com/strait-mesh/strait/identity/certs"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/internal/kubetest"
)

var (
	clusterOnce sync.Once
	shared      *kubetest.Cluster
	sharedErr   error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	os.Exit(code)
}

// cluster starts the package's API server on first use.
func cluster(t *testing.T) *kubetest.Cluster {
	t.Helper()
	clusterOnce.Do(func() { shared, sharedErr = kubetest.New() })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			shared.LogTail(t)
		}
	})
	return shared
}

func kctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startCA runs a CA for namespace ns on loopback and waits until it is ready.
func startCA(t *testing.T, c *kubetest.Cluster, ns string) *caserver.Server {
	t.Helper()
	s := newCA(t, c, ns)
	if err := s.Start(kctx(t)); err != nil {
		t.Fatal(err)
	}
	waitReady(t, s)
	return s
}

func newCA(t *testing.T, c *kubetest.Cluster, ns string) *caserver.Server {
	t.Helper()
	if err := c.EnsureNamespace(kctx(t), ns); err != nil {
		t.Fatal(err)
	}
	s, err := caserver.New(caserver.Config{
		Client: c.Client, Namespace: ns, Addr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		MaxTTL: 2 * time.Hour, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

func waitReady(t *testing.T, s *caserver.Server) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + s.MetricsAddr().String() + caapi.ReadyPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CA not ready after 20s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape reads one sample from the CA's /metrics endpoint.
func scrape(t *testing.T, s *caserver.Server, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s", sample)
	return 0
}

// publishedRoots reads roots.pem of the CA's bundle ConfigMap: what
// ztunnels mount.
func publishedRoots(t *testing.T, c *kubetest.Cluster, ns string) []byte {
	t.Helper()
	cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(kctx(t), caroot.DefaultBundleName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return []byte(cm.Data[caroot.KeyRoots])
}

// caller is a node-side client with its own token and roots files.
type caller struct {
	*caclient.Client
	dir string
}

func newCaller(t *testing.T, c *kubetest.Cluster, s *caserver.Server, caNS, token string) *caller {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "roots.pem"), publishedRoots(t, c, caNS), 0o644); err != nil {
		t.Fatal(err)
	}
	cc, err := caclient.New(caclient.Config{
		Addr: s.Addr().String(), ServerName: "strait-ca." + caNS + ".svc",
		TokenFile: filepath.Join(dir, "token"), RootsFile: filepath.Join(dir, "roots.pem"),
		TrustDomain: td, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &caller{Client: cc, dir: dir}
}

func (cl *caller) fetch(t *testing.T, id spiffeid.ID) ([]*x509.Certificate, error) {
	t.Helper()
	der, _ := newCSR(t, id)
	return cl.Fetch(kctx(t), id, der)
}

func newCSR(t testing.TB, id spiffeid.ID) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	p, key := csrPEM(t, id.String())
	block, _ := pem.Decode([]byte(p))
	return block.Bytes, key
}

func pod(t *testing.T, c *kubetest.Cluster, ns, name, node, sa, ip string) *corev1.Pod {
	t.Helper()
	p, err := c.CreatePod(kctx(t), kubetest.PodSpec{Namespace: ns, Name: name, Node: node, ServiceAccount: sa, IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func token(t *testing.T, c *kubetest.Cluster, ns, sa string, aud []string, bound *corev1.Pod) string {
	t.Helper()
	tok, err := c.ServiceAccountToken(kctx(t), ns, sa, aud, bound)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var strait = []string{caapi.Audience}

func TestKubeNodeAuthorization(t *testing.T) {
	c := cluster(t)
	s := startCA(t, c, "ca-authz")
	zt := pod(t, c, "strait-system", "ztunnel-a", "node-a", "ztunnel", "10.1.0.2")
	web := pod(t, c, "shop", "web-a", "node-a", "web", "10.1.0.10")
	pod(t, c, "shop", "cart-b", "node-b", "cart", "10.2.0.10") // the only shop/cart pod: on node-b

	ztunnel := newCaller(t, c, s, "ca-authz", token(t, c, "strait-system", "ztunnel", strait, zt))
	roots, err := caapi.ParseCertificates(publishedRoots(t, c, "ca-authz"))
	if err != nil || len(roots) != 1 || !roots[0].Equal(s.Bundle()[0]) {
		t.Fatalf("published bundle: %v (%d roots)", err, len(roots))
	}
	bundle := x509bundle.FromX509Authorities(td, roots)

	t.Run("ztunnel gets the identity of a pod on its node", func(t *testing.T) {
		m, err := certs.New(certs.Config{Fetcher: ztunnel, FetchTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		svid, err := m.Get(kctx(t), sid("shop", "web"))
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := x509svid.Verify(svid.Certificates, bundle)
		if err != nil || id != sid("shop", "web") {
			t.Fatalf("Verify = %v, %v", id, err)
		}
		if u := svid.Certificates[0].URIs; len(u) != 1 || u[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
			t.Errorf("URI SANs %v", u)
		}
	})

	t.Run("ztunnel refused an identity whose only pod is on another node", func(t *testing.T) {
		before := scrape(t, s, `strait_ca_denied_total{reason="no_pod_on_node"}`)
		_, err := ztunnel.fetch(t, sid("shop", "cart"))
		var se *caclient.StatusError
		if !errors.As(err, &se) || se.Code != 403 || se.Reason != caapi.ReasonPermissionDenied ||
			se.Message != "no pod with service account shop/cart on node node-a" {
			t.Fatalf("error %v", err)
		}
		if got := scrape(t, s, `strait_ca_denied_total{reason="no_pod_on_node"}`); got != before+1 {
			t.Errorf("denied{no_pod_on_node} %v -> %v", before, got)
		}
	})

	own := newCaller(t, c, s, "ca-authz", token(t, c, "shop", "web", strait, web))
	t.Run("a pod's own token refused another identity", func(t *testing.T) {
		_, err := own.fetch(t, sid("shop", "cart"))
		if !errors.Is(err, caclient.ErrPermissionDenied) || !strings.Contains(err.Error(), "may only obtain its own identity") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("a pod's own token gets its own identity", func(t *testing.T) {
		chain, err := own.fetch(t, sid("shop", "web"))
		if err != nil {
			t.Fatal(err)
		}
		if id, _, err := x509svid.Verify(chain, bundle); err != nil || id != sid("shop", "web") {
			t.Fatalf("Verify = %v, %v", id, err)
		}
	})

	t.Run("a token for another audience is unauthenticated", func(t *testing.T) {
		before := scrape(t, s, `strait_ca_requests_total{result="unauthenticated"}`)
		wrong := newCaller(t, c, s, "ca-authz", token(t, c, "strait-system", "ztunnel", []string{"vault"}, zt))
		_, err := wrong.fetch(t, sid("shop", "web"))
		var se *caclient.StatusError
		if !errors.As(err, &se) || se.Code != 401 || se.Reason != caapi.ReasonUnauthenticated {
			t.Fatalf("error %v", err)
		}
		if got := scrape(t, s, `strait_ca_requests_total{result="unauthenticated"}`); got != before+1 {
			t.Errorf("unauthenticated %v -> %v", before, got)
		}
	})

	t.Run("a token not bound to a pod has no node", func(t *testing.T) {
		before := scrape(t, s, `strait_ca_denied_total{reason="no_node"}`)
		unbound := newCaller(t, c, s, "ca-authz", token(t, c, "strait-system", "ztunnel", strait, nil))
		_, err := unbound.fetch(t, sid("shop", "web"))
		if !errors.Is(err, caclient.ErrPermissionDenied) || !strings.Contains(err.Error(), "is not bound to a pod scheduled on a node") {
			t.Fatalf("error %v", err)
		}
		if got := scrape(t, s, `strait_ca_denied_total{reason="no_node"}`); got != before+1 {
			t.Errorf("denied{no_node} %v -> %v", before, got)
		}
	})

	t.Run("a garbage token is unauthenticated", func(t *testing.T) {
		bad := newCaller(t, c, s, "ca-authz", "eyJhbGciOiJub25lIn0.e30.")
		if _, err := bad.fetch(t, sid("shop", "web")); !errors.Is(err, caclient.ErrUnauthenticated) {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("the node of a token bound before its pod was scheduled comes from the pod", func(t *testing.T) {
		// A token requested while the pod had no node carries no node-name
		// claim; the CA reads the bound pod's spec.nodeName instead.
		p := pod(t, c, "shop", "web-late-bind", "", "web", "")
		tok := token(t, c, "shop", "web", strait, p)
		if err := c.Client.CoreV1().Pods("shop").Bind(kctx(t), &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: "shop", UID: p.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: "node-a"},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := c.Client.AuthenticationV1().TokenReviews().Create(kctx(t), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: strait},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if x := tr.Status.User.Extra; len(x[caserver.ExtraNodeName]) != 0 || len(x[caserver.ExtraPodName]) != 1 {
			t.Fatalf("the review's extras %v: this case needs a pod name and no node name", x)
		}
		r, err := caserver.NewTokenReviewer(caserver.TokenReviewConfig{Client: c.Client, TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Authenticate(kctx(t), tok)
		if err != nil || got.Node != "node-a" || got.Identity != sid("shop", "web") {
			t.Fatalf("Authenticate = %+v, %v; want shop/web on node-a", got, err)
		}
		late := newCaller(t, c, s, "ca-authz", tok)
		if _, err := late.fetch(t, sid("shop", "web")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestKubeLiveListFallback(t *testing.T) {
	c := cluster(t)
	s := startCA(t, c, "ca-late")
	zt := pod(t, c, "strait-system", "ztunnel-c", "node-c", "ztunnel", "10.3.0.2")
	ztunnel := newCaller(t, c, s, "ca-late", token(t, c, "strait-system", "ztunnel", strait, zt))
	// Whatever the cache holds now, it will hold forever: pods created from
	// here on are found only by the live List.
	s.FreezePodCache()

	pod(t, c, "late", "fresh", "node-c", "fresh", "10.3.0.10")
	before := scrape(t, s, `strait_ca_pod_lookups_total{source="api"}`)
	if _, err := ztunnel.fetch(t, sid("late", "fresh")); err != nil {
		t.Fatalf("a pod scheduled after the cache froze: %v", err)
	}
	if got := scrape(t, s, `strait_ca_pod_lookups_total{source="api"}`); got != before+1 {
		t.Errorf("lookups{api} %v -> %v: the live List was not used", before, got)
	}

	// A terminated pod does not count, in the List as in the cache.
	done := pod(t, c, "late", "done", "node-c", "done", "10.3.0.11")
	done.Status.Phase = corev1.PodSucceeded
	if _, err := c.Client.CoreV1().Pods("late").UpdateStatus(kctx(t), done, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ztunnel.fetch(t, sid("late", "done")); !errors.Is(err, caclient.ErrPermissionDenied) {
		t.Fatalf("a Succeeded pod's identity: %v", err)
	}
}

func TestKubeConcurrentStartsShareOneRoot(t *testing.T) {
	c := cluster(t)
	const ns = "ca-race"
	a, b := newCA(t, c, ns), newCA(t, c, ns)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []*caserver.Server{a, b} {
		wg.Go(func() { errs[i] = s.Start(kctx(t)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ra, rb := a.Bundle(), b.Bundle()
	if len(ra) != 1 || len(rb) != 1 || !ra[0].Equal(rb[0]) {
		t.Fatalf("two replicas, two roots: %v / %v", ra[0].SerialNumber, rb[0].SerialNumber)
	}
	sec, err := c.Client.CoreV1().Secrets(ns).Get(kctx(t), caroot.DefaultSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := caapi.ParseCertificates(sec.Data[caroot.KeyCert])
	if err != nil || !stored[0].Equal(ra[0]) {
		t.Fatalf("the Secret holds another root: %v", err)
	}
	published, err := caapi.ParseCertificates(publishedRoots(t, c, ns))
	if err != nil || len(published) != 1 || !published[0].Equal(ra[0]) {
		t.Fatalf("the bundle ConfigMap holds another root: %v", err)
	}

	// More contenders on the raw Load, with a start barrier so that several
	// reach Create together: exactly one creates, all end with its root.
	const n = 6
	rc := caroot.Config{Client: c.Client, Namespace: "ca-race-load", TrustDomain: td}
	if err := c.EnsureNamespace(kctx(t), rc.Namespace); err != nil {
		t.Fatal(err)
	}
	roots := make([]*caroot.Root, n)
	loadErrs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			roots[i], loadErrs[i] = caroot.Load(kctx(t), rc)
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for i, r := range roots {
		if loadErrs[i] != nil {
			t.Fatalf("contender %d: %v", i, loadErrs[i])
		}
		if r.Created {
			created++
		}
		if !r.Issuer.Cert.Equal(roots[0].Issuer.Cert) {
			t.Errorf("contender %d has another root", i)
		}
	}
	if created != 1 {
		t.Errorf("%d contenders created the root, want 1", created)
	}
}

func TestKubeRotationBundle(t *testing.T) {
	c := cluster(t)
	const ns = "ca-rotate"
	if err := c.EnsureNamespace(kctx(t), ns); err != nil {
		t.Fatal(err)
	}
	oldRoot, err := ca.NewSelfSignedRoot(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newRoot, err := ca.NewSelfSignedRoot(td, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Mid-rotation: signing with the new root, both published.
	keyPEM := pkcs8(t, newRoot)
	_, err = c.Client.CoreV1().Secrets(ns).Create(kctx(t), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: caroot.DefaultSecretName, Namespace: ns},
		Data: map[string][]byte{
			caroot.KeyCert:   caapi.EncodeCertificates([]*x509.Certificate{newRoot.Cert}),
			caroot.KeyKey:    keyPEM,
			caroot.KeyBundle: caapi.EncodeCertificates([]*x509.Certificate{oldRoot.Cert, newRoot.Cert}),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := startCA(t, c, ns)
	published, err := caapi.ParseCertificates(publishedRoots(t, c, ns))
	if err != nil || len(published) != 2 || !published[0].Equal(newRoot.Cert) || !published[1].Equal(oldRoot.Cert) {
		t.Fatalf("published bundle: %v, %d roots; want new then old", err, len(published))
	}

	zt := pod(t, c, "strait-system", "ztunnel-d", "node-d", "ztunnel", "10.4.0.2")
	pod(t, c, "bank", "api-d", "node-d", "api", "10.4.0.10")
	ztunnel := newCaller(t, c, s, ns, token(t, c, "strait-system", "ztunnel", strait, zt))
	m, err := certs.New(certs.Config{Fetcher: ztunnel, FetchTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fresh, err := m.Get(kctx(t), sid("bank", "api"))
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Certificates[0].CheckSignatureFrom(newRoot.Cert) != nil {
		t.Fatal("the CA did not sign with the new root")
	}
	// A peer still holding a certificate from the old root.
	oldCA, err := ca.New(ca.Config{TrustDomain: td, Root: oldRoot, Authorizer: ca.AllowAll()})
	if err != nil {
		t.Fatal(err)
	}
	stale := issue(t, oldCA, sid("bank", "web"))

	// Both verify against the published bundle, in a real mTLS handshake
	// each way round.
	bundle := x509bundle.FromX509Authorities(td, published)
	for _, pair := range []struct {
		name           string
		client, server *x509svid.SVID
	}{{"old-root client, new-root server", stale, fresh}, {"new-root client, old-root server", fresh, stale}} {
		t.Run(pair.name, func(t *testing.T) {
			handshake(t, pair.client, pair.server, bundle)
		})
	}
	// And a bundle with only the new root refuses the old certificate.
	if _, _, err := x509svid.Verify(stale.Certificates, x509bundle.FromX509Authorities(td, published[:1])); err == nil {
		t.Error("the old-root certificate verified without the old root")
	}
}

func pkcs8(t *testing.T, iss ca.Issuer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(iss.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func issue(t *testing.T, c *ca.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	der, key := newCSR(t, id)
	issued, err := c.Sign(context.Background(), ca.Caller{}, der, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: issued.Certificates, PrivateKey: key}
}

func handshake(t *testing.T, client, server *x509svid.SVID, bundle *x509bundle.Bundle) {
	t.Helper()
	srvCfg, err := tlsconfig.Server(server, bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	cliCfg, err := tlsconfig.Client(client, bundle, []spiffeid.ID{server.ID})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			peer <- err
			return
		}
		defer conn.Close()
		tc := tls.Server(conn, srvCfg)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			peer <- err
			return
		}
		id, err := tlsconfig.PeerID(tc.ConnectionState())
		if err == nil && id != client.ID {
			err = fmt.Errorf("server saw %s", id)
		}
		_, _ = io.Copy(io.Discard, tc)
		peer <- err
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cliCfg)
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if id, err := tlsconfig.PeerID(conn.ConnectionState()); err != nil || id != server.ID {
		t.Errorf("client saw %v, %v", id, err)
	}
	conn.Close()
	if err := <-peer; err != nil {
		t.Errorf("server side: %v", err)
	}
}

// countReviews counts the TokenReview requests a client sends.
type countReviews struct {
	rt http.RoundTripper
	n  *atomic.Int32
}

func (c countReviews) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/tokenreviews") {
		c.n.Add(1)
	}
	return c.rt.RoundTrip(r)
}

func TestKubeTokenReviewCache(t *testing.T) {
	c := cluster(t)
	p := pod(t, c, "cache", "app", "node-e", "app", "10.5.0.10")
	tok := token(t, c, "cache", "app", strait, p)
	other := token(t, c, "cache", "app", strait, p)
	var reviews atomic.Int32
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countReviews{rt: rt, n: &reviews} })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r, err := caserver.NewTokenReviewer(caserver.TokenReviewConfig{
		Client: client, TrustDomain: td, CacheTTL: time.Minute, Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	auth := func(tok string, wantReviews int32) {
		t.Helper()
		got, err := r.Authenticate(kctx(t), tok)
		if err != nil || got.Node != "node-e" || got.Identity != sid("cache", "app") {
			t.Fatalf("Authenticate = %+v, %v", got, err)
		}
		if n := reviews.Load(); n != wantReviews {
			t.Fatalf("%d TokenReviews, want %d", n, wantReviews)
		}
	}
	auth(tok, 1)
	auth(tok, 1)   // cached
	auth(other, 2) // another token, another review
	now = now.Add(time.Minute)
	auth(tok, 3) // the TTL passed: reviewed again
	if r.CacheLen() > 2 {
		t.Errorf("%d cached reviews", r.CacheLen())
	}
	// Refusals are never cached, and the token is never in the error.
	bad := tok[:len(tok)-4] + "AAAA"
	for want := int32(4); want <= 5; want++ {
		_, err := r.Authenticate(kctx(t), bad)
		if !errors.Is(err, caserver.ErrUnauthenticated) || reviews.Load() != want {
			t.Fatalf("tampered token: %v after %d reviews", err, reviews.Load())
		}
		if strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), tok) {
			t.Error("the token is in the error")
		}
	}
}

func TestKubeRunStopsOnCancel(t *testing.T) {
	c := cluster(t)
	s := newCA(t, c, "ca-run")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for s.MetricsAddr() == nil || !s.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("not started after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	addr := s.Addr().String()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Error("still listening after Run returned")
	}
}
