package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The relay binary, built once by TestMain, run as two subprocesses (client
// and server relay) on 127.0.0.1 between a test client and a TCP echo server.

var relayBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "istio-hbone-relay-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	relayBin = filepath.Join(dir, "istio-hbone-relay")
	// go test puts its own toolchain's bin first on PATH.
	args := []string{"build", "-o", relayBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the relay:", err)
		return 1
	}
	return m.Run()
}

// ---- certificates ----

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // CA certificate PEM
	dir  string
}

var serial atomic.Int64

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{Organization: []string{"cluster.local"}, CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.file = filepath.Join(ca.dir, name+"-ca.pem")
	writeFile(t, ca.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return ca
}

// leaf issues spiffe://cluster.local/ns/test/sa/<sa> (URI SAN only, as the
// harness's certificates) and returns the cert and key PEM files. With
// combined, both are one file and key is "".
func (ca *testCA) leaf(t *testing.T, sa string, combined bool) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := url.Parse("spiffe://cluster.local/ns/test/sa/" + sa)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), URIs: []*url.URL{id},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	cert = filepath.Join(ca.dir, sa+".pem")
	if combined {
		writeFile(t, cert, append(certPEM, keyPEM...))
		return cert, ""
	}
	key = filepath.Join(ca.dir, sa+"-key.pem")
	writeFile(t, cert, certPEM)
	writeFile(t, key, keyPEM)
	return cert, key
}

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// ---- processes ----

// lockedBuffer collects a relay's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type relay struct {
	name   string
	stderr *lockedBuffer

	mu     sync.Mutex
	stdout []string // lines after "ready"
}

// startRelay runs the relay binary and waits for its "ready" line. At
// cleanup it sends SIGTERM and expects exit status 0 and nothing but
// "ready" on stdout.
func startRelay(t *testing.T, name string, args ...string) *relay {
	t.Helper()
	r := &relay{name: name, stderr: &lockedBuffer{}}
	cmd := exec.Command(relayBin, args...)
	cmd.Stderr = r.stderr
	// A -race relay would otherwise sleep 1 s at exit; a race it finds
	// still makes it exit 66 with the report on stderr, which fails the
	// exit status check below.
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			if first && sc.Text() == "ready" {
				close(ready)
				first = false
				continue
			}
			r.mu.Lock()
			r.stdout = append(r.stdout, sc.Text())
			r.mu.Unlock()
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-readDone // Wait closes the pipe: read it to the end first
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%s relay exited with %v after SIGTERM, want status 0; stderr:\n%s", name, err, r.stderr)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("%s relay still running 10 s after SIGTERM; killed", name)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.stdout) > 0 {
			t.Errorf("%s relay wrote more than \"ready\" to stdout: %q", name, r.stdout)
		}
	})
	select {
	case <-ready:
		return r
	case err := <-exited:
		t.Fatalf("%s relay exited before ready (%v); stderr:\n%s", name, err, r.stderr)
	case <-time.After(15 * time.Second):
		t.Fatalf("%s relay not ready within 15 s; stderr:\n%s", name, r.stderr)
	}
	return nil
}

