package hbone

import (
	"errors"
	"fmt"
	"net/http"
)

// Handler errors that choose the CONNECT status. Any other handler error
// (typically a failed dial) answers 503.
var (
	// ErrDenied: authorization refused the tunnel (401).
	ErrDenied = errors.New("hbone: denied by policy")
	// ErrUnknownDestination: no local workload has the destination (503).
	ErrUnknownDestination = errors.New("hbone: unknown destination")
	// ErrBadRequest: the request is malformed (400).
	ErrBadRequest = errors.New("hbone: bad request")
	// ErrOverloaded: a server limit was reached (503).
	ErrOverloaded = errors.New("hbone: server overloaded")
)

// ReasonHeader carries a short machine-readable reason on refusals, so the
// client side can log why (it is ignored by other HBONE peers).
const ReasonHeader = "strait-reason"

// statusFor maps a handler error to the CONNECT response status.
func statusFor(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrDenied):
		return http.StatusUnauthorized
	default:
		return http.StatusServiceUnavailable
	}
}

// ConnectError is a CONNECT refused by the peer with a non-200 status.
type ConnectError struct {
	Authority string
	Status    int
	Reason    string // from the strait-reason header, if the peer sent one
}

func (e *ConnectError) Error() string {
	msg := fmt.Sprintf("hbone: CONNECT %s refused: %d %s", e.Authority, e.Status, http.StatusText(e.Status))
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Is lets callers test with errors.Is(err, ErrDenied) and friends.
func (e *ConnectError) Is(target error) bool {
	switch target {
	case ErrDenied:
		return e.Status == http.StatusUnauthorized
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	}
	return false
}
