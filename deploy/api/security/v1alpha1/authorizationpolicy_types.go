package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AuthorizationPolicy decides which peers may open connections to the
// workloads it selects. The evaluation is Istio's: a matching DENY policy
// denies; a workload with no ALLOW policy accepts every connection;
// otherwise an ALLOW policy must match.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=straitap,categories=strait
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec AuthorizationPolicySpec `json:"spec"`
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicy.
//
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}

// AuthorizationPolicySpec is what an AuthorizationPolicy selects, does and
// matches.
//
// +kubebuilder:validation:XValidation:rule="!has(self.action) || self.action != 'DENY' || (has(self.rules) && size(self.rules) > 0)",message="a DENY policy needs at least one rule: with none it matches nothing (it does not mean deny all); write rules: [{}] to deny every connection"
type AuthorizationPolicySpec struct {
	// Selector picks the workloads of the policy's namespace by label.
	// Absent, or with empty matchLabels: every workload of the namespace;
	// in the root namespace (strait-system) that means every workload of
	// the mesh.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`

	// Action is ALLOW or DENY.
	// +kubebuilder:validation:Enum=ALLOW;DENY
	// +kubebuilder:default=ALLOW
	// +optional
	Action Action `json:"action,omitempty"`

	// Rules: the policy matches a connection when any rule matches. With no
	// rules an ALLOW policy matches nothing ("allow nothing": the selected
	// workloads refuse every connection); a DENY policy needs at least one
	// rule. A rule with neither from nor to matches every connection.
	//
	// The bounds here and on Rule and Source keep the CEL cost estimates
	// under the API server's limits (10M per rule, 100M per CRD); the
	// Principal rule is at about 93% of its limit. Raise one bound only
	// after lowering another: the CRD test in deploy/crds applies the CRDs
	// to a real API server, which refuses them when over budget.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Rules []Rule `json:"rules,omitempty"`
}

// Action is what a matching AuthorizationPolicy does.
type Action string

// Actions.
const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// Rule matches a connection when (from is absent or empty, or any of its
// sources matches) and (to is absent or empty, or any of its operations
// matches) and every when condition holds.
type Rule struct {
	// From lists the peers the rule matches; absent: every peer.
	// +kubebuilder:validation:MaxItems=4
	// +optional
	From []RuleFrom `json:"from,omitempty"`

	// To lists the destinations the rule matches; absent: every port.
	// +kubebuilder:validation:MaxItems=8
	// +optional
	To []RuleTo `json:"to,omitempty"`

	// When: request conditions (Istio's when). L7, reserved for the
	// waypoint: the node proxy drops an ALLOW rule that has conditions and
	// ignores them in a DENY rule (both stricter).
	// +kubebuilder:validation:MaxItems=16
	// +optional
	When []Condition `json:"when,omitempty"`
}

// RuleFrom wraps a Source, as in Istio.
type RuleFrom struct {
	Source Source `json:"source"`
}

// RuleTo wraps an Operation, as in Istio.
type RuleTo struct {
	Operation Operation `json:"operation"`
}

