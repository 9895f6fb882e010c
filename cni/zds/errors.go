package zds

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Every error this package returns starts with "zds:" and
// wraps one of these (or a context / net / os error) so callers can use
// errors.Is.
var (
	// ErrPeerClosed: the other side closed the connection (EOF).
	ErrPeerClosed = errors.New("zds: peer closed the connection")
	// ErrConnBroken: an earlier failure (I/O error, ack timeout, cancelled
	// context after a request was sent) left the connection unusable,
	// because a late ack could no longer be matched to its request. The
	// connection has been closed; ztunnel reconnects and gets a new snapshot.
	ErrConnBroken = errors.New("zds: connection broken by an earlier failure")
	// ErrVersionMismatch: ztunnel's hello announced a version this agent
	// does not speak.
	ErrVersionMismatch = errors.New("zds: unsupported protocol version")
	// ErrHandshake: the hello was missing, malformed or carried fds.
	ErrHandshake = errors.New("zds: bad hello")
	// ErrMessageTooLarge: a packet over MaxMessageSize was to be sent or
	// was received (the kernel truncated it: MSG_TRUNC).
	ErrMessageTooLarge = errors.New("zds: message too large")
	// ErrControlTruncated: the ancillary data did not fit (MSG_CTRUNC);
	// every fd that did arrive has been closed.
	ErrControlTruncated = errors.New("zds: truncated ancillary data")
	// ErrMalformed: the packet is not a valid message of the protocol.
	ErrMalformed = errors.New("zds: malformed message")
	// ErrNoNetns: an AddWorkload arrived without an fd.
	ErrNoNetns = errors.New("zds: add without netns fd")
	// ErrNotNetns: the fd that arrived is not a network namespace.
	ErrNotNetns = errors.New("zds: not a network namespace")
	// ErrTooManyFDs: more than one fd arrived with one message; all of
	// them have been closed.
	ErrTooManyFDs = errors.New("zds: more than one fd in a message")
	// ErrUnexpectedFD: an fd arrived with a message that takes none
	// (DelWorkload, SnapshotSent, a response, a hello); it has been closed.
	ErrUnexpectedFD = errors.New("zds: unexpected fd")
	// ErrNotSocket: Listen refuses to replace a path that exists and is not
	// a unix socket.
	ErrNotSocket = errors.New("zds: path exists and is not a socket")
	// ErrAckPending: Next was called before the previous request was
	// answered with Ack.
	ErrAckPending = errors.New("zds: previous request not acknowledged")
	// ErrNoPending: Ack was called with no request to answer.
	ErrNoPending = errors.New("zds: no request to acknowledge")
)

// NackError is returned by the agent side when ztunnel answered a request
// with a non-empty Ack.error. The connection stays usable.
type NackError struct {
	// Reason is ztunnel's Ack.error, verbatim.
	Reason string
}

func (e *NackError) Error() string { return "zds: nack: " + e.Reason }

// RequestError is returned by (*ProxyConn).Next for a request the proxy side
// refused before handing it to the caller (malformed, unknown payload, wrong
// or missing fds, oversized). That request has already been nacked with
// Reason and every fd it carried has been closed; the connection stays in
// step and the caller simply calls Next again.
type RequestError struct {
	// Reason is the text sent to the agent in the nack.
	Reason string
	err    error
}

func (e *RequestError) Error() string { return "zds: request refused: " + e.Reason }

// Unwrap returns the sentinel (ErrMalformed, ErrNoNetns, ErrNotNetns, ...).
func (e *RequestError) Unwrap() error { return e.err }

// refuse builds a RequestError whose reason is the sentinel's text without
// its "zds: " prefix, followed by detail if any.
func refuse(sentinel error, detail string) *RequestError {
	reason := strings.TrimPrefix(sentinel.Error(), "zds: ")
	if detail != "" {
		reason += ": " + detail
	}
	return &RequestError{Reason: cleanReason(reason), err: sentinel}
}

// MaxReasonLen bounds the text of a nack; longer texts are cut (on a UTF-8
// boundary) so a response always fits in one packet.
const MaxReasonLen = 4096

// cleanReason makes s a valid proto3 string (UTF-8) of at most MaxReasonLen
// bytes.
func cleanReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= MaxReasonLen {
		return s
	}
	cut := MaxReasonLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
