package manifest_test

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/strait-mesh/strait/deploy"
	"github.com/strait-mesh/strait/deploy/manifest"
)

const (
	systemNS  = "strait-system"
	agentName = "strait-cni-agent"
	agentSA   = "system:serviceaccount:strait-system:strait-cni-agent"
)

// typed decodes the object kind ns/name of the shipped manifests into its
// client-go type.
func typed[T runtime.Object](t *testing.T, kind, ns, name string) T {
	t.Helper()
	objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() != kind || o.GetNamespace() != ns || o.GetName() != name {
			continue
		}
		data, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		v, ok := obj.(T)
		if !ok {
			t.Fatalf("%s decodes to %T", o, obj)
		}
		return v
	}
	var zero T
	t.Fatalf("no %s %s/%s in the manifests", kind, ns, name)
	return zero
}

// flags reads "-name=value" and bare "-bool" arguments; anything else,
// e.g. "-flag value" pairs, is an error.
func flags(t *testing.T, args []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			v = "true"
		}
		if !strings.HasPrefix(k, "-") || strings.HasPrefix(k, "--") || len(k) < 2 {
			t.Errorf("argument %q is not -name=value or -bool", a)
			continue
		}
		if _, dup := m[k[1:]]; dup {
			t.Errorf("flag %s given twice", k)
		}
		m[k[1:]] = v
	}
	return m
}

