package kubetest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/kubetest"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// One cluster for the package's tests, started in TestMain and stopped
// explicitly (t.Cleanup needs a t); each test works in its own namespace.
// TestRestartKeepsWatches starts a second, private cluster with Start, so
// that restarting its API server cannot disturb the other tests.
var shared *kubetest.Cluster

func TestMain(m *testing.M) {
	start := time.Now()
	c, err := kubetest.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if errors.Is(err, kubetest.ErrNoBinaries) {
			fmt.Fprintln(os.Stderr, "kubetest: the tests need a real etcd and kube-apiserver: run make kube-bins")
		}
		os.Exit(1)
	}
	fmt.Printf("kubetest: cluster ready in %v at %s\n", time.Since(start).Round(time.Millisecond), c.Host)
	shared = c
	code := m.Run()
	c.Stop()
	os.Exit(code)
}

// cluster returns the shared cluster, logging its last log lines if t fails.
func cluster(t *testing.T) *kubetest.Cluster {
	t.Cleanup(func() {
		if t.Failed() {
			shared.LogTail(t)
		}
	})
	return shared
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestKubeconfig(t *testing.T) {
	c := cluster(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", c.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != c.Host {
		t.Errorf("kubeconfig host %q, want %q", cfg.Host, c.Host)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctxFor(t), "default", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Name != "default" {
		t.Errorf("namespace %q", ns.Name)
	}
	if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctxFor(t), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("default service account: %v", err)
	}
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != kubetest.KubeVersion {
		t.Errorf("server version %s, want %s", v.GitVersion, kubetest.KubeVersion)
	}
}

func TestPodBoundToNode(t *testing.T) {
	c, ctx := cluster(t), ctxFor(t)
	if err := c.EnsureNamespace(ctx, "pods"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EnsureNode(ctx, "node-a", "172.18.0.2"); err != nil {
		t.Fatal(err)
	}
	created, err := c.CreatePod(ctx, kubetest.PodSpec{
		Namespace: "pods", Name: "web-0", Node: "node-a", ServiceAccount: "web",
		Labels: map[string]string{"app": "web"}, IP: "10.244.1.5",
	})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods("pods").Get(ctx, "web-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.UID != created.UID {
		t.Errorf("uid %s, CreatePod returned %s", pod.UID, created.UID)
	}
	if pod.Spec.NodeName != "node-a" || pod.Spec.ServiceAccountName != "web" || pod.Labels["app"] != "web" {
		t.Errorf("spec: node %q, service account %q, labels %v", pod.Spec.NodeName, pod.Spec.ServiceAccountName, pod.Labels)
	}
	st := pod.Status
	if st.Phase != corev1.PodRunning || st.PodIP != "10.244.1.5" || len(st.PodIPs) != 1 || st.PodIPs[0].IP != "10.244.1.5" {
		t.Errorf("status: phase %s, podIP %q, podIPs %v", st.Phase, st.PodIP, st.PodIPs)
	}
	if st.HostIP != "172.18.0.2" {
		t.Errorf("hostIP %q, want the node's InternalIP 172.18.0.2", st.HostIP)
	}
	if !podReady(pod) {
		t.Errorf("pod not Ready: %+v", st.Conditions)
	}
	if _, err := c.Client.CoreV1().ServiceAccounts("pods").Get(ctx, "web", metav1.GetOptions{}); err != nil {
		t.Errorf("service account made by CreatePod: %v", err)
	}

	pending, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: "pods", Name: "pending", Node: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if pending.Status.Phase != corev1.PodPending || pending.Status.PodIP != "" {
		t.Errorf("pod without IP: phase %s, podIP %q", pending.Status.Phase, pending.Status.PodIP)
	}

	if err := c.DeletePod(ctx, "pods", "web-0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Pods("pods").Get(ctx, "web-0", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after DeletePod: %v, want NotFound", err)
	}
}

func TestBoundTokenReview(t *testing.T) {
	c, ctx := cluster(t), ctxFor(t)
	pod, err := c.CreatePod(ctx, kubetest.PodSpec{
		Namespace: "tokens", Name: "client", Node: "node-a", ServiceAccount: "sleep", IP: "10.244.1.9",
	})
	if err != nil {
		t.Fatal(err)
	}
	token, err := c.ServiceAccountToken(ctx, "tokens", "sleep", []string{kubetest.CAAudience}, pod)
	if err != nil {
		t.Fatal(err)
	}
	review := func(audiences ...string) authenticationv1.TokenReviewStatus {
		t.Helper()
		r, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}

	st := review(kubetest.CAAudience)
	if !st.Authenticated {
		t.Fatalf("not authenticated: %q", st.Error)
	}
	if want := "system:serviceaccount:tokens:sleep"; st.User.Username != want {
		t.Errorf("username %q, want %q", st.User.Username, want)
	}
	extra := func(k string) string {
		if v := st.User.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return fmt.Sprint(st.User.Extra[k])
	}
	if got := extra("authentication.kubernetes.io/node-name"); got != "node-a" {
		t.Errorf("extra node-name %q, want node-a (extra %v)", got, st.User.Extra)
	}
	if got := extra("authentication.kubernetes.io/pod-name"); got != "client" {
		t.Errorf("extra pod-name %q, want client", got)
	}
	if got := extra("authentication.kubernetes.io/pod-uid"); got != string(pod.UID) {
		t.Errorf("extra pod-uid %q, want %s", got, pod.UID)
	}
	if !slices.Equal(st.Audiences, []string{kubetest.CAAudience}) {
		t.Errorf("audiences %v, want [%s]", st.Audiences, kubetest.CAAudience)
	}

	if st := review("someone-else"); st.Authenticated {
		t.Errorf("token for %s authenticated for audience someone-else", kubetest.CAAudience)
	}
	// A bound token dies with its pod: once the API server's caches catch
	// up (its token authentication cache keeps a success for 10 s).
	if err := c.DeletePod(ctx, "tokens", "client"); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for review(kubetest.CAAudience).Authenticated {
		if time.Since(deleted) > 20*time.Second {
			t.Fatal("token bound to a deleted pod still authenticated after 20 s")
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("token bound to a deleted pod rejected %v after the deletion", time.Since(deleted).Round(time.Millisecond))
}

func TestRBAC(t *testing.T) {
	c, ctx := cluster(t), ctxFor(t)
	if err := c.EnsureNamespace(ctx, "rbac"); err != nil {
		t.Fatal(err)
	}
	alice := c.ClientFor(t, "alice", "strait:testers")
	_, err := alice.CoreV1().Pods("rbac").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("alice without a role listing pods: %v, want Forbidden", err)
	}

	rbac := c.Client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "kubetest-pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubetest-testers-read-pods"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "kubetest-pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "strait:testers"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer reads roles from an informer: eventually allowed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = alice.CoreV1().Pods("rbac").List(ctx, metav1.ListOptions{})
		if err == nil || !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("alice in strait:testers after the binding: %v", err)
	}
	// The role grants reading pods, nothing else.
	if _, err := alice.CoreV1().Services("rbac").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice listing services: %v, want Forbidden", err)
	}
	bob := c.ClientFor(t, "bob")
	if _, err := bob.CoreV1().Pods("rbac").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("bob (no group) listing pods: %v, want Forbidden", err)
	}
}

