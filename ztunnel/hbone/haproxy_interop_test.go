package hbone_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/internal/haproxyhbone"
	"github.com/strait-mesh/strait/ztunnel/hbone"
)

// haproxy 2.6 (Debian) as an HBONE client of Strait's server: a plain TCP
// client → haproxy (Lua adds the CONNECT head) → HTTP/2 CONNECT over
// TLS 1.3 mTLS → hbone.Server → a TCP server on 127.0.0.1. The config and
// the Lua glue live in testdata/haproxy.

const haproxyTrustDomain = "cluster.local"

func TestHaproxyClientToStraitServer(t *testing.T) {
	ca := identitytest.New(t, haproxyTrustDomain)
	srv := startHaproxyPeerServer(t, ca)
	haproxyID := ca.ID("haproxy", "client")

	t.Run("echo 4 MiB both ways", func(t *testing.T) {
		echo := newHaproxyUpstream(t, haproxyEcho)
		hp := startHaproxy(t, ca.Issue(t, "haproxy", "client"), ca, srv.addr, echo.addr())
		before := len(srv.requests())

		c := hp.dial(t)
		payload := make([]byte, 4<<20)
		if _, err := rand.Read(payload); err != nil {
			t.Fatal(err)
		}
		got, err := haproxyExchange(c, payload)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo through haproxy: %s", haproxyDiff(got, payload))
		}
		echo.waitEOF(t)

		reqs := srv.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("Strait handler saw %d CONNECTs, want 1", len(reqs))
		}
		r := reqs[0]
		if r.Peer != haproxyID {
			t.Errorf("Strait handler saw peer %s, want haproxy's %s", r.Peer, haproxyID)
		}
		if want := netip.MustParseAddrPort(echo.addr()); r.Authority.Addr != want {
			t.Errorf("Strait handler saw authority %v, want %v", r.Authority.Addr, want)
		}
		if want := netip.MustParseAddr("127.0.0.1"); r.Forwarded != want {
			t.Errorf("Strait handler saw forwarded %v, want the plain client's %v", r.Forwarded, want)
		}
	})

	t.Run("half-close", func(t *testing.T) {
		const sent, tail = 1 << 20, 256 << 10
		up := newHaproxyUpstream(t, haproxyReplyAfterEOF(tail))
		hp := startHaproxy(t, ca.Issue(t, "haproxy", "client"), ca, srv.addr, up.addr())

		c := hp.dial(t)
		if _, err := c.Write(haproxyPattern(sent)); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		// The upstream writes only after it has read EOF: the reply proves
		// the FIN crossed haproxy and Strait as END_STREAM and came out as
		// a FIN, with the way back still open.
		up.waitEOF(t)
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read after half-close: %v (got %d bytes)", err, len(got))
		}
		want := append([]byte(fmt.Sprintf(haproxyReplyHead, sent)), haproxyPattern(tail)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("reply after half-close: %s", haproxyDiff(got, want))
		}
	})

	t.Run("concurrent tunnels", func(t *testing.T) {
		const tunnels, size = 8, 256 << 10
		echo := newHaproxyUpstream(t, haproxyEcho)
		hp := startHaproxy(t, ca.Issue(t, "haproxy", "client"), ca, srv.addr, echo.addr())
		before := srv.ln.accepted.Load()

		var wg sync.WaitGroup
		errs := make(chan error, tunnels)
		for i := range tunnels {
			wg.Go(func() {
				c, err := net.DialTimeout("tcp", hp.plain, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				payload := haproxyPattern(size + i)
				got, err := haproxyExchange(c.(*net.TCPConn), payload)
				if err == nil && !bytes.Equal(got, payload) {
					err = errors.New(haproxyDiff(got, payload))
				}
				if err != nil {
					errs <- fmt.Errorf("tunnel %d: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := echo.accepted.Load(); n != tunnels {
			t.Errorf("echo server accepted %d connections, want %d", n, tunnels)
		}
		t.Logf("%d tunnels used %d TLS connection(s) from haproxy", tunnels, srv.ln.accepted.Load()-before)
	})
}

// A haproxy whose client certificate comes from another CA (same trust
// domain name) is refused by Strait's server during the handshake: haproxy
// gets a TLS alert, its plain client gets its connection closed without a
// byte, and nothing reaches the upstream.
func TestHaproxyClientFromAnotherCARefused(t *testing.T) {
	ca := identitytest.New(t, haproxyTrustDomain)
	other := identitytest.New(t, haproxyTrustDomain)
	srv := startHaproxyPeerServer(t, ca)
	echo := newHaproxyUpstream(t, haproxyEcho)
	// haproxy trusts the real CA for the server, so only the server's check
	// of haproxy's certificate can refuse the tunnel.
	hp := startHaproxy(t, other.Issue(t, "haproxy", "client"), ca, srv.addr, echo.addr())

	c := hp.dial(t)
	_, _ = c.Write([]byte("must not reach the upstream"))
	got, err := io.ReadAll(c)
	if len(got) != 0 {
		t.Errorf("plain client read %d bytes (%q) through a refused tunnel", len(got), got)
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("refused tunnel was not closed: %v", err)
		}
	}

	line := hp.waitLog(t, "hbone-connect ")
	t.Logf("haproxy: %s", line)
	if !strings.Contains(line, "alert") {
		t.Errorf("haproxy's CONNECT log line shows no TLS alert from the server: %s", line)
	}
	haproxyPoll(t, "Strait server to count the failed handshake", func() bool {
		return srv.srv.Stats().HandshakeFailures > 0
	})
	if reqs := srv.requests(); len(reqs) != 0 {
		t.Errorf("Strait handler was called %d times for a refused client", len(reqs))
	}
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo server accepted %d connections, want 0", n)
	}
}

// haproxyPeerServer is the Strait hbone.Server haproxy connects to. Its
// handler records every request and dials the authority.
type haproxyPeerServer struct {
	srv  *hbone.Server
	addr string
	ln   *haproxyCountingListener

	mu   sync.Mutex
	seen []hbone.InboundRequest
}

func startHaproxyPeerServer(t *testing.T, ca *identitytest.CA) *haproxyPeerServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &haproxyPeerServer{addr: ln.Addr().String(), ln: &haproxyCountingListener{Listener: ln}}
	s.srv, err = hbone.NewServer(hbone.ServerConfig{
		TLS: ca.ServerTLS(t, "strait", "server"),
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.InboundRequest) (net.Conn, error) {
			s.mu.Lock()
			s.seen = append(s.seen, *r)
			s.mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.Authority.Addr.String())
		}),
		Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("hbone.NewServer: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.ln) }()
	t.Cleanup(func() {
		// Close, not Shutdown: every haproxy is killed by then (its
		// cleanup ran first), so there is no tunnel left to drain.
		_ = s.srv.Close()
		<-served
	})
	return s
}

func (s *haproxyPeerServer) requests() []hbone.InboundRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hbone.InboundRequest(nil), s.seen...)
}

type haproxyCountingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *haproxyCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// haproxyProcess is a running haproxy with the client config.
type haproxyProcess struct {
	plain  string        // the plain TCP listener (127.0.0.1:port)
	exited chan struct{} // closed when the process has exited
	exit   error         // valid after exited
	log    *haproxyLog
}

// haproxyBinary finds haproxy or fails the test: the interop test must not
// pass without it (.ci/run installs it).
func haproxyBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	const debian = "/usr/sbin/haproxy" // not on a non-root PATH
	if _, err := os.Stat(debian); err == nil {
		return debian
	}
	t.Fatal("haproxy is not installed: run `apt-get install haproxy` (Debian's 2.6 is the tested version; .ci/run installs it)")
	return ""
}

// startHaproxy writes svid (as haproxy's client certificate), the CA bundle
// haproxy verifies the server with and the generated config into a temp
// dir, and starts haproxy in the foreground. It tunnels every plain TCP
// connection to authority through the HBONE server at peer. The listening
// sockets are created here and inherited by haproxy (bind fd@N), so no port
// can be taken between choosing and binding it. haproxy is killed in
// t.Cleanup.
func startHaproxy(t *testing.T, svid *x509svid.SVID, trust *identitytest.CA, peer, authority string) *haproxyProcess {
	t.Helper()
	bin := haproxyBinary(t)
	dir := t.TempDir()
	luaFiles, err := haproxyhbone.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	lua := luaFiles.Client

	var certPEM []byte
	for _, c := range svid.Certificates {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...)
	certFile, caFile := filepath.Join(dir, "client.pem"), filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trust.Root().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	plainLn, plainFile := haproxyListener(t)
	readyLn, readyFile := haproxyListener(t)
	// Abstract socket names are global to the network namespace: make the
	// loop's name unique to this haproxy.
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "haproxy.cfg")
	writeHaproxyConfig(t, cfgFile, haproxyConfig{
		Lua:       lua,
		PlainFD:   3, // cmd.ExtraFiles[0]
		ReadyFD:   4, // cmd.ExtraFiles[1]
		Authority: authority,
		Loop:      "strait-hbone-test-" + hex.EncodeToString(nonce),
		Peer:      peer,
		Cert:      certFile,
		CA:        caFile,
	})

	// The check opens the inherited sockets too, so it gets them as well.
	check := exec.Command(bin, "-c", "-f", cfgFile)
	check.ExtraFiles = []*os.File{plainFile, readyFile}
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c rejects the generated config %s: %v\n%s", cfgFile, err, out)
	}

	hp := &haproxyProcess{plain: plainLn.Addr().String(), exited: make(chan struct{}), log: &haproxyLog{}}
	cmd := exec.Command(bin, "-f", cfgFile, "-db")
	cmd.ExtraFiles = []*os.File{plainFile, readyFile}
	cmd.Stdout = hp.log
	cmd.Stderr = hp.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	// haproxy has its own copies of the sockets now.
	for _, c := range []io.Closer{plainLn, plainFile, readyLn, readyFile} {
		c.Close()
	}
	go func() {
		hp.exit = cmd.Wait()
		close(hp.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-hp.exited
		if t.Failed() {
			t.Logf("haproxy output:\n%s", hp.log)
		}
	})

	// Ready when its monitor URI answers: by then every listener is bound
	// and the Lua actions are registered.
	ready := "http://" + readyLn.Addr().String() + "/ready"
	client := &http.Client{Timeout: time.Second}
	haproxyPoll(t, "haproxy to answer "+ready, func() bool {
		select {
		case <-hp.exited:
			t.Fatalf("haproxy exited during start-up: %v\n%s", hp.exit, hp.log)
		default:
		}
		resp, err := client.Get(ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return hp
}

// dial connects to haproxy's plain listener with a one-minute deadline.
func (hp *haproxyProcess) dial(t *testing.T) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", hp.plain, 10*time.Second)
	if err != nil {
		t.Fatalf("connect to haproxy %s: %v", hp.plain, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// waitLog waits for haproxy to log a line containing substr and returns it.
func (hp *haproxyProcess) waitLog(t *testing.T, substr string) string {
	t.Helper()
	var line string
	haproxyPoll(t, fmt.Sprintf("haproxy to log %q", substr), func() bool {
		line = hp.log.find(substr)
		return line != ""
	})
	return line
}

// haproxyListener opens a loopback listener on port 0 and returns it with a
// file for haproxy to inherit.
func haproxyListener(t *testing.T) (*net.TCPListener, *os.File) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	return ln, f
}

type haproxyConfig struct {
	Lua              string
	PlainFD, ReadyFD int
	Authority, Loop  string
	Peer, Cert, CA   string
}

func writeHaproxyConfig(t *testing.T, path string, cfg haproxyConfig) {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", "haproxy", "hbone-client.cfg.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// haproxyLog collects haproxy's output for the tests and for failure
// reports.
type haproxyLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *haproxyLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *haproxyLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *haproxyLog) find(substr string) string {
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, substr) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// haproxyPoll waits until cond holds, checking every few milliseconds, and
// fails the test after 20 s.
func haproxyPoll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// haproxyUpstream is the TCP server at the end of the tunnel.
type haproxyUpstream struct {
	ln       net.Listener
	accepted atomic.Int64
	eof      chan error // per connection: nil once the client direction ended with a clean EOF
}

func newHaproxyUpstream(t *testing.T, serve func(c *net.TCPConn) error) *haproxyUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &haproxyUpstream{ln: ln, eof: make(chan error, 64)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				u.eof <- serve(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return u
}

func (u *haproxyUpstream) addr() string { return u.ln.Addr().String() }

func (u *haproxyUpstream) waitEOF(t *testing.T) {
	t.Helper()
	select {
	case err := <-u.eof:
		if err != nil {
			t.Fatalf("upstream: client direction ended with %v, want a clean EOF (FIN)", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("upstream: no EOF from the client direction within a minute")
	}
}

// haproxyEcho echoes until EOF, then half-closes.
func haproxyEcho(c *net.TCPConn) error {
	if _, err := io.Copy(c, c); err != nil {
		return err
	}
	return c.CloseWrite()
}

const haproxyReplyHead = "read %d bytes, then EOF; this reply was written after the EOF\n"

// haproxyReplyAfterEOF reads until EOF without answering, then writes a
// reply head and tail bytes of haproxyPattern.
func haproxyReplyAfterEOF(tail int) func(c *net.TCPConn) error {
	return func(c *net.TCPConn) error {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(c, haproxyReplyHead, n); err != nil {
			return err
		}
		_, err = c.Write(haproxyPattern(tail))
		return err
	}
}

// haproxyExchange writes payload while reading concurrently, half-closes,
// and returns everything read up to EOF.
func haproxyExchange(c *net.TCPConn, payload []byte) ([]byte, error) {
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		return nil, err
	}
	writeErr := make(chan error, 1)
	go func() {
		if _, err := c.Write(payload); err != nil {
			writeErr <- fmt.Errorf("write: %w", err)
			return
		}
		writeErr <- c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if werr := <-writeErr; werr != nil {
		return got, werr
	}
	if err != nil {
		return got, fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	return got, nil
}

// haproxyPattern is a payload whose bytes depend on their offset.
func haproxyPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + i>>16)
	}
	return b
}

func haproxyDiff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("got %d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("%d bytes as expected, but they differ from offset %d", len(got), i)
		}
	}
	return "equal"
}
