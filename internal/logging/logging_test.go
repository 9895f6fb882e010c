package logging

import "testing"

func TestNew(t *testing.T) {
	log, lvl, err := New("warn")
	if err != nil || log == nil || lvl.String() != "warn" {
		t.Fatalf("New(warn) = %v, %v, %v", log, lvl, err)
	}
	if log.Core().Enabled(-1) { // debug
		t.Error("debug enabled at warn")
	}
	lvl.SetLevel(-1)
	if !log.Core().Enabled(-1) {
		t.Error("the atomic level does not control the logger")
	}
	if _, _, err := New("loud"); err == nil {
		t.Error("level loud accepted")
	}
}
