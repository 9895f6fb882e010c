// Package enroll holds the rule that puts a pod in the mesh, shared by the
// node agent (which redirects the pod's traffic) and ztunnel (which
// serves it), so the two can never disagree.
package enroll

// Labels and values that decide enrollment.
const (
	// LabelDataplaneMode is read on namespaces and pods.
	LabelDataplaneMode = "strait.dev/dataplane-mode"
	// ModeAmbient enrolls a namespace (every pod in it) or a single pod.
	ModeAmbient = "ambient"
	// ModeNone on a pod keeps it out of an enrolled namespace.
	ModeNone = "none"
)

// Enrolled reports whether a pod with podLabels, in a namespace with
// nsLabels, is in the mesh: the pod's own label wins (none: out, ambient:
// in), otherwise the namespace's label decides. Host-network pods are
// never enrolled; callers check that separately (it is not a label).
func Enrolled(podLabels, nsLabels map[string]string) bool {
	switch podLabels[LabelDataplaneMode] {
	case ModeNone:
		return false
	case ModeAmbient:
		return true
	}
	return nsLabels[LabelDataplaneMode] == ModeAmbient
}
