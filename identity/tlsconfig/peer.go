package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"runtime"
	"sync"
	"weak"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// PeerID returns the verified SPIFFE ID of the peer of a completed handshake.
//
// When Go itself verified the chain, the ID comes from VerifiedChains[0][0].
// Configurations from this package cannot use Go's verifier (the client
// sends no SNI, which Go only permits with InsecureSkipVerify, and the
// server verifies against a SPIFFE bundle), so Go leaves VerifiedChains
// empty; their VerifyConnection hook instead records the peer leaf as
// verified after go-spiffe's chain verification and authorization
// succeeded, and PeerID uses that leaf. A connection state whose leaf was
// verified by neither gets ErrUnverifiedPeer: PeerID never returns an ID
// read from an unverified certificate.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if !cs.HandshakeComplete {
		return spiffeid.ID{}, fmt.Errorf("tlsconfig: peer id: handshake not complete: %w", ErrUnverifiedPeer)
	}
	var leaf *x509.Certificate
	switch {
	case len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0:
		leaf = cs.VerifiedChains[0][0]
	case len(cs.PeerCertificates) == 0:
		return spiffeid.ID{}, fmt.Errorf("tlsconfig: peer id: %w", ErrNoPeerCertificate)
	case isVerified(cs.PeerCertificates[0]):
		leaf = cs.PeerCertificates[0]
	default:
		return spiffeid.ID{}, fmt.Errorf("tlsconfig: peer id: connection was not verified by an identity/tlsconfig configuration: %w", ErrUnverifiedPeer)
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("tlsconfig: peer id: %w", err)
	}
	return id, nil
}

// verified holds weak pointers to peer leaf certificates that a
// configuration of this package has verified. Entries are removed when the
// certificate is garbage collected, so the set only holds live connections'
// leaves.
var verified sync.Map // weak.Pointer[x509.Certificate] -> struct{}

func markVerified(leaf *x509.Certificate) {
	wp := weak.Make(leaf)
	if _, loaded := verified.LoadOrStore(wp, struct{}{}); !loaded {
		runtime.AddCleanup(leaf, func(wp weak.Pointer[x509.Certificate]) { verified.Delete(wp) }, wp)
	}
}

func isVerified(leaf *x509.Certificate) bool {
	_, ok := verified.Load(weak.Make(leaf))
	return ok
}
