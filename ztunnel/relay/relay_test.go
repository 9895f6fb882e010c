package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/bufpool"
)

// tcpPair returns two connected loopback TCP sockets.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestHalfCloseBothWays: client → [relay] → server. The client finishes
// sending first; the server still answers afterwards and then finishes.
func TestHalfCloseBothWays(t *testing.T) {
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	done := make(chan Result, 1)
	go func() { done <- Bidirectional(relayA, relayB) }()

	up := make([]byte, 2<<20)
	rand.Read(up)
	go func() {
		client.Write(up)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server) // ends only because the relay half-closed
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server got %d bytes, err %v", len(got), err)
	}
	// The other direction is still open after the client's FIN.
	if _, err := server.Write([]byte("late answer")); err != nil {
		t.Fatal(err)
	}
	server.CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "late answer" {
		t.Fatalf("client got %q, %v", back, err)
	}
	select {
	case r := <-done:
		if r.Err != nil || r.AToB != int64(len(up)) || r.BToA != int64(len("late answer")) {
			t.Fatalf("result %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end after both sides finished")
	}
}

// TestResetAbortsBoth: an error on one side (RST) tears down the other
// side too instead of leaving it half-open forever.
func TestResetAbortsBoth(t *testing.T) {
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	done := make(chan Result, 1)
	go func() { done <- Bidirectional(relayA, relayB) }()
	client.Write([]byte("some bytes"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(server, buf); err != nil {
		t.Fatal(err)
	}
	client.SetLinger(0)
	client.Close() // RST towards the relay
	select {
	case r := <-done:
		if r.Err == nil {
			t.Fatalf("result %+v: a reset must be reported", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay kept running after a reset")
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(buf); err == nil {
		t.Fatal("server side still open after the client reset")
	}
}

// TestIdleHoldsNoBuffer: a read attempt on an idle socket gives its
// pooled buffer back before waiting; queued data and EOF come through.
func TestIdleHoldsNoBuffer(t *testing.T) {
	a, b := tcpPair(t)
	r := newReader(b)
	if r.rc == nil {
		t.Fatal("TCP conn has no raw conn")
	}
	var ready bool
	r.rc.Control(func(fd uintptr) { ready = r.try(fd) }) // Go sockets are non-blocking: EAGAIN
	if ready || r.buf != nil {
		t.Fatalf("idle attempt: ready=%v, holding a buffer=%v", ready, r.buf != nil)
	}
	got := make(chan string, 1)
	go func() {
		buf, n, err := r.read() // blocks in the poller, without a buffer
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string((*buf)[:n])
		bufpool.Put(buf)
	}()
	a.Write([]byte("x"))
	select {
	case s := <-got:
		if s != "x" {
			t.Fatalf("read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not return when data arrived")
	}
	a.CloseWrite()
	buf, n, err := r.read()
	bufpool.Put(buf)
	if n != 0 || err != io.EOF {
		t.Fatalf("after FIN: n=%d err=%v, want EOF", n, err)
	}
	b.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := r.read(); err == nil {
		t.Fatal("read past the deadline succeeded")
	}
}

// wrapped hides the *net.TCPConn type the way a tracking wrapper does.
type wrapped struct{ *net.TCPConn }

func (w wrapped) TCP() *net.TCPConn { return w.TCPConn }

// TestSpliceThroughWrappers: TCP↔TCP relays (also through wrappers that
// expose the socket) carry bytes intact with half-close.
func TestSpliceThroughWrappers(t *testing.T) {
	client, relayA := tcpPair(t)
	relayB, server := tcpPair(t)
	if tcpOf(wrapped{relayA}) != relayA || tcpOf(relayB) != relayB || tcpOf(nil) != nil {
		t.Fatal("tcpOf does not see through the wrapper")
	}
	done := make(chan Result, 1)
	go func() { done <- Bidirectional(wrapped{relayA}, relayB) }()
	up := make([]byte, 8<<20)
	rand.Read(up)
	go func() {
		client.Write(up)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server got %d bytes, %v", len(got), err)
	}
	server.Write([]byte("bye"))
	server.CloseWrite()
	if back, err := io.ReadAll(client); err != nil || string(back) != "bye" {
		t.Fatalf("client got %q, %v", back, err)
	}
	if r := <-done; r.Err != nil || r.AToB != int64(len(up)) || r.BToA != 3 {
		t.Fatalf("result %+v", r)
	}
}
