package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

var client = &http.Client{Timeout: 10 * time.Second}

// start runs a Server on loopback port 0 for every address.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:0"
	}
	if cfg.ReadyAddr == "" {
		cfg.ReadyAddr = "127.0.0.1:0"
	}
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, method, u string, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func get(t *testing.T, u string) response  { t.Helper(); return do(t, http.MethodGet, u) }
func post(t *testing.T, u string) response { t.Helper(); return do(t, http.MethodPost, u) }

func wantStatus(t *testing.T, r response, status int, what string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body %q", what, r.status, status, r.body)
	}
}

func TestIndexListsEndpoints(t *testing.T) {
	s := start(t, Config{})
	r := get(t, "http://"+s.Addrs().Admin+"/")
	wantStatus(t, r, http.StatusOK, "GET /")
	for _, p := range []string{"/config_dump", "/logging", "/debug/pprof/", "/quitquitquit", "/healthz/ready", "/metrics", "/stats/prometheus", s.Addrs().Ready, s.Addrs().Metrics} {
		if !strings.Contains(r.body, p) {
			t.Errorf("index lacks %q:\n%s", p, r.body)
		}
	}
	wantStatus(t, get(t, "http://"+s.Addrs().Admin+"/nope"), http.StatusNotFound, "GET /nope")
}

type dumpView struct {
	Workloads []string          `json:"workloads"`
	Certs     []certView        `json:"certs"`
	Labels    map[string]string `json:"labels"`
}

type certView struct {
	Identity string    `json:"identity"`
	NotAfter time.Time `json:"notAfter"`
	ChainPEM string    `json:"chainPem"`
}

func TestConfigDumpJSON(t *testing.T) {
	view := dumpView{
		Workloads: []string{"default/sleep", "default/httpbin"},
		Certs: []certView{{
			Identity: "spiffe://cluster.local/ns/default/sa/sleep",
			NotAfter: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
			ChainPEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		}},
		Labels: map[string]string{"node": "n1"},
	}
	s := start(t, Config{ConfigDump: func() any { return view }})
	r := get(t, "http://"+s.Addrs().Admin+"/config_dump")
	wantStatus(t, r, http.StatusOK, "GET /config_dump")
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if !json.Valid([]byte(r.body)) {
		t.Fatalf("invalid JSON: %s", r.body)
	}
	var back dumpView
	if err := json.Unmarshal([]byte(r.body), &back); err != nil {
		t.Fatal(err)
	}
	if back.Certs[0].Identity != view.Certs[0].Identity || !back.Certs[0].NotAfter.Equal(view.Certs[0].NotAfter) || len(back.Workloads) != 2 || back.Labels["node"] != "n1" {
		t.Fatalf("round trip: %+v", back)
	}
	if strings.Contains(r.body, "PRIVATE KEY") {
		t.Fatal("dump contains PRIVATE KEY")
	}
	wantStatus(t, post(t, "http://"+s.Addrs().Admin+"/config_dump"), http.StatusMethodNotAllowed, "POST /config_dump")
}

func TestConfigDumpNotConfigured(t *testing.T) {
	s := start(t, Config{})
	wantStatus(t, get(t, "http://"+s.Addrs().Admin+"/config_dump"), http.StatusNotImplemented, "GET /config_dump")
	wantStatus(t, post(t, "http://"+s.Addrs().Admin+"/quitquitquit"), http.StatusNotImplemented, "POST /quitquitquit")
	wantStatus(t, get(t, "http://"+s.Addrs().Metrics+"/metrics"), http.StatusNotImplemented, "GET /metrics")
}

// pemMarshaler hides a PEM key behind its own MarshalJSON, so only the
// output check can see it.
type pemMarshaler struct{ pem string }

func (p pemMarshaler) MarshalJSON() ([]byte, error) { return json.Marshal(p.pem) }

type cyclic struct {
	Name string
	Next *cyclic
}

