package hbone

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strait-mesh/strait/identity/tlsconfig"
)

// TestShutdownDrainsAConnectionMidHandshake: on a ztunnel restart a peer
// may connect to the old proxy a moment before its listener closes, and
// finish the TLS handshake after Shutdown began. That connection is
// drained like the others (its CONNECT is refused by a GOAWAY, not cut),
// so the client retries the tunnel on a new connection, which reaches the
// new proxy (here a second server with the same identity).
func TestShutdownDrainsAConnectionMidHandshake(t *testing.T) {
	f := newFixture(t, nil) // the old proxy
	next, err := NewServer(ServerConfig{TLS: f.ca.ServerTLS(t, "ns-b", "sa-b"), Handler: f.handler})
	if err != nil {
		t.Fatal(err)
	}
	nextLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go next.Serve(nextLn)
	t.Cleanup(func() { next.Close() })

	// Accepted by the old proxy, handshake not started yet.
	raw, err := net.Dial("tcp", f.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old proxy to accept", func() bool { return f.srv.Stats().ConnsAccepted == 1 })
	done := make(chan error, 1)
	go func() { done <- f.srv.Shutdown(ctxT(t)) }()
	waitFor(t, "the old proxy's listener to close", func() bool {
		nc, err := net.Dial("tcp", f.addr.String())
		if err == nil {
			nc.Close()
		}
		return err != nil
	})

	svid := f.ca.Issue(t, "ns-a", "sa-a")
	var dials atomic.Int32
	c, err := NewClient(ClientConfig{
		TLS: func(_ context.Context, k Key) (*tls.Config, error) {
			ids, err := k.DstIdentities.IDs()
			if err != nil {
				return nil, err
			}
			return tlsconfig.Client(svid, f.ca.Bundle(), ids)
		},
		DialTCP: func(ctx context.Context, _ Key) (net.Conn, error) {
			if dials.Add(1) == 1 {
				return raw, nil
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", nextLn.Addr().String())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	conn, err := c.Dial(ctxT(t), f.request())
	if err != nil {
		t.Fatalf("the tunnel over the connection the old proxy accepted before its shutdown was not retried: %v", err)
	}
	echoRoundTrip(t, conn, 1000)
	conn.Close()
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d connections dialed, want 2 (the old proxy's, then the new one's)", n)
	}
	if n := next.Stats().ConnsAccepted; n != 1 {
		t.Fatalf("the new proxy accepted %d connections, want 1", n)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the old proxy's shutdown did not finish")
	}
}
