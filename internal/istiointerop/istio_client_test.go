package istiointerop

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity/identitytest"
)

// Istio's pkg/hbone dialer → Strait's server → a TCP server on 127.0.0.1.

func TestIstioClientToStraitServer(t *testing.T) {
	ca := identitytest.New(t, trustDomain)
	strait := startStraitServer(t, ca, "strait", "server")
	istioID := ca.ID("istio", "client")
	// Istio's Config.Headers is documented as extra request metadata; the
	// dialer does not send it (pkg/hbone/dialer.go never reads it), which
	// the forwarded check below tolerates.
	headers := http.Header{"Forwarded": {"for=" + forwardedFor.String()}}
	dialer := newIstioDialer(strait.addr, headers, ca.ClientTLS(t, "istio", "client", strait.id))

	t.Run("echo 4 MiB both ways", func(t *testing.T) {
		echo := newEchoUpstream(t)
		before := len(strait.requests())
		conn, err := dialer.DialContext(withTimeout(t), "tcp", echo.addr())
		if err != nil {
			t.Fatalf("Istio dial via Strait server: %v", err)
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		payload := randomBytes(t, 4<<20)
		if err := fullDuplex(conn, payload); err != nil {
			t.Fatal(err)
		}
		// Istio's conn cannot half-close (see below): Close is its FIN.
		conn.Close()
		echo.waitEOF(t)

		reqs := strait.requests()[before:]
		if len(reqs) != 1 {
			t.Fatalf("Strait handler saw %d CONNECTs, want 1", len(reqs))
		}
		r := reqs[0]
		if r.Peer != istioID {
			t.Errorf("Strait handler saw peer %s, want the Istio client's %s", r.Peer, istioID)
		}
		if want := netip.MustParseAddrPort(echo.addr()); r.Authority.Addr != want {
			t.Errorf("Strait handler saw authority %v, want %v", r.Authority.Addr, want)
		}
		if r.Arrival != strait.addr {
			t.Errorf("Strait handler saw arrival %v, want %v", r.Arrival, strait.addr)
		}
		switch {
		case !r.Forwarded.IsValid():
			t.Logf("Istio's dialer sent no forwarded header (Config.Headers %v dropped)", headers)
		case r.Forwarded != forwardedFor:
			t.Errorf("Strait handler saw forwarded %v, want %v", r.Forwarded, forwardedFor)
		default:
			t.Logf("Istio's dialer now sends Config.Headers: forwarded %v", r.Forwarded)
		}
	})

	// Istio's dialer returns one end of a net.Pipe, which has no CloseWrite:
	// its only way to end the request body is Close, after which it can no
	// longer read. So the half-close check here is the part Istio can do:
	// Close ends the stream with END_STREAM, and Strait's server turns that
	// into a FIN (clean EOF, every byte delivered), not a reset.
	t.Run("close ends the stream with END_STREAM", func(t *testing.T) {
		const sent = 1 << 20
		up := newHalfCloseUpstream(t, 1024)
		conn, err := dialer.DialContext(withTimeout(t), "tcp", up.addr())
		if err != nil {
			t.Fatalf("Istio dial via Strait server: %v", err)
		}
		if _, ok := conn.(interface{ CloseWrite() error }); ok {
			t.Errorf("Istio's tunnel conn %T now has CloseWrite: extend this test to a real half-close", conn)
		}
		if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(pattern(sent)); err != nil {
			t.Fatalf("write: %v", err)
		}
		conn.Close()
		up.waitEOF(t)
		if n := up.read.Load(); n != sent {
			t.Errorf("upstream read %d bytes before EOF, want %d", n, sent)
		}
	})

	t.Run("concurrent streams share one connection", func(t *testing.T) {
		const streams, size = 16, 256 << 10
		echo := newEchoUpstream(t)
		// A dialer of its own, so the connection count starts from zero.
		fresh := newIstioDialer(strait.addr, nil, ca.ClientTLS(t, "istio", "client", strait.id))
		before := strait.ln.accepted.Load()
		ctx := withTimeout(t)

		var wg sync.WaitGroup
		errs := make(chan error, streams)
		allUp := make(chan struct{})
		var up sync.WaitGroup
		up.Add(streams)
		for i := range streams {
			wg.Go(func() {
				conn, err := fresh.DialContext(ctx, "tcp", echo.addr())
				up.Done()
				if err != nil {
					errs <- fmt.Errorf("stream %d: dial: %w", i, err)
					return
				}
				defer conn.Close()
				<-allUp
				if err := conn.SetDeadline(time.Now().Add(time.Minute)); err != nil {
					errs <- err
					return
				}
				if err := fullDuplex(conn, randomBytesNoT(size, i)); err != nil {
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
		if n := strait.ln.accepted.Load() - before; n != 1 {
			t.Errorf("%d concurrent Istio tunnels opened %d TCP connections to the Strait server, want 1", streams, n)
		}
		if n := echo.accepted.Load(); n != streams {
			t.Errorf("echo server accepted %d connections, want %d", n, streams)
		}
	})
}

// The Strait server requires a client certificate of its trust bundle: an
// Istio client whose certificate comes from another CA (same trust domain
// name, valid chain of its own) is refused in the handshake and nothing
// reaches the upstream.
func TestStraitServerRefusesIstioClientFromAnotherCA(t *testing.T) {
	ca := identitytest.New(t, trustDomain)
	other := identitytest.New(t, trustDomain)
	strait := startStraitServer(t, ca, "strait", "server")
	echo := newEchoUpstream(t)

	// The foreign client trusts the real CA for the server, so only the
	// server's check of the client certificate can refuse it.
	cfg := ca.ClientTLSFor(t, other.Issue(t, "istio", "client"), []spiffeid.ID{strait.id})
	d := newIstioDialer(strait.addr, nil, cfg)
	conn, err := d.DialContext(withTimeout(t), "tcp", echo.addr())
	if err == nil {
		// TLS 1.3: the client finishes its handshake before the server
		// has checked the client certificate, so the refusal may surface
		// on the first read instead.
		_ = conn.SetDeadline(time.Now().Add(time.Minute))
		_, _ = conn.Write([]byte("must not arrive"))
		n, rerr := io.ReadFull(conn, make([]byte, 1))
		conn.Close()
		if n != 0 || rerr == nil {
			t.Fatalf("a client of another CA got a working tunnel")
		}
		err = rerr
	}
	t.Logf("refused as expected: %v", err)
	// The alert reaches the client before the server has counted it.
	waitUntil(t, "the Strait server to count a failed handshake", func() bool {
		return strait.srv.Stats().HandshakeFailures > 0
	})
	if reqs := strait.requests(); len(reqs) != 0 {
		t.Errorf("Strait handler was called %d times for a refused client", len(reqs))
	}
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("echo server accepted %d connections, want 0", n)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("refusal surfaced as a timeout, want a prompt TLS error: %v", err)
	}
}

// fullDuplex writes payload through c while reading the echo concurrently,
// and checks the echo byte for byte. It does not close c.
func fullDuplex(c net.Conn, payload []byte) error {
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		writeErr <- err
	}()
	got := make([]byte, len(payload))
	n, readErr := io.ReadFull(c, got)
	if err := <-writeErr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if readErr != nil {
		return fmt.Errorf("read after %d bytes: %w", n, readErr)
	}
	return sameBytes(got, payload)
}