// TestConfigDumpRefusesPrivateKeys: a dump value that carries a private
// key, typed or as PEM, is refused with 500, and neither the response nor
// the log quotes the key.
func TestConfigDumpRefusesPrivateKeys(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	raw, err := ecKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// The scalar as encoding/json would print the D field, and as base64.
	rawDecimal := new(big.Int).SetBytes(raw).String()
	rawBase64 := base64.StdEncoding.EncodeToString(raw)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	type withSigner struct {
		Identity string
		Key      any `json:"privateKey"`
	}
	type withKeyField struct {
		Identity string
		Key      ecdsa.PrivateKey
	}
	type withBytes struct{ KeyDER []byte }
	cases := []struct {
		name     string
		v        any
		wantPath string
	}{
		{"tls.Certificate", struct{ Certs []tls.Certificate }{[]tls.Certificate{{PrivateKey: ecKey}}}, "$.Certs[0].PrivateKey (*ecdsa.PrivateKey)"},
		{"crypto.PrivateKey field", withSigner{"a", ecKey}, "$.privateKey (*ecdsa.PrivateKey)"},
		{"key by value", withKeyField{Identity: "a", Key: *ecKey}, "$.Key (ecdsa.PrivateKey)"},
		{"ed25519", map[string]any{"id": "x", "k": edKey}, `$["k"] (ed25519.PrivateKey)`},
		{"bare key", ecKey, "$ (*ecdsa.PrivateKey)"},
		{"PEM string", map[string]any{"certs": []any{map[string]string{"key": keyPEM}}}, `$["certs"][0]["key"]`},
		{"PEM bytes (base64 in JSON)", withBytes{[]byte(keyPEM)}, "$.KeyDER"},
		{"PEM behind MarshalJSON", struct{ K pemMarshaler }{pemMarshaler{keyPEM}}, "JSON output"},
		{"key behind a cycle", func() any { c := &cyclic{Name: "a"}; c.Next = c; return []any{c, ecKey} }(), "$[1] (*ecdsa.PrivateKey)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs strings.Builder
			var logMu sync.Mutex
			logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(writerFunc(func(p []byte) (int, error) {
				logMu.Lock()
				defer logMu.Unlock()
				return logs.Write(p)
			})), zapcore.DebugLevel))
			s := start(t, Config{ConfigDump: func() any { return c.v }, Logger: logger})
			r := get(t, "http://"+s.Addrs().Admin+"/config_dump")
			wantStatus(t, r, http.StatusInternalServerError, "GET /config_dump")
			if !strings.Contains(r.body, c.wantPath) {
				t.Errorf("body %q does not name %q", r.body, c.wantPath)
			}
			logMu.Lock()
			logged := logs.String()
			logMu.Unlock()
			for _, out := range []string{r.body, logged} {
				if strings.Contains(out, "PRIVATE KEY-----") || strings.Contains(out, rawDecimal) || strings.Contains(out, rawBase64) {
					t.Fatalf("key material leaked: %q", out)
				}
			}
			if !strings.Contains(logged, "config_dump refused") {
				t.Errorf("refusal not logged: %q", logged)
			}
		})
	}

	// The same data, redacted by the app, is served.
	s := start(t, Config{ConfigDump: func() any {
		return map[string]any{"certs": []any{map[string]any{"identity": "spiffe://td/ns/a/sa/b", "privateKey": "[redacted]"}}}
	}})
	r := get(t, "http://"+s.Addrs().Admin+"/config_dump")
	wantStatus(t, r, http.StatusOK, "redacted dump")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestFindPrivateKeyIgnoresPublicAndUnexported(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	type view struct {
		Pub     *ecdsa.PublicKey
		private *ecdsa.PrivateKey // not serialized by encoding/json
		Skipped *ecdsa.PrivateKey `json:"-"`
		When    time.Time
	}
	if path, found := findPrivateKey(view{Pub: &key.PublicKey, private: key, Skipped: key, When: time.Now()}); found {
		t.Fatalf("false positive at %s", path)
	}
	if _, err := configDumpJSON(view{Pub: &key.PublicKey}); err != nil {
		t.Fatal(err)
	}
	deep := any("leaf")
	for range maxWalkDepth + 5 {
		deep = []any{deep}
	}
	if _, err := configDumpJSON(deep); !errors.Is(err, ErrPrivateKey) {
		t.Fatalf("too deep a value: %v, want refused", err)
	}
}

