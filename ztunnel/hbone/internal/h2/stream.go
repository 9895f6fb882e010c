package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/strait-mesh/strait/internal/bufpool"
)

// Stream is one HTTP/2 stream used as a full-duplex byte pipe. Read, Write
// and the deadline methods follow net.Conn; CloseWrite sends END_STREAM.
// One goroutine may read and one may write at a time.
type Stream struct {
	c  *Conn
	id uint32

	// Set before the stream is visible to other goroutines.
	reqFields []hpack.HeaderField // server: request headers
	truncated bool                // server: request header list over the limit

	// Client: response.
	respReady  chan struct{}
	status     int
	respFields []hpack.HeaderField

	// Guarded by c.mu.
	chunks      []chunk // received bytes; chunks[head:] are unread
	head        int
	buffered    int
	recvWin     int32
	unacked     int32
	recvEnd     bool
	sendWin     int32
	sentEnd     bool
	sentHeaders bool
	respDone    bool
	err         error
	closedLocal bool
	removed     bool

	readWake  chan struct{}
	writeWake chan struct{}
	rdl, wdl  deadline
}

type chunk struct {
	buf      *[]byte
	off, end int
}

func newStream(c *Conn, id uint32) *Stream {
	return &Stream{
		c:         c,
		id:        id,
		recvWin:   int32(c.cfg.StreamWindow),
		sendWin:   c.peerInitWin,
		readWake:  make(chan struct{}, 1),
		writeWake: make(chan struct{}, 1),
	}
}

var _ net.Conn = (*Stream)(nil)

// ID is the HTTP/2 stream id.
func (s *Stream) ID() uint32 { return s.id }

// Conn is the connection carrying the stream.
func (s *Stream) Conn() *Conn { return s.c }

// RequestHeaders are the header fields the peer opened the stream with
// (server side), pseudo headers included.
func (s *Stream) RequestHeaders() []hpack.HeaderField { return s.reqFields }

// HeadersTruncated reports that the request's header list was larger than
// our SETTINGS_MAX_HEADER_LIST_SIZE and some fields were dropped.
func (s *Stream) HeadersTruncated() bool { return s.truncated }

func (s *Stream) signalRead() {
	select {
	case s.readWake <- struct{}{}:
	default:
	}
}

func (s *Stream) signalWrite() {
	select {
	case s.writeWake <- struct{}{}:
	default:
	}
}

