package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PeerAuthentication sets whether the workloads it selects accept
// plaintext connections (PERMISSIVE) or only mTLS (HBONE) ones (STRICT).
// The most specific one that applies to a workload sets its mode
// (workload selector > namespace > mesh); one whose mode is unset (or
// UNSET) defers to the next less specific one; with none the mode is
// PERMISSIVE. Among several of the same scope that apply to a workload,
// STRICT wins.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=straitpa,categories=strait
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mtls.mode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec PeerAuthenticationSpec `json:"spec"`
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// PeerAuthenticationList is a list of PeerAuthentication.
//
// +kubebuilder:object:root=true
type PeerAuthenticationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PeerAuthentication `json:"items"`
}

// PeerAuthenticationSpec selects workloads and sets their mTLS mode.
type PeerAuthenticationSpec struct {
	// Selector picks the workloads of the namespace by label. Absent, or
	// with empty matchLabels: every workload of the namespace; in the root
	// namespace (strait-system) every workload of the mesh. A selector in
	// the root namespace is ignored (the object then has no effect), as in
	// Istio.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`

	// MTLS sets the mode; absent: inherit.
	// +optional
	MTLS *MutualTLS `json:"mtls,omitempty"`
}

// MutualTLS holds the mTLS mode.
type MutualTLS struct {
	// Mode is STRICT (only mTLS) or PERMISSIVE (plaintext too). Unset or
	// UNSET: inherit from the namespace, then the mesh (default
	// PERMISSIVE).
	// +kubebuilder:validation:Enum=UNSET;STRICT;PERMISSIVE
	// +optional
	Mode MTLSMode `json:"mode,omitempty"`
}

// MTLSMode is a PeerAuthentication mode.
type MTLSMode string

// Modes.
const (
	MTLSModeUnset      MTLSMode = "UNSET"
	MTLSModeStrict     MTLSMode = "STRICT"
	MTLSModePermissive MTLSMode = "PERMISSIVE"
)
