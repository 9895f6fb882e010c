// Package caserver is the in-cluster Strait CA: an HTTPS+JSON server (the
// contract is in identity/caapi) that signs X.509 SVIDs with identity/ca
// for callers authenticated by their Kubernetes service-account token.
//
// A request is handled in three steps:
//
//  1. Authentication ([TokenReviewer]). The bearer token is checked by a
//     TokenReview with the audience strait-ca. The caller's identity is
//     spiffe://<td>/ns/<ns>/sa/<sa> from the reviewed username
//     system:serviceaccount:<ns>:<sa>, and its node is the review's
//     user.extra authentication.kubernetes.io/node-name, or, for a token
//     bound to a pod without that extra, the spec.nodeName of the bound pod
//     (read from the API server, its uid checked). Positive reviews are
//     cached briefly, keyed by a SHA-256 of the token, never beyond the
//     token's own expiry.
//  2. Authorization ([NodeAuthorizer], an identity/ca Authorizer). A caller
//     may obtain its own identity; only the ztunnel service account may ask
//     for others. Either way the CA signs spiffe://<td>/ns/X/sa/Y only if a
//     pod with service account Y in namespace X is scheduled on the
//     caller's node and has not terminated ([PodCache]: a pod informer
//     indexed by node, and a live List on a miss so a pod scheduled a
//     moment ago is found).
//  3. Signing (identity/ca): CSR checks, TTL capping, issuance.
//
// Outcomes are counted in strait_ca_requests_total{result} and refusals in
// strait_ca_denied_total{reason}; each refusal is logged once at info.
// Tokens are never logged.
//
// [Server] assembles it all for cmd/strait-ca: the root from a Secret and
// the published bundle (identity/caroot), the serving certificate for the
// CA's Service DNS names, /healthz/ready, and metrics on a separate port.
package caserver
