package crds_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/ztunnel/kube/kubepolicy"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	apGVR  = v1alpha1.SchemeGroupVersion.WithResource("authorizationpolicies")
	paGVR  = v1alpha1.SchemeGroupVersion.WithResource("peerauthentications")
)

const (
	testNS = "shop"
	// readmePath holds the example manifests, which must be accepted.
	readmePath = "../api/security/v1alpha1/README.md"
)

// decodeYAML decodes every document of data into unstructured objects.
func decodeYAML(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("decode: %v", err)
		}
		if m != nil {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

// crdFiles returns the CRD files the kustomization lists.
func crdFiles(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeYAML(t, data)
	if len(objs) != 1 {
		t.Fatalf("kustomization.yaml: %d documents", len(objs))
	}
	res, _, err := unstructured.NestedStringSlice(objs[0].Object, "resources")
	if err != nil || len(res) == 0 {
		t.Fatalf("kustomization.yaml: resources: %v %v", res, err)
	}
	return res
}

func TestKustomizationListsEveryCRD(t *testing.T) {
	listed := map[string]bool{}
	for _, f := range crdFiles(t) {
		listed[f] = true
	}
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" {
			n++
			if !listed[e.Name()] {
				t.Errorf("%s is not listed in kustomization.yaml", e.Name())
			}
		}
	}
	if n != len(listed) {
		t.Errorf("kustomization.yaml lists %d files, the directory has %d CRD files", len(listed), n)
	}
}

