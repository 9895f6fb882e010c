// Package caclient obtains X.509 SVIDs from the in-cluster Strait CA
// (identity/caserver) over HTTPS+JSON (identity/caapi).
//
// A [Client] is an identity/certs Fetcher: the certificate manager
// generates the key and CSR on the node (the private key never leaves it)
// and the client only sends the CSR. Each request:
//
//   - reads the projected service-account token from TokenFile afresh
//     (the kubelet rotates it) and sends it as a bearer token;
//   - verifies the CA's serving certificate against the roots in
//     RootsFile (the mounted strait-ca-bundle ConfigMap), re-read when the
//     file changes, and the DNS name of Addr (or ServerName);
//   - is bounded by the caller's context and Timeout;
//   - checks that the returned chain verifies against those roots for the
//     requested identity.
//
// Refusals come back as *StatusError, e.g. "caclient: fetch
// spiffe://cluster.local/ns/shop/sa/web from strait-ca.strait-system.svc:15012:
// 403 PermissionDenied: no pod with service account shop/web on node
// node-b", matching ErrPermissionDenied, ErrUnauthenticated,
// ErrInvalidRequest or ErrServer with errors.Is.
//
// A Client is also an x509bundle.Source for the trust domain: the same
// roots file, re-read at most every BundleRefresh, for verifying peers.
package caclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/certs"
)

// Defaults for Config fields left zero.
const (
	DefaultTokenFile     = "/var/run/secrets/tokens/strait-ca-token"
	DefaultTimeout       = 10 * time.Second
	DefaultBundleRefresh = 10 * time.Second
)

// Errors callers can branch on with errors.Is.
var (
	ErrUnauthenticated  = errors.New("unauthenticated")   // 401
	ErrPermissionDenied = errors.New("permission denied") // 403
	ErrInvalidRequest   = errors.New("invalid request")   // 400
	ErrServer           = errors.New("CA server error")   // 5xx and other statuses
	ErrBadResponse      = errors.New("unusable response") // 200 with a body that is not a usable chain
	ErrInvalidConfig    = errors.New("invalid CA client configuration")
	ErrRootsUnavailable = errors.New("trust roots unavailable")
	ErrTokenUnavailable = errors.New("service-account token unavailable")
)

// StatusError is a non-200 answer of the CA.
type StatusError struct {
	Code    int          // HTTP status
	Reason  caapi.Reason // from the body, empty if it had none
	Message string       // from the body, or the status text
}

func (e *StatusError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%d %s: %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("%d: %s", e.Code, e.Message)
}

// Is maps the status to this package's sentinels.
func (e *StatusError) Is(target error) bool {
	switch e.Code {
	case http.StatusUnauthorized:
		return target == ErrUnauthenticated
	case http.StatusForbidden:
		return target == ErrPermissionDenied
	case http.StatusBadRequest:
		return target == ErrInvalidRequest
	default:
		return target == ErrServer
	}
}

