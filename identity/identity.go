package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them, so callers can branch with errors.Is.
var (
	// ErrInvalidTrustDomain: the trust domain is empty or not a bare SPIFFE
	// trust domain name (lowercase letters, digits, '.', '-', '_').
	ErrInvalidTrustDomain = errors.New("invalid trust domain")
	// ErrInvalidNamespace: the namespace is not a DNS-1123 label.
	ErrInvalidNamespace = errors.New("invalid namespace")
	// ErrInvalidServiceAccount: the service account is not a DNS-1123 subdomain.
	ErrInvalidServiceAccount = errors.New("invalid service account")
	// ErrInvalidSPIFFEID: the string is not a syntactically valid SPIFFE ID.
	ErrInvalidSPIFFEID = errors.New("invalid SPIFFE ID")
	// ErrInvalidPath: the SPIFFE ID is valid but its path is not
	// /ns/<namespace>/sa/<serviceaccount>.
	ErrInvalidPath = errors.New("path must be /ns/<namespace>/sa/<serviceaccount>")
)

const (
	// maxLabelLen is the DNS-1123 label limit (Kubernetes namespace names).
	maxLabelLen = 63
	// maxSubdomainLen is the DNS-1123 subdomain limit (service account names).
	maxSubdomainLen = 253
)

// ID is a workload identity: spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
//
// The zero ID is "no identity". An ID built with a struct literal is not
// checked; use [New], [Parse] or [FromSPIFFEID], or call [ID.Validate].
// ID is comparable and may be used as a map key.
type ID struct {
	TrustDomain    spiffeid.TrustDomain
	Namespace      string
	ServiceAccount string
}

// New builds an ID from its three parts, validating each one. The trust
// domain must be a bare name such as "cluster.local" (not "spiffe://...").
func New(trustDomain, namespace, serviceAccount string) (ID, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return ID{}, fmt.Errorf("identity: %w", err)
	}
	id := ID{TrustDomain: td, Namespace: namespace, ServiceAccount: serviceAccount}
	if err := id.validateParts(); err != nil {
		return ID{}, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}

// Parse parses a SPIFFE ID string of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
func Parse(s string) (ID, error) {
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return ID{}, fmt.Errorf("identity: parse %q: %w: %w", s, ErrInvalidSPIFFEID, err)
	}
	id, err := fromSPIFFEID(sid)
	if err != nil {
		return ID{}, fmt.Errorf("identity: parse %q: %w", s, err)
	}
	return id, nil
}

// FromSPIFFEID converts a SPIFFE ID whose path is exactly
// /ns/<namespace>/sa/<serviceaccount>.
func FromSPIFFEID(sid spiffeid.ID) (ID, error) {
	if sid.IsZero() {
		return ID{}, fmt.Errorf("identity: empty SPIFFE ID: %w", ErrInvalidSPIFFEID)
	}
	id, err := fromSPIFFEID(sid)
	if err != nil {
		return ID{}, fmt.Errorf("identity: parse %q: %w", sid.String(), err)
	}
	return id, nil
}

func fromSPIFFEID(sid spiffeid.ID) (ID, error) {
	// spiffeid has already rejected empty, "." and ".." segments, percent
	// encoding, query, fragment, trailing slashes and bad characters.
	segs := strings.Split(sid.Path(), "/")
	// A path "/ns/a/sa/b" splits into ["", "ns", "a", "sa", "b"].
	if len(segs) != 5 || segs[0] != "" || segs[1] != "ns" || segs[3] != "sa" {
		return ID{}, ErrInvalidPath
	}
	id := ID{TrustDomain: sid.TrustDomain(), Namespace: segs[2], ServiceAccount: segs[4]}
	if err := id.validateParts(); err != nil {
		return ID{}, err
	}
	return id, nil
}

// Validate reports whether every part of id is valid. IDs returned by New,
// Parse and FromSPIFFEID are always valid.
func (id ID) Validate() error {
	if id.TrustDomain.IsZero() {
		return fmt.Errorf("identity: trust domain is empty: %w", ErrInvalidTrustDomain)
	}
	if _, err := parseTrustDomain(id.TrustDomain.Name()); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := id.validateParts(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}

func (id ID) validateParts() error {
	if reason := checkLabel(id.Namespace); reason != "" {
		return fmt.Errorf("namespace %q %s (want a DNS-1123 label: at most %d of a-z, 0-9 and '-', starting and ending with a letter or digit): %w",
			id.Namespace, reason, maxLabelLen, ErrInvalidNamespace)
	}
	if reason := checkSubdomain(id.ServiceAccount); reason != "" {
		return fmt.Errorf("service account %q %s (want a DNS-1123 subdomain: at most %d of a-z, 0-9, '-' and '.', each dot-separated label starting and ending with a letter or digit): %w",
			id.ServiceAccount, reason, maxSubdomainLen, ErrInvalidServiceAccount)
	}
	return nil
}

// SPIFFEID returns spiffe://<td>/ns/<namespace>/sa/<serviceaccount>. It
// returns the zero spiffeid.ID when id is zero or invalid.
func (id ID) SPIFFEID() spiffeid.ID {
	if id.IsZero() || id.validateParts() != nil || id.TrustDomain.IsZero() {
		return spiffeid.ID{}
	}
	sid, err := spiffeid.FromSegments(id.TrustDomain, "ns", id.Namespace, "sa", id.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return sid
}

// String returns the SPIFFE ID as a string, or "" for the zero or an invalid ID.
func (id ID) String() string {
	return id.SPIFFEID().String()
}

// IsZero reports whether id is the zero ID (no identity).
func (id ID) IsZero() bool {
	return id == ID{}
}

// parseTrustDomain accepts only a bare trust domain name.
func parseTrustDomain(s string) (spiffeid.TrustDomain, error) {
	if s == "" {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain is empty: %w", ErrInvalidTrustDomain)
	}
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: %w: %w", s, ErrInvalidTrustDomain, err)
	}
	if td.Name() != s {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q must be a bare name such as %q: %w", s, td.Name(), ErrInvalidTrustDomain)
	}
	return td, nil
}

// checkLabel returns "" if s is a DNS-1123 label, else why not.
func checkLabel(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxLabelLen:
		return fmt.Sprintf("is %d characters long", len(s))
	}
	return checkLabelChars(s)
}

func checkLabelChars(s string) string {
	if s == "" {
		return "has an empty label"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 {
				return "starts or ends with '-'"
			}
		default:
			return fmt.Sprintf("has invalid character %q at offset %d", c, i)
		}
	}
	return ""
}

// checkSubdomain returns "" if s is a DNS-1123 subdomain, else why not.
func checkSubdomain(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxSubdomainLen:
		return fmt.Sprintf("is %d characters long", len(s))
	}
	for label := range strings.SplitSeq(s, ".") {
		if reason := checkLabelChars(label); reason != "" {
			if strings.Contains(reason, "offset") {
				// Report offsets relative to the whole name.
				for i := 0; i < len(s); i++ {
					if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
						return fmt.Sprintf("has invalid character %q at offset %d", c, i)
					}
				}
			}
			return reason
		}
	}
	return ""
}
