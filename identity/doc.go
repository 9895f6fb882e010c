// Package identity names workloads in the Strait mesh.
//
// A workload identity is a SPIFFE ID of exactly the form
//
//	spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>
//
// where the namespace is a Kubernetes namespace name (a DNS-1123 label) and
// the service account is a Kubernetes service account name (a DNS-1123
// subdomain). [ID] holds the three parts; [New], [Parse] and [FromSPIFFEID]
// are the only ways to build one that is known to be valid, and they reject
// anything else with an error that names the offending part and wraps one of
// the sentinel errors ([ErrInvalidTrustDomain], [ErrInvalidNamespace],
// [ErrInvalidServiceAccount], [ErrInvalidSPIFFEID], [ErrInvalidPath]).
//
// The sub-packages build on this name: identity/ca signs X.509 SVIDs for it,
// identity/certs keeps them fresh, identity/tlsconfig turns them into mTLS
// configurations and identity/identitytest provides an in-memory CA for tests.
package identity
