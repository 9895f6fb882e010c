package tlsconfig

import (
	"crypto/x509"
	"runtime"
	"testing"
	"time"
)

func registrySize() int {
	n := 0
	verified.Range(func(any, any) bool { n++; return true })
	return n
}

// TestVerifiedRegistryForgetsCollectedCertificates checks that the set of
// verified leaves does not grow without bound: entries go away once the
// certificate (and so the connection state holding it) is unreachable.
func TestVerifiedRegistryForgetsCollectedCertificates(t *testing.T) {
	before := registrySize()
	func() {
		for range 100 {
			leaf := &x509.Certificate{Raw: make([]byte, 64)}
			markVerified(leaf)
			if !isVerified(leaf) {
				t.Fatal("freshly marked certificate not verified")
			}
		}
	}()
	if isVerified(&x509.Certificate{}) {
		t.Fatal("unmarked certificate reported verified")
	}
	deadline := time.Now().Add(5 * time.Second)
	for registrySize() > before {
		if time.Now().After(deadline) {
			t.Fatalf("registry still holds %d entries (had %d) after GC", registrySize(), before)
		}
		runtime.GC()
		runtime.Gosched()
	}
}
