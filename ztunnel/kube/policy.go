package kube

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
	"github.com/strait-mesh/strait/ztunnel/kube/kubepolicy"
	"github.com/strait-mesh/strait/ztunnel/rbac"
)

// The policy resources (deploy/crds).
var (
	AuthorizationPolicies = v1alpha1.SchemeGroupVersion.WithResource("authorizationpolicies")
	PeerAuthentications   = v1alpha1.SchemeGroupVersion.WithResource("peerauthentications")
)

// Verdict is what the node proxy made of one policy object: the
// Accepted condition it should carry.
type Verdict struct {
	Resource  schema.GroupVersionResource
	Namespace string
	Name      string
	// Generation the verdict is about (the condition's observedGeneration).
	Generation int64
	Accepted   bool
	Reason     string // v1alpha1.ReasonAccepted, ReasonPartiallyEnforced or ReasonInvalid
	Message    string
}

// Policies is the translation of the policy objects.
type Policies struct {
	Authz    []*rbac.Policy
	PeerAuth []*rbac.PeerAuthentication
	Verdicts []Verdict
}

// TranslatePolicies converts the policy objects, refusing (with a
// verdict, not an error) those the node proxy cannot enforce, and of two
// namespace-wide (or mesh-wide) PeerAuthentications for the same scope
// keeping the older one, so that what it returns always forms a valid
// snapshot.
func TranslatePolicies(aps []*v1alpha1.AuthorizationPolicy, pas []*v1alpha1.PeerAuthentication, rootNamespace string) Policies {
	var out Policies
	verdict := func(gvr schema.GroupVersionResource, ns, name string, gen int64, warnings []string, err error) {
		v := Verdict{Resource: gvr, Namespace: ns, Name: name, Generation: gen, Accepted: true, Reason: v1alpha1.ReasonAccepted,
			Message: "enforced by the node proxy"}
		switch {
		case err != nil:
			v.Accepted, v.Reason, v.Message = false, v1alpha1.ReasonInvalid, err.Error()
		case len(warnings) > 0:
			v.Reason, v.Message = v1alpha1.ReasonPartiallyEnforced, strings.Join(warnings, "; ")
		}
		out.Verdicts = append(out.Verdicts, v)
	}
	for _, ap := range aps {
		p, warnings, err := kubepolicy.ToRBAC(ap, rootNamespace)
		if err == nil {
			out.Authz = append(out.Authz, p)
		}
		verdict(AuthorizationPolicies, ap.Namespace, ap.Name, ap.Generation, warnings, err)
	}
	// Oldest first, so the first wide one of a scope wins.
	pas = slices.Clone(pas)
	slices.SortStableFunc(pas, func(a, b *v1alpha1.PeerAuthentication) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	wide := map[string]string{}
	for _, pa := range pas {
		p, warnings, err := kubepolicy.PeerAuthToRBAC(pa, rootNamespace)
		if err == nil && p != nil && p.Scope != rbac.ScopeWorkload {
			k := p.Namespace
			if p.Scope == rbac.ScopeMesh {
				k = "\x00mesh"
			}
			if other, dup := wide[k]; dup {
				err = fmt.Errorf("kube: PeerAuthentication %s/%s: %s already sets the %s-wide mode; only the oldest one counts", pa.Namespace, pa.Name, other, p.Scope)
			} else {
				wide[k] = pa.Namespace + "/" + pa.Name
			}
		}
		if err == nil && p != nil {
			out.PeerAuth = append(out.PeerAuth, p)
		}
		verdict(PeerAuthentications, pa.Namespace, pa.Name, pa.Generation, warnings, err)
	}
	return out
}

// typedTransform turns the dynamic informers' unstructured objects into
// the typed policy objects before they are cached.
func typedTransform(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	var typed runtime.Object
	switch u.GetKind() {
	case "AuthorizationPolicy":
		typed = &v1alpha1.AuthorizationPolicy{}
	case "PeerAuthentication":
		typed = &v1alpha1.PeerAuthentication{}
	default:
		return obj, nil
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, typed); err != nil {
		return nil, fmt.Errorf("kube: %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	if a, err := meta.Accessor(typed); err == nil {
		a.SetManagedFields(nil)
		a.SetAnnotations(nil) // kubectl's last-applied copy doubles every object
	}
	return typed, nil
}

// currentCondition is the Accepted condition an object carries now.
func currentCondition(conds []metav1.Condition) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == v1alpha1.ConditionAccepted {
			return &conds[i]
		}
	}
	return nil
}

// needsStatus reports whether an object's Accepted condition differs
// from the verdict.
func needsStatus(conds []metav1.Condition, v Verdict) bool {
	c := currentCondition(conds)
	want := metav1.ConditionFalse
	if v.Accepted {
		want = metav1.ConditionTrue
	}
	return c == nil || c.Status != want || c.Reason != v.Reason || c.Message != v.Message || c.ObservedGeneration != v.Generation
}

// statusPatch is a server-side apply patch of the Accepted condition.
func statusPatch(v Verdict, now metav1.Time) ([]byte, error) {
	kind := "AuthorizationPolicy"
	if v.Resource == PeerAuthentications {
		kind = "PeerAuthentication"
	}
	status := metav1.ConditionFalse
	if v.Accepted {
		status = metav1.ConditionTrue
	}
	msg := v.Message
	if len(msg) > 32000 {
		msg = msg[:32000]
	}
	return json.Marshal(map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(), "kind": kind,
		"metadata": map[string]any{"name": v.Name, "namespace": v.Namespace},
		"status": map[string]any{"conditions": []metav1.Condition{{
			Type: v1alpha1.ConditionAccepted, Status: status, Reason: v.Reason, Message: msg,
			ObservedGeneration: v.Generation, LastTransitionTime: now,
		}}},
	})
}
