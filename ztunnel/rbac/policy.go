package rbac

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Action is what a matching policy does: "ALLOW" or "DENY".
type Action string

// Actions.
const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// Scope says which workloads a policy applies to.
type Scope string

// Scopes, from the least to the most specific.
const (
	// ScopeMesh: every workload in the mesh.
	ScopeMesh Scope = "mesh"
	// ScopeNamespace: every workload in the policy's namespace.
	ScopeNamespace Scope = "namespace"
	// ScopeWorkload: the workloads in the policy's namespace whose labels
	// include every Selector label.
	ScopeWorkload Scope = "workload"
)

// Sentinel errors; every error from Validate and the Check functions wraps
// one of them.
var (
	ErrInvalidPolicy  = errors.New("invalid policy")
	ErrInvalidAction  = errors.New("invalid action")
	ErrInvalidScope   = errors.New("invalid scope")
	ErrInvalidMode    = errors.New("invalid mode")
	ErrInvalidPattern = errors.New("invalid match value")
	ErrInvalidPort    = errors.New("invalid port")
	ErrInvalidPrefix  = errors.New("invalid IP prefix")
	ErrEmptyMatch     = errors.New("empty match")
	ErrNoRules        = errors.New("DENY policy without rules")
)

// Policy is an L4 authorization policy.
type Policy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Scope     Scope  `json:"scope"`
	// Selector picks workloads by label (all must be present and equal);
	// only for ScopeWorkload.
	Selector map[string]string `json:"selector,omitempty"`
	Action   Action            `json:"action"`
	// Rules: the policy matches when any rule matches; no rules match
	// nothing.
	Rules []Rule `json:"rules"`

	// key is Namespace/Name, recorded by Validate so that Evaluate can name
	// the deciding policy without allocating.
	key string
}

// Rule matches when (From is empty or any Source matches) and (To is empty
// or any Operation matches).
type Rule struct {
	From []Source    `json:"from,omitempty"`
	To   []Operation `json:"to,omitempty"`
}

// Source describes the peer. Every field that is set must match; within a
// field any value may match; a Not* field must match none of its values.
// See the package documentation for the value forms and for peers without
// an identity. In JSON the IP fields use Istio's names, ipBlocks and
// notIpBlocks, as the configuration file does.
type Source struct {
	Principals         []string       `json:"principals,omitempty"`
	NotPrincipals      []string       `json:"notPrincipals,omitempty"`
	Namespaces         []string       `json:"namespaces,omitempty"`
	NotNamespaces      []string       `json:"notNamespaces,omitempty"`
	ServiceAccounts    []string       `json:"serviceAccounts,omitempty"`
	NotServiceAccounts []string       `json:"notServiceAccounts,omitempty"`
	SourceIPs          []netip.Prefix `json:"ipBlocks,omitempty"`
	NotSourceIPs       []netip.Prefix `json:"notIpBlocks,omitempty"`
}

// Operation describes the destination side of the connection.
type Operation struct {
	Ports    []uint16 `json:"ports,omitempty"`
	NotPorts []uint16 `json:"notPorts,omitempty"`
}

// IsEmpty reports whether s sets no field (it would match every peer).
func (s *Source) IsEmpty() bool {
	return len(s.Principals) == 0 && len(s.NotPrincipals) == 0 &&
		len(s.Namespaces) == 0 && len(s.NotNamespaces) == 0 &&
		len(s.ServiceAccounts) == 0 && len(s.NotServiceAccounts) == 0 &&
		len(s.SourceIPs) == 0 && len(s.NotSourceIPs) == 0
}

// IsEmpty reports whether o sets no field.
func (o *Operation) IsEmpty() bool {
	return len(o.Ports) == 0 && len(o.NotPorts) == 0
}

// Key returns "namespace/name" ("name" when the namespace is empty), the
// name a [Decision] reports.
func (p *Policy) Key() string {
	if p.key != "" {
		return p.key
	}
	return policyKey(p.Namespace, p.Name)
}

