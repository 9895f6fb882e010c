// Package kubepolicy turns the Strait policy custom resources
// (security.strait.dev/v1alpha1, deploy/api/security/v1alpha1) into the
// node proxy's policy model (ztunnel/rbac).
//
// Scope: an object without a selector (or with empty matchLabels) applies
// to its namespace, or to the whole mesh when it lives in the root
// namespace; with a selector, to the matching workloads of its namespace.
// An AuthorizationPolicy with a selector in the root namespace is refused
// (Istio would apply it to matching workloads of every namespace, which
// rbac cannot express); a PeerAuthentication with one is ignored, as in
// Istio.
//
// L7 fields (to.operation hosts, methods, paths and their not* forms;
// from.source requestPrincipals, remoteIpBlocks and their not* forms;
// when) can only be enforced by a waypoint. The node proxy errs on the
// strict side, as Istio's ztunnel does:
//
//   - in an ALLOW policy a rule with any L7 field can never match at L4,
//     so it is dropped (an ALLOW policy left without rules allows
//     nothing);
//   - in a DENY policy the L7 fields are ignored, so the rule matches more
//     connections (a source or operation that had only L7 fields matches
//     every peer or every port).
//
// Each case is reported as a warning. The result has passed rbac's own
// Validate; an object the API server accepted but rbac refuses gives an
// error that names the object and the field.
package kubepolicy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
	"github.com/strait-mesh/strait/ztunnel/rbac"
)

// ErrUnsupported is wrapped by the errors for objects the node proxy cannot
// represent.
var ErrUnsupported = errors.New("not supported")

// ToRBAC converts an AuthorizationPolicy. rootNamespace is the mesh's root
// namespace ("" means v1alpha1.RootNamespace). Warnings say which rules
// were dropped or widened because they use L7 fields. The error wraps
// ErrUnsupported or one of rbac's sentinel errors.
func ToRBAC(ap *v1alpha1.AuthorizationPolicy, rootNamespace string) (*rbac.Policy, []string, error) {
	if ap == nil {
		return nil, nil, errors.New("kubepolicy: nil AuthorizationPolicy")
	}
	key := ap.Namespace + "/" + ap.Name
	fail := func(err error) (*rbac.Policy, []string, error) {
		return nil, nil, fmt.Errorf("kubepolicy: AuthorizationPolicy %s: %w", key, err)
	}
	root := rootOr(rootNamespace)
	sel := selectorOf(ap.Spec.Selector)
	if len(sel) > 0 && ap.Namespace == root {
		return fail(fmt.Errorf("a selector in the root namespace %s would select workloads of every namespace: %w "+
			"(move the policy to the workloads' namespace, or drop the selector for a mesh-wide policy)", root, ErrUnsupported))
	}
	p := &rbac.Policy{
		Name:      ap.Name,
		Namespace: ap.Namespace,
		Action:    rbac.Action(ap.Spec.Action),
	}
	p.Scope, p.Selector = scopeOf(ap.Namespace, root, sel)
	if p.Action == "" {
		p.Action = rbac.ActionAllow
	}
	deny := p.Action == rbac.ActionDeny

	// Every rule is converted and validated with its index in the object,
	// so that an error names the field the user wrote; ALLOW rules with L7
	// fields are removed afterwards.
	var warnings []string
	var kept []rbac.Rule
	dropped := false
	for i := range ap.Spec.Rules {
		r := &ap.Spec.Rules[i]
		rr, err := convertRule(r, i)
		if err != nil {
			return fail(err)
		}
		p.Rules = append(p.Rules, rr)
		l7 := l7Fields(r, fmt.Sprintf("rules[%d]", i))
		switch {
		case len(l7) == 0:
			kept = append(kept, rr)
		case deny:
			kept = append(kept, rr)
			warnings = append(warnings, fmt.Sprintf("rules[%d]: %s ignored by the node proxy: this DENY rule "+
				"matches on its other fields alone, so it denies more connections than written; only a waypoint enforces them", i, describe(l7)))
		default:
			dropped = true
			warnings = append(warnings, fmt.Sprintf("rules[%d] dropped: %s only a waypoint can check, "+
				"so the node proxy never matches this ALLOW rule", i, describe(l7)))
		}
	}
	if err := p.Validate(); err != nil {
		return fail(err)
	}
	if dropped {
		p.Rules = kept
		if len(kept) == 0 {
			warnings = append(warnings, "no rule left after dropping the L7 rules: at L4 this ALLOW policy allows nothing")
		}
		if err := p.Validate(); err != nil { // cannot fail: fewer valid rules
			return fail(err)
		}
	}
	return p, warnings, nil
}

