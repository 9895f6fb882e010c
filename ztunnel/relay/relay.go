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
	w := newReadWaiter(src)
	for {
		if err := w.wait(); err != nil {
			return total, err
		}
		buf := bufpool.Get(BufferSize)
		nr, rerr := src.Read(*buf)
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
		// A full read suggests more is queued: read again without waiting.
		w.skip = nr == len(*buf)
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

// readWaiter blocks until a socket has data, EOF or an error, without
// holding a buffer. It is built once per direction so waiting does not
// allocate; connections that are not sockets never wait.
type readWaiter struct {
	rc    syscall.RawConn
	fn    func(fd uintptr) bool
	first bool
	skip  bool
}

func newReadWaiter(c net.Conn) *readWaiter {
	w := &readWaiter{}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			w.rc = rc
			w.fn = w.check
		}
	}
	return w
}

func (w *readWaiter) check(fd uintptr) bool {
	if !w.first {
		return true // the poller says readable
	}
	w.first = false
	return peekReady(int(fd))
}

func (w *readWaiter) wait() error {
	if w.rc == nil || w.skip {
		return nil
	}
	w.first = true
	// A deadline or close error here is reported again, with context, by
	// the Read that follows.
	_ = w.rc.Read(w.fn)
	return nil
}
