package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/strait-mesh/strait/identity"
	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/hbone"
)

const trustDomain = "cluster.local"

// runLoopback is the demo without root: the HBONE library on loopback
// with the file-backed CA, two proxies, tunnels and refusals.
func runLoopback(dir string, tunnels int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if dir == "" {
		tmp, err := os.MkdirTemp("", "strait-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = filepath.Join(tmp, "ca")
	}
	root, err := ca.LoadOrCreateFileRoot(dir, trustDomain)
	if err != nil {
		return err
	}
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	authority, err := ca.New(ca.Config{TrustDomain: td, Root: root, Authorizer: ca.AllowAll()})
	if err != nil {
		return err
	}
	step("CA", "file-backed root in %s (key mode 0600), trust domain %s", dir, trustDomain)

	client, server, intruder := mustID("shop", "frontend"), mustID("shop", "checkout"), mustID("attic", "scraper")
	svids := map[string]*x509svid.SVID{}
	for _, id := range []identity.ID{client, server, intruder} {
		s, err := issue(ctx, authority, id)
		if err != nil {
			return err
		}
		svids[id.String()] = s
		step("CA", "signed %s (expires %s)", id, s.Certificates[0].NotAfter.Format(time.RFC3339))
	}

	// The destination "pod": an echo server that greets with what it saw.
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer app.Close()
	go serveEcho(app)

	// Node B's proxy: HBONE on loopback, policy = only shop/frontend.
	srvTLS, err := tlsconfig.Server(svids[server.String()], authority.Bundle(), td)
	if err != nil {
		return err
	}
	policy := hbone.HandlerFunc(func(ctx context.Context, r *hbone.InboundRequest) (net.Conn, error) {
		if r.Peer != client.SPIFFEID() {
			return nil, fmt.Errorf("%w: %s may not reach %s", hbone.ErrDenied, r.Peer, server)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", app.Addr().String())
	})
	srv, err := hbone.NewServer(hbone.ServerConfig{TLS: srvTLS, Handler: policy})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	defer srv.Close()
	nodeB := netip.MustParseAddrPort(ln.Addr().String())
	step("node-b", "HBONE server on %s, policy: allow %s only", nodeB, client)

	req := func(src identity.ID, expect ...spiffeid.ID) hbone.Request {
		return hbone.Request{
			Key:       hbone.Key{SrcIdentity: src.SPIFFEID(), DstIdentities: hbone.NewIdentities(expect...), DstAddr: nodeB},
			Authority: app.Addr().String(),
			Forwarded: netip.MustParseAddr("10.244.1.7"),
		}
	}
	nodeA := newClient(svids, authority.Bundle())
	defer nodeA.Close()

	// 1. A tunnel that works.
	conn, err := nodeA.Dial(ctx, req(client, server.SPIFFEID()))
	if err != nil {
		return fmt.Errorf("tunnel %s → %s: %w", client, server, err)
	}
	reply, err := roundTrip(conn, "hello through the mesh")
	if err != nil {
		return err
	}
	step("node-a", "tunnel %s → %s: server proved %s, echo: %q", client, app.Addr(), conn.Peer(), reply)

	// 2. Pooling: many tunnels, one TLS connection.
	start := time.Now()
	for i := 0; i < tunnels; i++ {
		c, err := nodeA.Dial(ctx, req(client, server.SPIFFEID()))
		if err != nil {
			return err
		}
		if _, err := roundTrip(c, "x"); err != nil {
			return err
		}
	}
	el := time.Since(start)
	st := nodeA.Stats()
	step("node-a", "%d more tunnels in %v (%.0f/s) over %d pooled connection(s); server accepted %d TCP connection(s)",
		tunnels, el.Round(time.Millisecond), float64(tunnels)/el.Seconds(), st.Conns, srv.Stats().ConnsAccepted)

	// 3. Refusals.
	refusals := 0
	check := func(what string, err error) error {
		if err == nil {
			return fmt.Errorf("%s: tunnel opened, want a refusal", what)
		}
		refusals++
		step("refused", "%s: %v", what, err)
		return nil
	}
	_, err = nodeA.Dial(ctx, req(intruder, server.SPIFFEID()))
	if err := check("policy denies "+intruder.String(), err); err != nil {
		return err
	}
	if !errors.Is(err, hbone.ErrDenied) {
		return fmt.Errorf("intruder refusal is not ErrDenied: %w", err)
	}
	_, err = nodeA.Dial(ctx, req(client, mustID("shop", "payments").SPIFFEID()))
	if err := check("server is not the identity the client expects", err); err != nil {
		return err
	}
	foreign, err := foreignClient(authority.Bundle())
	if err != nil {
		return err
	}
	defer foreign.Close()
	_, err = foreign.Dial(ctx, req(client, server.SPIFFEID()))
	if err := check("client certificate from another CA", err); err != nil {
		return err
	}

	shutdownCtx, cancelShutdown := context.WithTimeout(ctx, 5*time.Second)
	defer cancelShutdown()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	fmt.Printf("\nsummary: 1 + %d tunnels carried bytes between SPIFFE identities over %d pooled connection(s); %d refusals as expected; graceful shutdown ok\n",
		tunnels, st.Conns, refusals)
	return nil
}

func step(who, format string, args ...any) {
	fmt.Printf("%-8s %s\n", who, fmt.Sprintf(format, args...))
}

func mustID(ns, sa string) identity.ID {
	id, err := identity.New(trustDomain, ns, sa)
	if err != nil {
		panic(err)
	}
	return id
}

// issue creates a key and CSR for id and has the CA sign it (what the
// certificate manager does for each workload identity).
func issue(ctx context.Context, authority *ca.CA, id identity.ID) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.SPIFFEID().URL()}}, key)
	if err != nil {
		return nil, err
	}
	out, err := authority.Sign(ctx, ca.Caller{}, csr, 0)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: out.ID, Certificates: out.Certificates, PrivateKey: key}, nil
}

func newClient(svids map[string]*x509svid.SVID, bundle *x509bundle.Bundle) *hbone.Client {
	c, err := hbone.NewClient(hbone.ClientConfig{TLS: func(ctx context.Context, k hbone.Key) (*tls.Config, error) {
		svid, ok := svids[k.SrcIdentity.String()]
		if !ok {
			return nil, fmt.Errorf("no certificate for %s", k.SrcIdentity)
		}
		want, err := k.DstIdentities.IDs()
		if err != nil {
			return nil, err
		}
		return tlsconfig.Client(svid, bundle, want)
	}})
	if err != nil {
		panic(err)
	}
	return c
}

// foreignClient trusts the mesh but presents a certificate from a CA the
// mesh does not trust: the server must refuse it.
func foreignClient(mesh *x509bundle.Bundle) (*hbone.Client, error) {
	root, err := ca.NewSelfSignedRoot(spiffeid.RequireTrustDomainFromString(trustDomain), time.Hour)
	if err != nil {
		return nil, err
	}
	other, err := ca.New(ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString(trustDomain), Root: root, Authorizer: ca.AllowAll()})
	if err != nil {
		return nil, err
	}
	id := mustID("shop", "frontend")
	svid, err := issue(context.Background(), other, id)
	if err != nil {
		return nil, err
	}
	return newClient(map[string]*x509svid.SVID{id.String(): svid}, mesh), nil
}

func roundTrip(c *hbone.Conn, msg string) (string, error) {
	defer c.Close()
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}