// AwaitResponse waits for the response headers (client side). On ctx
// expiry the stream is reset.
func (s *Stream) AwaitResponse(ctx context.Context) (int, []hpack.HeaderField, error) {
	select {
	case <-s.respReady:
	case <-ctx.Done():
		s.Close()
		return 0, nil, fmt.Errorf("h2: waiting for response: %w", ctx.Err())
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.status == 0 {
		return 0, nil, s.err
	}
	return s.status, s.respFields, nil
}

// WriteResponse sends the response headers (server side). With endStream
// the stream's write side is closed too (error responses).
func (s *Stream) WriteResponse(status int, fields []hpack.HeaderField, endStream bool) error {
	c := s.c
	c.mu.Lock()
	if s.sentHeaders {
		c.mu.Unlock()
		return fmt.Errorf("h2: stream %d: response already sent", s.id)
	}
	if s.err != nil {
		err := s.err
		c.mu.Unlock()
		return err
	}
	s.sentHeaders = true
	if endStream {
		s.sentEnd = true
	}
	c.mu.Unlock()

	all := make([]hpack.HeaderField, 0, len(fields)+1)
	all = append(all, hpack.HeaderField{Name: ":status", Value: statusText(status)})
	all = append(all, fields...)
	c.wmu.Lock()
	block, err := c.encodeHeadersLocked(all)
	if err == nil {
		err = c.writeHeadersLocked(s.id, block, endStream)
	}
	err = errors.Join(err, c.unlockWrite())
	if err != nil {
		c.closeWithError(fmt.Errorf("h2: write response: %w", err))
		return err
	}
	if endStream {
		c.mu.Lock()
		c.maybeRemoveLocked(s)
		c.mu.Unlock()
	}
	return nil
}

func statusText(code int) string {
	if code < 100 || code > 999 {
		code = 500
	}
	return string([]byte{byte('0' + code/100), byte('0' + code/10%10), byte('0' + code%10)})
}

// appendLocked copies received bytes into pooled chunks.
func (s *Stream) appendLocked(p []byte) {
	s.buffered += len(p)
	if n := len(s.chunks); n > s.head {
		last := &s.chunks[n-1]
		if room := len(*last.buf) - last.end; room > 0 {
			k := copy((*last.buf)[last.end:], p)
			last.end += k
			p = p[k:]
		}
	}
	for len(p) > 0 {
		b := bufpool.Get(max(len(p), minChunk))
		k := copy(*b, p)
		s.chunks = append(s.chunks, chunk{buf: b, end: k})
		p = p[k:]
	}
}

// consumedLocked records n bytes handed to the reader and returns the
// WINDOW_UPDATE increments (stream, connection) due now.
func (s *Stream) consumedLocked(n int) (streamInc, connInc uint32) {
	c := s.c
	c.recvUnacked += int32(n)
	connInc = c.connWindowUpdateLocked()
	if s.recvEnd || s.removed {
		return 0, connInc
	}
	s.unacked += int32(n)
	if s.unacked >= int32(c.cfg.StreamWindow/4) {
		streamInc = uint32(s.unacked)
		s.recvWin += s.unacked
		s.unacked = 0
	}
	return streamInc, connInc
}

// popLocked drops the head chunk (returning its buffer to the pool) and
// rewinds the queue when it empties, so its backing array is reused.
func (s *Stream) popLocked() {
	bufpool.Put(s.chunks[s.head].buf)
	s.chunks[s.head] = chunk{}
	s.head++
	if s.head == len(s.chunks) {
		s.chunks, s.head = s.chunks[:0], 0
	}
}

func (s *Stream) freeChunksLocked() {
	for i := s.head; i < len(s.chunks); i++ {
		bufpool.Put(s.chunks[i].buf)
	}
	clear(s.chunks)
	s.chunks, s.head = s.chunks[:0], 0
	s.buffered = 0
}

// waitRead blocks until something changed for the reader.
func (s *Stream) waitRead() error {
	select {
	case <-s.readWake:
		return nil
	case <-s.rdl.wait():
		return os.ErrDeadlineExceeded
	}
}

// Read reads tunneled bytes. It returns io.EOF after the peer's
// END_STREAM and the stream's error after a reset.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c := s.c
	for {
		c.mu.Lock()
		if s.closedLocal {
			c.mu.Unlock()
			return 0, ErrStreamClosed
		}
		if s.head < len(s.chunks) {
			n := 0
			for n < len(p) && s.head < len(s.chunks) {
				ch := &s.chunks[s.head]
				k := copy(p[n:], (*ch.buf)[ch.off:ch.end])
				n += k
				ch.off += k
				if ch.off == ch.end {
					s.popLocked()
				}
			}
			s.buffered -= n
			swu, cwu := s.consumedLocked(n)
			c.mu.Unlock()
			c.sendWindowUpdates(s.id, swu, cwu)
			return n, nil
		}
		if s.recvEnd {
			c.mu.Unlock()
			return 0, io.EOF
		}
		if s.err != nil {
			err := s.err
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		if err := s.waitRead(); err != nil {
			return 0, err
		}
	}
}

// WriteTo writes received bytes to w straight from the receive chunks,
// saving the copy through a caller's buffer. It returns at END_STREAM
// (nil error), on a reset, or when w fails.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	c := s.c
	var total int64
	for {
		c.mu.Lock()
		if s.closedLocal {
			c.mu.Unlock()
			return total, ErrStreamClosed
		}
		if s.head < len(s.chunks) {
			ch := s.chunks[s.head]
			s.chunks[s.head].buf = nil // ownership moves to this writer
			s.popLocked()
			s.buffered -= ch.end - ch.off
			c.mu.Unlock()
			n, err := w.Write((*ch.buf)[ch.off:ch.end])
			bufpool.Put(ch.buf)
			total += int64(n)
			c.mu.Lock()
			swu, cwu := s.consumedLocked(ch.end - ch.off)
			c.mu.Unlock()
			c.sendWindowUpdates(s.id, swu, cwu)
			if err != nil {
				return total, err
			}
			continue
		}
		if s.recvEnd {
			c.mu.Unlock()
			return total, nil
		}
		if s.err != nil {
			err := s.err
			c.mu.Unlock()
			return total, err
		}
		c.mu.Unlock()
		if err := s.waitRead(); err != nil {
			return total, err
		}
	}
}