func TestEndpointSlice(t *testing.T) {
	c, ctx := cluster(t), ctxFor(t)
	const ns = "slices"
	httpPort := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
	for _, p := range []kubetest.PodSpec{
		{Name: "echo-1", Node: "node-a", IP: "10.244.1.10", Labels: map[string]string{"app": "echo"}, Ports: httpPort},
		{Name: "echo-2", Node: "node-b", IP: "10.244.2.10", Labels: map[string]string{"app": "echo"}, Ports: httpPort, NotReady: true},
		{Name: "other", Node: "node-a", IP: "10.244.1.11", Labels: map[string]string{"app": "other"}, Ports: httpPort},
		{Name: "echo-pending", Node: "node-a", Labels: map[string]string{"app": "echo"}, Ports: httpPort},
	} {
		p.Namespace = ns
		if _, err := c.CreatePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := c.CreateService(ctx, ns, "echo", "", []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
	}, map[string]string{"app": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Fatalf("cluster IP %q", svc.Spec.ClusterIP)
	}

	got, err := c.SyncEndpointSlice(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d slices, want 1", len(got))
	}
	list, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d slices stored, want 1", len(list.Items))
	}
	s := list.Items[0]
	if s.Labels[discoveryv1.LabelManagedBy] != "endpointslice-controller.k8s.io" || s.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("labels %v, addressType %s", s.Labels, s.AddressType)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != svc.UID {
		t.Errorf("owner references %v", s.OwnerReferences)
	}
	if len(s.Ports) != 1 || *s.Ports[0].Name != "http" || *s.Ports[0].Port != 8080 || *s.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("ports %+v, want http 8080/TCP", s.Ports)
	}
	eps := endpointsByPod(s)
	if len(eps) != 2 {
		t.Fatalf("endpoints for %v, want echo-1 and echo-2", keys(eps))
	}
	e1, e2 := eps["echo-1"], eps["echo-2"]
	if e1.Addresses[0] != "10.244.1.10" || *e1.NodeName != "node-a" || !*e1.Conditions.Ready || !*e1.Conditions.Serving || *e1.Conditions.Terminating {
		t.Errorf("echo-1: %s on %s, conditions %s", e1.Addresses, *e1.NodeName, conds(e1))
	}
	if e2.Addresses[0] != "10.244.2.10" || *e2.NodeName != "node-b" || *e2.Conditions.Ready || *e2.Conditions.Serving {
		t.Errorf("echo-2 (not Ready): %s on %s, conditions %s", e2.Addresses, *e2.NodeName, conds(e2))
	}
	if e1.TargetRef == nil || e1.TargetRef.Kind != "Pod" || e1.TargetRef.Namespace != ns {
		t.Errorf("echo-1 targetRef %+v", e1.TargetRef)
	}

	// Readiness changes and a resync updates the same slice.
	if _, err := c.SetPodReady(ctx, ns, "echo-2", true); err != nil {
		t.Fatal(err)
	}
	if err := c.DeletePod(ctx, ns, "echo-1"); err != nil {
		t.Fatal(err)
	}
	got, err = c.SyncEndpointSlice(ctx, svc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != s.Name {
		t.Fatalf("resync: %d slices (first %q), want the same slice %q", len(got), got[0].Name, s.Name)
	}
	eps = endpointsByPod(*got[0])
	if len(eps) != 1 || !*eps["echo-2"].Conditions.Ready {
		t.Errorf("after resync: endpoints %v, want echo-2 ready", keys(eps))
	}

	// No pods left: one empty slice remains, as the controller keeps.
	if err := c.DeletePod(ctx, ns, "echo-2"); err != nil {
		t.Fatal(err)
	}
	if got, err = c.SyncEndpointSlice(ctx, svc); err != nil {
		t.Fatal(err)
	}
	list, err = c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(list.Items) != 1 || len(list.Items[0].Endpoints) != 0 {
		t.Errorf("without pods: %d slices returned, %d stored, want one empty", len(got), len(list.Items))
	}
}