// Source describes the peer. Every field that is set must match; within a
// field any value may match; a not* field must match none of its values.
// A peer without an identity (plaintext) never matches principals,
// namespaces or serviceAccounts; a not* identity field does not match it
// in an ALLOW policy and does in a DENY policy.
//
// +kubebuilder:validation:XValidation:rule="has(self.principals) || has(self.notPrincipals) || has(self.namespaces) || has(self.notNamespaces) || has(self.serviceAccounts) || has(self.notServiceAccounts) || has(self.ipBlocks) || has(self.notIpBlocks) || has(self.requestPrincipals) || has(self.notRequestPrincipals) || has(self.remoteIpBlocks) || has(self.notRemoteIpBlocks)",message="a source must set at least one field (leave from out to match every peer)"
type Source struct {
	// Principals: SPIFFE ids of the peer, with or without spiffe://.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Principals []Principal `json:"principals,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	NotPrincipals []Principal `json:"notPrincipals,omitempty"`

	// Namespaces of the peer, from its SPIFFE id /ns/<ns>/sa/<sa>.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Namespaces []NamespaceMatch `json:"namespaces,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	NotNamespaces []NamespaceMatch `json:"notNamespaces,omitempty"`

	// ServiceAccounts of the peer, "<namespace>/<serviceaccount>".
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	ServiceAccounts []ServiceAccountRef `json:"serviceAccounts,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +optional
	NotServiceAccounts []ServiceAccountRef `json:"notServiceAccounts,omitempty"`

	// IPBlocks: the peer's source address, IPs or CIDR prefixes.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +optional
	IPBlocks []IPBlock `json:"ipBlocks,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +optional
	NotIPBlocks []IPBlock `json:"notIpBlocks,omitempty"`

	// RequestPrincipals: JWT principals ("<iss>/<sub>"). L7, reserved for
	// the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	// +optional
	RequestPrincipals []string `json:"requestPrincipals,omitempty"`
	// L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	// +optional
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`

	// RemoteIPBlocks: the original client address taken from
	// X-Forwarded-For. L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +optional
	RemoteIPBlocks []IPBlock `json:"remoteIpBlocks,omitempty"`
	// L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +optional
	NotRemoteIPBlocks []IPBlock `json:"notRemoteIpBlocks,omitempty"`
}

// Operation describes the destination of the connection. Every field that
// is set must match. Ports are enforced by the node proxy; hosts, methods
// and paths are HTTP (L7) fields reserved for the waypoint.
//
// +kubebuilder:validation:XValidation:rule="has(self.ports) || has(self.notPorts) || has(self.hosts) || has(self.notHosts) || has(self.methods) || has(self.notMethods) || has(self.paths) || has(self.notPaths)",message="an operation must set at least one field (leave to out to match every destination)"
type Operation struct {
	// Ports: destination (workload) ports, integers 1-65535.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Ports []Port `json:"ports,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +optional
	NotPorts []Port `json:"notPorts,omitempty"`

	// Hosts: HTTP Host (authority) values. L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +optional
	Hosts []string `json:"hosts,omitempty"`
	// L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +optional
	NotHosts []string `json:"notHosts,omitempty"`

	// Methods: HTTP methods. L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=64
	// +optional
	Methods []string `json:"methods,omitempty"`
	// L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=64
	// +optional
	NotMethods []string `json:"notMethods,omitempty"`

	// Paths: HTTP request paths. L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	// +optional
	Paths []string `json:"paths,omitempty"`
	// L7, reserved for the waypoint.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	// +optional
	NotPaths []string `json:"notPaths,omitempty"`
}

// Condition is an Istio "when" condition on a request attribute. L7,
// reserved for the waypoint.
//
// +kubebuilder:validation:XValidation:rule="has(self.values) || has(self.notValues)",message="a condition needs values or notValues"
type Condition struct {
	// Key names the attribute, e.g. request.headers[x-token].
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Key string `json:"key"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=1024
	// +optional
	Values []string `json:"values,omitempty"`
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=1024
	// +optional
	NotValues []string `json:"notValues,omitempty"`
}

// Principal is a peer SPIFFE id: exact
// ("cluster.local/ns/shop/sa/frontend", "spiffe://" optional), a prefix
// ending in '*' ("cluster.local/ns/shop/*"), a suffix starting with '*'
// ("*/sa/frontend"), or "*" (any authenticated peer). The node proxy also
// refuses "." and ".." path segments.
//
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=512
// +kubebuilder:validation:XValidation:rule=`self == '*' || (self.contains('*') ? self.matches('^[*][^* \t\r\n]+$|^[^* \t\r\n]+[*]$') : self.matches('^(spiffe://)?[a-z0-9._-]+(/[\\w.-]+)*$'))`,message="a principal must be '*', a SPIFFE id [spiffe://]<trust-domain>/ns/<namespace>/sa/<serviceaccount>, or a pattern with one leading or trailing '*' and no white space"
type Principal string

// NamespaceMatch is a peer namespace: a name, a prefix ending in '*', a
// suffix starting with '*', or "*".
//
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule=`self.matches('^([*]|[*][a-z0-9-]+|[a-z0-9-]+[*]|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$')`,message="a namespace must be a namespace name (DNS-1123 label), '*', or a-z, 0-9 and '-' with one leading or trailing '*'"
type NamespaceMatch string

// ServiceAccountRef is a peer service account, exactly
// "<namespace>/<serviceaccount>". The node proxy also checks the lengths
// (63 for the namespace, 253 for the name and 63 per dot-separated label).
//
// +kubebuilder:validation:MinLength=3
// +kubebuilder:validation:MaxLength=317
// +kubebuilder:validation:XValidation:rule=`self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')`,message="a service account must be <namespace>/<serviceaccount> (lower-case DNS names; no wildcards: use principals for patterns)"
type ServiceAccountRef string

// IPBlock is an IP address or a CIDR prefix (IPv4-mapped IPv6 forms are
// refused: write the IPv4 form).
//
// +kubebuilder:validation:MinLength=2
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:XValidation:rule="isIP(self) || isCIDR(self)",message="must be an IP address or a CIDR prefix such as 10.0.0.0/8 or fd00::/8 (no zone, no IPv4-mapped IPv6)"
type IPBlock string

// Port is a TCP port.
//
// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 65535",message="a port must be between 1 and 65535"
type Port int32
