// Package relay copies bytes both ways between two connections, honouring
// half-close: when one side finishes sending (EOF), the other side's write
// half is closed and the opposite direction keeps flowing. An error in
// either direction aborts both.
//
// Copies use pooled buffers, and a buffer is taken only once the source is
// readable, so an idle connection holds no copy buffer (a large share of
// per-connection memory in a proxy with many idle connections).
package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/strait-mesh/strait/internal/bufpool"
)

// BufferSize is the copy buffer taken from the pool per read.
const BufferSize = 64 << 10

// Result tells how many bytes went each way and why the relay ended.
type Result struct {
	AToB, BToA int64
	// Err is the first error other than a clean EOF, or nil when both
	// directions ended with EOF.
	Err error
}

type closeWriter interface{ CloseWrite() error }

// Start relays a→b and b→a on two new goroutines and returns at once.
// When both directions have ended, both connections are closed and done
// (if not nil) receives the result. Starting fresh goroutines matters for
// memory: the caller's goroutine, whose stack grew while it dialed and
// decided, exits instead of living as long as the connection.
func Start(a, b net.Conn, done func(Result)) {
	r := &run{a: a, b: b, done: done, pending: 2}
	go r.half(b, a, &r.res.AToB)
	go r.half(a, b, &r.res.BToA)
}

// Bidirectional is Start that waits for the result.
func Bidirectional(a, b net.Conn) Result {
	ch := make(chan Result, 1)
	Start(a, b, func(r Result) { ch <- r })
	return <-ch
}

type run struct {
	a, b    net.Conn
	done    func(Result)
	mu      sync.Mutex
	res     Result
	pending int
	closed  sync.Once
}

func (r *run) closeBoth() { r.closed.Do(func() { r.a.Close(); r.b.Close() }) }

// half copies one direction; an error aborts both.
func (r *run) half(dst, src net.Conn, count *int64) {
	n, err := copyHalf(dst, src)
	if err != nil {
		r.closeBoth()
	}
	r.mu.Lock()
	*count = n
	if err != nil && r.res.Err == nil {
		r.res.Err = err
	}
	r.pending--
	last := r.pending == 0
	res := r.res
	r.mu.Unlock()
	if last {
		r.closeBoth()
		if r.done != nil {
			r.done(res)
		}
	}
}

// copyHalf copies src to dst and then half-closes dst. A nil error means
// src ended with EOF and dst was half-closed.
func copyHalf(dst, src net.Conn) (int64, error) {
	var n int64
	var err error
	st, dt := tcpOf(src), tcpOf(dst)
	switch wt, ok := src.(io.WriterTo); {
	case st != nil && dt != nil:
		// TCP to TCP (plain passthrough): the kernel moves the bytes
		// (splice on Linux) without copying them through user space.
		n, err = dt.ReadFrom(st)
	case ok && !isSocket(src):
		// A tunnel stream writes from its own receive buffers.
		n, err = wt.WriteTo(dst)
	default:
		n, err = copyBuffered(dst, src)
	}
	if err != nil {
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return n, err
		}
		return n, nil
	}
	// No half-close available: the best we can do is a full close.
	return n, dst.Close()
}

func copyBuffered(dst io.Writer, src net.Conn) (int64, error) {
	var total int64
	r := newReader(src)
	for {
		buf, nr, rerr := r.read()
		if nr > 0 {
			nw, werr := dst.Write((*buf)[:nr])
			total += int64(nw)
			if werr == nil && nw != nr {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				bufpool.Put(buf)
				return total, werr
			}
		}
		bufpool.Put(buf)
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

// TCPUnwrapper is implemented by connection wrappers (for example ones
// that track open connections) to expose their TCP socket for splicing.
type TCPUnwrapper interface {
	TCP() *net.TCPConn
}

func tcpOf(c net.Conn) *net.TCPConn {
	switch c := c.(type) {
	case *net.TCPConn:
		return c
	case TCPUnwrapper:
		return c.TCP()
	}
	return nil
}

func isSocket(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// reader reads a socket into pooled buffers without holding one while
// the socket is idle: inside RawConn.Read it takes a buffer and tries a
// non-blocking read; on EAGAIN it gives the buffer back before the
// netpoller waits. Data already queued costs one syscall. Connections
// that are not sockets use their Read with a pooled buffer.
type reader struct {
	c   net.Conn
	rc  syscall.RawConn
	fn  func(fd uintptr) bool
	buf *[]byte
	n   int
	err error
}

func newReader(c net.Conn) *reader {
	r := &reader{c: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			r.rc = rc
			r.fn = r.try
		}
	}
	return r
}

func (r *reader) try(fd uintptr) bool {
	if r.buf == nil {
		r.buf = bufpool.Get(BufferSize)
	}
	for {
		n, err := syscall.Read(int(fd), *r.buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			bufpool.Put(r.buf) // idle: hold no buffer while waiting
			r.buf = nil
			return false
		case err != nil:
			r.n, r.err = 0, os.NewSyscallError("read", err)
		case n == 0:
			r.n, r.err = 0, io.EOF
		default:
			r.n, r.err = n, nil
		}
		return true
	}
}

// read returns a pooled buffer (the caller puts it back), how many bytes
// it holds, and io.EOF or an error.
func (r *reader) read() (*[]byte, int, error) {
	if r.rc == nil {
		buf := bufpool.Get(BufferSize)
		n, err := r.c.Read(*buf)
		return buf, n, err
	}
	r.buf, r.n, r.err = nil, 0, nil
	if err := r.rc.Read(r.fn); err != nil {
		// Deadline, close: the poller's error, with the socket's context.
		if r.buf == nil {
			r.buf = bufpool.Get(0)
		}
		return r.buf, 0, &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
	}
	return r.buf, r.n, r.err
}
