//go:build !race

// Allocation budgets are built only without the race detector (the
// project's convention, see internal/bufpool); make test-allocs runs them.

package rbac

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestEvaluateNoAllocs(t *testing.T) {
	ps := benchPolicies()
	for _, c := range []Connection{
		conn(frontend, "10.1.2.3", 8080),     // allowed by the last policy
		conn(backend, "10.1.2.3", 8080),      // no ALLOW matched
		conn(spiffeid.ID{}, "10.1.2.3", 80),  // plaintext, denied
		conn(admin, "192.0.2.1", 8080),       // first DENY
		conn(oddPath, "::ffff:10.0.0.1", 22), // odd path, mapped address
	} {
		if n := testing.AllocsPerRun(1000, func() { Evaluate(ps, c) }); n != 0 {
			t.Errorf("Evaluate(%v): %.1f allocs, want 0", c, n)
		}
	}
}
