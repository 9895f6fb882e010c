package rbac

import (
	"errors"
	"fmt"
	"maps"
)

// Mode is a PeerAuthentication mTLS mode.
type Mode string

// Modes.
const (
	// ModeStrict: only mTLS (HBONE) connections are accepted.
	ModeStrict Mode = "STRICT"
	// ModePermissive: plaintext is accepted too. The default.
	ModePermissive Mode = "PERMISSIVE"
)

// AllowsPlaintext reports whether m lets plaintext connections in. Any mode
// other than PERMISSIVE is treated as STRICT.
func (m Mode) AllowsPlaintext() bool { return m == ModePermissive }

// PeerAuthentication sets the mTLS mode of the workloads it applies to.
type PeerAuthentication struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Scope     Scope             `json:"scope"`
	Selector  map[string]string `json:"selector,omitempty"`
	Mode      Mode              `json:"mode"`
}

// Key returns "namespace/name" ("name" when the namespace is empty).
func (pa *PeerAuthentication) Key() string { return policyKey(pa.Namespace, pa.Name) }

// AppliesTo reports whether pa applies to a workload in namespace ns with
// the given labels.
func (pa *PeerAuthentication) AppliesTo(ns string, labels map[string]string) bool {
	return appliesTo(pa.Scope, pa.Namespace, pa.Selector, ns, labels)
}

// Clone returns a deep copy of pa.
func (pa *PeerAuthentication) Clone() *PeerAuthentication {
	if pa == nil {
		return nil
	}
	c := *pa
	c.Selector = maps.Clone(pa.Selector)
	return &c
}

// Validate checks pa and returns every problem found, joined.
func (pa *PeerAuthentication) Validate() error {
	if pa == nil {
		return fmt.Errorf("rbac: nil peer authentication: %w", ErrInvalidPolicy)
	}
	var errs []error
	add := func(field string, err error) {
		errs = append(errs, fmt.Errorf("rbac: peer authentication %q: %s: %w", pa.Key(), field, err))
	}
	if pa.Name == "" {
		add("name", fmt.Errorf("is empty: %w", ErrInvalidPolicy))
	}
	if err := checkScope(pa.Scope, pa.Namespace, pa.Selector); err != nil {
		add("scope", err)
	}
	switch pa.Mode {
	case ModeStrict, ModePermissive:
	case "":
		add("mode", fmt.Errorf("is empty (want STRICT or PERMISSIVE): %w", ErrInvalidMode))
	default:
		add("mode", fmt.Errorf("unknown mode %q (want STRICT or PERMISSIVE): %w", pa.Mode, ErrInvalidMode))
	}
	return errors.Join(errs...)
}

func scopeRank(s Scope) int {
	switch s {
	case ScopeWorkload:
		return 3
	case ScopeNamespace:
		return 2
	}
	return 1 // mesh, and an unknown scope: least specific
}

// ResolveMode returns the mode of a workload given the PeerAuthentications
// that apply to it (already filtered, see [PeerAuthentication.AppliesTo]).
// The most specific scope wins (workload > namespace > mesh); among several
// of that scope STRICT wins (the stricter choice, where Istio picks the
// oldest); a mode other than PERMISSIVE counts as STRICT. With none, the
// mode is PERMISSIVE. Nil entries are ignored.
func ResolveMode(pas []*PeerAuthentication) Mode {
	best, mode := 0, ModePermissive
	for _, pa := range pas {
		if pa == nil {
			continue
		}
		m := ModeStrict
		if pa.Mode == ModePermissive {
			m = ModePermissive
		}
		switch r := scopeRank(pa.Scope); {
		case r > best:
			best, mode = r, m
		case r == best && m == ModeStrict:
			mode = ModeStrict
		}
	}
	return mode
}
