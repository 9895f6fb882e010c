package istiointerop

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The TCP servers the tunnels end at. They are the "pods": plain TCP on
// 127.0.0.1, port 0, and they record what reached them so a test can prove
// that nothing did.

// upstream is a TCP server on 127.0.0.1 that runs serve on every connection
// it accepts and counts the connections and the bytes it read.
type upstream struct {
	ln       net.Listener
	accepted atomic.Int64
	read     atomic.Int64
	wg       sync.WaitGroup
	// eof gets, per connection, how the client's direction ended: nil for
	// a clean EOF (a half-close or END_STREAM), else the read error.
	eof chan error
}

func newUpstream(t *testing.T, serve func(c *net.TCPConn, u *upstream)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("upstream: listen: %v", err)
	}
	u := &upstream{ln: ln, eof: make(chan error, 1024)}
	u.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			u.wg.Go(func() {
				defer c.Close()
				serve(c.(*net.TCPConn), u)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		u.wg.Wait()
	})
	return u
}

func (u *upstream) addr() string { return u.ln.Addr().String() }

// countingReader counts what the upstream read, so a refused tunnel can be
// shown to have delivered nothing.
type countingReader struct {
	r io.Reader
	u *upstream
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.u.read.Add(int64(n))
	return n, err
}

// newEchoUpstream echoes every byte and, on EOF from the client, half-closes
// its own side: a client that half-closes gets all its bytes back, then EOF.
func newEchoUpstream(t *testing.T) *upstream {
	return newUpstream(t, func(c *net.TCPConn, u *upstream) {
		_, err := io.Copy(c, countingReader{c, u})
		u.eof <- err
		if err == nil {
			_ = c.CloseWrite()
		}
	})
}

// waitEOF waits for one connection's client direction to end and fails the
// test unless it ended with a clean EOF.
func (u *upstream) waitEOF(t *testing.T) {
	t.Helper()
	select {
	case err := <-u.eof:
		if err != nil {
			t.Fatalf("upstream: the client direction ended with %v, want a clean EOF (FIN)", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("upstream: no EOF from the client direction within a minute")
	}
}

// halfCloseReply is what newHalfCloseUpstream sends after it has read EOF.
const halfCloseReply = "read %d bytes, then EOF; this reply was written after the EOF\n"

// newHalfCloseUpstream reads until EOF without answering, then writes
// halfCloseReply and a tail of tailLen bytes of pattern, then closes. A
// client only gets the reply if its half-close arrived as an EOF (not as a
// reset) and the way back stayed open after it.
func newHalfCloseUpstream(t *testing.T, tailLen int) *upstream {
	return newUpstream(t, func(c *net.TCPConn, u *upstream) {
		n, err := io.Copy(io.Discard, countingReader{c, u})
		u.eof <- err
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, halfCloseReply, n); err != nil {
			return
		}
		_, _ = c.Write(pattern(tailLen))
	})
}

// pattern is a deterministic payload whose bytes depend on their offset, so
// a reordered or shifted stream does not compare equal.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + i>>16)
	}
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// halfCloser is what a tunnel end must offer to send a FIN (END_STREAM)
// while it keeps reading.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// echoExchange writes payload through c while reading concurrently, then
// half-closes, and checks that exactly payload comes back followed by EOF.
func echoExchange(t *testing.T, c halfCloser, payload []byte) {
	t.Helper()
	if err := exchange(c, payload); err != nil {
		t.Fatal(err)
	}
}

// exchange is echoExchange without the testing.T, for use in goroutines.
func exchange(c halfCloser, payload []byte) error {
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	writeErr := make(chan error, 1)
	go func() {
		if _, err := c.Write(payload); err != nil {
			writeErr <- fmt.Errorf("write: %w", err)
			return
		}
		if err := c.CloseWrite(); err != nil {
			writeErr <- fmt.Errorf("close write: %w", err)
			return
		}
		writeErr <- nil
	}()
	got, readErr := io.ReadAll(c)
	if err := <-writeErr; err != nil {
		return err
	}
	if readErr != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), readErr)
	}
	return sameBytes(got, payload)
}

func sameBytes(got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("got %d bytes back, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("%d bytes back as expected, but they differ from offset %d", len(got), i)
		}
	}
	return errors.New("unreachable")
}

// countingListener counts accepted connections, to prove that concurrent
// streams shared one pooled connection.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func listenLoopback(t *testing.T) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return &countingListener{Listener: ln}
}
