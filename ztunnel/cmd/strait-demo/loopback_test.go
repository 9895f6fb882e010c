package main

import (
	"path/filepath"
	"testing"
)

// TestDemo runs what `make demo` runs without root; run's own checks fail it when a
// tunnel does not carry bytes or a refusal does not happen. The second run
// reloads the root written by the first.
func TestDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	for i := 0; i < 2; i++ {
		if err := runLoopback(dir, 50); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
}