// PeerAuthToRBAC converts a PeerAuthentication. It returns a nil
// PeerAuthentication (and no error) when the object sets nothing: its
// mode is unset or UNSET (the workloads inherit from the next less
// specific scope), or it has a selector in the root namespace (ignored, as
// in Istio, with a warning).
func PeerAuthToRBAC(pa *v1alpha1.PeerAuthentication, rootNamespace string) (*rbac.PeerAuthentication, []string, error) {
	if pa == nil {
		return nil, nil, errors.New("kubepolicy: nil PeerAuthentication")
	}
	root := rootOr(rootNamespace)
	sel := selectorOf(pa.Spec.Selector)
	if len(sel) > 0 && pa.Namespace == root {
		return nil, []string{fmt.Sprintf("ignored: a PeerAuthentication with a selector in the root namespace %s has no effect (as in Istio)", root)}, nil
	}
	var mode v1alpha1.MTLSMode
	if pa.Spec.MTLS != nil {
		mode = pa.Spec.MTLS.Mode
	}
	if mode == "" || mode == v1alpha1.MTLSModeUnset {
		return nil, nil, nil
	}
	out := &rbac.PeerAuthentication{
		Name:      pa.Name,
		Namespace: pa.Namespace,
		Mode:      rbac.Mode(mode),
	}
	out.Scope, out.Selector = scopeOf(pa.Namespace, root, sel)
	if err := out.Validate(); err != nil {
		return nil, nil, fmt.Errorf("kubepolicy: PeerAuthentication %s/%s: %w", pa.Namespace, pa.Name, err)
	}
	return out, nil, nil
}

func rootOr(ns string) string {
	if ns == "" {
		return v1alpha1.RootNamespace
	}
	return ns
}

func selectorOf(s *v1alpha1.WorkloadSelector) map[string]string {
	if s == nil || len(s.MatchLabels) == 0 {
		return nil
	}
	return s.MatchLabels
}

func scopeOf(ns, root string, sel map[string]string) (rbac.Scope, map[string]string) {
	switch {
	case len(sel) > 0:
		return rbac.ScopeWorkload, maps.Clone(sel)
	case ns == root:
		return rbac.ScopeMesh, nil
	}
	return rbac.ScopeNamespace, nil
}

// l7Fields lists the L7 fields r sets, as paths under at.
func l7Fields(r *v1alpha1.Rule, at string) []string {
	var out []string
	add := func(set bool, path string) {
		if set {
			out = append(out, path)
		}
	}
	for j := range r.From {
		s := &r.From[j].Source
		p := fmt.Sprintf("%s.from[%d].source.", at, j)
		add(len(s.RequestPrincipals) > 0, p+"requestPrincipals")
		add(len(s.NotRequestPrincipals) > 0, p+"notRequestPrincipals")
		add(len(s.RemoteIPBlocks) > 0, p+"remoteIpBlocks")
		add(len(s.NotRemoteIPBlocks) > 0, p+"notRemoteIpBlocks")
	}
	for j := range r.To {
		o := &r.To[j].Operation
		p := fmt.Sprintf("%s.to[%d].operation.", at, j)
		add(len(o.Hosts) > 0, p+"hosts")
		add(len(o.NotHosts) > 0, p+"notHosts")
		add(len(o.Methods) > 0, p+"methods")
		add(len(o.NotMethods) > 0, p+"notMethods")
		add(len(o.Paths) > 0, p+"paths")
		add(len(o.NotPaths) > 0, p+"notPaths")
	}
	add(len(r.When) > 0, at+".when")
	return out
}