func TestLoggingLevel(t *testing.T) {
	lvl := zap.NewAtomicLevelAt(zapcore.InfoLevel)
	s := start(t, Config{Level: lvl})
	base := "http://" + s.Addrs().Admin + "/logging"

	r := get(t, base)
	wantStatus(t, r, http.StatusOK, "GET /logging")
	if r.body != "level: info\n" {
		t.Fatalf("GET /logging = %q", r.body)
	}

	wantStatus(t, post(t, base+"?level=debug"), http.StatusOK, "POST ?level=debug")
	if lvl.Level() != zapcore.DebugLevel {
		t.Fatalf("level %s after POST debug", lvl.Level())
	}

	// Form body, as curl -d level=error sends it.
	resp, err := client.PostForm(base, url.Values{"level": {"error"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || lvl.Level() != zapcore.ErrorLevel {
		t.Fatalf("POST form level=error: %d, level %s", resp.StatusCode, lvl.Level())
	}

	r = get(t, base+"?level=warn")
	wantStatus(t, r, http.StatusOK, "GET ?level=warn")
	if lvl.Level() != zapcore.WarnLevel || r.body != "level: warn\n" {
		t.Fatalf("after GET ?level=warn: level %s, body %q", lvl.Level(), r.body)
	}
	if got := get(t, base).body; got != "level: warn\n" {
		t.Fatalf("GET /logging = %q", got)
	}

	for _, bad := range []string{"?level=verbose", "?level=", "?level=panic", "?level=fatal"} {
		wantStatus(t, post(t, base+bad), http.StatusBadRequest, "POST "+bad)
		wantStatus(t, get(t, base+bad), http.StatusBadRequest, "GET "+bad)
	}
	wantStatus(t, post(t, base), http.StatusBadRequest, "POST without level")
	wantStatus(t, do(t, http.MethodPut, base+"?level=debug"), http.StatusMethodNotAllowed, "PUT")
	if lvl.Level() != zapcore.WarnLevel {
		t.Fatalf("refused requests changed the level to %s", lvl.Level())
	}

	// A change from another browser origin is refused, GET or POST.
	wantStatus(t, do(t, http.MethodGet, base+"?level=debug", "Sec-Fetch-Site", "cross-site"), http.StatusForbidden, "cross-site GET")
	wantStatus(t, do(t, http.MethodPost, base+"?level=debug", "Sec-Fetch-Site", "cross-site"), http.StatusForbidden, "cross-site POST")
	if lvl.Level() != zapcore.WarnLevel {
		t.Fatalf("cross-site request changed the level to %s", lvl.Level())
	}
}

func TestLoggingDefaultLevel(t *testing.T) {
	s := start(t, Config{}) // zero Level: the server makes one
	base := "http://" + s.Addrs().Admin + "/logging"
	wantStatus(t, post(t, base+"?level=debug"), http.StatusOK, "POST")
	if s.Level().Level() != zapcore.DebugLevel {
		t.Fatalf("Level() = %s", s.Level().Level())
	}
}

func TestQuitQuitQuit(t *testing.T) {
	var calls atomic.Int32
	quit := make(chan struct{}, 4)
	s := start(t, Config{Quit: func() { calls.Add(1); quit <- struct{}{} }})
	u := "http://" + s.Addrs().Admin + "/quitquitquit"

	r := get(t, u)
	wantStatus(t, r, http.StatusMethodNotAllowed, "GET /quitquitquit")
	if allow := r.header.Get("Allow"); allow != "POST" {
		t.Errorf("Allow %q, want POST", allow)
	}
	wantStatus(t, do(t, http.MethodPost, u, "Sec-Fetch-Site", "cross-site"), http.StatusForbidden, "cross-site POST")
	if calls.Load() != 0 {
		t.Fatal("Quit called by a refused request")
	}

	wantStatus(t, post(t, u), http.StatusOK, "POST /quitquitquit")
	select {
	case <-quit:
	case <-time.After(10 * time.Second):
		t.Fatal("Quit not called within 10s")
	}
	wantStatus(t, post(t, u), http.StatusOK, "second POST /quitquitquit")
	if n := calls.Load(); n != 1 {
		t.Fatalf("Quit called %d times, want 1", n)
	}
}

// TestQuitMayShutDown: Quit runs in its own goroutine, so an app whose
// Quit calls Shutdown does not deadlock on the request in flight.
func TestQuitMayShutDown(t *testing.T) {
	var s *Server
	done := make(chan error, 1)
	s, err := New(Config{AdminAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", Quit: func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, post(t, "http://"+s.Addrs().Admin+"/quitquitquit"), http.StatusOK, "POST /quitquitquit")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown from Quit: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown from Quit did not return")
	}
}

var defaultMuxOnce sync.Once

func TestPprof(t *testing.T) {
	s := start(t, Config{})
	base := "http://" + s.Addrs().Admin
	r := get(t, base+"/debug/pprof/")
	wantStatus(t, r, http.StatusOK, "GET /debug/pprof/")
	for _, p := range []string{"goroutine", "heap", "profile", "trace"} {
		if !strings.Contains(r.body, p) {
			t.Errorf("pprof index lacks %q", p)
		}
	}
	r = get(t, base+"/debug/pprof/goroutine?debug=1")
	wantStatus(t, r, http.StatusOK, "goroutine profile")
	if !strings.Contains(r.body, "goroutine profile:") {
		t.Errorf("goroutine profile: %.200q", r.body)
	}
	wantStatus(t, get(t, base+"/debug/pprof/cmdline"), http.StatusOK, "cmdline")
	wantStatus(t, get(t, base+"/debug/pprof/symbol"), http.StatusOK, "symbol")
	wantStatus(t, get(t, base+"/debug/pprof/heap?debug=1"), http.StatusOK, "heap")
	r = get(t, base+"/debug/pprof/trace?seconds=0.05")
	wantStatus(t, r, http.StatusOK, "trace")
	if len(r.body) == 0 {
		t.Error("empty trace")
	}

	// Not DefaultServeMux: what is registered there is not served here.
	defaultMuxOnce.Do(func() {
		http.DefaultServeMux.HandleFunc("/strait-default-mux-probe", func(w http.ResponseWriter, _ *http.Request) {})
	})
	wantStatus(t, get(t, base+"/strait-default-mux-probe"), http.StatusNotFound, "DefaultServeMux path")
}

func TestReadinessFlip(t *testing.T) {
	s := start(t, Config{})
	u := "http://" + s.Addrs().Ready + "/healthz/ready"

	// No check: ready.
	r := get(t, u)
	wantStatus(t, r, http.StatusOK, "no checks")
	if r.body != "ready\n" {
		t.Fatalf("body %q", r.body)
	}

	var haveCert, synced atomic.Bool
	s.AddCheck("workloads", func() error {
		if !synced.Load() {
			return errors.New("not synced")
		}
		return nil
	})
	s.AddCheck("certs", func() error {
		if !haveCert.Load() {
			return errors.New("no certificate yet")
		}
		return nil
	})
	r = get(t, u)
	wantStatus(t, r, http.StatusServiceUnavailable, "both failing")
	if want := "not ready\ncerts: no certificate yet\nworkloads: not synced\n"; r.body != want {
		t.Fatalf("body %q, want %q", r.body, want)
	}
	if err := s.Ready(); err == nil || !strings.Contains(err.Error(), "certs") {
		t.Fatalf("Ready() = %v", err)
	}

	haveCert.Store(true)
	r = get(t, u)
	wantStatus(t, r, http.StatusServiceUnavailable, "one failing")
	if want := "not ready\nworkloads: not synced\n"; r.body != want {
		t.Fatalf("body %q, want %q", r.body, want)
	}

	synced.Store(true)
	r = get(t, u)
	wantStatus(t, r, http.StatusOK, "all pass")
	if r.body != "ready\n" {
		t.Fatalf("body %q", r.body)
	}

	// Back to not ready, then the check removed.
	s.AddCheck("drain", func() error { return errors.New("draining") })
	wantStatus(t, get(t, u), http.StatusServiceUnavailable, "drain")
	s.AddCheck("drain", nil)
	wantStatus(t, get(t, u), http.StatusOK, "drain removed")

	wantStatus(t, post(t, u), http.StatusMethodNotAllowed, "POST ready")
	wantStatus(t, get(t, "http://"+s.Addrs().Ready+"/config_dump"), http.StatusNotFound, "admin path on the ready port")
}

// TestReadinessConcurrentChecks: checks added while probes run (-race).
func TestReadinessConcurrentChecks(t *testing.T) {
	s := start(t, Config{})
	u := "http://" + s.Addrs().Ready + "/healthz/ready"
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 50 {
			s.AddCheck(fmt.Sprint("c", i%5), func() error { return nil })
		}
	}()
	go func() {
		defer wg.Done()
		for range 20 {
			resp, err := client.Get(u)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d", resp.StatusCode)
			}
		}
	}()
	wg.Wait()
}

func TestMetricsEndpoints(t *testing.T) {
	// A stand-in for the metrics package's handler (admin does not depend
	// on it): Prometheus text, with the path it was asked for.
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprintf(w, "# TYPE istio_tcp_connections_closed_total counter\nistio_tcp_connections_closed_total{source_workload=\"sleep\"} 1\n# path %s\n", r.URL.Path)
	})
	s := start(t, Config{Metrics: h})
	for _, p := range []string{"/metrics", "/stats/prometheus"} {
		r := get(t, "http://"+s.Addrs().Metrics+p)
		wantStatus(t, r, http.StatusOK, "GET "+p)
		if !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: Content-Type %q", p, r.header.Get("Content-Type"))
		}
		for _, want := range []string{`istio_tcp_connections_closed_total{source_workload="sleep"} 1`, "# path " + p + "\n"} {
			if !strings.Contains(r.body, want) {
				t.Errorf("%s lacks %q", p, want)
			}
		}
	}
	wantStatus(t, post(t, "http://"+s.Addrs().Metrics+"/metrics"), http.StatusMethodNotAllowed, "POST /metrics")
	wantStatus(t, get(t, "http://"+s.Addrs().Metrics+"/"), http.StatusNotFound, "GET / on metrics")
}

