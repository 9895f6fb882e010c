package kubetest

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// What a kubelet would do, without one: pods bound to a node get their
// status (IPs, phase, conditions) patched as if their containers ran. The
// network side (namespaces, addresses on interfaces) is the caller's.

// PodImage is the image of the single container of pods made by CreatePod;
// nothing pulls it.
const PodImage = "strait.invalid/kubetest/pause:1"

// PodSpec describes a pod for CreatePod.
type PodSpec struct {
	Namespace string // created if missing
	Name      string
	// Node is spec.nodeName: the pod is bound to it without a scheduler.
	Node string
	// ServiceAccount defaults to "default"; created if missing.
	ServiceAccount string
	Labels         map[string]string
	Annotations    map[string]string
	// IP is the pod IP (status.podIP/podIPs). Empty leaves the pod Pending
	// with no status, as before its sandbox exists.
	IP string
	// HostIP is status.hostIP; it defaults to the InternalIP of the Node
	// object if there is one (see EnsureNode), else 127.0.0.1.
	HostIP string
	// NotReady makes the pod Running with its Ready condition false.
	NotReady bool
	// Ports are the container's ports (for services with named target ports).
	Ports []corev1.ContainerPort
}

// CreatePod creates a pod bound to spec.Node and, when spec.IP is set,
// patches its status like a kubelet that started it: phase Running, podIP,
// podIPs, hostIP, started container, conditions PodScheduled, Initialized,
// ContainersReady and Ready (false when spec.NotReady). It returns the pod
// as it is after the status update.
func (c *Cluster) CreatePod(ctx context.Context, spec PodSpec) (*corev1.Pod, error) {
	if spec.Namespace == "" || spec.Name == "" {
		return nil, fmt.Errorf("kubetest: CreatePod needs a namespace and a name")
	}
	var ip netip.Addr
	if spec.IP != "" {
		var err error
		if ip, err = netip.ParseAddr(spec.IP); err != nil {
			return nil, fmt.Errorf("kubetest: pod %s/%s: IP: %w", spec.Namespace, spec.Name, err)
		}
	}
	sa := spec.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	if err := c.EnsureServiceAccount(ctx, spec.Namespace, sa); err != nil {
		return nil, err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: spec.Namespace, Name: spec.Name,
			Labels: spec.Labels, Annotations: spec.Annotations,
		},
		Spec: corev1.PodSpec{
			NodeName:                      spec.Node,
			ServiceAccountName:            sa,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{
				Name: "app", Image: PodImage, ImagePullPolicy: corev1.PullNever, Ports: spec.Ports,
			}},
		},
	}
	pod, err := c.Client.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: create pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	if !ip.IsValid() {
		return pod, nil
	}
	return c.setRunning(ctx, pod, ip, spec.HostIP, spec.NotReady)
}

// StartPod patches the status of a created, pending pod like a kubelet
// whose sandbox network is up (after the CNI ADD gave it ip): Running,
// Ready, with podIP and hostIP.
func (c *Cluster) StartPod(ctx context.Context, ns, name string, ip netip.Addr) (*corev1.Pod, error) {
	pod, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: pod %s/%s: %w", ns, name, err)
	}
	return c.setRunning(ctx, pod, ip, "", false)
}

func (c *Cluster) setRunning(ctx context.Context, pod *corev1.Pod, ip netip.Addr, hostIP string, notReady bool) (*corev1.Pod, error) {
	if hostIP == "" {
		hostIP = c.nodeIP(ctx, pod.Spec.NodeName)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	ready := corev1.ConditionTrue
	if notReady {
		ready = corev1.ConditionFalse
	}
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    hostIP,
		HostIPs:   []corev1.HostIP{{IP: hostIP}},
		PodIP:     ip.String(),
		PodIPs:    []corev1.PodIP{{IP: ip.String()}},
		StartTime: &now,
		QOSClass:  corev1.PodQOSBestEffort,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: PodImage, ImageID: PodImage, ContainerID: "containerd://kubetest-" + string(pod.UID),
			Ready: !notReady, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	pod, err := c.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return pod, nil
}

// SetPodReady flips the Ready and ContainersReady conditions of a pod, as
// a kubelet does when a readiness probe changes.
func (c *Cluster) SetPodReady(ctx context.Context, ns, name string, ready bool) (*corev1.Pod, error) {
	pods := c.Client.CoreV1().Pods(ns)
	for attempt := 0; ; attempt++ {
		pod, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("kubetest: pod %s/%s: %w", ns, name, err)
		}
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		for i := range pod.Status.Conditions {
			cond := &pod.Status.Conditions[i]
			if (cond.Type == corev1.PodReady || cond.Type == corev1.ContainersReady) && cond.Status != status {
				cond.Status, cond.LastTransitionTime = status, now
			}
		}
		for i := range pod.Status.ContainerStatuses {
			pod.Status.ContainerStatuses[i].Ready = ready
		}
		pod, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kubetest: status of pod %s/%s: %w", ns, name, err)
		}
		return pod, nil
	}
}

// DeletePod deletes a pod at once (grace period 0), as a kubelet confirming
// its containers are gone would let happen.
func (c *Cluster) DeletePod(ctx context.Context, ns, name string) error {
	err := c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil {
		return fmt.Errorf("kubetest: delete pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// EnsureNode creates a Node object named name with internalIP as its
// InternalIP address and a Ready condition, as a kubelet registering
// itself would, unless it exists.
func (c *Cluster) EnsureNode(ctx context.Context, name, internalIP string) (*corev1.Node, error) {
	nodes := c.Client.CoreV1().Nodes()
	node, err := nodes.Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname: name, corev1.LabelOSStable: "linux",
		}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nodes.Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("kubetest: node %s: %w", name, err)
	}
	now := metav1.Now()
	node.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: internalIP}, {Type: corev1.NodeHostName, Address: name}},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	node, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: status of node %s: %w", name, err)
	}
	return node, nil
}

// nodeIP is the InternalIP of Node name, or 127.0.0.1 without one.
func (c *Cluster) nodeIP(ctx context.Context, name string) string {
	if name != "" {
		if node, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
			for _, a := range node.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					return a.Address
				}
			}
		}
	}
	return "127.0.0.1"
}
