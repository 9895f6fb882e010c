package h2

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// pair connects a client Conn to a server Conn over loopback TCP (no TLS:
// the engine does not care). Streams the server accepts arrive on the
// returned channel.
func pair(t testing.TB, cli, srv Config) (*Conn, *Conn, chan *Stream) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	streams := make(chan *Stream, 1024)
	srv.OnStream = func(s *Stream) { streams <- s }
	type res struct {
		c   *Conn
		err error
	}
	sc := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			sc <- res{nil, err}
			return
		}
		c, err := NewServerConn(nc, srv)
		if err == nil {
			c.Start()
		}
		sc <- res{c, err}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := NewClientConn(nc, cli)
	if err != nil {
		t.Fatal(err)
	}
	r := <-sc
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() {
		cc.Close()
		r.c.Close()
		cc.Wait()
		r.c.Wait()
	})
	return cc, r.c, streams
}

func connectFields(auth string) []hpack.HeaderField {
	return []hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: ":authority", Value: auth}}
}

// open opens a stream and has the server accept it with 200.
func open(t testing.TB, cc *Conn, streams chan *Stream) (*Stream, *Stream) {
	t.Helper()
	if !cc.TryReserve() {
		t.Fatal("no capacity")
	}
	cs, err := cc.OpenStream(connectFields("10.0.0.1:80"))
	if err != nil {
		t.Fatal(err)
	}
	var ss *Stream
	select {
	case ss = <-streams:
	case <-time.After(5 * time.Second):
		t.Fatal("server saw no stream")
	}
	if err := ss.WriteResponse(200, nil, false); err != nil {
		t.Fatal(err)
	}
	status, _, err := cs.AwaitResponse(context.Background())
	if err != nil || status != 200 {
		t.Fatalf("response %d %v", status, err)
	}
	return cs, ss
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRequestHeadersReachServer(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{})
	if !cc.TryReserve() {
		t.Fatal("no capacity")
	}
	fields := append(connectFields("10.1.2.3:8080"), hpack.HeaderField{Name: "forwarded", Value: "for=10.9.9.9"})
	cs, err := cc.OpenStream(fields)
	if err != nil {
		t.Fatal(err)
	}
	ss := <-streams
	got := map[string]string{}
	for _, f := range ss.RequestHeaders() {
		got[f.Name] = f.Value
	}
	if got[":method"] != "CONNECT" || got[":authority"] != "10.1.2.3:8080" || got["forwarded"] != "for=10.9.9.9" {
		t.Fatalf("server saw %v", got)
	}
	if err := ss.WriteResponse(401, []hpack.HeaderField{{Name: "strait-reason", Value: "denied"}}, true); err != nil {
		t.Fatal(err)
	}
	status, resp, err := cs.AwaitResponse(context.Background())
	if err != nil || status != 401 || len(resp) != 1 || resp[0].Value != "denied" {
		t.Fatalf("got %d %v %v", status, resp, err)
	}
	ss.Close()
	cs.Close()
	waitFor(t, "streams to be forgotten", func() bool { return cc.State().Streams == 0 })
}

// TestBulkBothWaysPastWindows sends far more than the stream and
// connection windows in both directions at once, with tiny windows so
// flow control is exercised constantly; the echo must be byte-exact.
func TestBulkBothWaysPastWindows(t *testing.T) {
	small := Config{StreamWindow: 70000, ConnWindow: 100000, MaxFrameSize: 16384}
	cc, _, streams := pair(t, small, small)
	cs, ss := open(t, cc, streams)

	const size = 8 << 20
	payload := make([]byte, size)
	rand.Read(payload)

	// Server echoes everything back and half-closes after EOF.
	go func() {
		io.Copy(ss, ss)
		ss.CloseWrite()
	}()
	var got bytes.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(&got, cs)
		done <- err
	}()
	if n, err := cs.Write(payload); err != nil || n != size {
		t.Fatalf("write %d: %v", n, err)
	}
	if err := cs.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("echo differs: got %d bytes", got.Len())
	}
	cs.Close()
	ss.Close()
	waitFor(t, "client streams gone", func() bool { return cc.State().Streams == 0 })
}

func TestHalfClose(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{})
	cs, ss := open(t, cc, streams)
	if _, err := cs.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(ss)
	if err != nil || string(b) != "ping" {
		t.Fatalf("server read %q %v", b, err)
	}
	// After the client's END_STREAM the server can still send.
	if _, err := ss.Write([]byte("pong after half-close")); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	ss.CloseWrite()
	b, err = io.ReadAll(cs)
	if err != nil || string(b) != "pong after half-close" {
		t.Fatalf("client read %q %v", b, err)
	}
	waitFor(t, "stream forgotten after both END_STREAMs", func() bool { return cc.State().Streams == 0 })
}

func TestResetReachesPeer(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{})
	cs, ss := open(t, cc, streams)
	cs.Close() // full close while both directions are open → RST_STREAM(CANCEL)
	_, err := ss.Read(make([]byte, 10))
	var se *StreamError
	if !errors.As(err, &se) || se.Code != http2.ErrCodeCancel || !se.Remote {
		t.Fatalf("server read after client reset: %v", err)
	}
	if _, err := cs.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	// The connection itself is fine: another stream works.
	cs2, ss2 := open(t, cc, streams)
	go func() { io.Copy(ss2, ss2); ss2.CloseWrite() }()
	cs2.Write([]byte("still alive"))
	cs2.CloseWrite()
	if b, _ := io.ReadAll(cs2); string(b) != "still alive" {
		t.Fatalf("second stream got %q", b)
	}
}