func describe(fields []string) string {
	if len(fields) == 1 {
		return "L7 field " + fields[0]
	}
	return "L7 fields " + strings.Join(fields, ", ")
}

// convertRule keeps the L4 fields of r. A source (operation) left with no
// field matches every peer (port), and so does the whole from (to) list.
func convertRule(r *v1alpha1.Rule, i int) (rbac.Rule, error) {
	var out rbac.Rule
	anyPeer := false
	for j := range r.From {
		s := &r.From[j].Source
		at := fmt.Sprintf("rules[%d].from[%d].source", i, j)
		rs := rbac.Source{
			Principals:         strs(s.Principals),
			NotPrincipals:      strs(s.NotPrincipals),
			Namespaces:         strs(s.Namespaces),
			NotNamespaces:      strs(s.NotNamespaces),
			ServiceAccounts:    strs(s.ServiceAccounts),
			NotServiceAccounts: strs(s.NotServiceAccounts),
		}
		var err error
		if rs.SourceIPs, err = prefixes(s.IPBlocks, at+".ipBlocks"); err != nil {
			return out, err
		}
		if rs.NotSourceIPs, err = prefixes(s.NotIPBlocks, at+".notIpBlocks"); err != nil {
			return out, err
		}
		if rs.IsEmpty() && hasL7Source(s) {
			anyPeer = true
			continue
		}
		out.From = append(out.From, rs)
	}
	if anyPeer {
		out.From = nil
	}
	anyPort := false
	for j := range r.To {
		o := &r.To[j].Operation
		at := fmt.Sprintf("rules[%d].to[%d].operation", i, j)
		var ro rbac.Operation
		var err error
		if ro.Ports, err = ports(o.Ports, at+".ports"); err != nil {
			return out, err
		}
		if ro.NotPorts, err = ports(o.NotPorts, at+".notPorts"); err != nil {
			return out, err
		}
		if ro.IsEmpty() && hasL7Operation(o) {
			anyPort = true
			continue
		}
		out.To = append(out.To, ro)
	}
	if anyPort {
		out.To = nil
	}
	return out, nil
}

func hasL7Source(s *v1alpha1.Source) bool {
	return len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) > 0
}

func hasL7Operation(o *v1alpha1.Operation) bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0
}

func strs[S ~string](in []S) []string {
	if len(in) == 0 {
		return nil
	}
	out := make([]string, len(in))
	for i, v := range in {
		out[i] = string(v)
	}
	return out
}

func ports(in []v1alpha1.Port, at string) ([]uint16, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]uint16, len(in))
	for k, v := range in {
		if v < 1 || v > 65535 {
			return nil, fmt.Errorf("%s[%d]: %d is not a port (want 1-65535): %w", at, k, v, rbac.ErrInvalidPort)
		}
		out[k] = uint16(v)
	}
	return out, nil
}

// prefixes parses IP blocks as the configuration file does: a single
// address is a full-length prefix, an IPv4-mapped IPv6 address or prefix
// becomes IPv4, and host bits are cleared.
func prefixes(in []v1alpha1.IPBlock, at string) ([]netip.Prefix, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, len(in))
	for k, b := range in {
		p, err := parseBlock(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not an IP address or CIDR prefix: %w", at, k, string(b), rbac.ErrInvalidPrefix)
		}
		out[k] = p
	}
	return out, nil
}

func parseBlock(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if ip.Zone() != "" {
			return netip.Prefix{}, errors.New("zone")
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}
