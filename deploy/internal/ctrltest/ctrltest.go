// Package ctrltest does, for tests against kubetest's bare API server
// (no kube-controller-manager), the two jobs of the controllers that
// straitctl waits for: a workload's rollout status, and the garbage
// collector's part of a foreground deletion.
package ctrltest

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// SetRollout writes the status of the Deployment or DaemonSet ns/name as
// its controller would: the generation observed, want pods (replicas or
// scheduled nodes), all of them updated, ready of them ready and
// available.
func SetRollout(ctx context.Context, cs kubernetes.Interface, kind, ns, name string, want, ready int32) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		switch kind {
		case "DaemonSet":
			ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			ds.Status.ObservedGeneration = ds.Generation
			ds.Status.DesiredNumberScheduled = want
			ds.Status.CurrentNumberScheduled = want
			ds.Status.UpdatedNumberScheduled = want
			ds.Status.NumberReady = ready
			ds.Status.NumberAvailable = ready
			ds.Status.NumberUnavailable = want - ready
			_, err = cs.AppsV1().DaemonSets(ns).UpdateStatus(ctx, ds, metav1.UpdateOptions{})
			return err
		case "Deployment":
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			d.Status.ObservedGeneration = d.Generation
			d.Status.Replicas = want
			d.Status.UpdatedReplicas = want
			d.Status.ReadyReplicas = ready
			d.Status.AvailableReplicas = ready
			d.Status.UnavailableReplicas = want - ready
			_, err = cs.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{})
			return err
		}
		return fmt.Errorf("ctrltest: %s is not a workload", kind)
	})
}

// GC finishes the foreground deletion of every Deployment and DaemonSet
// in ns that is being deleted (they have no pods here, so nothing waits):
// it calls before(kind, name) once per object, then removes the object's
// finalizers, and the API server deletes it. It runs until ctx is done.
func GC(ctx context.Context, cs kubernetes.Interface, ns string, before func(kind, name string)) {
	seen := map[string]bool{}
	finish := func(kind string, m metav1.ObjectMeta, patch func() error) {
		if m.DeletionTimestamp == nil {
			return
		}
		if key := kind + "/" + m.Name; !seen[key] {
			seen[key] = true
			if before != nil {
				before(kind, m.Name)
			}
		}
		_ = patch() // a failure is tried again in the next round
	}
	noFinalizers := []byte(`{"metadata":{"finalizers":null}}`)
	for {
		if dss, err := cs.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, ds := range dss.Items {
				finish("DaemonSet", ds.ObjectMeta, func() error {
					_, err := cs.AppsV1().DaemonSets(ns).Patch(ctx, ds.Name, types.MergePatchType, noFinalizers, metav1.PatchOptions{})
					return err
				})
			}
		}
		if ds, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, d := range ds.Items {
				finish("Deployment", d.ObjectMeta, func() error {
					_, err := cs.AppsV1().Deployments(ns).Patch(ctx, d.Name, types.MergePatchType, noFinalizers, metav1.PatchOptions{})
					return err
				})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
