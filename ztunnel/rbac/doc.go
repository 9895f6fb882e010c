// Package rbac is the node proxy's L4 authorization: the policy model
// (Istio's AuthorizationPolicy and PeerAuthentication reduced to what a
// TCP proxy can see) and its evaluation for one connection.
//
// # Model
//
// A [Policy] has a [Scope] (mesh, namespace, or workload with a label
// Selector), an [Action] (ALLOW or DENY) and [Rule]s. A rule matches when
// (From is empty or any [Source] matches) and (To is empty or any
// [Operation] matches). Within a Source or Operation every field that is
// set must match (AND); within a field any value may match (OR); a Not*
// field matches when none of its values does. A policy with no rules
// matches nothing, as in Istio: an ALLOW policy without rules is the
// "allow nothing" idiom, and [Policy.Validate] refuses a DENY policy
// without rules because it would never deny anything (write one empty rule,
// rules: [{}], to deny everything).
//
// Principals are SPIFFE ids. A value may be exact
// ("spiffe://cluster.local/ns/shop/sa/frontend"), a prefix
// ("spiffe://cluster.local/ns/shop/*"), a suffix ("*/sa/frontend"), or "*"
// (any authenticated peer). Istio's scheme-less form
// ("cluster.local/ns/shop/sa/frontend", "cluster.local/ns/shop/*") is
// accepted too and compared with the peer id without "spiffe://".
// Namespaces take the same exact/prefix/suffix/"*" forms and are compared with
// the namespace in the peer id's path /ns/<ns>/sa/<sa>. ServiceAccounts are
// exact "<namespace>/<serviceaccount>" pairs. Namespaces and service
// accounts are compared regardless of trust domain (the HBONE server only
// accepts peers of its own trust domain); pin the trust domain with a
// principal when it matters. SourceIPs are CIDR prefixes; an IPv4-mapped
// IPv6 source address is compared as IPv4.
//
// # Evaluation
//
// [Evaluate] takes the policies that apply to the destination workload and
// decides, in Istio's order (docs/hbone.md, "handler: policy denies"):
//
//  1. any DENY policy matches: deny;
//  2. no ALLOW policy is present: allow;
//  3. any ALLOW policy matches: allow;
//  4. otherwise deny ("no ALLOW policy matched").
//
// A policy whose Action is neither ALLOW nor DENY (it did not pass
// Validate) is evaluated as DENY, so a broken policy fails closed.
// Evaluate does not allocate when its policies have been validated.
//
// # Peers without an identity (plaintext) — the choice we made
//
// A plaintext connection has no identity, so its principal, namespace and
// service account are unknown; the same holds for the namespace and
// service account of a peer whose SPIFFE path is not /ns/<ns>/sa/<sa>, and
// for the source address when Connection.SrcIP is the zero Addr. For an
// unknown attribute:
//
//   - a positive field (Principals, Namespaces, ServiceAccounts, SourceIPs)
//     never matches;
//   - a negated field (NotPrincipals, NotNamespaces, NotServiceAccounts,
//     NotSourceIPs) does not match in an ALLOW policy, and does match in a
//     DENY policy.
//
// Both halves give the unknown peer the more restrictive outcome. In an
// ALLOW policy, "notNamespaces: [foo]" does not let a plaintext client from
// foo in (Istio compares Not* fields with an empty string and does let it
// in; see ISTIO-SECURITY-2021-004). In a DENY policy, Istio's recipe for
// refusing plaintext, "from: [{notPrincipals: ['*']}]", still denies a
// plaintext connection, as it does in Istio. Refusing plaintext outright is
// otherwise the job of a STRICT [PeerAuthentication] ([ResolveMode]).
package rbac