func TestDeadlines(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{StreamWindow: 65535})
	cs, _ := open(t, cc, streams)
	cs.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := cs.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
	var ne net.Error
	cs.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := cs.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read with past deadline: %v", err)
	}
	// The server never reads: after 64 KiB the window is spent and Write
	// must give up at the deadline.
	cs.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := cs.Write(make([]byte, 1<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n != 65535 {
		t.Fatalf("write: n=%d err=%v", n, err)
	}
	// Clearing the deadline lets Read block again (until data arrives).
	cs.SetDeadline(time.Time{})
}

func TestClientStreamLimitFromServerSettings(t *testing.T) {
	cc, _, streams := pair(t, Config{MaxConcurrentStreams: 100}, Config{MaxConcurrentStreams: 3})
	open(t, cc, streams) // ensures the server's SETTINGS arrived
	for i := 0; i < 2; i++ {
		if !cc.TryReserve() {
			t.Fatalf("reserve %d refused below the limit", i)
		}
	}
	if cc.TryReserve() {
		t.Fatal("reserve beyond the server's MAX_CONCURRENT_STREAMS")
	}
	if st := cc.State(); st.MaxStreams != 3 || st.Streams != 3 {
		t.Fatalf("state %+v", st)
	}
	cc.Unreserve()
	if !cc.TryReserve() {
		t.Fatal("reserve after Unreserve refused")
	}
}

func TestShutdownDrainsThenCloses(t *testing.T) {
	cc, sc, streams := pair(t, Config{}, Config{})
	cs, ss := open(t, cc, streams)
	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdownDone <- sc.Shutdown(ctx)
	}()
	waitFor(t, "GOAWAY at the client", func() bool { return !cc.State().Usable })
	if cc.TryReserve() {
		t.Fatal("client reserved a stream after GOAWAY")
	}
	// The open stream still works both ways.
	go func() { io.Copy(ss, ss); ss.CloseWrite() }()
	cs.Write([]byte("during drain"))
	cs.CloseWrite()
	if b, err := io.ReadAll(cs); err != nil || string(b) != "during drain" {
		t.Fatalf("read during drain: %q %v", b, err)
	}
	cs.Close()
	ss.Close()
	if err := <-shutdownDone; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	<-sc.Done()
}

func TestShutdownDeadlineResetsStreams(t *testing.T) {
	cc, sc, streams := pair(t, Config{}, Config{})
	cs, _ := open(t, cc, streams)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := sc.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown with a stuck stream: %v", err)
	}
	if _, err := cs.Read(make([]byte, 1)); err == nil {
		t.Fatal("stream survived a forced shutdown")
	}
}

// TestPingTimeoutClosesDeadPeer: a peer that completes the preface and
// then goes silent (no PING ack) is dropped after PingTimeout.
func TestPingTimeoutClosesDeadPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		fr := http2.NewFramer(nc, nc)
		fr.WriteSettings()
		io.Copy(io.Discard, nc) // read everything, answer nothing
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := NewClientConn(nc, Config{PingInterval: 20 * time.Millisecond, PingTimeout: 60 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	select {
	case <-cc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection to a silent peer stayed open")
	}
	if !errors.Is(cc.Err(), ErrPingTimeout) {
		t.Fatalf("closed with %v, want ErrPingTimeout", cc.Err())
	}
}

func TestPingsKeepHealthyConnOpen(t *testing.T) {
	fast := Config{PingInterval: 10 * time.Millisecond, PingTimeout: 40 * time.Millisecond}
	cc, _, streams := pair(t, fast, fast)
	time.Sleep(200 * time.Millisecond) // many ping rounds with no traffic
	if cc.Err() != nil {
		t.Fatalf("healthy connection closed: %v", cc.Err())
	}
	open(t, cc, streams)
}

func TestIdleTimeoutClosesConnWithoutStreams(t *testing.T) {
	cc, _, _ := pair(t, Config{IdleTimeout: 50 * time.Millisecond, PingInterval: -1}, Config{})
	select {
	case <-cc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("idle connection not released")
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{})
	go func() {
		for ss := range streams {
			go func() {
				ss.WriteResponse(200, nil, false)
				io.Copy(ss, ss)
				ss.CloseWrite()
				ss.Close()
			}()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !cc.TryReserve() {
				errs <- errors.New("no capacity")
				return
			}
			cs, err := cc.OpenStream(connectFields("10.0.0.1:1"))
			if err != nil {
				errs <- err
				return
			}
			defer cs.Close()
			if st, _, err := cs.AwaitResponse(context.Background()); err != nil || st != 200 {
				errs <- err
				return
			}
			msg := bytes.Repeat([]byte{byte(i)}, 100000+i)
			go func() { cs.Write(msg); cs.CloseWrite() }()
			got, err := io.ReadAll(cs)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- errors.New("echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