// waitStderr waits up to 10 s for the relay to log a line containing s.
func (r *relay) waitStderr(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.stderr.String(), s) {
		if time.Now().After(deadline) {
			t.Errorf("%s relay did not log %q within 10 s; stderr:\n%s", r.name, s, r.stderr)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeAddr is a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ---- the pod side ----

type echoServer struct {
	ln       net.Listener
	accepted atomic.Int64
}

func newEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

// echoThrough connects to addr, writes payload while reading concurrently,
// and checks that exactly payload comes back (SHA-256 and length).
func echoThrough(addr string, payload []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	h := sha256.New()
	n, rerr := io.Copy(h, io.LimitReader(c, int64(len(payload))))
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil || n != int64(len(payload)) {
		return fmt.Errorf("read %d of %d bytes back: %v", n, len(payload), rerr)
	}
	if got, want := h.Sum(nil), sha256.Sum256(payload); !bytes.Equal(got, want[:]) {
		return fmt.Errorf("%d bytes back, but SHA-256 %x, want %x", n, got, want)
	}
	return nil
}

// expectNoTunnel connects to addr, writes, and expects the connection to
// end without a byte back, promptly (not by our deadline).
func expectNoTunnel(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("must not arrive"))
	n, err := io.ReadFull(c, make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("got %d byte(s) back through a tunnel that must not work", n)
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after 10 s, want it ended promptly: %v", err)
	}
	t.Logf("connection ended as expected: %v", err)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- tests ----

func TestRelay(t *testing.T) {
	ca := newCA(t, "mesh")
	clientCert, _ := ca.leaf(t, "client", true) // cert and key in one file
	serverCert, serverKey := ca.leaf(t, "server", false)
	echo1, echo2 := newEcho(t), newEcho(t)
	closed := freeAddr(t) // nothing listens here

	hbone := freeAddr(t)
	startRelay(t, "server", "-mode", "server", "-listen", hbone,
		"-cert", serverCert, "-key", serverKey, "-ca", ca.file,
		"-istio-log", "info") // Istio's logs must go to stderr, not stdout
	in1, in2, inClosed := freeAddr(t), freeAddr(t), freeAddr(t)
	startRelay(t, "client", "-mode", "client",
		"-listen", in1+"="+echo1.addr()+","+in2+"="+echo2.addr(),
		"-listen", inClosed+"="+closed,
		"-peer", hbone, "-cert", clientCert, "-ca", ca.file)

	t.Run("one byte", func(t *testing.T) {
		if err := echoThrough(in1, []byte{0x5a}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("1 MiB", func(t *testing.T) {
		if err := echoThrough(in1, randomBytes(t, 1<<20)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("second route", func(t *testing.T) {
		before1, before2 := echo1.accepted.Load(), echo2.accepted.Load()
		if err := echoThrough(in2, randomBytes(t, 64<<10)); err != nil {
			t.Fatal(err)
		}
		if d1, d2 := echo1.accepted.Load()-before1, echo2.accepted.Load()-before2; d1 != 0 || d2 != 1 {
			t.Errorf("route %s → %s reached echo1 %d and echo2 %d times, want 0 and 1", in2, echo2.addr(), d1, d2)
		}
	})
	t.Run("concurrent tunnels", func(t *testing.T) {
		const n = 8
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			payload := randomBytes(t, 128<<10)
			wg.Go(func() {
				if err := echoThrough(in1, payload); err != nil {
					errs <- fmt.Errorf("tunnel %d: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	// Istio's server answers 200 before it dials the authority, so a
	// refused dial cannot become an error status: the stream just ends.
	t.Run("unreachable authority ends the connection", func(t *testing.T) {
		expectNoTunnel(t, inClosed)
	})
}

// A client relay whose certificate comes from another CA is refused by the
// server relay's handshake, and nothing reaches the echo server.
func TestServerRefusesClientOfAnotherCA(t *testing.T) {
	// The same subject for both CAs: Go's TLS client sends no certificate
	// whose issuer is not among the CA names the server asks for, so a
	// differently named CA would test only that filter, not the server's
	// verification of the chain.
	ca, other := newCA(t, "mesh"), newCA(t, "mesh")
	clientCert, clientKey := other.leaf(t, "client", false)
	serverCert, _ := ca.leaf(t, "server", true)
	echo := newEcho(t)

	hbone := freeAddr(t)
	server := startRelay(t, "server", "-mode", "server", "-listen", hbone, "-cert", serverCert, "-ca", ca.file)
	// The client trusts the real CA for the server: only the server's
	// check of the client certificate can refuse it.
	in := freeAddr(t)
	client := startRelay(t, "client", "-mode", "client", "-listen", in+"="+echo.addr(),
		"-peer", hbone, "-cert", clientCert, "-key", clientKey, "-ca", ca.file)

	expectNoTunnel(t, in)
	server.waitStderr(t, "TLS handshake error")
	server.waitStderr(t, "certificate signed by unknown authority")
	client.waitStderr(t, "CONNECT "+echo.addr())
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo server accepted %d connections through a refused client, want 0", n)
	}
}

// A server relay whose certificate comes from another CA is refused by the
// client relay, though the server would accept the client.
func TestClientRefusesServerOfAnotherCA(t *testing.T) {
	ca, other := newCA(t, "mesh"), newCA(t, "mesh")
	clientCert, _ := ca.leaf(t, "client", true)
	serverCert, _ := other.leaf(t, "server", true)
	echo := newEcho(t)

	hbone := freeAddr(t)
	startRelay(t, "server", "-mode", "server", "-listen", hbone, "-cert", serverCert, "-ca", ca.file)
	in := freeAddr(t)
	client := startRelay(t, "client", "-mode", "client", "-listen", in+"="+echo.addr(),
		"-peer", hbone, "-cert", clientCert, "-ca", ca.file)

	expectNoTunnel(t, in)
	client.waitStderr(t, "certificate signed by unknown authority")
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo server accepted %d connections through a refused server, want 0", n)
	}
}

func TestParseFlags(t *testing.T) {
	base := []string{"-cert", "c.pem", "-ca", "ca.pem"}
	ok := []struct {
		args   []string
		routes []route
	}{
		{[]string{"-mode", "client", "-peer", "10.0.0.2:15008", "-listen", "10.0.0.1:8080=10.201.2.2:8080,10.0.0.1:5201=10.201.2.2:5201", "-listen", "[::1]:1=[fd00::1]:2"},
			[]route{{"10.0.0.1:8080", "10.201.2.2:8080"}, {"10.0.0.1:5201", "10.201.2.2:5201"}, {"[::1]:1", "[fd00::1]:2"}}},
		{[]string{"-mode", "server", "-listen", "10.0.0.2:15008"}, nil},
	}
	for _, tc := range ok {
		c, err := parseFlags(append(tc.args, base...), io.Discard)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if c.mode == "server" {
			continue
		}
		rs, err := parseRoutes(c.listen)
		if err != nil || !slices.Equal(rs, tc.routes) {
			t.Errorf("%q: routes %v, %v; want %v", tc.args, rs, err, tc.routes)
		}
	}
	bad := [][]string{
		{"-mode", "client", "-peer", "10.0.0.2:15008", "-listen", "10.0.0.1:8080"},               // no authority
		{"-mode", "client", "-peer", "10.0.0.2", "-listen", "10.0.0.1:8080=10.201.2.2:8080"},     // peer without port
		{"-mode", "client", "-peer", "10.0.0.2:15008", "-listen", "10.0.0.1:8080=10.201.2.2"},    // authority without port
		{"-mode", "client", "-peer", "10.0.0.2:15008", "-listen", "10.0.0.1:8080=10.201.2.2:1,"}, // empty entry
		{"-mode", "server", "-listen", "10.0.0.2:15008=10.201.2.2:8080"},                         // server with a route
		{"-mode", "server", "-listen", "10.0.0.2:15008", "-listen", "10.0.0.2:15009"},            // two server listeners
		{"-mode", "proxy", "-listen", "10.0.0.2:15008"},                                          // unknown mode
		{"-mode", "server", "-listen", "10.0.0.2:15008", "-peer", "10.0.0.3:15008"},              // peer in server mode
	}
	for _, args := range bad {
		c, err := parseFlags(append(args, base...), io.Discard)
		if err == nil && c.mode == "client" {
			_, err = parseRoutes(c.listen)
		}
		if err == nil {
			t.Errorf("%q: accepted, want an error", args)
		}
	}
	if _, err := parseFlags([]string{"-mode", "server", "-listen", "10.0.0.2:15008"}, io.Discard); err == nil {
		t.Error("no -cert/-ca: accepted, want an error")
	}
}