// Config configures a Client.
type Config struct {
	// Addr is the CA: host:port or https://host:port. Required.
	Addr string
	// ServerName is verified in the CA's certificate (default: Addr's host).
	ServerName string
	// TokenFile is the projected service-account token, audience strait-ca
	// (default /var/run/secrets/tokens/strait-ca-token).
	TokenFile string
	// RootsFile is the PEM trust bundle (roots.pem of the strait-ca-bundle
	// ConfigMap). Required.
	RootsFile string
	// TrustDomain the bundle source answers for. Required.
	TrustDomain spiffeid.TrustDomain
	// TTL requested for certificates (0: the CA's default).
	TTL time.Duration
	// Timeout bounds one request, on top of the caller's context (default 10 s).
	Timeout time.Duration
	// BundleRefresh is how often the bundle source re-reads RootsFile at
	// most (default 10 s).
	BundleRefresh time.Duration
	// Logger (default: none).
	Logger *zap.Logger
	// DialContext replaces the TCP dialer (tests).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Client fetches certificates from the CA. It is safe for concurrent use.
type Client struct {
	cfg      Config
	endpoint string
	log      *zap.Logger

	mu        sync.Mutex
	rootsPEM  []byte
	roots     []*x509.Certificate
	transport *http.Transport

	bundle    atomic.Pointer[x509bundle.Bundle]
	lastCheck atomic.Int64 // unix nanos of the last RootsFile read by the bundle source
}

var (
	_ certs.Fetcher     = (*Client)(nil)
	_ x509bundle.Source = (*Client)(nil)
)

// New validates cfg and reads the roots file once (it must be usable).
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" || cfg.RootsFile == "" || cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("caclient: Addr, RootsFile and TrustDomain are required: %w", ErrInvalidConfig)
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = DefaultTokenFile
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.BundleRefresh == 0 {
		cfg.BundleRefresh = DefaultBundleRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.TTL < 0 || cfg.Timeout < 0 || cfg.BundleRefresh < 0 {
		return nil, fmt.Errorf("caclient: TTL, Timeout and BundleRefresh must not be negative: %w", ErrInvalidConfig)
	}
	raw := cfg.Addr
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("caclient: address %q: want host:port or https://host:port: %w", cfg.Addr, ErrInvalidConfig)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	c := &Client{cfg: cfg, endpoint: "https://" + u.Host + caapi.Path, log: cfg.Logger}
	if _, _, err := c.loadRoots(); err != nil {
		return nil, err
	}
	return c, nil
}

// loadRoots reads RootsFile and, when it changed, rebuilds the transport
// that trusts it and the bundle source. It returns the current roots and
// HTTP client transport.
func (c *Client) loadRoots() ([]*x509.Certificate, *http.Transport, error) {
	data, err := os.ReadFile(c.cfg.RootsFile)
	if err != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.transport != nil {
			// Keep the last good roots (a ConfigMap volume swaps its
			// files atomically, but be forgiving of a transient error).
			c.log.Warn("cannot re-read the CA roots; keeping the previous ones", zap.String("file", c.cfg.RootsFile), zap.Error(err))
			return c.roots, c.transport, nil
		}
		return nil, nil, fmt.Errorf("caclient: roots: %w: %w", ErrRootsUnavailable, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.transport != nil && bytes.Equal(data, c.rootsPEM) {
		return c.roots, c.transport, nil
	}
	roots, err := caapi.ParseCertificates(data)
	if err != nil {
		if c.transport != nil {
			c.log.Warn("the CA roots file is unusable; keeping the previous roots", zap.String("file", c.cfg.RootsFile), zap.Error(err))
			return c.roots, c.transport, nil
		}
		return nil, nil, fmt.Errorf("caclient: roots %s: %w: %w", c.cfg.RootsFile, ErrRootsUnavailable, err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	dialer := &net.Dialer{Timeout: c.cfg.Timeout, KeepAlive: 30 * time.Second}
	dial := c.cfg.DialContext
	if dial == nil {
		dial = dialer.DialContext
	}
	t := &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: pool, ServerName: c.cfg.ServerName, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout:   c.cfg.Timeout,
		ResponseHeaderTimeout: c.cfg.Timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	if old := c.transport; old != nil {
		old.CloseIdleConnections()
		c.log.Info("CA roots changed", zap.String("file", c.cfg.RootsFile), zap.Int("roots", len(roots)))
	}
	c.rootsPEM, c.roots, c.transport = data, roots, t
	c.bundle.Store(x509bundle.FromX509Authorities(c.cfg.TrustDomain, roots))
	c.lastCheck.Store(time.Now().UnixNano())
	return roots, t, nil
}

// Fetch implements identity/certs.Fetcher: it sends csrDER for id and
// returns the chain (leaf first, root excluded).
func (c *Client) Fetch(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	chain, err := c.fetch(ctx, id, csrDER)
	if err != nil {
		return nil, fmt.Errorf("caclient: fetch %s from %s: %w", id, c.cfg.Addr, err)
	}
	return chain, nil
}

func (c *Client) fetch(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	roots, transport, err := c.loadRoots()
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTokenUnavailable, err)
	}
	tok := strings.TrimSpace(string(token))
	if tok == "" {
		return nil, fmt.Errorf("%w: %s is empty", ErrTokenUnavailable, c.cfg.TokenFile)
	}
	body, err := json.Marshal(caapi.CertificateRequest{
		CSR:        string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		TTLSeconds: int64(c.cfg.TTL / time.Second),
	})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return nil, err // *url.Error names the method and URL, never the header
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, statusError(resp, data)
	}
	var out caapi.CertificateResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	var chain []*x509.Certificate
	for i, p := range out.CertChain {
		certs, err := caapi.ParseCertificates([]byte(p))
		if err != nil || len(certs) != 1 {
			return nil, fmt.Errorf("%w: certChain[%d] is not one PEM certificate", ErrBadResponse, i)
		}
		chain = append(chain, certs[0])
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: empty certChain", ErrBadResponse)
	}
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), roots)
	got, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return nil, fmt.Errorf("%w: the chain does not verify against the roots in %s: %w", ErrBadResponse, c.cfg.RootsFile, err)
	}
	if got != id {
		return nil, fmt.Errorf("%w: certificate is for %s", ErrBadResponse, got)
	}
	return chain, nil
}

func statusError(resp *http.Response, body []byte) error {
	e := &StatusError{Code: resp.StatusCode}
	var msg caapi.Error
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && json.Unmarshal(body, &msg) == nil && msg.Error != "" {
		e.Reason, e.Message = msg.Reason, msg.Error
	} else {
		e.Message = http.StatusText(resp.StatusCode)
		if t := strings.TrimSpace(string(body)); t != "" && len(t) < 512 {
			e.Message += ": " + t
		}
		if e.Message == "" {
			e.Message = "status " + strconv.Itoa(resp.StatusCode)
		}
	}
	return e
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the roots
// file, re-read at most every BundleRefresh. It is cheap enough for every
// handshake.
func (c *Client) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != c.cfg.TrustDomain {
		return nil, fmt.Errorf("caclient: no bundle for trust domain %q (only %q)", td, c.cfg.TrustDomain)
	}
	now := time.Now().UnixNano()
	last := c.lastCheck.Load()
	if now-last >= int64(c.cfg.BundleRefresh) && c.lastCheck.CompareAndSwap(last, now) {
		// One caller re-reads; the others use the current bundle.
		_, _, _ = c.loadRoots()
	}
	return c.bundle.Load(), nil
}

// Close releases idle connections to the CA.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
	return nil
}
