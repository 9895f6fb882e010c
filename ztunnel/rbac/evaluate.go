package rbac

import (
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Connection is what the node proxy knows about an inbound connection.
type Connection struct {
	// Identity is the peer's verified SPIFFE id; zero for plaintext.
	Identity spiffeid.ID
	// SrcIP is the peer's address; the zero Addr when unknown.
	SrcIP netip.Addr
	// DstPort is the destination workload port.
	DstPort uint16
}

// Decision is the outcome of [Evaluate].
type Decision struct {
	Allow bool `json:"allow"`
	// Policy is the "namespace/name" of the policy that decided, "" when
	// the decision is a default (no ALLOW policy present, or none matched).
	Policy string `json:"policy,omitempty"`
	// Reason is a short human explanation, one of the Reason* constants.
	Reason string `json:"reason"`
}

// Decision reasons.
const (
	ReasonDenyMatched  = "DENY policy matched"
	ReasonAllowMatched = "ALLOW policy matched"
	ReasonNoAllow      = "no ALLOW policy applies"
	ReasonNoneMatched  = "no ALLOW policy matched"
)

// String renders d for logs: "allow (ALLOW policy matched: shop/x)".
func (d Decision) String() string {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	if d.Policy == "" {
		return verdict + " (" + d.Reason + ")"
	}
	return verdict + " (" + d.Reason + ": " + d.Policy + ")"
}

// Evaluate decides whether c may reach a workload to which exactly
// policies apply (nil entries are ignored). The order is Istio's: any
// matching DENY policy denies; with no ALLOW policy the connection is
// allowed; otherwise an ALLOW policy must match. Evaluate is safe for
// concurrent use and does not allocate when the policies were validated.
func Evaluate(policies []*Policy, c Connection) Decision {
	pc := makePeer(c)
	var allowed *Policy
	haveAllow := false
	for _, p := range policies {
		if p == nil {
			continue
		}
		if p.Action == ActionAllow {
			haveAllow = true
			if allowed == nil && p.matches(&pc, false) {
				allowed = p
			}
			continue
		}
		// DENY, and any unknown action: fail closed.
		if p.matches(&pc, true) {
			return Decision{Allow: false, Policy: p.Key(), Reason: ReasonDenyMatched}
		}
	}
	switch {
	case allowed != nil:
		return Decision{Allow: true, Policy: allowed.Key(), Reason: ReasonAllowMatched}
	case !haveAllow:
		return Decision{Allow: true, Reason: ReasonNoAllow}
	}
	return Decision{Allow: false, Reason: ReasonNoneMatched}
}

// Matches reports whether p matches c, ignoring its action (a policy with an
// action other than ALLOW is matched as a DENY policy, see the package
// documentation on peers without an identity).
func (p *Policy) Matches(c Connection) bool {
	pc := makePeer(c)
	return p.matches(&pc, p.Action != ActionAllow)
}

// peer is a Connection with its attributes split out once per evaluation.
type peer struct {
	id     string // full SPIFFE id, "" when plaintext
	idTail string // id without "spiffe://"
	ns, sa string // from /ns/<ns>/sa/<sa>; known only when hasNSSA
	hasID  bool
	hasNS  bool
	src    netip.Addr
	hasSrc bool
	port   uint16
}

func makePeer(c Connection) peer {
	p := peer{port: c.DstPort}
	if !c.Identity.IsZero() {
		p.id = c.Identity.String()
		p.idTail = strings.TrimPrefix(p.id, spiffeScheme)
		p.hasID = true
		p.ns, p.sa, p.hasNS = splitNSSA(c.Identity.Path())
	}
	if c.SrcIP.IsValid() {
		p.src = c.SrcIP.Unmap().WithZone("")
		p.hasSrc = true
	}
	return p
}

// splitNSSA extracts <ns> and <sa> from a path exactly /ns/<ns>/sa/<sa>.
func splitNSSA(path string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(path, "/ns/")
	if !ok {
		return "", "", false
	}
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return "", "", false
	}
	ns, rest = rest[:i], rest[i:]
	sa, ok = strings.CutPrefix(rest, "/sa/")
	if !ok || sa == "" || strings.IndexByte(sa, '/') >= 0 {
		return "", "", false
	}
	return ns, sa, true
}

