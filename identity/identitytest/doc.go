// Package identitytest provides an in-memory certificate authority for
// tests of packages that speak mesh mTLS.
//
// A [CA] wraps a real identity/ca signer (with an AllowAll authorizer) for
// one trust domain, so ordinary certificates come out of the production
// code path, and its TLS helpers build configurations with
// identity/tlsconfig so tests run exactly the production handshake:
//
//	ca := identitytest.New(t, "cluster.local")
//	srv := ca.ServerTLS(t, "ns-b", "sa-b")
//	cli := ca.ClientTLS(t, "ns-a", "sa-a", ca.ID("ns-b", "sa-b"))
//	expired := ca.Issue(t, "ns", "sa", identitytest.Expired())
//
// Options of [CA.Issue] also produce certificates production never would
// (expired, not yet valid, foreign or malformed URI SANs) for negative
// tests.
package identitytest