// The node agent: host network, not privileged, exactly the capabilities
// it needs, exactly the host paths it needs, flags pointing into them.
func TestNodeAgentDaemonSet(t *testing.T) {
	ds := typed[*appsv1.DaemonSet](t, "DaemonSet", systemNS, agentName)
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.HostPID || ps.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v, want true false false (the host's /proc is mounted instead of hostPID)", ps.HostNetwork, ps.HostPID, ps.HostIPC)
	}
	if ps.ServiceAccountName != agentName {
		t.Errorf("serviceAccountName %q", ps.ServiceAccountName)
	}
	if ps.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", ps.PriorityClassName)
	}
	if !slices.ContainsFunc(ps.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Effect == "" && tl.Operator == corev1.TolerationOpExists
	}) {
		t.Errorf("tolerations %v do not tolerate every taint", ps.Tolerations)
	}
	if g := ps.TerminationGracePeriodSeconds; g == nil || *g < 10 || *g > 60 {
		t.Errorf("terminationGracePeriodSeconds %s, want 10..60", show(g))
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		!reflect.DeepEqual(us.RollingUpdate.MaxUnavailable, ptrTo(intstr.FromInt32(1))) {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxUnavailable 1", us)
	}
	// Host network and host port 15022: a second agent on the node (surge)
	// could not bind.
	if ru := us.RollingUpdate; ru != nil && ru.MaxSurge != nil && ru.MaxSurge.IntValue() != 0 {
		t.Errorf("maxSurge %v on a host-network DaemonSet", ru.MaxSurge)
	}
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers, want 1 and 0", len(ps.Containers), len(ps.InitContainers))
	}
	c := ps.Containers[0]
	if c.Image != "ghcr.io/strait-mesh/strait-cni-agent:v0.1.0" {
		t.Errorf("image %q", c.Image)
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Errorf("privileged %s, want an explicit false", show(sc.Privileged))
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation %s, want false", show(sc.AllowPrivilegeEscalation))
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("readOnlyRootFilesystem %s, want true", show(sc.ReadOnlyRootFilesystem))
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("runAsUser %s, want 0", show(sc.RunAsUser))
	}
	if sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	add := slices.Clone(sc.Capabilities.Add)
	slices.Sort(add)
	if want := []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}; !reflect.DeepEqual(add, want) {
		t.Errorf("capabilities.add %v, want exactly %v", add, want)
	}
	if pc := ps.SecurityContext; pc != nil && pc.RunAsNonRoot != nil && *pc.RunAsNonRoot {
		t.Error("pod runAsNonRoot contradicts runAsUser 0")
	}

	// Every volume is one of these host paths, mounted exactly so.
	type hostMount struct {
		host     string
		typ      corev1.HostPathType
		readOnly bool
		prop     corev1.MountPropagationMode
	}
	want := map[string]hostMount{
		"/host/opt/cni/bin":   {"/opt/cni/bin", corev1.HostPathDirectoryOrCreate, false, ""},
		"/host/etc/cni/net.d": {"/etc/cni/net.d", corev1.HostPathDirectoryOrCreate, false, ""},
		"/host/proc":          {"/proc", corev1.HostPathDirectory, true, ""},
		"/var/run/netns":      {"/var/run/netns", corev1.HostPathDirectoryOrCreate, true, corev1.MountPropagationHostToContainer},
		"/var/run/strait":     {"/var/run/strait", corev1.HostPathDirectoryOrCreate, false, ""},
		"/run/xtables.lock":   {"/run/xtables.lock", corev1.HostPathFileOrCreate, false, ""},
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	got := map[string]hostMount{}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok || v.HostPath == nil {
			t.Errorf("mount %s: volume %q is not a hostPath", m.MountPath, m.Name)
			continue
		}
		hm := hostMount{host: v.HostPath.Path, readOnly: m.ReadOnly}
		if v.HostPath.Type != nil {
			hm.typ = *v.HostPath.Type
		}
		if m.MountPropagation != nil {
			hm.prop = *m.MountPropagation
		}
		got[m.MountPath] = hm
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("host mounts:\n got %+v\nwant %+v", got, want)
	}
	if len(vols) != len(want) {
		t.Errorf("%d volumes, want %d (one per mount)", len(vols), len(want))
	}

	// The flags point into those mounts; the sockets are where ztunnel and
	// the plugin look.
	f := flags(t, c.Args)
	for flag, val := range map[string]string{
		"zds-socket":   "/var/run/strait/ztunnel.sock",
		"cni-socket":   "/var/run/strait/cni.sock", // cni/plugin.DefaultSocket
		"cni-bin-dir":  "/host/opt/cni/bin",
		"cni-conf-dir": "/host/etc/cni/net.d",
		"proc":         "/host/proc",
		"netns-dir":    "/var/run/netns",
		"health-addr":  ":15022",
		"fail-open":    "false",
		"probe-snat":   "true",
		"redirect":     "auto",
	} {
		if f[flag] != val {
			t.Errorf("-%s=%q, want %q", flag, f[flag], val)
		}
	}
	known := []string{"node", "kubeconfig", "zds-socket", "cni-socket", "cni-bin-dir", "cni-conf-dir", "cni-plugin", "fail-open", "proc", "netns-dir", "redirect", "probe-snat", "health-addr", "log-level"}
	for flag := range f {
		if !slices.Contains(known, flag) {
			t.Errorf("-%s is not a strait-cni-agent flag", flag)
		}
	}

	// Health on 15022: /ready for readiness, /healthz for liveness.
	for name, p := range map[string]*corev1.Probe{"/ready": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port != intstr.FromInt32(15022) {
			t.Errorf("probe %s: %+v", name, p)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 15022 {
		t.Errorf("ports %+v, want 15022", c.Ports)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	for name, path := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if env[name] != path {
			t.Errorf("env %s from %q, want %s", name, env[name], path)
		}
	}
	r := c.Resources
	for what, q := range map[string]struct{ got, want resource.Quantity }{
		"requests.cpu":    {r.Requests[corev1.ResourceCPU], resource.MustParse("50m")},
		"requests.memory": {r.Requests[corev1.ResourceMemory], resource.MustParse("64Mi")},
		"limits.memory":   {r.Limits[corev1.ResourceMemory], resource.MustParse("256Mi")},
	} {
		if q.got.Cmp(q.want) != 0 {
			t.Errorf("%s %s, want %s", what, q.got.String(), q.want.String())
		}
	}
	if _, ok := r.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit throttles the agent while pods wait for it")
	}

	// ztunnel dials the agent's ZDS socket through the same host directory.
	zt := typed[*appsv1.DaemonSet](t, "DaemonSet", systemNS, "ztunnel")
	zc := zt.Spec.Template.Spec.Containers[0]
	if zf := flags(t, zc.Args); zf["zds-socket"] != f["zds-socket"] {
		t.Errorf("ztunnel -zds-socket=%q, agent -zds-socket=%q", zf["zds-socket"], f["zds-socket"])
	}
	for _, m := range zc.VolumeMounts {
		if m.MountPath != "/var/run/strait" {
			continue
		}
		for _, v := range zt.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && (v.HostPath == nil || v.HostPath.Path != want["/var/run/strait"].host) {
				t.Errorf("ztunnel's /var/run/strait is %+v, not the agent's host directory", v.VolumeSource)
			}
		}
	}
}

