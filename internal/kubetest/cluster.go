// Package kubetest runs a real etcd and kube-apiserver for tests: no fakes,
// no controller-manager, no kubelet. The binaries are built once into a
// cache directory by `make kube-bins` (build-bins.sh); see README.md.
//
// A Cluster gives an admin client, a kubeconfig, clients for any user and
// groups (client certificates), service account tokens through
// TokenRequest, a restart of the API server, and kubelet-like helpers
// (kubelet.go) that create pods bound to nodes with their status patched,
// services, and the EndpointSlices the endpointslice controller would write.
package kubetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Versions of the binaries build-bins.sh builds and Start expects.
const (
	KubeVersion = "v1.34.4"
	EtcdVersion = "v3.6.16"
)

// Settings of every cluster.
const (
	// ServiceAccountIssuer is the issuer of service account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	// CAAudience is an API audience accepted by the cluster besides the
	// issuer: the audience of tokens presented to the Strait CA.
	CAAudience = "strait-ca"
	// ServiceCIDR is the service cluster IP range.
	ServiceCIDR = "10.96.0.0/16"
	// AdminUser is the user of Config, Client and KubeconfigPath
	// (group system:masters).
	AdminUser = "kubetest-admin"
)

// ErrNoBinaries is returned (wrapped) by New when etcd or kube-apiserver is
// missing from the cache directory.
var ErrNoBinaries = errors.New("kube binaries missing: run make kube-bins")

const (
	readyTimeout = 60 * time.Second
	logTailLines = 40
)

// BinDir is the directory holding the etcd and kube-apiserver binaries:
// $STRAIT_KUBE_BINS, or ~/.cache/strait/kube-v1.34.4.
func BinDir() string {
	if d := os.Getenv("STRAIT_KUBE_BINS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "strait", "kube-"+KubeVersion)
}

// Option changes how a cluster is started.
type Option func(*options)

type options struct {
	binDir    string
	apiArgs   []string
	audiences []string
}

// WithBinDir takes the binaries from dir instead of BinDir().
func WithBinDir(dir string) Option { return func(o *options) { o.binDir = dir } }

// WithAPIServerArgs appends flags to the kube-apiserver command line (a
// flag given again overrides the default, e.g. "--authorization-mode=AlwaysAllow").
func WithAPIServerArgs(args ...string) Option {
	return func(o *options) { o.apiArgs = append(o.apiArgs, args...) }
}

// WithAudiences adds API audiences to the issuer and CAAudience.
func WithAudiences(aud ...string) Option {
	return func(o *options) { o.audiences = append(o.audiences, aud...) }
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Client is an admin clientset.
	Client kubernetes.Interface
	// KubeconfigPath is a kubeconfig file for the admin.
	KubeconfigPath string
	// Host is the API server URL, https://127.0.0.1:<port>.
	Host string
	// CAPEM is the CA that signed the API server's serving certificate.
	CAPEM []byte
	// Dir is the temporary directory with data, certificates and logs
	// (etcd.log, kube-apiserver.log); removed by Stop.
	Dir string

	etcdBin, apiBin string
	clientCA        *authority
	apiArgs         []string
	apiPort         int

	mu        sync.Mutex
	etcd      *process
	etcdArgs  []string // to restart it on the same ports and data
	etcdURL   string
	apiserver *process
	stopped   bool
}

// Start starts a cluster for t, stopped in t.Cleanup (where the last log
// lines of both components are logged if t failed). Missing binaries are a
// test failure, not a skip: run `make kube-bins`.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	c, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.LogTail(t)
		}
		c.Stop()
	})
	return c
}

// New starts a cluster that the caller stops with Stop: for a cluster
// shared by a package's tests from TestMain. The error wraps ErrNoBinaries
// when the binaries are missing.
func New(opts ...Option) (*Cluster, error) {
	o := options{binDir: BinDir()}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Cluster{
		etcdBin: filepath.Join(o.binDir, "etcd"),
		apiBin:  filepath.Join(o.binDir, "kube-apiserver"),
	}
	for _, b := range []string{c.etcdBin, c.apiBin} {
		if fi, err := os.Stat(b); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("kubetest: %s not found or not executable (cache dir %s, env STRAIT_KUBE_BINS): %w", b, o.binDir, ErrNoBinaries)
		}
	}
	dir, err := os.MkdirTemp("", "strait-kubetest-")
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	c.Dir = dir
	if err := c.start(o); err != nil {
		logs := c.Logs()
		c.Stop()
		return nil, fmt.Errorf("%w\n%s", err, logs)
	}
	return c, nil
}