func TestNonLoopbackAdminRefused(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:15000", ":15000", "[::]:15000", "10.1.2.3:15000", "192.0.2.1:0", "example.com:15000"} {
		_, err := New(Config{AdminAddr: addr})
		if !errors.Is(err, ErrNonLoopback) {
			t.Errorf("New(AdminAddr %q) = %v, want ErrNonLoopback", addr, err)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "admin: ") || !strings.Contains(msg, "AllowNonLoopback") || !strings.Contains(msg, addr) {
			t.Errorf("unclear error: %q", msg)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "127.0.0.2:15000", "[::1]:0", "localhost:0", "LOCALHOST:0", "[::ffff:127.0.0.1]:0"} {
		if _, err := New(Config{AdminAddr: addr}); err != nil {
			t.Errorf("New(AdminAddr %q): %v", addr, err)
		}
	}
	s, err := New(Config{AdminAddr: "0.0.0.0:15000", AllowNonLoopback: true})
	if err != nil {
		t.Fatalf("AllowNonLoopback: %v", err)
	}
	if s.loopback {
		t.Fatal("AllowNonLoopback kept the loopback Host check")
	}
	if _, err := New(Config{AdminAddr: "127.0.0.1"}); err == nil || !strings.HasPrefix(err.Error(), "admin: admin address") {
		t.Fatalf("address without port: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.AdminAddr != DefaultAdminAddr || s.cfg.ReadyAddr != DefaultReadyAddr || s.cfg.MetricsAddr != DefaultMetricsAddr {
		t.Fatalf("defaults: %q %q %q", s.cfg.AdminAddr, s.cfg.ReadyAddr, s.cfg.MetricsAddr)
	}
	if !s.loopback {
		t.Fatal("default admin address is not loopback-restricted")
	}
	if (s.Addrs() != Addrs{}) {
		t.Fatal("Addrs before Start")
	}
}

func TestHostHeaderCheck(t *testing.T) {
	s := start(t, Config{})
	u := "http://" + s.Addrs().Admin + "/logging"
	_, port, _ := net.SplitHostPort(s.Addrs().Admin)
	for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port, "localhost"} {
		wantStatus(t, do(t, http.MethodGet, u, "Host", host), http.StatusOK, "Host "+host)
	}
	for _, host := range []string{"attacker.example:" + port, "attacker.example", "10.0.0.1:" + port} {
		wantStatus(t, do(t, http.MethodGet, u, "Host", host), http.StatusForbidden, "Host "+host)
	}
}