// ztunnel upgrades surge (a new one beside the old, which then drains),
// and the kubelet waits longer than the drain before it kills.
func TestZtunnelRollout(t *testing.T) {
	ds := typed[*appsv1.DaemonSet](t, "DaemonSet", systemNS, "ztunnel")
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		!reflect.DeepEqual(us.RollingUpdate.MaxSurge, ptrTo(intstr.FromInt32(1))) ||
		!reflect.DeepEqual(us.RollingUpdate.MaxUnavailable, ptrTo(intstr.FromInt32(0))) {
		t.Errorf("updateStrategy %+v, want RollingUpdate maxSurge 1 maxUnavailable 0", us)
	}
	ps := ds.Spec.Template.Spec
	// Surge puts two ztunnels on a node: no host network, no host ports.
	if ps.HostNetwork {
		t.Error("ztunnel in the host network cannot surge")
	}
	for _, p := range ps.Containers[0].Ports {
		if p.HostPort != 0 {
			t.Errorf("host port %d: the surge pod could not start", p.HostPort)
		}
	}
	f := flags(t, ps.Containers[0].Args)
	drain := 30 * time.Second // ztunnel's default
	if v, ok := f["drain-grace"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("-drain-grace=%q: %v", v, err)
		}
		drain = d
	}
	g := ps.TerminationGracePeriodSeconds
	if g == nil || time.Duration(*g)*time.Second < drain+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %s, want at least -drain-grace (%v) + 10s", show(g), drain)
	}
}

// No workload is privileged or shares the host's PID or IPC namespace;
// only the node agent is in the host network.
func TestNoWorkloadPrivileged(t *testing.T) {
	objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		var ps corev1.PodSpec
		switch o.GetKind() {
		case "DaemonSet":
			ps = typed[*appsv1.DaemonSet](t, o.GetKind(), o.GetNamespace(), o.GetName()).Spec.Template.Spec
		case "Deployment":
			ps = typed[*appsv1.Deployment](t, o.GetKind(), o.GetNamespace(), o.GetName()).Spec.Template.Spec
		default:
			continue
		}
		n++
		if ps.HostPID || ps.HostIPC {
			t.Errorf("%s: hostPID %v hostIPC %v", o, ps.HostPID, ps.HostIPC)
		}
		if ps.HostNetwork != (o.GetName() == agentName) {
			t.Errorf("%s: hostNetwork %v", o, ps.HostNetwork)
		}
		for _, c := range append(ps.InitContainers, ps.Containers...) {
			if sc := c.SecurityContext; sc == nil || sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s container %s: privileged or no securityContext", o, c.Name)
			} else if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s container %s: allowPrivilegeEscalation not false", o, c.Name)
			}
		}
	}
	if n != 3 {
		t.Errorf("%d workloads, want 3 (strait-ca, ztunnel, strait-cni-agent)", n)
	}
}

// The agent's RBAC, rule by rule: read pods and namespaces; get its own
// DaemonSet, by name, in strait-system; bound to its service account.
func TestNodeAgentRBAC(t *testing.T) {
	typed[*corev1.ServiceAccount](t, "ServiceAccount", systemNS, agentName)
	cr := typed[*rbacv1.ClusterRole](t, "ClusterRole", "", agentName)
	if want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}}}; !reflect.DeepEqual(cr.Rules, want) {
		t.Errorf("ClusterRole %s rules:\n got %+v\nwant %+v", agentName, cr.Rules, want)
	}
	r := typed[*rbacv1.Role](t, "Role", systemNS, agentName)
	if want := []rbacv1.PolicyRule{{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{agentName}, Verbs: []string{"get"}}}; !reflect.DeepEqual(r.Rules, want) {
		t.Errorf("Role %s rules:\n got %+v\nwant %+v", agentName, r.Rules, want)
	}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentName, Namespace: systemNS}}
	crb := typed[*rbacv1.ClusterRoleBinding](t, "ClusterRoleBinding", "", agentName)
	if crb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: agentName}) || !reflect.DeepEqual(crb.Subjects, subj) {
		t.Errorf("ClusterRoleBinding %s: %+v %+v", agentName, crb.RoleRef, crb.Subjects)
	}
	rb := typed[*rbacv1.RoleBinding](t, "RoleBinding", systemNS, agentName)
	if rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: agentName}) || !reflect.DeepEqual(rb.Subjects, subj) {
		t.Errorf("RoleBinding %s: %+v %+v", agentName, rb.RoleRef, rb.Subjects)
	}
	// Nothing else grants the agent anything.
	objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if (o.GetKind() == "ClusterRoleBinding" || o.GetKind() == "RoleBinding") && o.GetName() != agentName {
			if data, _ := o.MarshalJSON(); strings.Contains(string(data), fmt.Sprintf("%q", agentName)) {
				t.Errorf("%s also binds %s", o, agentName)
			}
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// show prints what a pointer field holds ("unset" for nil).
func show[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}