func (c *Cluster) start(o options) error {
	servingCA, err := newAuthority("kubetest-serving-ca")
	if err != nil {
		return err
	}
	c.clientCA, err = newAuthority("kubetest-client-ca")
	if err != nil {
		return err
	}
	c.CAPEM = servingCA.certPEM
	servingCert, servingKey, err := servingCA.issue(pkix.Name{CommonName: "kube-apiserver"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	saKeyPEM, err := newKeyPEM() // signs and verifies service account tokens (ES256)
	if err != nil {
		return err
	}
	adminCert, adminKey, err := c.clientCA.issue(pkix.Name{CommonName: AdminUser, Organization: []string{"system:masters"}}, nil, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"serving-ca.crt": servingCA.certPEM,
		"client-ca.crt":  c.clientCA.certPEM,
		"serving.crt":    servingCert,
		"serving.key":    servingKey,
		"sa.key":         saKeyPEM,
	}
	for name, data := range files {
		if err := writeFile(filepath.Join(c.Dir, name), data); err != nil {
			return err
		}
	}

	etcdURL, err := c.startEtcd()
	if err != nil {
		return err
	}

	audiences := append([]string{ServiceAccountIssuer, CAAudience}, o.audiences...)
	c.apiArgs = []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file=" + filepath.Join(c.Dir, "serving.crt"),
		"--tls-private-key-file=" + filepath.Join(c.Dir, "serving.key"),
		"--client-ca-file=" + filepath.Join(c.Dir, "client-ca.crt"),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + filepath.Join(c.Dir, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(c.Dir, "sa.key"),
		"--api-audiences=" + strings.Join(audiences, ","),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--shutdown-delay-duration=0s",
		"--shutdown-watch-termination-grace-period=2s",
	}
	c.apiArgs = append(c.apiArgs, o.apiArgs...)

	c.Config = &rest.Config{
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM, CertData: adminCert, KeyData: adminKey},
		QPS:             200,
		Burst:           400,
	}
	if err := c.startAPIServer(); err != nil {
		return err
	}
	c.Config.Host = c.Host
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return fmt.Errorf("kubetest: %w", err)
	}
	if err := c.writeKubeconfig(adminCert, adminKey); err != nil {
		return err
	}
	// No controller-manager: the default service account is ours to make.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.EnsureServiceAccount(ctx, metav1.NamespaceDefault, "default"); err != nil {
		return err
	}
	return nil
}

// startEtcd starts etcd on free loopback ports, retrying once on a port
// collision; it returns the client URL.
func (c *Cluster) startEtcd() (string, error) {
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		ports, err := freePorts(2)
		if err != nil {
			return "", err
		}
		client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		dataDir := filepath.Join(c.Dir, "etcd-data")
		_ = os.RemoveAll(dataDir)
		args := []string{
			"--name=kubetest",
			"--data-dir=" + dataDir,
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=kubetest=" + peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync",
			"--log-level=warn",
		}
		p, err := startProcess("etcd", filepath.Join(c.Dir, "etcd.log"), c.etcdBin, args...)
		if err != nil {
			return "", err
		}
		c.mu.Lock()
		c.etcd, c.etcdArgs, c.etcdURL = p, args, client
		c.mu.Unlock()
		lastErr = waitEtcd(p, client)
		if lastErr == nil {
			return client, nil
		}
		p.stop(5 * time.Second)
		if !p.portInUse() {
			break
		}
	}
	return "", fmt.Errorf("kubetest: etcd: %w", lastErr)
}

// startAPIServer starts kube-apiserver and waits for /readyz. On the first
// start it picks a free port (retrying once on a collision); a restart
// reuses the port.
func (c *Cluster) startAPIServer() error {
	tlsConf, err := c.adminTLS()
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := c.apiPort
		if port == 0 {
			ports, err := freePorts(1)
			if err != nil {
				return err
			}
			port = ports[0]
		}
		args := append(append([]string{}, c.apiArgs...), "--secure-port="+strconv.Itoa(port))
		p, err := startProcess("kube-apiserver", filepath.Join(c.Dir, "kube-apiserver.log"), c.apiBin, args...)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.apiserver = p
		c.mu.Unlock()
		host := "https://127.0.0.1:" + strconv.Itoa(port)
		lastErr = waitHTTP(p, hc, host+"/readyz", readyTimeout, func(body []byte) bool {
			return strings.TrimSpace(string(body)) == "ok"
		})
		if lastErr == nil {
			c.apiPort, c.Host = port, host
			return nil
		}
		p.stop(5 * time.Second)
		if !p.portInUse() {
			break
		}
		if c.apiPort != 0 { // restart on the same port: give the old socket a moment
			time.Sleep(500 * time.Millisecond)
		}
	}
	return fmt.Errorf("kubetest: kube-apiserver: %w", lastErr)
}

func (c *Cluster) adminTLS() (*tls.Config, error) {
	pair, err := tls.X509KeyPair(c.Config.CertData, c.Config.KeyData)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// waitHTTP polls url until it answers 200 with a body ok accepts, the
// process exits, or the timeout passes.
func waitHTTP(p *process, hc *http.Client, url string, timeout time.Duration, ok func([]byte) bool) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if p.exited() {
			return fmt.Errorf("exited before ready (%v); last probe: %s", p.err, last)
		}
		resp, err := hc.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && ok(body) {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v; last probe of %s: %s", timeout, url, last)
		}
		select {
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) writeKubeconfig(cert, key []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: c.CAPEM}
	cfg.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: AdminUser, Namespace: metav1.NamespaceDefault}
	cfg.CurrentContext = "kubetest"
	c.KubeconfigPath = filepath.Join(c.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.KubeconfigPath); err != nil {
		return fmt.Errorf("kubetest: kubeconfig: %w", err)
	}
	return nil
}

