//go:build !race

// Allocation budgets are built only without the race detector, under which
// sync.Pool drops items at random; make test runs them in a separate pass.

package h2

import (
	"io"
	"testing"
)

// TestAllocBudgetSteadyCopy: moving bytes through an open stream must not
// allocate in our code. The budget allows x/net's Framer, which allocates
// one WindowUpdateFrame per WINDOW_UPDATE read (about one per MiB with
// HBONE's windows).
func TestAllocBudgetSteadyCopy(t *testing.T) {
	cc, _, streams := pair(t, Config{}, Config{})
	cs, ss := open(t, cc, streams)
	done := make(chan struct{})
	go func() {
		ss.WriteTo(io.Discard)
		close(done)
	}()
	buf := make([]byte, 1<<20)
	for i := 0; i < 16; i++ { // warm pools and windows
		cs.Write(buf)
	}
	allocs := testing.AllocsPerRun(64, func() {
		if _, err := cs.Write(buf); err != nil {
			t.Fatal(err)
		}
	})
	cs.CloseWrite()
	<-done
	t.Logf("%.2f allocs per MiB", allocs)
	if allocs > 2 {
		t.Fatalf("%.2f allocs per MiB copied, budget 2 (x/net WINDOW_UPDATE parsing only)", allocs)
	}
}
