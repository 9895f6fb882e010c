package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/ztunnel/relay"
)

// sink is a TCP server that reads and discards, counting bytes.
type sink struct {
	ln   net.Listener
	got  atomic.Int64
	done chan struct{} // a signal per connection that reached EOF
}

func newSink(tb testing.TB) *sink {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &sink{ln: ln, done: make(chan struct{}, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256<<10)
				for {
					n, err := c.Read(buf)
					s.got.Add(int64(n))
					if err != nil {
						s.done <- struct{}{}
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return s
}

// tlsRelay is the reference: a plain Go TLS 1.3 server (same identity
// configs) relaying to upstream with the same relay code as HBONE.
func tlsRelay(tb testing.TB, f *fixture, upstream string) string {
	tb.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", f.ca.ServerTLS(tb, "ns-b", "sa-b"))
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", upstream)
				if err != nil {
					c.Close()
					return
				}
				relay.Bidirectional(c, up)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// BenchmarkThroughput sends one stream of bulk data through each path in
// the same run: raw TCP, a plain TLS 1.3 relay, and an HBONE tunnel
// (client → HBONE server → relay → sink). Each op is 1 MiB, so allocs/op
// is allocations per MiB copied.
func BenchmarkThroughput(b *testing.B) {
	for _, mode := range []string{"tcp", "tls", "hbone"} {
		b.Run(mode, func(b *testing.B) {
			sk := newSink(b)
			f := newFixture(b, nil)
			var w halfCloser
			switch mode {
			case "tcp":
				c, err := net.Dial("tcp", sk.ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				w = c.(*net.TCPConn)
			case "tls":
				c, err := tls.Dial("tcp", tlsRelay(b, f, sk.ln.Addr().String()), f.ca.ClientTLS(b, "ns-a", "sa-a", f.ca.ID("ns-b", "sa-b")))
				if err != nil {
					b.Fatal(err)
				}
				w = c
			case "hbone":
				f.handler.target = sk.ln.Addr().String()
				req := f.request()
				req.Authority = "127.0.0.1:" + portOf(sk.ln.Addr().String())
				c, err := f.client(b, "ns-a", "sa-a").Dial(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				w = c
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := w.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			w.CloseWrite()
			select {
			case <-sk.done:
			case <-time.After(30 * time.Second):
				b.Fatal("sink never saw EOF")
			}
			b.StopTimer()
			if got, want := sk.got.Load(), int64(b.N)<<20; got != want {
				b.Fatalf("sink got %d bytes, want %d", got, want)
			}
			w.Close()
		})
	}
}

// pipeHandler answers every CONNECT with an in-memory echo, so setup
// benchmarks count only HBONE's own work (client and server together).
type pipeHandler struct{}

func (pipeHandler) Connect(context.Context, *InboundRequest) (net.Conn, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		var buf [64]byte
		for {
			n, err := b.Read(buf[:])
			if n > 0 {
				b.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return a, nil
}

// oneTunnel opens a tunnel, echoes one byte and closes it.
func oneTunnel(tb testing.TB, c *Client, req Request) {
	conn, err := c.Dial(context.Background(), req)
	if err != nil {
		tb.Fatal(err)
	}
	var one [1]byte
	if _, err := conn.Write(one[:]); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(conn, one[:]); err != nil {
		tb.Fatal(err)
	}
	conn.CloseWrite()
	conn.Close()
}

// BenchmarkStreamSetupWarm: new tunnels per second over a warm pooled
// connection, with allocations per tunnel (client and server together).
func BenchmarkStreamSetupWarm(b *testing.B) {
	f := newFixture(b, func(c *ServerConfig) { c.Handler = pipeHandler{} })
	c := f.client(b, "ns-a", "sa-a")
	req := f.request()
	oneTunnel(b, c, req) // warm the pool
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		oneTunnel(b, c, req)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
}

// BenchmarkConnectCold: new connections per second, TLS handshake
// included (a fresh client and connection per op).
func BenchmarkConnectCold(b *testing.B) {
	f := newFixture(b, func(c *ServerConfig) { c.Handler = pipeHandler{} })
	svid := f.ca.Issue(b, "ns-a", "sa-a")
	cfg := f.ca.ClientTLSFor(b, svid, []spiffeid.ID{f.ca.ID("ns-b", "sa-b")})
	req := f.request()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		c, err := NewClient(ClientConfig{TLS: func(context.Context, Key) (*tls.Config, error) { return cfg, nil }})
		if err != nil {
			b.Fatal(err)
		}
		oneTunnel(b, c, req)
		c.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conns/s")
}

// BenchmarkIdleTunnelMemory opens b.N idle tunnels (upstream is a real TCP
// echo) and reports heap plus goroutine stacks per tunnel, client and
// server side together, after a GC.
func BenchmarkIdleTunnelMemory(b *testing.B) {
	f := newFixture(b, nil)
	c := f.client(b, "ns-a", "sa-a")
	req := f.request()
	oneTunnel(b, c, req) // warm: pool connection and certificates
	measure := func() uint64 {
		// Several cycles: each GC halves oversized goroutine stacks once,
		// which is where a long-lived idle tunnel ends up.
		for i := 0; i < 4; i++ {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse
	}
	before := measure()
	conns := make([]*Conn, 0, b.N)
	for i := 0; i < b.N; i++ {
		conn, err := c.Dial(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		var one [1]byte
		conn.Write(one[:])
		if _, err := io.ReadFull(conn, one[:]); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, conn)
	}
	after := measure()
	b.ReportMetric(float64(after-before)/float64(b.N)/1024, "KiB/idle-tunnel")
	for _, conn := range conns {
		conn.Close()
	}
}
