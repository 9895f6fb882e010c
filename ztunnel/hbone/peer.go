package hbone

import (
	"crypto/tls"
	"errors"
	"fmt"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// PeerIDFromState returns the SPIFFE id of the verified peer leaf. It
// refuses a connection whose chain was not verified.
func PeerIDFromState(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return spiffeid.ID{}, errors.New("hbone: peer certificate was not verified")
	}
	id, err := x509svid.IDFromCert(cs.VerifiedChains[0][0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("hbone: peer identity: %w", err)
	}
	return id, nil
}

// isFDExhaustion reports accept errors a proxy must survive by waiting:
// out of file descriptors or kernel memory.
func isFDExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