func TestTimeoutsSet(t *testing.T) {
	s := start(t, Config{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.servers) != 3 {
		t.Fatalf("%d servers", len(s.servers))
	}
	for _, sv := range s.servers {
		h := sv.http
		if h.ReadHeaderTimeout <= 0 || h.ReadTimeout <= 0 || h.WriteTimeout <= 0 || h.IdleTimeout <= 0 || h.MaxHeaderBytes <= 0 {
			t.Errorf("%s: timeouts not all set: %+v", sv.name, timeouts{h.ReadHeaderTimeout, h.ReadTimeout, h.WriteTimeout, h.IdleTimeout})
		}
	}
}

func TestStartBindErrorAndLifecycle(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	s, err := New(Config{AdminAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0", MetricsAddr: busy.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "admin: listen metrics on ") {
		t.Fatalf("Start with a busy port: %v", err)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("error does not wrap the listen error: %v", err)
	}
	if (s.Addrs() != Addrs{}) {
		t.Fatalf("Addrs after a failed Start: %+v", s.Addrs())
	}

	// A failed Start leaves nothing bound and can be retried.
	busy.Close()
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start after freeing the port: %v", err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	a := s.Addrs()
	wantStatus(t, get(t, "http://"+a.Admin+"/"), http.StatusOK, "admin")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{a.Admin, a.Ready, a.Metrics} {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Shutdown", addr)
		}
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := s.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Shutdown: %v", err)
	}
}

// TestShutdownDeadline: a request still running when ctx ends is cut and
// Shutdown reports ctx's error.
func TestShutdownDeadline(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	s, err := New(Config{AdminAddr: "127.0.0.1:0", ReadyAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		Metrics: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			close(entered)
			<-release
		})})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	go func() {
		if resp, err := client.Get("http://" + s.Addrs().Metrics + "/metrics"); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("request did not reach the handler")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
}

func TestShutdownBeforeStart(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestNoDataPathImports: admin takes functions and handlers, never the
// data path's packages.
func TestNoDataPathImports(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".")
	cmd.Dir = filepath.Dir(file)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/strait-mesh/strait/"
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"ztunnel/inbound", "ztunnel/outbound", "ztunnel/inpod", "ztunnel/hbone", "ztunnel/app", "ztunnel/relay", "ztunnel/metrics"} {
			if strings.HasPrefix(dep, mod+bad) {
				t.Errorf("depends on %s", dep)
			}
		}
	}
}