// reserveSend blocks until some send window is available and takes up to
// want bytes of it.
func (s *Stream) reserveSend(want int) (int, error) {
	c := s.c
	for {
		c.mu.Lock()
		switch {
		case s.closedLocal:
			c.mu.Unlock()
			return 0, ErrStreamClosed
		case s.sentEnd:
			c.mu.Unlock()
			return 0, ErrWriteClosed
		case s.err != nil:
			err := s.err
			c.mu.Unlock()
			return 0, err
		}
		n := min(int32(want), s.sendWin, c.sendWin, int32(c.peerMaxFrame.Load()))
		if n > 0 {
			s.sendWin -= n
			c.sendWin -= n
			c.mu.Unlock()
			return int(n), nil
		}
		c.mu.Unlock()
		select {
		case <-s.writeWake:
		case <-s.wdl.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// Write sends p as DATA frames, blocking while flow control allows none.
func (s *Stream) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n, err := s.reserveSend(len(p))
		if err != nil {
			return written, err
		}
		if err := s.c.writeData(s.id, p[:n], false); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// CloseWrite sends END_STREAM: the peer reads EOF; we can still read.
func (s *Stream) CloseWrite() error {
	c := s.c
	c.mu.Lock()
	if s.sentEnd || s.closedLocal {
		c.mu.Unlock()
		return nil
	}
	if s.err != nil {
		err := s.err
		c.mu.Unlock()
		return err
	}
	s.sentEnd = true
	c.mu.Unlock()
	err := c.writeData(s.id, nil, true)
	c.mu.Lock()
	c.maybeRemoveLocked(s)
	c.mu.Unlock()
	return err
}

// Close ends the stream. If either direction is still open the peer gets
// RST_STREAM(CANCEL); buffered unread bytes are dropped.
func (s *Stream) Close() error {
	return s.closeWithCode(http2.ErrCodeCancel)
}

// Reset ends the stream with RST_STREAM carrying code.
func (s *Stream) Reset(code http2.ErrCode) error { return s.closeWithCode(code) }

func (s *Stream) closeWithCode(code http2.ErrCode) error {
	c := s.c
	c.mu.Lock()
	if s.closedLocal {
		c.mu.Unlock()
		return nil
	}
	s.closedLocal = true
	rst := s.err == nil && !(s.sentEnd && s.recvEnd)
	if unread := s.buffered; unread > 0 {
		c.recvUnacked += int32(unread)
	}
	s.freeChunksLocked()
	if s.err == nil {
		s.err = ErrStreamClosed
	}
	if s.respReady != nil && !s.respDone {
		s.respDone = true
		close(s.respReady)
	}
	c.maybeRemoveLocked(s)
	cwu := c.connWindowUpdateLocked()
	s.signalRead()
	s.signalWrite()
	c.mu.Unlock()
	if rst {
		c.queueCtl(ctlFrame{kind: ctlRST, streamID: s.id, code: code})
	}
	c.sendWindowUpdates(0, 0, cwu)
	s.rdl.stop()
	s.wdl.stop()
	return nil
}

// LocalAddr and RemoteAddr are those of the carrying connection.
func (s *Stream) LocalAddr() net.Addr  { return s.c.nc.LocalAddr() }
func (s *Stream) RemoteAddr() net.Addr { return s.c.nc.RemoteAddr() }

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	s.rdl.set(t)
	s.wdl.set(t)
	s.signalRead()
	s.signalWrite()
	return nil
}

// SetReadDeadline bounds Read and WriteTo.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.rdl.set(t)
	s.signalRead()
	return nil
}

// SetWriteDeadline bounds Write while it waits for flow-control window.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.wdl.set(t)
	s.signalWrite()
	return nil
}
