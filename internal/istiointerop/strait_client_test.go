package istiointerop

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/identity/tlsconfig"
	"github.com/strait-mesh/strait/ztunnel/hbone"
)

// Strait's client → Istio's pkg/hbone server → a TCP server on 127.0.0.1.

func TestStraitClientToIstioServer(t *testing.T) {
	ca := identitytest.New(t, trustDomain)
	istio := startIstioServer(t, ca, "istio", "server")
	client := newStraitClient(t, ca, "strait", "client")

	t.Run("echo 4 MiB both ways", func(t *testing.T) {
		echo := newEchoUpstream(t)
		conn, err := client.dial(withTimeout(t), istio.addr, echo.addr(), istio.id)
		if err != nil {
			t.Fatalf("dial via Istio server: %v", err)
		}
		defer conn.Close()
		if conn.Peer() != istio.id {
			t.Errorf("tunnel peer = %s, want %s", conn.Peer(), istio.id)
		}
		echoExchange(t, conn, randomBytes(t, 4<<20))
		echo.waitEOF(t)

		reqs := istio.requests()
		if len(reqs) != 1 {
			t.Fatalf("Istio server saw %d CONNECTs, want 1:%s", len(reqs), describe(reqs))
		}
		r := reqs[0]
		if r.method != "CONNECT" || r.proto != "HTTP/2.0" || r.authority != echo.addr() {
			t.Errorf("Istio server saw %s %s %s, want HTTP/2.0 CONNECT %s", r.proto, r.method, r.authority, echo.addr())
		}
		if want := "for=" + forwardedFor.String(); r.forwarded != want {
			t.Errorf("Istio server saw forwarded %q, want %q", r.forwarded, want)
		}
		if r.peerErr != nil || r.peer != client.id {
			t.Errorf("Istio server's TLS peer = %s (%v), want %s", r.peer, r.peerErr, client.id)
		}
	})

	t.Run("half-close", func(t *testing.T) {
		const sent, tail = 1 << 20, 256 << 10
		up := newHalfCloseUpstream(t, tail)
		conn, err := client.dial(withTimeout(t), istio.addr, up.addr(), istio.id)
		if err != nil {
			t.Fatalf("dial via Istio server: %v", err)
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(pattern(sent)); err != nil {
			t.Fatalf("write: %v", err)
		}
		if err := conn.CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
		// The upstream answers only once it has read EOF, so the reply
		// proves both that END_STREAM became a FIN and that the way back
		// stayed open after it.
		up.waitEOF(t)
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read after half-close: %v (got %d bytes)", err, len(got))
		}
		want := append([]byte(fmt.Sprintf(halfCloseReply, sent)), pattern(tail)...)
		if err := sameBytes(got, want); err != nil {
			t.Fatalf("reply after half-close: %v", err)
		}
	})

	t.Run("concurrent streams share one connection", func(t *testing.T) {
		const streams, size = 16, 256 << 10
		echo := newEchoUpstream(t)
		fresh := newStraitClient(t, ca, "strait", "client-pooled")
		before := istio.ln.accepted.Load()
		ctx := withTimeout(t)

		var wg sync.WaitGroup
		errs := make(chan error, streams)
		// Hold every tunnel open until all are up, so they really overlap.
		allUp := make(chan struct{})
		var up sync.WaitGroup
		up.Add(streams)
		for i := range streams {
			wg.Go(func() {
				conn, err := fresh.dial(ctx, istio.addr, echo.addr(), istio.id)
				up.Done()
				if err != nil {
					errs <- fmt.Errorf("stream %d: dial: %w", i, err)
					return
				}
				defer conn.Close()
				<-allUp
				if err := exchange(conn, randomBytesNoT(size, i)); err != nil {
					errs <- fmt.Errorf("stream %d: %w", i, err)
				}
			})
		}
		up.Wait()
		close(allUp)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := istio.ln.accepted.Load() - before; n != 1 {
			t.Errorf("%d concurrent tunnels opened %d TCP connections to the Istio server, want 1", streams, n)
		}
		if st := fresh.Stats(); st.Conns != 1 {
			t.Errorf("client pool holds %d connections, want 1", st.Conns)
		}
		if n := echo.accepted.Load(); n != streams {
			t.Errorf("echo server accepted %d connections, want %d", n, streams)
		}
	})
}

// Istio's server verifies the chain (through the TLS config it is given)
// but the client must check the SAN: a Strait client that expects another
// identity refuses the Istio server before any CONNECT.
func TestStraitClientRefusesIstioServerOutsideExpectedIdentities(t *testing.T) {
	ca := identitytest.New(t, trustDomain)
	istio := startIstioServer(t, ca, "istio", "server")
	client := newStraitClient(t, ca, "strait", "client")
	echo := newEchoUpstream(t)
	expected := ca.ID("istio", "someone-else")

	conn, err := client.dial(withTimeout(t), istio.addr, echo.addr(), expected)
	if err == nil {
		conn.Close()
		t.Fatalf("dial to %s expecting %s succeeded; want refusal", istio.id, expected)
	}
	t.Logf("refused as expected: %v", err)
	if !errors.Is(err, tlsconfig.ErrUnexpectedPeer) {
		t.Errorf("error does not wrap tlsconfig.ErrUnexpectedPeer: %v", err)
	}
	var pe *tlsconfig.PeerError
	if !errors.As(err, &pe) {
		t.Fatalf("error is not a *tlsconfig.PeerError: %v", err)
	}
	if pe.Peer != istio.id {
		t.Errorf("PeerError.Peer = %s, want the Istio server's %s", pe.Peer, istio.id)
	}
	for _, s := range []string{istio.id.String(), expected.String()} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	if reqs := istio.requests(); len(reqs) != 0 {
		t.Errorf("Istio server saw CONNECTs after a refused handshake:%s", describe(reqs))
	}
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo server accepted %d connections, want 0", n)
	}
	if n := echo.read.Load(); n != 0 {
		t.Errorf("echo server read %d bytes, want 0", n)
	}
}

// Istio's handler flushes the response headers before it dials :authority,
// so a CONNECT to a closed port is answered 200 and the stream then ends
// empty (the later WriteHeader(503) is a no-op). Strait's client must
// neither hang nor invent bytes; a future Istio that answers 503 is fine
// too.
func TestStraitClientIstioServerDialFailure(t *testing.T) {
	ca := identitytest.New(t, trustDomain)
	istio := startIstioServer(t, ca, "istio", "server")
	client := newStraitClient(t, ca, "strait", "client")
	closed := newEchoUpstream(t)
	dead := closed.addr()
	closed.ln.Close() // nothing listens there any more

	conn, err := client.dial(withTimeout(t), istio.addr, dead, istio.id)
	if err != nil {
		var ce *hbone.ConnectError
		if !errors.As(err, &ce) || ce.Status != 503 {
			t.Fatalf("dial to a closed port via Istio: %v; want success (Istio answers 200 first) or a 503 ConnectError", err)
		}
		t.Logf("Istio answered %d", ce.Status)
		return
	}
	defer conn.Close()
	t.Log("Istio answered 200 before dialing the closed port")
	if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if len(got) != 0 {
		t.Errorf("read %d bytes from a tunnel to a closed port", len(got))
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("tunnel to a closed port did not end: %v", err)
	}
	t.Logf("tunnel ended with %v", err)
}

// randomBytesNoT is randomBytes for goroutines: a cheap payload distinct
// per stream.
func randomBytesNoT(n, seed int) []byte {
	b := pattern(n)
	for i := range b {
		b[i] ^= byte(seed*31 + 1)
	}
	return b
}
