package identity

import (
	"errors"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error wraps one of
// the package's sentinels, and that accepted IDs round-trip through String
// and New.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/default",
		"spiffe://td/ns/a/sa/b.c-d",
		"spiffe://td/ns/a/sa/b/c",
		"spiffe://td/ns//sa/b",
		"spiffe://td",
		"",
	} {
		f.Add(s)
	}
	sentinels := []error{ErrInvalidTrustDomain, ErrInvalidNamespace, ErrInvalidServiceAccount, ErrInvalidSPIFFEID, ErrInvalidPath}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("Parse(%q) returned %+v with error %v", s, id, err)
			}
			matched := 0
			for _, sentinel := range sentinels {
				if errors.Is(err, sentinel) {
					matched++
				}
			}
			if matched != 1 {
				t.Fatalf("Parse(%q) error %v wraps %d sentinels, want 1", s, err, matched)
			}
			return
		}
		if got := id.String(); got != s {
			t.Fatalf("Parse(%q).String() = %q", s, got)
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("Parse(%q) returned an invalid ID: %v", s, err)
		}
		again, err := New(id.TrustDomain.Name(), id.Namespace, id.ServiceAccount)
		if err != nil || again != id {
			t.Fatalf("New(parts of %q) = %+v, %v", s, again, err)
		}
	})
}
