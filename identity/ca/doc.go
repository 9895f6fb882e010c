// Package ca is Strait's certificate authority: it signs X.509 SVIDs for
// workload identities (see package identity) from PKCS#10 certificate
// signing requests.
//
// A [CA] holds a root (and optionally an intermediate) [Issuer] for one
// trust domain and an [Authorizer] that decides which caller may obtain
// which identity. [CA.Sign] accepts only CSRs that carry exactly one URI
// SAN, a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa> in the CA's own
// trust domain, no DNS/IP/email SANs, and an ECDSA P-256 key (RSA keys are
// refused: the mesh uses P-256 only). Each refusal wraps a distinct
// sentinel error so callers can branch with errors.Is.
//
// Issued leaves are ECDSA P-256 X.509 SVIDs with keyUsage digitalSignature,
// extKeyUsage serverAuth+clientAuth, CA=false, an empty subject (the URI SAN
// is then marked critical), NotBefore backdated by a clock-skew allowance
// and NotAfter never beyond the issuing certificate's.
//
// The default Authorizer denies everything: a CA must be told who may ask
// for what ([AllowAll] and [AllowSelf] are provided; the Kubernetes node
// authorizer lives elsewhere).
//
// For local use, [LoadOrCreateFileRoot] keeps a self-signed root in a
// directory (root-cert.pem, root-key.pem with mode 0600).
package ca
