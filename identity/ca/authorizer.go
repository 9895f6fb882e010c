package ca

import (
	"context"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Caller describes who asks the CA for a certificate.
type Caller struct {
	// Identity is the authenticated SPIFFE ID of the requester (for example
	// the node agent's or the workload's own identity). Zero when the caller
	// is not authenticated by a SPIFFE ID (e.g. a local, in-process caller).
	Identity spiffeid.ID
	// Node is the Kubernetes node the requester runs on, when known.
	Node string
}

// String describes the caller for error messages.
func (c Caller) String() string {
	id := c.Identity.String()
	if id == "" {
		id = "<unauthenticated>"
	}
	if c.Node == "" {
		return id
	}
	return fmt.Sprintf("%s on node %q", id, c.Node)
}

// Authorizer decides whether caller may obtain a certificate for requested.
// It returns nil to allow. A refusal should explain itself; the CA wraps it
// so that the error returned by Sign always satisfies
// errors.Is(err, ErrNotAuthorized).
type Authorizer interface {
	Authorize(ctx context.Context, caller Caller, requested spiffeid.ID) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, caller Caller, requested spiffeid.ID) error

// Authorize calls f.
func (f AuthorizerFunc) Authorize(ctx context.Context, caller Caller, requested spiffeid.ID) error {
	return f(ctx, caller, requested)
}

// AllowAll returns an Authorizer that allows every caller every identity of
// the CA's trust domain. Use it only where every caller is trusted (tests,
// a single-user local CA).
func AllowAll() Authorizer {
	return AuthorizerFunc(func(context.Context, Caller, spiffeid.ID) error { return nil })
}

// AllowSelf returns an Authorizer that allows a caller only its own
// identity: requested must equal caller.Identity.
func AllowSelf() Authorizer {
	return AuthorizerFunc(func(_ context.Context, caller Caller, requested spiffeid.ID) error {
		if caller.Identity.IsZero() {
			return errors.New("caller has no SPIFFE identity and may only renew its own")
		}
		if caller.Identity != requested {
			return fmt.Errorf("caller %s may only obtain its own identity", caller.Identity)
		}
		return nil
	})
}

// DenyAll returns an Authorizer that refuses everything. It is the default
// when Config.Authorizer is nil.
func DenyAll() Authorizer {
	return AuthorizerFunc(func(context.Context, Caller, spiffeid.ID) error {
		return errors.New("no authorizer configured (ca.Config.Authorizer is nil), so every request is denied")
	})
}