func (p *Policy) matches(c *peer, deny bool) bool {
	for i := range p.Rules {
		if p.Rules[i].matches(c, deny) {
			return true
		}
	}
	return false
}

func (r *Rule) matches(c *peer, deny bool) bool {
	if len(r.From) > 0 {
		ok := false
		for i := range r.From {
			if r.From[i].matches(c, deny) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.To) > 0 {
		for i := range r.To {
			if r.To[i].matches(c) {
				return true
			}
		}
		return false
	}
	return true
}

func (o *Operation) matches(c *peer) bool {
	if len(o.Ports) > 0 {
		ok := false
		for _, p := range o.Ports {
			if p == c.port {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, p := range o.NotPorts {
		if p == c.port {
			return false
		}
	}
	return true
}

// matches applies the unknown-attribute rule of the package documentation:
// with the attribute unknown, a positive field fails and a negated field
// passes only in a DENY policy (deny == true).
func (s *Source) matches(c *peer, deny bool) bool {
	// Source IPs.
	if len(s.SourceIPs) > 0 && (!c.hasSrc || !anyPrefix(s.SourceIPs, c.src)) {
		return false
	}
	if len(s.NotSourceIPs) > 0 {
		if !c.hasSrc {
			if !deny {
				return false
			}
		} else if anyPrefix(s.NotSourceIPs, c.src) {
			return false
		}
	}
	// Principals.
	if len(s.Principals) > 0 && (!c.hasID || !anyPrincipal(s.Principals, c)) {
		return false
	}
	if len(s.NotPrincipals) > 0 {
		if !c.hasID {
			if !deny {
				return false
			}
		} else if anyPrincipal(s.NotPrincipals, c) {
			return false
		}
	}
	// Namespaces.
	if len(s.Namespaces) > 0 && (!c.hasNS || !anyPattern(s.Namespaces, c.ns)) {
		return false
	}
	if len(s.NotNamespaces) > 0 {
		if !c.hasNS {
			if !deny {
				return false
			}
		} else if anyPattern(s.NotNamespaces, c.ns) {
			return false
		}
	}
	// Service accounts.
	if len(s.ServiceAccounts) > 0 && (!c.hasNS || !anyServiceAccount(s.ServiceAccounts, c)) {
		return false
	}
	if len(s.NotServiceAccounts) > 0 {
		if !c.hasNS {
			if !deny {
				return false
			}
		} else if anyServiceAccount(s.NotServiceAccounts, c) {
			return false
		}
	}
	return true
}

func anyPrefix(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func anyPrincipal(pats []string, c *peer) bool {
	for _, pat := range pats {
		if matchPrincipal(pat, c.id, c.idTail) {
			return true
		}
	}
	return false
}

// matchPrincipal compares one principal pattern with the peer id. A
// pattern written with "spiffe://" is compared with the full id, one
// written without (Istio's form) with the id without its scheme.
func matchPrincipal(pat, id, tail string) bool {
	if pat == "*" {
		return id != ""
	}
	if pat == "" {
		return false
	}
	switch {
	case pat[0] == '*':
		body := pat[1:]
		if strings.HasPrefix(body, spiffeScheme) {
			return strings.HasSuffix(id, body)
		}
		return strings.HasSuffix(tail, body)
	case pat[len(pat)-1] == '*':
		body := pat[:len(pat)-1]
		if strings.HasPrefix(body, spiffeScheme) {
			return strings.HasPrefix(id, body)
		}
		return strings.HasPrefix(tail, body)
	case strings.HasPrefix(pat, spiffeScheme):
		return pat == id
	}
	return pat == tail
}

func anyPattern(pats []string, v string) bool {
	for _, pat := range pats {
		if matchPattern(pat, v) {
			return true
		}
	}
	return false
}

// matchPattern: "*" (any non-empty), "*suffix", "prefix*" or exact.
func matchPattern(pat, v string) bool {
	switch {
	case pat == "*":
		return v != ""
	case pat == "":
		return false
	case pat[0] == '*':
		return strings.HasSuffix(v, pat[1:])
	case pat[len(pat)-1] == '*':
		return strings.HasPrefix(v, pat[:len(pat)-1])
	}
	return pat == v
}

func anyServiceAccount(pats []string, c *peer) bool {
	for _, pat := range pats {
		ns, sa, ok := strings.Cut(pat, "/")
		if ok && ns == c.ns && sa == c.sa {
			return true
		}
	}
	return false
}