func policyKey(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// AppliesTo reports whether p applies to a workload in namespace ns with
// the given labels. A policy with an unknown scope applies to nothing.
func (p *Policy) AppliesTo(ns string, labels map[string]string) bool {
	return appliesTo(p.Scope, p.Namespace, p.Selector, ns, labels)
}

func appliesTo(scope Scope, pns string, sel map[string]string, ns string, labels map[string]string) bool {
	switch scope {
	case ScopeMesh:
		return true
	case ScopeNamespace:
		return pns == ns
	case ScopeWorkload:
		return pns == ns && SelectorMatches(sel, labels)
	}
	return false
}

// SelectorMatches reports whether labels has every key of sel with the same
// value. An empty selector matches nothing: an empty workload selector is a
// configuration mistake, not "everything".
func SelectorMatches(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// Clone returns a deep copy of p (validation state included).
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	c := *p
	c.Selector = maps.Clone(p.Selector)
	if p.Rules != nil {
		c.Rules = make([]Rule, len(p.Rules))
		for i, r := range p.Rules {
			c.Rules[i] = r.clone()
		}
	}
	return &c
}

func (r Rule) clone() Rule {
	var c Rule
	if r.From != nil {
		c.From = make([]Source, len(r.From))
		for i, s := range r.From {
			c.From[i] = Source{
				Principals:         slices.Clone(s.Principals),
				NotPrincipals:      slices.Clone(s.NotPrincipals),
				Namespaces:         slices.Clone(s.Namespaces),
				NotNamespaces:      slices.Clone(s.NotNamespaces),
				ServiceAccounts:    slices.Clone(s.ServiceAccounts),
				NotServiceAccounts: slices.Clone(s.NotServiceAccounts),
				SourceIPs:          slices.Clone(s.SourceIPs),
				NotSourceIPs:       slices.Clone(s.NotSourceIPs),
			}
		}
	}
	if r.To != nil {
		c.To = make([]Operation, len(r.To))
		for i, o := range r.To {
			c.To[i] = Operation{Ports: slices.Clone(o.Ports), NotPorts: slices.Clone(o.NotPorts)}
		}
	}
	return c
}

// Validate checks p and returns every problem found, joined; each error
// names the policy and the offending field and wraps one of the package's
// sentinel errors. A valid policy also records its key so that [Evaluate]
// can report it without allocating; validate a policy before sharing it
// between goroutines.
func (p *Policy) Validate() error {
	if p == nil {
		return fmt.Errorf("rbac: nil policy: %w", ErrInvalidPolicy)
	}
	key := policyKey(p.Namespace, p.Name)
	var errs []error
	add := func(field string, err error) {
		errs = append(errs, fmt.Errorf("rbac: policy %q: %s: %w", key, field, err))
	}
	if p.Name == "" {
		add("name", fmt.Errorf("is empty: %w", ErrInvalidPolicy))
	}
	if err := checkScope(p.Scope, p.Namespace, p.Selector); err != nil {
		add("scope", err)
	}
	switch p.Action {
	case ActionAllow:
	case ActionDeny:
		if len(p.Rules) == 0 {
			add("rules", fmt.Errorf("a DENY policy with no rules matches nothing (it does not mean \"deny all\"); "+
				"to deny every connection write one empty rule (rules: [{}]): %w", ErrNoRules))
		}
	case "":
		add("action", fmt.Errorf("is empty (want ALLOW or DENY): %w", ErrInvalidAction))
	default:
		add("action", fmt.Errorf("unknown action %q (want ALLOW or DENY): %w", p.Action, ErrInvalidAction))
	}
	for i, r := range p.Rules {
		for j := range r.From {
			s := &r.From[j]
			at := fmt.Sprintf("rules[%d].from[%d]", i, j)
			if s.IsEmpty() {
				add(at, fmt.Errorf("source sets no field (leave from out to match every peer): %w", ErrEmptyMatch))
			}
			for _, f := range []struct {
				name  string
				vals  []string
				check func(string) error
			}{
				{"principals", s.Principals, checkPrincipal},
				{"notPrincipals", s.NotPrincipals, checkPrincipal},
				{"namespaces", s.Namespaces, checkNamespace},
				{"notNamespaces", s.NotNamespaces, checkNamespace},
				{"serviceAccounts", s.ServiceAccounts, checkServiceAccount},
				{"notServiceAccounts", s.NotServiceAccounts, checkServiceAccount},
			} {
				for k, v := range f.vals {
					if err := f.check(v); err != nil {
						add(fmt.Sprintf("%s.%s[%d]", at, f.name, k), err)
					}
				}
			}
			for _, f := range []struct {
				name string
				ps   []netip.Prefix
			}{{"sourceIPs", s.SourceIPs}, {"notSourceIPs", s.NotSourceIPs}} {
				for k, pf := range f.ps {
					if !pf.IsValid() {
						add(fmt.Sprintf("%s.%s[%d]", at, f.name, k), fmt.Errorf("is not a valid prefix: %w", ErrInvalidPrefix))
					}
				}
			}
		}
		for j := range r.To {
			o := &r.To[j]
			at := fmt.Sprintf("rules[%d].to[%d]", i, j)
			if o.IsEmpty() {
				add(at, fmt.Errorf("operation sets no field (leave to out to match every port): %w", ErrEmptyMatch))
			}
			for k, port := range o.Ports {
				if port == 0 {
					add(fmt.Sprintf("%s.ports[%d]", at, k), fmt.Errorf("0 is not a port (want 1-65535): %w", ErrInvalidPort))
				}
			}
			for k, port := range o.NotPorts {
				if port == 0 {
					add(fmt.Sprintf("%s.notPorts[%d]", at, k), fmt.Errorf("0 is not a port (want 1-65535): %w", ErrInvalidPort))
				}
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if p.key != key {
		p.key = key // written once; re-validating an unchanged policy writes nothing
	}
	return nil
}

func checkScope(scope Scope, ns string, sel map[string]string) error {
	switch scope {
	case ScopeMesh:
		if len(sel) > 0 {
			return fmt.Errorf("mesh scope takes no selector: %w", ErrInvalidScope)
		}
	case ScopeNamespace:
		if ns == "" {
			return fmt.Errorf("namespace scope needs a namespace: %w", ErrInvalidScope)
		}
		if len(sel) > 0 {
			return fmt.Errorf("namespace scope takes no selector (use workload scope): %w", ErrInvalidScope)
		}
	case ScopeWorkload:
		if ns == "" {
			return fmt.Errorf("workload scope needs a namespace: %w", ErrInvalidScope)
		}
		if len(sel) == 0 {
			return fmt.Errorf("workload scope needs a non-empty selector: %w", ErrInvalidScope)
		}
		for k := range sel {
			if k == "" {
				return fmt.Errorf("selector has an empty label name: %w", ErrInvalidScope)
			}
		}
	case "":
		return fmt.Errorf("is empty (want mesh, namespace or workload): %w", ErrInvalidScope)
	default:
		return fmt.Errorf("unknown scope %q (want mesh, namespace or workload): %w", scope, ErrInvalidScope)
	}
	return nil
}

const spiffeScheme = "spiffe://"

// CheckPrincipal validates one Principals/NotPrincipals value: "*", an
// exact SPIFFE id, a prefix ending in "*" or a suffix starting with "*",
// with or without the "spiffe://" scheme.
func CheckPrincipal(v string) error { return prefixed(checkPrincipal(v)) }

// CheckNamespace validates one Namespaces/NotNamespaces value: "*", an
// exact namespace name (a DNS-1123 label), a prefix ending in "*" or a
// suffix starting with "*".
func CheckNamespace(v string) error { return prefixed(checkNamespace(v)) }

// CheckServiceAccount validates one ServiceAccounts/NotServiceAccounts
// value: exactly "<namespace>/<serviceaccount>", no wildcards.
func CheckServiceAccount(v string) error { return prefixed(checkServiceAccount(v)) }

func prefixed(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("rbac: %w", err)
}

func checkPrincipal(v string) error {
	_, kind, err := splitWildcard(v)
	if err != nil {
		return fmt.Errorf("principal %q %s: %w", v, err.Error(), ErrInvalidPattern)
	}
	if kind == matchExact {
		full := v
		if !strings.HasPrefix(full, spiffeScheme) {
			full = spiffeScheme + full
		}
		if _, err := spiffeid.FromString(full); err != nil {
			return fmt.Errorf("principal %q is not a SPIFFE id (want spiffe://<trust-domain>/ns/<ns>/sa/<sa>): %w: %w", v, ErrInvalidPattern, err)
		}
	}
	return nil
}

func checkNamespace(v string) error {
	body, kind, err := splitWildcard(v)
	if err != nil {
		return fmt.Errorf("namespace %q %s: %w", v, err.Error(), ErrInvalidPattern)
	}
	if kind == matchExact {
		if !isDNSLabel(body) {
			return fmt.Errorf("namespace %q is not a namespace name (want a DNS-1123 label: a-z, 0-9 and '-', at most 63): %w", v, ErrInvalidPattern)
		}
		return nil
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("namespace %q has invalid character %q: %w", v, c, ErrInvalidPattern)
		}
	}
	return nil
}

func checkServiceAccount(v string) error {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok || strings.Contains(sa, "/") {
		return fmt.Errorf("service account %q: want <namespace>/<serviceaccount>: %w", v, ErrInvalidPattern)
	}
	if strings.Contains(v, "*") {
		return fmt.Errorf("service account %q: wildcards are not supported here (use principals): %w", v, ErrInvalidPattern)
	}
	if !isDNSLabel(ns) {
		return fmt.Errorf("service account %q: namespace %q is not a DNS-1123 label: %w", v, ns, ErrInvalidPattern)
	}
	if !isDNSSubdomain(sa) {
		return fmt.Errorf("service account %q: name %q is not a DNS-1123 subdomain: %w", v, sa, ErrInvalidPattern)
	}
	return nil
}

type matchKind uint8

const (
	matchExact matchKind = iota
	matchPrefix
	matchSuffix
	matchAny
)

// splitWildcard classifies a pattern; the error text is a phrase ("is
// empty", ...) to embed in a message.
func splitWildcard(v string) (string, matchKind, error) {
	switch {
	case v == "":
		return "", 0, errors.New("is empty")
	case v == "*":
		return "", matchAny, nil
	case strings.ContainsAny(v, " \t\r\n"):
		return "", 0, errors.New("contains white space")
	}
	n := strings.Count(v, "*")
	switch {
	case n == 0:
		return v, matchExact, nil
	case n > 1:
		return "", 0, errors.New("has more than one '*' (only a leading or a trailing '*' is supported)")
	case v[0] == '*':
		return v[1:], matchSuffix, nil
	case v[len(v)-1] == '*':
		return v[:len(v)-1], matchPrefix, nil
	}
	return "", 0, errors.New("has '*' in the middle (only a leading or a trailing '*' is supported)")
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}
