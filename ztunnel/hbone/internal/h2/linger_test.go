package h2

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestShutdownRefusesLateStreams: a client may open a stream before it
// reads the server's GOAWAY (on a restart, the old proxy's GOAWAY crosses
// the peer's next CONNECT). The drained server keeps the connection open
// until the client closes it, so the late stream is refused
// (REFUSED_STREAM: retry elsewhere) instead of the connection being reset
// under it with the stream's fate unknown.
func TestShutdownRefusesLateStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server := make(chan *Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		c, err := NewServerConn(nc, Config{OnStream: func(s *Stream) { s.Close() }})
		if err != nil {
			return
		}
		c.Start()
		server <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	fr := http2.NewFramer(nc, nc)
	if _, err := nc.Write([]byte(clientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var sc *Conn
	select {
	case sc = <-server:
	case <-time.After(5 * time.Second):
		t.Fatal("no server connection")
	}
	defer func() { sc.Close(); sc.Wait() }()

	shutdown := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sc.Shutdown(ctx)
		shutdown <- time.Since(start)
	}()
	// Read up to the GOAWAY (last stream 0: nothing processed), then open
	// a stream as a client that had not read it yet would have.
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("before the GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.LastStreamID != 0 {
				t.Fatalf("GOAWAY last stream %d, want 0", ga.LastStreamID)
			}
			break
		}
	}
	time.Sleep(50 * time.Millisecond) // the server is drained by now
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: "10.0.0.1:80"})
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("the late stream got no answer, the connection ended: %v", err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != 1 || rst.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("got RST_STREAM %d %v, want 1 REFUSED_STREAM", rst.StreamID, rst.ErrCode)
			}
			break
		}
	}
	// The client, having seen the GOAWAY, closes; the server stops
	// waiting at once.
	nc.Close()
	select {
	case d := <-shutdown:
		if d >= goAwayLinger {
			t.Fatalf("shutdown took %v: it waited for the linger timer, not for the client's close", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return after the client closed")
	}
}

// TestShutdownLingerIsBounded: a client that never closes holds a drained
// server connection for goAwayLinger at most.
func TestShutdownLingerIsBounded(t *testing.T) {
	// The engine's client Conn does not close a drained connection by
	// itself (hbone.Client's pool does): the server waits out the linger.
	_, sc, _ := pair(t, Config{}, Config{})
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil && !errors.Is(err, ErrConnClosed) {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d < goAwayLinger-50*time.Millisecond || d > goAwayLinger+time.Second {
		t.Fatalf("shutdown of an idle connection whose client stays took %v, want about %v", d, goAwayLinger)
	}
	<-sc.Done()
}
