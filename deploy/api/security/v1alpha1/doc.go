// Package v1alpha1 holds the Go types of the Strait policy custom
// resources, API group security.strait.dev, version v1alpha1:
// [AuthorizationPolicy] (L4 authorization, the shape of Istio's
// AuthorizationPolicy) and [PeerAuthentication] (the mTLS mode).
//
// The CustomResourceDefinitions in deploy/crds are generated from these
// types and their kubebuilder markers (make generate); the API server
// validates objects with the OpenAPI schema and the CEL rules written
// here, so a stored object is well formed. The node proxy turns objects
// into its own policy model with ztunnel/kube/kubepolicy, which also
// reports what the node proxy cannot enforce (L7 fields). This package
// imports nothing from the proxy.
//
// # Scope
//
// Both kinds are namespaced. Without a selector (or with empty
// matchLabels) an object applies to every workload of its namespace; with
// one, to the workloads of its namespace whose labels include every
// matchLabels entry. In the root namespace ([RootNamespace],
// strait-system) an object without a selector applies to the whole mesh,
// as Istio's root-namespace rule. An AuthorizationPolicy with a selector in
// the root namespace would, in Istio, select workloads of every
// namespace; Strait does not support that and the node proxy refuses such
// a policy. A PeerAuthentication with a selector in the root namespace is
// ignored, as in Istio.
//
// +kubebuilder:object:generate=true
// +groupName=security.strait.dev
package v1alpha1