// Stop kills both processes and removes Dir. Safe to call more than once.
func (c *Cluster) Stop() {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return
	}
	c.stopped = true
	api, etcd := c.apiserver, c.etcd
	c.mu.Unlock()
	api.stop(5 * time.Second)
	etcd.stop(5 * time.Second)
	if c.Dir != "" {
		_ = os.RemoveAll(c.Dir)
	}
}

// Restart stops the API server and starts it again on the same port with
// the same etcd, certificates and flags (watch clients see the connection
// drop and must resume). It returns once the server is ready again.
// waitEtcd waits until etcd at url reports itself healthy.
func waitEtcd(p *process, url string) error {
	return waitHTTP(p, http.DefaultClient, url+"/health", 30*time.Second, func(body []byte) bool {
		return strings.Contains(string(body), `"health":"true"`)
	})
}

// RestartAll stops the API server and etcd, then starts etcd again on
// the same ports with the same data, and the API server after it: a
// control-plane outage that loses nothing stored.
func (c *Cluster) RestartAll(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	api, etcd, args, url := c.apiserver, c.etcd, c.etcdArgs, c.etcdURL
	c.mu.Unlock()
	start := time.Now()
	api.stop(10 * time.Second)
	etcd.stop(10 * time.Second)
	stopped := time.Now()
	p, err := startProcess("etcd", filepath.Join(c.Dir, "etcd.log"), c.etcdBin, args...)
	if err == nil {
		c.mu.Lock()
		c.etcd = p
		c.mu.Unlock()
		err = waitEtcd(p, url)
	}
	if err == nil {
		err = c.startAPIServer()
	}
	if err != nil {
		c.LogTail(t)
		t.Fatalf("kubetest: restart etcd and kube-apiserver: %v", err)
	}
	t.Logf("kubetest: kube-apiserver and etcd stopped in %v, ready again in %v", stopped.Sub(start).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
}

// Restart restarts the API server alone (same etcd, same port).
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	api := c.apiserver
	c.mu.Unlock()
	start := time.Now()
	api.stop(10 * time.Second)
	stopped := time.Now()
	if err := c.startAPIServer(); err != nil {
		c.LogTail(t)
		t.Fatalf("kubetest: restart: %v", err)
	}
	t.Logf("kubetest: kube-apiserver stopped in %v, ready again in %v", stopped.Sub(start).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
}

// Logs returns the last lines of the etcd and kube-apiserver logs.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, name := range []string{"etcd", "kube-apiserver"} {
		fmt.Fprintf(&b, "---- last %d lines of %s.log\n%s\n", logTailLines, name, tail(filepath.Join(c.Dir, name+".log"), logTailLines))
	}
	return b.String()
}

// LogTail logs the last lines of both components' logs to t.
func (c *Cluster) LogTail(t testing.TB) {
	t.Helper()
	t.Log("kubetest logs (" + c.Dir + "):\n" + c.Logs())
}

// ConfigFor returns a client configuration authenticating as user in groups
// with a client certificate signed by the cluster's client CA.
func (c *Cluster) ConfigFor(t testing.TB, user string, groups ...string) *rest.Config {
	t.Helper()
	cert, key, err := c.clientCA.issue(pkix.Name{CommonName: user, Organization: groups}, nil, nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		t.Fatalf("kubetest: client certificate for %s: %v", user, err)
	}
	cfg := rest.CopyConfig(c.Config)
	cfg.TLSClientConfig = rest.TLSClientConfig{CAData: c.CAPEM, CertData: cert, KeyData: key}
	return cfg
}

// ClientFor returns a clientset authenticating as user in groups (for RBAC
// tests; see ConfigFor).
func (c *Cluster) ClientFor(t testing.TB, user string, groups ...string) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.ConfigFor(t, user, groups...))
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return cs
}

// ServiceAccountToken requests a token for service account ns/sa through
// TokenRequest, for the given audiences (the issuer when empty), bound to
// boundPod when it is not nil (TokenReview then reports the pod's name, uid
// and node in user.extra).
func (c *Cluster) ServiceAccountToken(ctx context.Context, ns, sa string, audiences []string, boundPod *corev1.Pod) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}
	if boundPod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: boundPod.Name, UID: boundPod.UID,
		}
	}
	resp, err := c.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("kubetest: token for %s/%s: %w", ns, sa, err)
	}
	return resp.Status.Token, nil
}

// EnsureNamespace creates namespace name unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubetest: namespace %s: %w", name, err)
	}
	return nil
}

// EnsureServiceAccount creates namespace ns and service account ns/name
// unless they exist (there is no controller-manager to do it).
func (c *Cluster) EnsureServiceAccount(ctx context.Context, ns, name string) error {
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		return err
	}
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubetest: service account %s/%s: %w", ns, name, err)
	}
	return nil
}
