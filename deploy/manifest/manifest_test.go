package manifest_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/strait-mesh/strait/deploy"
	"github.com/strait-mesh/strait/deploy/internal/ctrltest"
	"github.com/strait-mesh/strait/deploy/manifest"
	"github.com/strait-mesh/strait/internal/kubetest"
)

// Every built-in object decodes strictly (unknown or misspelled fields are
// errors) with client-go's scheme; CRDs are not in that scheme and are
// checked by the API server below.
func TestManifestsDecodeStrictly(t *testing.T) {
	objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
	if err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		if o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		data, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := dec.Decode(data, nil, nil); err != nil {
			t.Errorf("%s (%s): %v", o, o.File, err)
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service", "DaemonSet", "PodDisruptionBudget"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in the manifests (have %v)", k, kinds)
		}
	}
	if objs[0].GetKind() != "Namespace" {
		t.Errorf("first object is %s, want the Namespace", objs[0])
	}
	// The strict decoder does catch a misspelled field.
	bad := fstest.MapFS{"x/bad.yaml": {Data: []byte("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namespce: y\n")}}
	bo, err := manifest.Load(bad, "x")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := bo[0].MarshalJSON()
	if _, _, err := dec.Decode(data, nil, nil); err == nil || !strings.Contains(err.Error(), "namespce") {
		t.Errorf("strict decoding accepted a misspelled field: %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"no kind":   "apiVersion: v1\nmetadata: {name: x}\n",
		"no name":   "apiVersion: v1\nkind: ConfigMap\n",
		"not yaml":  "apiVersion: v1\nkind: [\n",
		"not a map": "- a\n- b\n",
	} {
		if _, err := manifest.Decode(name+".yaml", []byte(doc)); err == nil {
			t.Errorf("%s: decoded", name)
		} else if !strings.Contains(err.Error(), name+".yaml") {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
	objs, err := manifest.Decode("empty.yaml", []byte("---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"))
	if err != nil || len(objs) != 1 {
		t.Fatalf("empty documents: %v %v", objs, err)
	}
}

// Against a real API server: a server-side dry run admits every object
// and persists none; a real apply creates them (CRDs established first);
// with no controller-manager the rollout wait says so instead of hanging;
// delete removes them, keeping the CRDs unless asked.
func TestApplyToAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
	if err != nil {
		t.Fatal(err)
	}
	a, err := manifest.NewApplier(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	a.Log = t.Logf
	// On an empty cluster a dry run stops at the first namespaced object,
	// with a hint: the API server admits nothing into a namespace that
	// does not exist yet, dry run or not.
	err = a.Apply(ctx, objs, true)
	if err == nil || !strings.Contains(err.Error(), "create the namespace first") {
		t.Fatalf("dry run on an empty cluster = %v, want the namespace hint", err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "strait-system", metav1.GetOptions{}); err == nil {
		t.Fatal("the dry run created the namespace")
	}
	// With the namespace there, the API server validates and admits every
	// object (CRD schemas and CEL rules included) and persists none.
	if err := c.EnsureNamespace(ctx, "strait-system"); err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, objs, true); err != nil {
		t.Fatalf("server-side dry run: %v", err)
	}
	if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, "ztunnel", metav1.GetOptions{}); err == nil {
		t.Fatal("the dry run created the ztunnel DaemonSet")
	}
	if err := a.Apply(ctx, objs, false); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if _, err := c.Client.AppsV1().DaemonSets("strait-system").Get(ctx, "ztunnel", metav1.GetOptions{}); err != nil {
		t.Fatalf("ztunnel DaemonSet: %v", err)
	}
	// Applying again is a no-op, not a conflict.
	if err := a.Apply(ctx, objs, false); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	err = a.WaitRollout(ctx, objs, 20*time.Second, 2*time.Second)
	if !errors.Is(err, manifest.ErrNoController) {
		t.Fatalf("WaitRollout without a controller-manager = %v, want ErrNoController", err)
	}

	// The node agent's RBAC, asked of the API server's authorizer.
	checkAgentAccess(ctx, t, c)
	// Pod Security admits the agent's pods in strait-system, and the
	// namespace's label is why: in a baseline namespace they are refused.
	checkAgentPodSecurity(ctx, t, c)

	// WaitRollout waits for every workload, the node agent's DaemonSet
	// included: with the CA and ztunnel rolled out and one agent of three
	// not available, it times out naming the agent; then it is done.
	for _, w := range []struct {
		kind, name string
		n          int32
	}{{"Deployment", "strait-ca", 2}, {"DaemonSet", "ztunnel", 3}} {
		if err := ctrltest.SetRollout(ctx, c.Client, w.kind, systemNS, w.name, w.n, w.n); err != nil {
			t.Fatal(err)
		}
	}
	if err := ctrltest.SetRollout(ctx, c.Client, "DaemonSet", systemNS, agentName, 3, 2); err != nil {
		t.Fatal(err)
	}
	err = a.WaitRollout(ctx, objs, 3*time.Second, time.Second)
	if err == nil || !strings.Contains(err.Error(), "DaemonSet strait-system/strait-cni-agent not rolled out") || !strings.Contains(err.Error(), "2/3 available") {
		t.Fatalf("WaitRollout with 2/3 agents available = %v", err)
	}
	go func() {
		time.Sleep(1500 * time.Millisecond)
		if err := ctrltest.SetRollout(ctx, c.Client, "DaemonSet", systemNS, agentName, 3, 3); err != nil {
			t.Error(err)
		}
	}()
	if err := a.WaitRollout(ctx, objs, 30*time.Second, time.Second); err != nil {
		t.Fatalf("WaitRollout once the agents are available: %v", err)
	}

	// Deleting the workloads first: with no garbage collector they stay
	// (being deleted) and DeleteWorkloads says which; nothing else goes.
	err = a.DeleteWorkloads(ctx, objs, 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "DaemonSet strait-system/strait-cni-agent") || !strings.Contains(err.Error(), "garbage collector") {
		t.Fatalf("DeleteWorkloads without a garbage collector = %v", err)
	}
	ds, err := c.Client.AppsV1().DaemonSets(systemNS).Get(ctx, agentName, metav1.GetOptions{})
	if err != nil || ds.DeletionTimestamp == nil || !slices.Contains(ds.Finalizers, metav1.FinalizerDeleteDependents) {
		t.Fatalf("agent DaemonSet after a foreground delete: %v %+v", err, ds.ObjectMeta)
	}
	// With the garbage collector's part done by ctrltest, they go; while
	// each is being deleted the agent, as itself, still reads its
	// DaemonSet and sees it being deleted (its cue to unchain the plugin).
	gcCtx, stopGC := context.WithCancel(ctx)
	defer stopGC()
	agent := c.ClientFor(t, agentSA, "system:serviceaccounts", "system:serviceaccounts:strait-system")
	sawDeleting := make(chan error, 1)
	go ctrltest.GC(gcCtx, c.Client, systemNS, func(kind, name string) {
		if name != agentName {
			return
		}
		ds, err := agent.AppsV1().DaemonSets(systemNS).Get(ctx, agentName, metav1.GetOptions{})
		if err == nil && ds.DeletionTimestamp == nil {
			err = errors.New("no deletionTimestamp")
		}
		sawDeleting <- err
	})
	if err := a.DeleteWorkloads(ctx, objs, 30*time.Second); err != nil {
		t.Fatalf("DeleteWorkloads: %v", err)
	}
	select {
	case err := <-sawDeleting:
		if err != nil {
			t.Errorf("the agent reading its DaemonSet being deleted: %v", err)
		}
	default:
		t.Error("the agent's DaemonSet was never seen being deleted")
	}
	for _, name := range []string{"ztunnel", agentName} {
		if _, err := c.Client.AppsV1().DaemonSets(systemNS).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("DaemonSet %s after DeleteWorkloads: %v", name, err)
		}
	}
	if _, err := c.Client.RbacV1().Roles(systemNS).Get(ctx, agentName, metav1.GetOptions{}); err != nil {
		t.Errorf("DeleteWorkloads deleted more than workloads: Role %s: %v", agentName, err)
	}
	if err := a.DeleteWorkloads(ctx, objs, time.Second); err != nil {
		t.Errorf("DeleteWorkloads with nothing left: %v", err)
	}

	if err := a.Delete(ctx, objs, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.AppsV1().Deployments("strait-system").Get(ctx, "strait-ca", metav1.GetOptions{}); err == nil {
		t.Error("the CA Deployment survived Delete")
	}
}

// checkAgentAccess asks the API server (SubjectAccessReview, as the node
// agent's service account) what the agent may do: read pods and
// namespaces everywhere and get its own DaemonSet; nothing else.
func checkAgentAccess(ctx context.Context, t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	can := func(verb, group, res, ns, name string) (bool, error) {
		r, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
			User:               agentSA,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:strait-system", "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{Verb: verb, Group: group, Resource: res, Namespace: ns, Name: name},
		}}, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		return r.Status.Allowed, nil
	}
	type q struct{ verb, group, res, ns, name string }
	allowed := []q{
		{"list", "", "pods", "", ""}, {"watch", "", "pods", "", ""}, {"get", "", "pods", "shop", "web"},
		{"list", "", "namespaces", "", ""}, {"watch", "", "namespaces", "", ""}, {"get", "", "namespaces", "", "shop"},
		{"get", "apps", "daemonsets", systemNS, agentName},
	}
	// The RBAC authorizer reads roles from an informer: eventually allowed.
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range allowed {
		for {
			ok, err := can(a.verb, a.group, a.res, a.ns, a.name)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the agent may not %+v", a)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, d := range []q{
		{"get", "apps", "daemonsets", systemNS, "ztunnel"},
		{"list", "apps", "daemonsets", systemNS, ""},
		{"watch", "apps", "daemonsets", systemNS, ""},
		{"delete", "apps", "daemonsets", systemNS, agentName},
		{"get", "apps", "daemonsets", "kube-system", agentName},
		{"update", "", "pods", "shop", "web"},
		{"patch", "", "pods", "shop", "web"},
		{"delete", "", "pods", "shop", "web"},
		{"create", "", "pods/exec", "shop", "web"},
		{"update", "", "namespaces", "", "shop"},
		{"list", "", "secrets", "", ""},
		{"get", "", "secrets", systemNS, "strait-ca-root"},
		{"list", "", "services", "", ""},
		{"get", "", "nodes", "", "node-a"},
		{"get", "", "configmaps", systemNS, "strait-ca-bundle"},
		{"create", "authentication.k8s.io", "tokenreviews", "", ""},
	} {
		ok, err := can(d.verb, d.group, d.res, d.ns, d.name)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			t.Errorf("the agent may %+v", d)
		}
	}
}

// checkAgentPodSecurity creates (dry run) a pod from the node agent's
// DaemonSet template in strait-system, then in a namespace enforcing the
// baseline Pod Security level, where the host network, hostPath volumes
// and capabilities are refused.
func checkAgentPodSecurity(ctx context.Context, t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	ds := typed[*appsv1.DaemonSet](t, "DaemonSet", systemNS, agentName)
	pod := func(ns string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-probe", Namespace: ns, Labels: ds.Spec.Template.Labels}, Spec: ds.Spec.Template.Spec}
	}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	if _, err := c.Client.CoreV1().Pods(systemNS).Create(ctx, pod(systemNS), dry); err != nil {
		t.Errorf("an agent pod in %s: %v", systemNS, err)
	}
	if err := c.EnsureServiceAccount(ctx, "baseline", agentName); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Patch(ctx, "baseline", "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"pod-security.kubernetes.io/enforce":"baseline"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Client.CoreV1().Pods("baseline").Create(ctx, pod("baseline"), dry)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "baseline") {
		t.Errorf("an agent pod in a baseline namespace: %v, want refused by Pod Security", err)
	}
}
