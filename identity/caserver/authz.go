package caserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity"
	"github.com/strait-mesh/strait/identity/ca"
)

// DenyReason is the bounded reason of a refusal: the reason label of
// strait_ca_denied_total.
type DenyReason string

// Refusal reasons.
const (
	// DenyNoNode: the caller's token is not bound to a pod scheduled on a
	// node, so there is no node to check pods against.
	DenyNoNode DenyReason = "no_node"
	// DenyNotSelf: a caller other than ztunnel asked for another identity.
	DenyNotSelf DenyReason = "not_self"
	// DenyNoPodOnNode: no running pod with the requested service account
	// is scheduled on the caller's node.
	DenyNoPodOnNode DenyReason = "no_pod_on_node"
	// DenyOther: a refusal by an authorizer other than NodeAuthorizer.
	DenyOther DenyReason = "other"
)

var denyReasons = []DenyReason{DenyNoNode, DenyNotSelf, DenyNoPodOnNode, DenyOther}

func (r DenyReason) bounded() DenyReason {
	if slices.Contains(denyReasons, r) {
		return r
	}
	return DenyOther
}

// Denial is a refusal by NodeAuthorizer. It matches ca.ErrNotAuthorized,
// so identity/ca passes it through unwrapped-but-wrapped (errors.As finds it).
type Denial struct {
	Reason  DenyReason
	Message string
}

func (d *Denial) Error() string { return d.Message }

// Is makes a Denial match ca.ErrNotAuthorized.
func (d *Denial) Is(target error) bool { return target == ca.ErrNotAuthorized }

// LookupError is a failure to find out whether a pod runs on a node (the
// API server failed): not a refusal, and answered with 500.
type LookupError struct{ Err error }

func (e *LookupError) Error() string { return "pod lookup: " + e.Err.Error() }
func (e *LookupError) Unwrap() error { return e.Err }

// PodFinder reports whether a pod with service account ns/sa is scheduled
// on node and has not terminated.
type PodFinder interface {
	HasPod(ctx context.Context, node, ns, sa string) (bool, error)
}

// NodeAuthorizer is the CA's ca.Authorizer: see the package documentation.
type NodeAuthorizer struct {
	ztunnel spiffeid.ID
	ztName  string
	pods    PodFinder
}

// NewNodeAuthorizer returns an authorizer that lets ztunnelSA ("ns/name"
// in trust domain td) ask for any identity with a pod on its node, and any
// other caller only its own.
func NewNodeAuthorizer(td spiffeid.TrustDomain, ztunnelSA string, pods PodFinder) (*NodeAuthorizer, error) {
	ns, sa, err := SplitServiceAccount(ztunnelSA)
	if err != nil {
		return nil, fmt.Errorf("caserver: ztunnel service account: %w", err)
	}
	id, err := identity.New(td.Name(), ns, sa)
	if err != nil {
		return nil, fmt.Errorf("caserver: ztunnel service account: %w", err)
	}
	if pods == nil {
		return nil, fmt.Errorf("caserver: node authorizer: PodFinder is nil: %w", ca.ErrInvalidConfig)
	}
	return &NodeAuthorizer{ztunnel: id.SPIFFEID(), ztName: ns + "/" + sa, pods: pods}, nil
}

// SplitServiceAccount splits "namespace/name".
func SplitServiceAccount(s string) (ns, name string, err error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return "", "", fmt.Errorf("%q is not <namespace>/<serviceaccount>: %w", s, ca.ErrInvalidConfig)
	}
	return ns, name, nil
}

// Authorize implements ca.Authorizer.
func (a *NodeAuthorizer) Authorize(ctx context.Context, caller ca.Caller, requested spiffeid.ID) error {
	if caller.Identity.IsZero() {
		return &Denial{Reason: DenyOther, Message: "the caller has no service-account identity"}
	}
	if requested != caller.Identity && caller.Identity != a.ztunnel {
		return &Denial{Reason: DenyNotSelf, Message: fmt.Sprintf(
			"%s may only obtain its own identity; only the ztunnel service account %s may ask for others", caller.Identity, a.ztName)}
	}
	if caller.Node == "" {
		return &Denial{Reason: DenyNoNode, Message: fmt.Sprintf(
			"the token of %s is not bound to a pod scheduled on a node; present a projected service-account token of a running pod (audience strait-ca)", caller.Identity)}
	}
	id, err := identity.FromSPIFFEID(requested)
	if err != nil { // identity/ca has checked this already
		return &Denial{Reason: DenyOther, Message: err.Error()}
	}
	ok, err := a.pods.HasPod(ctx, caller.Node, id.Namespace, id.ServiceAccount)
	if err != nil {
		return &LookupError{Err: err}
	}
	if !ok {
		return &Denial{Reason: DenyNoPodOnNode, Message: fmt.Sprintf(
			"no pod with service account %s/%s on node %s", id.Namespace, id.ServiceAccount, caller.Node)}
	}
	return nil
}

// denialOf extracts the refusal reason and message of an error returned by
// ca.Sign for ca.ErrNotAuthorized.
func denialOf(err error) (DenyReason, string) {
	var d *Denial
	if errors.As(err, &d) {
		return d.Reason.bounded(), d.Message
	}
	return DenyOther, err.Error()
}
