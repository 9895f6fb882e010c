package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkloadSelector picks workloads by label: a workload is selected when
// its labels include every matchLabels entry. Empty matchLabels select
// the whole namespace (as if there were no selector).
type WorkloadSelector struct {
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, k != '')",message="matchLabels keys must not be empty"
	// +optional
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// PolicyStatus is the observed state of a policy object.
type PolicyStatus struct {
	// Conditions: see ConditionAccepted.
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types and reasons of PolicyStatus.
const (
	// ConditionAccepted is True when the node proxy enforces the object
	// (reason ReasonAccepted, or ReasonPartiallyEnforced with the L7 parts
	// it cannot enforce in the message) and False when it refuses it
	// (ReasonInvalid).
	ConditionAccepted       = "Accepted"
	ReasonAccepted          = "Accepted"
	ReasonPartiallyEnforced = "PartiallyEnforced"
	ReasonInvalid           = "Invalid"
)
