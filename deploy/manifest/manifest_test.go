package manifest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/strait-mesh/strait/deploy"
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
	if err := a.Delete(ctx, objs, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.AppsV1().Deployments("strait-system").Get(ctx, "strait-ca", metav1.GetOptions{}); err == nil {
		t.Error("the CA Deployment survived Delete")
	}
}