func TestRestartKeepsWatches(t *testing.T) {
	start := time.Now()
	c := kubetest.Start(t)
	t.Logf("private cluster ready in %v", time.Since(start).Round(time.Millisecond))
	ctx := ctxFor(t)
	const ns = "watch"
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}

	added := make(chan string, 16)
	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { added <- obj.(*corev1.Pod).Name },
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer func() { close(stop); factory.Shutdown() }()
	factory.Start(stop)
	factory.WaitForCacheSync(stop)

	waitAdded := func(name string, within time.Duration) {
		t.Helper()
		timeout := time.After(within)
		for {
			select {
			case got := <-added:
				if got == name {
					return
				}
			case <-timeout:
				t.Fatalf("informer did not see pod %s within %v", name, within)
			}
		}
	}
	if _, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: ns, Name: "before", Node: "node-a", IP: "10.244.1.20"}); err != nil {
		t.Fatal(err)
	}
	waitAdded("before", 10*time.Second)

	restart := time.Now()
	c.Restart(t)
	t.Logf("API server restarted in %v", time.Since(restart).Round(time.Millisecond))
	if _, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: ns, Name: "after", Node: "node-a", IP: "10.244.1.21"}); err != nil {
		t.Fatal(err)
	}
	waitAdded("after", 20*time.Second)
	if names := podNames(inf.GetStore().List()); !slices.Equal(names, []string{"after", "before"}) {
		t.Errorf("informer store %v, want [after before]", names)
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func endpointsByPod(s discoveryv1.EndpointSlice) map[string]discoveryv1.Endpoint {
	m := map[string]discoveryv1.Endpoint{}
	for _, e := range s.Endpoints {
		if e.TargetRef != nil {
			m[e.TargetRef.Name] = e
		}
	}
	return m
}

func keys(m map[string]discoveryv1.Endpoint) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func conds(e discoveryv1.Endpoint) string {
	return fmt.Sprintf("ready=%v serving=%v terminating=%v", *e.Conditions.Ready, *e.Conditions.Serving, *e.Conditions.Terminating)
}

func podNames(objs []any) []string {
	var names []string
	for _, o := range objs {
		names = append(names, o.(*corev1.Pod).Name)
	}
	slices.Sort(names)
	return names
}

func TestMissingBinaries(t *testing.T) {
	dir := t.TempDir()
	_, err := kubetest.New(kubetest.WithBinDir(dir))
	if !errors.Is(err, kubetest.ErrNoBinaries) {
		t.Fatalf("New with an empty bin dir: %v, want ErrNoBinaries", err)
	}
	if !strings.Contains(err.Error(), "make kube-bins") || !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the directory and make kube-bins", err)
	}
	t.Setenv("STRAIT_KUBE_BINS", dir)
	if got := kubetest.BinDir(); got != dir {
		t.Errorf("BinDir with STRAIT_KUBE_BINS=%s: %s", dir, got)
	}
}