// installCRDs creates every listed CRD and waits until each is Established
// and its resource is served.
func installCRDs(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	var names []string
	for _, f := range crdFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range decodeYAML(t, data) {
			if obj.GetKind() != "CustomResourceDefinition" {
				t.Fatalf("%s: kind %q", f, obj.GetKind())
			}
			if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
				t.Fatalf("%s: the API server refused the CRD: %v", f, err)
			}
			names = append(names, obj.GetName())
		}
	}
	for _, name := range names {
		err := poll(ctx, func() (bool, error) {
			crd, err := dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, fmt.Errorf("conditions %v", conds)
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
	}
	for _, gvr := range []schema.GroupVersionResource{apGVR, paGVR} {
		if err := poll(ctx, func() (bool, error) {
			_, err := dyn.Resource(gvr).Namespace(testNS).List(ctx, metav1.ListOptions{})
			return err == nil, err
		}); err != nil {
			t.Fatalf("%s not served: %v", gvr.Resource, err)
		}
	}
}

// poll calls f every 100 ms until it reports done, or for 30 s at most
// (returning f's last error).
func poll(ctx context.Context, f func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := f()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// obj builds an object of kind in testNS from a spec written in YAML.
func obj(t *testing.T, kind, name, spec string) *unstructured.Unstructured {
	t.Helper()
	doc := fmt.Sprintf("apiVersion: security.strait.dev/v1alpha1\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\n", kind, name, testNS)
	if spec != "" {
		doc += "spec:\n" + indent(spec)
	}
	objs := decodeYAML(t, []byte(doc))
	if len(objs) != 1 {
		t.Fatalf("%s: %d documents", name, len(objs))
	}
	return objs[0]
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func gvrOf(kind string) schema.GroupVersionResource {
	if kind == "PeerAuthentication" {
		return paGVR
	}
	return apGVR
}

// manyRules is a rules list of n rules.
func manyRules(n int) string {
	return "rules:\n" + strings.Repeat("- to: [{operation: {ports: [80]}}]\n", n)
}

func TestCRDsAgainstAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{testNS, v1alpha1.RootNamespace} {
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	installCRDs(ctx, t, dyn)

	t.Run("discovery", func(t *testing.T) { testDiscovery(t, c) })
	t.Run("valid", func(t *testing.T) { testValid(ctx, t, dyn) })
	t.Run("invalid", func(t *testing.T) { testInvalid(ctx, t, dyn) })
	t.Run("accepted but refused by rbac", func(t *testing.T) { testRBACRefuses(ctx, t, dyn) })
	t.Run("readme examples", func(t *testing.T) { testReadme(ctx, t, dyn) })
	t.Run("status", func(t *testing.T) { testStatus(ctx, t, dyn) })
	t.Run("unknown fields", func(t *testing.T) { testUnknownFields(ctx, t, dyn) })
}

// testDiscovery: both kinds are namespaced, with their short names and the
// "strait" category.
func testDiscovery(t *testing.T, c *kubetest.Cluster) {
	list, err := c.Client.Discovery().ServerResourcesForGroupVersion(v1alpha1.SchemeGroupVersion.String())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"authorizationpolicies": "straitap", "peerauthentications": "straitpa"}
	seen := 0
	for _, r := range list.APIResources {
		short, ok := want[r.Name]
		if !ok {
			continue
		}
		seen++
		if !r.Namespaced || !slices.Equal(r.ShortNames, []string{short}) || !slices.Equal(r.Categories, []string{"strait"}) {
			t.Errorf("%s: namespaced %v, short names %v, categories %v", r.Name, r.Namespaced, r.ShortNames, r.Categories)
		}
	}
	if seen != len(want) {
		t.Errorf("discovery lists %d of %d resources: %+v", seen, len(want), list.APIResources)
	}
}

func create(ctx context.Context, dyn dynamic.Interface, o *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	return dyn.Resource(gvrOf(o.GetKind())).Namespace(o.GetNamespace()).Create(ctx, o, metav1.CreateOptions{FieldValidation: "Strict"})
}

func testValid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	for _, tc := range []struct {
		name, kind, spec string
		// check runs on the stored object, converted to the Go type.
		checkAP func(t *testing.T, ap *v1alpha1.AuthorizationPolicy)
		checkPA func(t *testing.T, pa *v1alpha1.PeerAuthentication)
	}{
		{
			name: "action-defaults-to-allow", kind: "AuthorizationPolicy",
			spec: "rules:\n- to: [{operation: {ports: [1, 65535]}}]\n",
			checkAP: func(t *testing.T, ap *v1alpha1.AuthorizationPolicy) {
				if ap.Spec.Action != v1alpha1.ActionAllow {
					t.Errorf("action %q, want the default ALLOW", ap.Spec.Action)
				}
				if got := ap.Spec.Rules[0].To[0].Operation.Ports; len(got) != 2 || got[0] != 1 || got[1] != 65535 {
					t.Errorf("ports %v", got)
				}
			},
		},
		{name: "empty-spec-allows-nothing", kind: "AuthorizationPolicy", spec: "{}\n",
			checkAP: func(t *testing.T, ap *v1alpha1.AuthorizationPolicy) {
				if ap.Spec.Action != v1alpha1.ActionAllow || len(ap.Spec.Rules) != 0 {
					t.Errorf("spec %+v", ap.Spec)
				}
			}},
		{name: "deny-everything", kind: "AuthorizationPolicy", spec: "action: DENY\nrules: [{}]\n"},
		{name: "max-rules", kind: "AuthorizationPolicy", spec: manyRules(32)},
		{
			name: "every-field", kind: "AuthorizationPolicy",
			spec: `selector: {matchLabels: {app: api, version: v1}}
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/a/*", "*/sa/x", "*", "spiffe://example.org"]
      notPrincipals: ["cluster.local/ns/shop/sa/admin"]
      namespaces: ["shop", "team-*", "*-prod", "*"]
      notNamespaces: ["kube-system"]
      serviceAccounts: ["shop/frontend", "shop/a.b-c"]
      notServiceAccounts: ["shop/admin"]
      ipBlocks: ["10.0.0.1", "10.0.0.0/8", "fd00::/8", "2001:db8::1", "10.1.2.3/8"]
      notIpBlocks: ["10.9.0.0/16"]
  - source:
      requestPrincipals: ["https://issuer/sub"]
      notRequestPrincipals: ["*"]
      remoteIpBlocks: ["192.168.0.0/16"]
      notRemoteIpBlocks: ["192.168.1.1"]
  to:
  - operation: {ports: [8080], notPorts: [9090]}
  - operation: {hosts: [a.example.com], notHosts: ["*.b"], methods: [GET], notMethods: [DELETE], paths: ["/api/*"], notPaths: ["/admin"]}
  when:
  - key: request.headers[x-token]
    values: ["a"]
    notValues: ["b"]
`,
			checkAP: func(t *testing.T, ap *v1alpha1.AuthorizationPolicy) {
				r := ap.Spec.Rules[0]
				s, l7 := r.From[0].Source, r.From[1].Source
				if len(s.Principals) != 5 || s.ServiceAccounts[1] != "shop/a.b-c" || s.IPBlocks[2] != "fd00::/8" ||
					l7.RemoteIPBlocks[0] != "192.168.0.0/16" || r.To[1].Operation.NotPaths[0] != "/admin" ||
					r.When[0].Key != "request.headers[x-token]" || ap.Spec.Selector.MatchLabels["version"] != "v1" {
					t.Errorf("round trip lost fields: %+v", ap.Spec)
				}
			},
		},
		{name: "deny-with-l7", kind: "AuthorizationPolicy",
			spec: "action: DENY\nrules:\n- to: [{operation: {methods: [POST]}}]\n"},
		{name: "strict", kind: "PeerAuthentication", spec: "mtls: {mode: STRICT}\n",
			checkPA: func(t *testing.T, pa *v1alpha1.PeerAuthentication) {
				if pa.Spec.MTLS == nil || pa.Spec.MTLS.Mode != v1alpha1.MTLSModeStrict {
					t.Errorf("mtls %+v", pa.Spec.MTLS)
				}
			}},
		{name: "permissive-workload", kind: "PeerAuthentication", spec: "selector: {matchLabels: {app: legacy}}\nmtls: {mode: PERMISSIVE}\n"},
		{name: "unset", kind: "PeerAuthentication", spec: "mtls: {mode: UNSET}\n"},
		{name: "no-mtls-inherits", kind: "PeerAuthentication", spec: "selector: {matchLabels: {app: x}}\n",
			checkPA: func(t *testing.T, pa *v1alpha1.PeerAuthentication) {
				if pa.Spec.MTLS != nil {
					t.Errorf("mtls %+v, want none (no default)", pa.Spec.MTLS)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := create(ctx, dyn, obj(t, tc.kind, tc.name, tc.spec))
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			switch tc.kind {
			case "AuthorizationPolicy":
				var ap v1alpha1.AuthorizationPolicy
				if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(got.Object, &ap, true); err != nil {
					t.Fatalf("into the Go type: %v", err)
				}
				if ap.Name != tc.name || ap.Namespace != testNS {
					t.Errorf("metadata %s/%s", ap.Namespace, ap.Name)
				}
				if tc.checkAP != nil {
					tc.checkAP(t, &ap)
				}
				// What the API server accepts, the node proxy accepts.
				if _, _, err := kubepolicy.ToRBAC(&ap, ""); err != nil {
					t.Errorf("ToRBAC: %v", err)
				}
			case "PeerAuthentication":
				var pa v1alpha1.PeerAuthentication
				if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(got.Object, &pa, true); err != nil {
					t.Fatalf("into the Go type: %v", err)
				}
				if tc.checkPA != nil {
					tc.checkPA(t, &pa)
				}
				if _, _, err := kubepolicy.PeerAuthToRBAC(&pa, ""); err != nil {
					t.Errorf("PeerAuthToRBAC: %v", err)
				}
			}
		})
	}
}

func testInvalid(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	const (
		msgPort      = "a port must be between 1 and 65535"
		msgIP        = "must be an IP address or a CIDR prefix"
		msgPrincipal = "a principal must be '*', a SPIFFE id [spiffe://]<trust-domain>/ns/<namespace>/sa/<serviceaccount>, or a pattern with one leading or trailing '*' and no white space"
		msgNamespace = "a namespace must be a namespace name (DNS-1123 label), '*', or a-z, 0-9 and '-' with one leading or trailing '*'"
		msgSA        = "a service account must be <namespace>/<serviceaccount> (lower-case DNS names; no wildcards: use principals for patterns)"
		msgDeny      = "a DENY policy needs at least one rule"
		msgSource    = "a source must set at least one field"
		msgOperation = "an operation must set at least one field"
		msgCondition = "a condition needs values or notValues"
		msgLabels    = "matchLabels keys must not be empty"
	)
	src := func(field, value string) string {
		return fmt.Sprintf("rules:\n- from: [{source: {%s: [%s]}}]\n", field, value)
	}
	op := func(field, value string) string {
		return fmt.Sprintf("rules:\n- to: [{operation: {%s: [%s]}}]\n", field, value)
	}
	for _, tc := range []struct {
		name, kind, spec string
		want             []string // substrings of the error
	}{
		{"port-0", "AuthorizationPolicy", op("ports", "0"), []string{"spec.rules[0].to[0].operation.ports[0]", msgPort}},
		{"port-70000", "AuthorizationPolicy", op("ports", "80, 70000"), []string{"ports[1]", msgPort}},
		{"notport-negative", "AuthorizationPolicy", op("notPorts", "-1"), []string{"notPorts[0]", msgPort}},
		{"port-string", "AuthorizationPolicy", op("ports", `"8080"`), []string{"ports[0]", "must be of type integer"}},
		{"bad-cidr", "AuthorizationPolicy", src("ipBlocks", `"10.0.0.0/33"`), []string{"ipBlocks[0]", msgIP}},
		{"bad-ip", "AuthorizationPolicy", src("notIpBlocks", `"10.0.0.300"`), []string{"notIpBlocks[0]", msgIP}},
		{"ip-mapped", "AuthorizationPolicy", src("ipBlocks", `"::ffff:10.0.0.1"`), []string{msgIP}},
		{"ip-zone", "AuthorizationPolicy", src("ipBlocks", `"fe80::1%eth0"`), []string{msgIP}},
		{"remote-ip", "AuthorizationPolicy", src("remoteIpBlocks", `"nope"`), []string{"remoteIpBlocks[0]", msgIP}},
		{"bad-action", "AuthorizationPolicy", "action: AUDIT\nrules: [{}]\n", []string{"spec.action", `Unsupported value: "AUDIT"`, `"ALLOW", "DENY"`}},
		{"deny-without-rules", "AuthorizationPolicy", "action: DENY\n", []string{msgDeny}},
		{"deny-empty-rules", "AuthorizationPolicy", "action: DENY\nrules: []\n", []string{msgDeny}},
		{"too-many-rules", "AuthorizationPolicy", manyRules(33), []string{"spec.rules", "must have at most 32 items"}},
		{"empty-source", "AuthorizationPolicy", "rules:\n- from: [{source: {}}]\n", []string{"spec.rules[0].from[0].source", msgSource}},
		{"from-without-source", "AuthorizationPolicy", "rules:\n- from: [{}]\n", []string{"spec.rules[0].from[0].source", "Required value"}},
		{"empty-operation", "AuthorizationPolicy", "rules:\n- to: [{operation: {}}]\n", []string{"spec.rules[0].to[0].operation", msgOperation}},
		{"empty-list", "AuthorizationPolicy", "rules:\n- from: [{source: {principals: []}}]\n", []string{"principals", "should have at least 1 items"}},
		{"principal-two-stars", "AuthorizationPolicy", src("principals", `"*/ns/*"`), []string{"principals[0]", msgPrincipal}},
		{"principal-middle-star", "AuthorizationPolicy", src("notPrincipals", `"a*b"`), []string{"notPrincipals[0]", msgPrincipal}},
		{"principal-space", "AuthorizationPolicy", src("principals", `"cluster.local/ns/a b*"`), []string{msgPrincipal}},
		{"principal-upper-trust-domain", "AuthorizationPolicy", src("principals", `"Cluster.local/ns/a/sa/b"`), []string{msgPrincipal}},
		{"principal-bad-char", "AuthorizationPolicy", src("principals", `"cluster.local/ns/a/sa/b:c"`), []string{msgPrincipal}},
		{"principal-trailing-slash", "AuthorizationPolicy", src("principals", `"spiffe://cluster.local/ns/"`), []string{msgPrincipal}},
		{"principal-empty", "AuthorizationPolicy", src("principals", `""`), []string{"principals[0]", "should be at least 1 chars long"}},
		{"principal-too-long", "AuthorizationPolicy", src("principals", `"cluster.local/`+strings.Repeat("a", 500)+`"`), []string{"principals[0]", "may not be more than 512 bytes"}},
		{"namespace-upper", "AuthorizationPolicy", src("namespaces", "Shop"), []string{"namespaces[0]", msgNamespace}},
		{"namespace-pattern-char", "AuthorizationPolicy", src("notNamespaces", `"a_b*"`), []string{"notNamespaces[0]", msgNamespace}},
		{"namespace-stars", "AuthorizationPolicy", src("namespaces", `"**"`), []string{msgNamespace}},
		{"namespace-middle-star", "AuthorizationPolicy", src("namespaces", `"a*b"`), []string{msgNamespace}},
		{"namespace-too-long", "AuthorizationPolicy", src("namespaces", strings.Repeat("a", 64)), []string{msgNamespace}},
		{"sa-no-namespace", "AuthorizationPolicy", src("serviceAccounts", "frontend"), []string{"serviceAccounts[0]", msgSA}},
		{"sa-wildcard", "AuthorizationPolicy", src("serviceAccounts", `"shop/*"`), []string{msgSA}},
		{"sa-two-slashes", "AuthorizationPolicy", src("notServiceAccounts", `"shop/a/b"`), []string{"notServiceAccounts[0]", msgSA}},
		{"too-many-principals", "AuthorizationPolicy", src("principals", strings.TrimSuffix(strings.Repeat(`"*", `, 33), ", ")), []string{"principals", "must have at most 32 items"}},
		{"too-many-sources", "AuthorizationPolicy", "rules:\n- from:\n" + strings.Repeat("  - source: {principals: [\"*\"]}\n", 5), []string{"spec.rules[0].from", "must have at most 4 items"}},
		{"condition-without-values", "AuthorizationPolicy", "rules:\n- when: [{key: \"request.headers[x]\"}]\n", []string{"spec.rules[0].when[0]", msgCondition}},
		{"empty-method", "AuthorizationPolicy", op("methods", `""`), []string{"methods[0]", "should be at least 1 chars long"}},
		{"empty-label-key", "AuthorizationPolicy", `selector: {matchLabels: {"": x}}` + "\n", []string{"spec.selector.matchLabels", msgLabels}},
		{"bad-mode", "PeerAuthentication", "mtls: {mode: DISABLE}\n", []string{"spec.mtls.mode", `Unsupported value: "DISABLE"`, `"UNSET", "STRICT", "PERMISSIVE"`}},
		{"lowercase-mode", "PeerAuthentication", "mtls: {mode: strict}\n", []string{`Unsupported value: "strict"`}},
		{"pa-empty-label-key", "PeerAuthentication", `selector: {matchLabels: {"": x}}` + "\n", []string{msgLabels}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := create(ctx, dyn, obj(t, tc.kind, tc.name, tc.spec))
			if err == nil {
				t.Fatalf("accepted, want an error containing %q", tc.want)
			}
			t.Log(err)
			if !apierrors.IsInvalid(err) {
				t.Fatalf("error %v, want Invalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// testRBACRefuses: the CEL rules are a first line, kept cheap; rbac checks
// the rest, and the conversion reports it (to become a status condition).
func testRBACRefuses(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	for _, tc := range []struct{ name, spec, want string }{
		{"principal-dot-segment", "rules:\n- from: [{source: {principals: [\"cluster.local/ns/../sa/b\"]}}]\n", "is not a SPIFFE id"},
		{"sa-empty-label", "rules:\n- from: [{source: {serviceAccounts: [\"shop/a..b\"]}}]\n", "is not a DNS-1123 subdomain"},
		{"sa-name-too-long", "rules:\n- from: [{source: {notServiceAccounts: [\"shop/" + strings.Repeat("a.", 127) + "a\"]}}]\n", "is not a DNS-1123 subdomain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := create(ctx, dyn, obj(t, "AuthorizationPolicy", tc.name, tc.spec))
			if err != nil {
				t.Fatalf("refused by the API server: %v", err)
			}
			var ap v1alpha1.AuthorizationPolicy
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &ap); err != nil {
				t.Fatal(err)
			}
			_, _, err = kubepolicy.ToRBAC(&ap, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "AuthorizationPolicy shop/"+tc.name) {
				t.Fatalf("ToRBAC: %v, want an error naming the object and containing %q", err, tc.want)
			}
		})
	}
}

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

func testReadme(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range yamlBlock.FindAllSubmatch(data, -1) {
		for _, o := range decodeYAML(t, m[1]) {
			n++
			got, err := create(ctx, dyn, o)
			if err != nil {
				t.Errorf("README example %s %s refused: %v", o.GetKind(), o.GetName(), err)
				continue
			}
			switch o.GetKind() {
			case "AuthorizationPolicy":
				var ap v1alpha1.AuthorizationPolicy
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &ap); err != nil {
					t.Fatal(err)
				}
				p, warnings, err := kubepolicy.ToRBAC(&ap, "")
				if err != nil || len(warnings) > 0 || len(p.Rules) != 1 {
					t.Errorf("README example %s: %+v %q %v", o.GetName(), p, warnings, err)
				}
			case "PeerAuthentication":
				var pa v1alpha1.PeerAuthentication
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &pa); err != nil {
					t.Fatal(err)
				}
				p, _, err := kubepolicy.PeerAuthToRBAC(&pa, "")
				if err != nil || p == nil || p.Mode != "STRICT" {
					t.Errorf("README example %s: %+v %v", o.GetName(), p, err)
				}
			}
		}
	}
	if n != 2 {
		t.Errorf("README has %d example manifests, want 2", n)
	}
}

func testStatus(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	o, err := create(ctx, dyn, obj(t, "AuthorizationPolicy", "with-status", "action: DENY\nrules: [{}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	cond := map[string]any{
		"type": v1alpha1.ConditionAccepted, "status": "True", "reason": v1alpha1.ReasonAccepted,
		"message": "", "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": int64(1),
	}
	if err := unstructured.SetNestedSlice(o.Object, []any{cond}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	// The status subresource ignores spec changes; the main resource
	// ignores status changes.
	if err := unstructured.SetNestedField(o.Object, "ALLOW", "spec", "action"); err != nil {
		t.Fatal(err)
	}
	got, err := dyn.Resource(apGVR).Namespace(testNS).UpdateStatus(ctx, o, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("UpdateStatus: %v", err)
	}
	var ap v1alpha1.AuthorizationPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &ap); err != nil {
		t.Fatal(err)
	}
	if len(ap.Status.Conditions) != 1 || ap.Status.Conditions[0].Type != v1alpha1.ConditionAccepted {
		t.Errorf("status %+v", ap.Status)
	}
	if ap.Spec.Action != v1alpha1.ActionDeny {
		t.Errorf("the status update changed spec.action to %q", ap.Spec.Action)
	}
	// A condition type twice is refused (listType=map).
	if err := unstructured.SetNestedSlice(got.Object, []any{cond, cond}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(apGVR).Namespace(testNS).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "Duplicate value") {
		t.Errorf("duplicate condition type: error %v, want Duplicate value", err)
	}
}

// testUnknownFields: Istio fields the schema does not have are refused
// under strict field validation (kubectl's default) and dropped otherwise.
func testUnknownFields(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	o := obj(t, "AuthorizationPolicy", "istio-only", "targetRefs: [{kind: Service, group: \"\", name: x}]\nrules: [{}]\n")
	if _, err := create(ctx, dyn, o); err == nil || !strings.Contains(err.Error(), `unknown field "spec.targetRefs"`) {
		t.Errorf("strict: error %v, want unknown field", err)
	}
	got, err := dyn.Resource(apGVR).Namespace(testNS).Create(ctx, o, metav1.CreateOptions{FieldValidation: "Ignore"})
	if err != nil {
		t.Fatal(err)
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(got.Object, "spec", "targetRefs"); found {
		t.Error("targetRefs stored")
	}
}
