package h2

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/net/http2"
)

var (
	// ErrConnClosed is returned for operations on a closed connection. It
	// unwraps to net.ErrClosed so callers can use the usual check.
	ErrConnClosed = fmt.Errorf("h2: connection closed: %w", net.ErrClosed)
	// ErrStreamClosed is returned by Read/Write after Close on the stream.
	ErrStreamClosed = fmt.Errorf("h2: stream closed: %w", net.ErrClosed)
	// ErrWriteClosed is returned by Write after CloseWrite.
	ErrWriteClosed = errors.New("h2: write after CloseWrite")
	// ErrNoCapacity means the connection cannot take another stream now
	// (stream limit reached, GOAWAY received or sent, or closed).
	ErrNoCapacity = errors.New("h2: connection has no stream capacity")
)

// StreamError is a stream ended by RST_STREAM. Remote tells whether the
// peer sent it. A REFUSED_STREAM from the peer means the request was not
// processed and may be retried on another connection.
type StreamError struct {
	StreamID uint32
	Code     http2.ErrCode
	Remote   bool
}

func (e *StreamError) Error() string {
	who := "locally"
	if e.Remote {
		who = "by peer"
	}
	return fmt.Sprintf("h2: stream %d reset %s: %v", e.StreamID, who, e.Code)
}

// Retryable reports whether the peer refused the stream before processing it.
func (e *StreamError) Retryable() bool { return e.Remote && e.Code == http2.ErrCodeRefusedStream }

// GoAwayError ends streams above the peer's last-stream-id after a GOAWAY.
type GoAwayError struct {
	LastStreamID uint32
	Code         http2.ErrCode
	Debug        string
}

func (e *GoAwayError) Error() string {
	if e.Debug != "" {
		return fmt.Sprintf("h2: peer sent GOAWAY (last stream %d, %v): %s", e.LastStreamID, e.Code, e.Debug)
	}
	return fmt.Sprintf("h2: peer sent GOAWAY (last stream %d, %v)", e.LastStreamID, e.Code)
}

// ConnError is a connection-level protocol violation we detected; the
// connection is closed with a GOAWAY carrying Code.
type ConnError struct {
	Code   http2.ErrCode
	Reason string
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("h2: connection error %v: %s", e.Code, e.Reason)
}
