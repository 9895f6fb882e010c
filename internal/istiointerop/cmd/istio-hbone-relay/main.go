// Command istio-hbone-relay is a node-to-node HBONE relay built on Istio's Go
// HBONE implementation (istio.io/istio/pkg/hbone), so the benchmark harness
// can measure Istio's code as the system "istio-go":
//
//	client pod → relay -mode client ══ HTTP/2 CONNECT over TLS 1.3 mTLS ══> relay -mode server → server pod
//
// Client mode listens on plain TCP and opens, for every accepted connection,
// one CONNECT stream through Istio's hbone.NewDialer to the server relay
// (-peer). Server mode terminates TLS 1.3 mTLS (ALPN h2) and hands every
// connection to Istio's hbone.NewServer, which dials the CONNECT authority
// itself and copies bytes both ways. The relay adds nothing of its own
// beyond the TLS configuration and, in client mode, the two io.Copy calls
// between the accepted socket and Istio's tunnel conn.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	istiohbone "istio.io/istio/pkg/hbone"
	istiolog "istio.io/istio/pkg/log"
)

const usageText = `usage:
  istio-hbone-relay -mode client -listen LISTEN=AUTHORITY[,LISTEN=AUTHORITY...] -peer HOST:PORT -cert PEM [-key PEM] -ca PEM
  istio-hbone-relay -mode server -listen HOST:PORT -cert PEM [-key PEM] -ca PEM

Client mode: listen on plain TCP at every LISTEN address and tunnel each
accepted connection through Istio's pkg/hbone dialer, as an HTTP/2 CONNECT
stream with :authority AUTHORITY, to the server relay at -peer. -listen may
be repeated and each value may be a comma-separated list, e.g.
  -listen 10.0.0.1:8080=10.201.2.2:8080,10.0.0.1:5201=10.201.2.2:5201

Server mode: listen for TLS 1.3 mTLS (ALPN h2) at -listen and serve Istio's
pkg/hbone server, which dials each CONNECT's :authority itself.

TLS: -cert and -key are PEM files; if -key is empty, -cert must hold both
the certificate (chain) and the private key. The peer's chain must verify
against -ca (client mode checks the server's, server mode requires and
checks the client's); names and SPIFFE IDs are not checked. TLS 1.3 only.

Once every listener is bound the relay prints one line "ready" to stdout.
Errors and Istio's logs go to stderr. SIGTERM or SIGINT closes the
listeners and exits 0.

flags:
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "istio-hbone-relay:", err)
		os.Exit(2)
	}
}

// route is one client-mode listener: accept at listen, CONNECT to authority.
type route struct{ listen, authority string }

// listenFlag collects -listen values: repeatable, each a comma list.
type listenFlag []string

func (l *listenFlag) String() string { return strings.Join(*l, ",") }

func (l *listenFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return fmt.Errorf("empty entry in %q", v)
		}
		*l = append(*l, p)
	}
	return nil
}

// parseRoutes parses client-mode -listen entries LISTEN=AUTHORITY.
func parseRoutes(entries []string) ([]route, error) {
	if len(entries) == 0 {
		return nil, errors.New("client mode needs at least one -listen LISTEN=AUTHORITY")
	}
	var rs []route
	for _, e := range entries {
		listen, authority, ok := strings.Cut(e, "=")
		if !ok {
			return nil, fmt.Errorf("-listen %q: client mode wants LISTEN=AUTHORITY", e)
		}
		for _, a := range []string{listen, authority} {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("-listen %q: %w", e, err)
			}
		}
		rs = append(rs, route{listen, authority})
	}
	return rs, nil
}

type config struct {
	mode, peer, cert, key, ca string
	listen                    listenFlag
	istioLog                  string
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	var c config
	fs := flag.NewFlagSet("istio-hbone-relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.mode, "mode", "", "client or server")
	fs.Var(&c.listen, "listen", "client: LISTEN=AUTHORITY (repeatable, comma list); server: HOST:PORT of the HBONE listener")
	fs.StringVar(&c.peer, "peer", "", "client: HOST:PORT of the server relay's HBONE listener (e.g. 10.0.0.2:15008)")
	fs.StringVar(&c.cert, "cert", "", "PEM certificate chain (cert and key in one file if -key is empty)")
	fs.StringVar(&c.key, "key", "", "PEM private key (optional, see -cert)")
	fs.StringVar(&c.ca, "ca", "", "PEM CA bundle the peer's chain must verify against")
	fs.StringVar(&c.istioLog, "istio-log", "warn", "output level of Istio's logs (debug, info, warn, error, none); Istio logs several lines per tunnel at info")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.cert == "" || c.ca == "" {
		return nil, errors.New("-cert and -ca are required")
	}
	switch c.mode {
	case "client":
		if _, _, err := net.SplitHostPort(c.peer); err != nil {
			return nil, fmt.Errorf("-peer %q: %w", c.peer, err)
		}
	case "server":
		if c.peer != "" {
			return nil, errors.New("-peer is for client mode")
		}
		if len(c.listen) != 1 || strings.Contains(c.listen[0], "=") {
			return nil, errors.New("server mode needs exactly one -listen HOST:PORT")
		}
	default:
		return nil, fmt.Errorf("-mode %q: want client or server", c.mode)
	}
	return &c, nil
}

// configureIstioLog sends Istio's logs to stderr (its default is stdout,
// which would mix with the "ready" line) at the given level.
func configureIstioLog(level string) error {
	lvl, ok := map[string]istiolog.Level{
		"debug": istiolog.DebugLevel, "info": istiolog.InfoLevel, "warn": istiolog.WarnLevel,
		"error": istiolog.ErrorLevel, "none": istiolog.NoneLevel,
	}[level]
	if !ok {
		return fmt.Errorf("-istio-log %q: want debug, info, warn, error or none", level)
	}
	o := istiolog.DefaultOptions()
	o.OutputPaths = []string{"stderr"}
	o.ErrorOutputPaths = []string{"stderr"}
	o.SetDefaultOutputLevel(istiolog.DefaultScopeName, lvl)
	o.SetDefaultOutputLevel("hbone", lvl)
	return istiolog.Configure(o)
}

// tlsConfig is the TLS 1.3 mTLS config of either side. The harness's
// certificates carry only a SPIFFE URI SAN, so, like stunnel's verifyChain,
// the peer's chain is verified against the CA without a host name check.
func tlsConfig(c *config) (*tls.Config, error) {
	certPEM, err := os.ReadFile(c.cert)
	if err != nil {
		return nil, err
	}
	keyPEM := certPEM
	if c.key != "" {
		if keyPEM, err = os.ReadFile(c.key); err != nil {
			return nil, err
		}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("-cert %s / -key %s: %w", c.cert, c.key, err)
	}
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("-ca %s: no PEM certificate", c.ca)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
	}
	if c.mode == "server" {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = pool
		// Istio's NewServer enables only HTTP/1 and cleartext HTTP/2, so
		// its ServeTLS would not offer h2; like Istio's echo server, TLS is
		// terminated in our listener, whose ALPN h2 makes net/http speak
		// HTTP/2.
		cfg.NextProtos = []string{"h2"}
		return cfg, nil
	}
	// Client: the http2.Transport inside Istio's dialer adds ALPN h2.
	cfg.InsecureSkipVerify = true // replaced by VerifyConnection: chain only, no host name
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:         pool,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		return err
	}
	return cfg, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var routes []route
	if c.mode == "client" {
		if routes, err = parseRoutes(c.listen); err != nil {
			return err
		}
	}
	if err := configureIstioLog(c.istioLog); err != nil {
		return err
	}
	tc, err := tlsConfig(c)
	if err != nil {
		return err
	}
	logger := log.New(stderr, "istio-hbone-relay: ", log.LstdFlags|log.Lmicroseconds)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var wait func()
	if c.mode == "server" {
		wait, err = startServer(c.listen[0], tc, logger)
	} else {
		wait, err = startClient(routes, c.peer, tc, logger)
	}
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}
	<-ctx.Done()
	wait()
	return nil
}

// startServer serves Istio's hbone.NewServer behind a TLS listener on addr.
// The returned func closes the listener (and Istio's open tunnels) and
// waits for Serve to return.
func startServer(addr string, tc *tls.Config, logger *log.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := istiohbone.NewServer()
	srv.ErrorLog = logger // handshake failures, superfluous WriteHeader, ...
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Accepted TCP sockets have TCP_NODELAY (Go's default), as have
		// the upstream sockets Istio's handler dials.
		if err := srv.Serve(tls.NewListener(ln, tc)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Printf("serve %s: %v", addr, err)
		}
	}()
	return func() {
		_ = srv.Close()
		<-served
	}, nil
}

// startClient listens on every route and tunnels each accepted connection
// through Istio's dialer to peer. The returned func closes the listeners
// and waits for the accept loops; tunnels in flight end with the process.
func startClient(routes []route, peer string, tc *tls.Config, logger *log.Logger) (func(), error) {
	// One dialer for all routes: its http2.Transport keeps one pooled
	// TLS connection to the peer and multiplexes every tunnel on it.
	dialer := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: peer, TLS: tc})
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}
	for _, r := range routes {
		ln, err := net.Listen("tcp", r.listen)
		if err != nil {
			closeAll()
			return nil, err
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	for i, ln := range lns {
		authority := routes[i].authority
		wg.Go(func() {
			for {
				in, err := ln.Accept()
				if err != nil {
					if !errors.Is(err, net.ErrClosed) {
						logger.Printf("accept %s: %v", ln.Addr(), err)
					}
					return
				}
				go tunnel(in.(*net.TCPConn), dialer, authority, logger)
			}
		})
	}
	return func() {
		closeAll()
		wg.Wait()
	}, nil
}

// tunnel relays one accepted connection through a CONNECT stream.
func tunnel(in *net.TCPConn, dialer istiohbone.Dialer, authority string, logger *log.Logger) {
	defer in.Close()
	// Istio's DialContext ignores its context (a TODO upstream) and returns
	// once the server's response headers arrived. Istio's server sends 200
	// before it dials the authority, so an unreachable authority shows up
	// later, as a stream that ends at once.
	out, err := dialer.DialContext(context.Background(), "tcp", authority)
	if err != nil {
		logger.Printf("CONNECT %s via HBONE from %s: %v", authority, in.RemoteAddr(), err)
		return
	}
	back := make(chan struct{})
	go func() {
		defer close(back)
		// Server pod → client pod. The stream's end (END_STREAM) reaches
		// us as EOF: pass it on as a FIN.
		_, _ = io.Copy(in, out)
		_ = in.CloseWrite()
	}()
	// Client pod → server pod. Istio's tunnel conn is one end of a
	// net.Pipe, which has no CloseWrite: Close is the only way to end the
	// request body (END_STREAM), and it also ends the way back (Istio then
	// cancels the response). So a client pod's half-close is a full close
	// of the tunnel; that is Istio's API and we keep it.
	_, _ = io.Copy(out, in)
	_ = out.Close()
	<-back
}
