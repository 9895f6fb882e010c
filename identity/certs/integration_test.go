package certs_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/certs"
	"github.com/strait-mesh/strait/identity/identitytest"
	"github.com/strait-mesh/strait/identity/tlsconfig"
)

// TestManagerFeedsTLSConfigs wires a Manager into production TLS
// configurations: the client's certificate comes from SVIDFunc (fetched on
// the first handshake, bounded by its context), the server's from Source,
// and a Forget+Get rotation is picked up without rebuilding either config.
func TestManagerFeedsTLSConfigs(t *testing.T) {
	authority := identitytest.New(t, "cluster.local")
	m, err := certs.New(certs.Config{Fetcher: certs.FromCA(authority.CA(), ca.Caller{})})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	clientID, serverID := authority.ID("ns-a", "sa-a"), authority.ID("ns-b", "sa-b")

	client, err := tlsconfig.Client(nil, authority.Bundle(), []spiffeid.ID{serverID}, tlsconfig.WithSVIDFunc(m.SVIDFunc(clientID)))
	if err != nil {
		t.Fatal(err)
	}
	server, err := tlsconfig.Server(m.Source(serverID), authority.Bundle(), authority.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}

	handshake := func() (clientState, serverState tls.ConnectionState) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		cc, sc := tls.Client(c, client), tls.Server(s, server)
		var wg sync.WaitGroup
		var serr error
		wg.Go(func() { serr = sc.HandshakeContext(ctx) })
		if err := cc.HandshakeContext(ctx); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		wg.Wait()
		if serr != nil {
			t.Fatalf("server handshake: %v", serr)
		}
		return cc.ConnectionState(), sc.ConnectionState()
	}

	cs1, ss1 := handshake()
	if id, err := tlsconfig.PeerID(ss1); err != nil || id != clientID {
		t.Errorf("server sees %v, %v; want %v", id, err, clientID)
	}
	if id, err := tlsconfig.PeerID(cs1); err != nil || id != serverID {
		t.Errorf("client sees %v, %v; want %v", id, err, serverID)
	}
	if exp := m.Expiries(); len(exp) != 2 {
		t.Errorf("Expiries = %v, want both identities", exp)
	}

	m.Forget(serverID) // next handshake fetches a new server certificate
	cs2, _ := handshake()
	if cs1.PeerCertificates[0].SerialNumber.Cmp(cs2.PeerCertificates[0].SerialNumber) == 0 {
		t.Error("server certificate did not rotate")
	}
}
