package manifest

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager owns the fields straitctl applies.
const FieldManager = "straitctl"

// Applier applies and deletes objects with a dynamic client.
type Applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	// Log, if set, is told about every step.
	Log func(format string, args ...any)
}

// NewApplier builds an applier for a cluster.
func NewApplier(cfg *rest.Config) (*Applier, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return &Applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

func (a *Applier) logf(format string, args ...any) {
	if a.Log != nil {
		a.Log(format, args...)
	}
}

// resource finds the REST resource of an object.
func (a *Applier) resource(o Object) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset() // a CRD applied a moment ago
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest: %s: %w", o, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return a.dyn.Resource(m.Resource), nil
}

// Apply server-side applies objs in order. With dryRun the API server
// validates and admits everything but persists nothing. CRDs are waited
// for (Established) before the objects after them.
func (a *Applier) Apply(ctx context.Context, objs []Object, dryRun bool) error {
	for _, o := range objs {
		r, err := a.resource(o)
		if err != nil {
			return err
		}
		data, err := json.Marshal(o.Object)
		if err != nil {
			return fmt.Errorf("manifest: %s: %w", o, err)
		}
		opts := metav1.PatchOptions{FieldManager: FieldManager, Force: ptr(true)}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := r.Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts); err != nil {
			if dryRun && apierrors.IsNotFound(err) && o.GetNamespace() != "" {
				return fmt.Errorf("manifest: server dry run of %s: %w (a dry run persists nothing, so the API server cannot admit objects into a namespace it did not create: create the namespace first, e.g. kubectl create namespace %s)", o, err, o.GetNamespace())
			}
			return fmt.Errorf("manifest: apply %s (%s): %w", o, o.File, err)
		}
		a.logf("applied %s", o)
		if o.GetKind() == "CustomResourceDefinition" && !dryRun {
			if err := a.waitEstablished(ctx, r, o.GetName()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *Applier) waitEstablished(ctx context.Context, r dynamic.ResourceInterface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		u, err := r.Get(ctx, name, metav1.GetOptions{})
		if err == nil && condition(u, "Established") == "True" {
			a.mapper.Reset()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("manifest: CRD %s not established: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// condition returns status.conditions[type].status ("" if absent).
func condition(u *unstructured.Unstructured, typ string) string {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}

// Delete removes objs in reverse order; CRDs (and with them every policy
// users wrote) only with crds. Missing objects are fine.
func (a *Applier) Delete(ctx context.Context, objs []Object, crds bool) error {
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		if o.GetKind() == "CustomResourceDefinition" && !crds {
			a.logf("kept %s (pass --crds to delete it and every object of its kind)", o)
			continue
		}
		r, err := a.resource(o)
		if err != nil {
			if meta.IsNoMatchError(err) {
				continue // its CRD is gone already
			}
			return err
		}
		err = r.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr(metav1.DeletePropagationBackground)})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("manifest: delete %s: %w", o, err)
		default:
			a.logf("deleted %s", o)
		}
	}
	return nil
}

// isWorkload reports whether o is a Deployment or a DaemonSet.
func isWorkload(o Object) bool { return o.GetKind() == "Deployment" || o.GetKind() == "DaemonSet" }

// DeleteWorkloads deletes the Deployments and DaemonSets of objs in the
// foreground and waits until they are gone, that is until the garbage
// collector has deleted their pods. Call it before Delete: while the pods
// stop, their service accounts and RBAC still exist, so the node agent,
// on SIGTERM, can read its DaemonSet, see it being deleted and unchain the
// CNI plugin (a background delete removes the DaemonSet at once and the
// RBAC right after, before the pods get SIGTERM). Missing workloads are
// fine. After timeout it fails naming the workloads still there.
func (a *Applier) DeleteWorkloads(ctx context.Context, objs []Object, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type pending struct {
		o Object
		r dynamic.ResourceInterface
	}
	var left []pending
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		if !isWorkload(o) {
			continue
		}
		r, err := a.resource(o)
		if err != nil {
			return err
		}
		err = r.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: ptr(metav1.DeletePropagationForeground)})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("manifest: delete %s: %w", o, err)
		}
		a.logf("deleting %s and its pods", o)
		left = append(left, pending{o, r})
	}
	for len(left) > 0 {
		var still []pending
		for _, p := range left {
			_, err := p.r.Get(ctx, p.o.GetName(), metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				a.logf("deleted %s", p.o)
			case err != nil && ctx.Err() == nil:
				return fmt.Errorf("manifest: %s: %w", p.o, err)
			default:
				still = append(still, p)
			}
		}
		left = still
		if len(left) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			names := make([]string, len(left))
			for i, p := range left {
				names[i] = p.o.String()
			}
			return fmt.Errorf("manifest: still being deleted after %v: %v (pods still terminating, or no garbage collector: is kube-controller-manager running?)", timeout, names)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil
}

// ErrNoController is wrapped by WaitRollout when no controller acts on a
// workload (its status.observedGeneration never moves), e.g. a cluster
// without kube-controller-manager.
var ErrNoController = fmt.Errorf("no controller is acting on it")

// WaitRollout waits until every Deployment and DaemonSet in objs has
// rolled out: observed its generation, updated and available everywhere.
// A workload no controller acts on within noController is reported with
// ErrNoController instead of waiting for the whole timeout.
func (a *Applier) WaitRollout(ctx context.Context, objs []Object, timeout, noController time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	for _, o := range objs {
		if !isWorkload(o) {
			continue
		}
		r, err := a.resource(o)
		if err != nil {
			return err
		}
		for {
			u, err := r.Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("manifest: %s: %w", o, err)
			}
			done, observed, msg := rolledOut(u)
			if done {
				a.logf("%s rolled out", o)
				break
			}
			if !observed && time.Since(start) > noController {
				return fmt.Errorf("manifest: %s: %w (is kube-controller-manager running?)", o, ErrNoController)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("manifest: %s not rolled out after %v: %s", o, timeout, msg)
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// rolledOut reads a Deployment's or DaemonSet's status.
func rolledOut(u *unstructured.Unstructured) (done, observed bool, msg string) {
	num := func(f ...string) int64 {
		v, _, _ := unstructured.NestedInt64(u.Object, f...)
		return v
	}
	gen, obs := u.GetGeneration(), num("status", "observedGeneration")
	observed = obs > 0
	if obs < gen {
		return false, observed, fmt.Sprintf("generation %d not observed yet (%d)", gen, obs)
	}
	switch u.GetKind() {
	case "Deployment":
		want := num("spec", "replicas")
		if _, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas"); !found {
			want = 1
		}
		upd, avail := num("status", "updatedReplicas"), num("status", "availableReplicas")
		return upd == want && avail == want, observed, fmt.Sprintf("%d/%d updated, %d/%d available", upd, want, avail, want)
	case "DaemonSet":
		want := num("status", "desiredNumberScheduled")
		upd, avail := num("status", "updatedNumberScheduled"), num("status", "numberAvailable")
		return upd == want && avail == want, observed, fmt.Sprintf("%d/%d updated, %d/%d available", upd, want, avail, want)
	}
	return true, observed, ""
}

func ptr[T any](v T) *T { return &v }
