package kubetest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// EndpointSliceManagedBy is the managed-by label value of the slices
// written by SyncEndpointSlice: the endpointslice controller's.
const EndpointSliceManagedBy = "endpointslice-controller.k8s.io"

// CreateService creates a ClusterIP service (clusterIP "" lets the API
// server allocate one from ServiceCIDR; "None" makes it headless). The
// namespace is created if missing. No EndpointSlice is made: call
// SyncEndpointSlice.
func (c *Cluster) CreateService(ctx context.Context, ns, name, clusterIP string, ports []corev1.ServicePort, selector map[string]string) (*corev1.Service, error) {
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		return nil, err
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: clusterIP,
			Ports:     ports,
			Selector:  selector,
		},
	}
	svc, err := c.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: create service %s/%s: %w", ns, name, err)
	}
	return svc, nil
}

// SyncEndpointSlice does for one service what the endpointslice controller
// does (there is none): it lists the pods of the service's namespace that
// match its selector and writes the IPv4 EndpointSlices of the service.
//
// As in the controller: a pod is an endpoint unless it is Succeeded or
// Failed or has no IP; conditions are serving = pod Ready, terminating =
// deletionTimestamp set, ready = serving and not terminating (both true
// with publishNotReadyAddresses); each endpoint has its targetRef, nodeName
// and, for a pod whose subdomain is the service, hostname; slice ports are
// the service ports (same names, protocols, appProtocols) resolved against
// each pod's container ports, a slice per distinct resolution; slices carry
// the service's labels plus kubernetes.io/service-name,
// endpointslice.kubernetes.io/managed-by and, headless,
// service.kubernetes.io/headless, and an owner reference to the service.
// Slices are reused by their ports, created with generateName "<svc>-", and
// removed when no longer needed; a service without endpoints keeps one empty
// slice. A service without selector is left alone (nil, nil). Not modeled:
// the 100 endpoints per slice limit, zones and topology hints.
func (c *Cluster) SyncEndpointSlice(ctx context.Context, svc *corev1.Service) ([]*discoveryv1.EndpointSlice, error) {
	if svc.Spec.Selector == nil {
		return nil, nil
	}
	pods, err := c.Client.CoreV1().Pods(svc.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("kubetest: pods of service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })

	type group struct {
		ports     []discoveryv1.EndpointPort
		endpoints []discoveryv1.Endpoint
	}
	var groups []*group
	byKey := map[string]*group{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		addr := podIPv4(pod)
		if addr == "" {
			continue
		}
		ports := endpointPorts(svc, pod)
		key := portsKey(ports)
		g := byKey[key]
		if g == nil {
			g = &group{ports: ports}
			byKey[key] = g
			groups = append(groups, g)
		}
		g.endpoints = append(g.endpoints, podEndpoint(svc, pod, addr))
	}
	if len(groups) == 0 { // the controller keeps a placeholder slice
		groups = append(groups, &group{ports: []discoveryv1.EndpointPort{}})
		byKey[portsKey(nil)] = groups[0]
	}

	api := c.Client.DiscoveryV1().EndpointSlices(svc.Namespace)
	existing, err := api.List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(labels.Set{
		discoveryv1.LabelServiceName: svc.Name,
		discoveryv1.LabelManagedBy:   EndpointSliceManagedBy,
	}).String()})
	if err != nil {
		return nil, fmt.Errorf("kubetest: endpointslices of %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	reuse := map[string]*discoveryv1.EndpointSlice{}
	var stale []string
	for i := range existing.Items {
		s := &existing.Items[i]
		key := portsKey(s.Ports)
		if _, wanted := byKey[key]; wanted && reuse[key] == nil {
			reuse[key] = s
		} else {
			stale = append(stale, s.Name)
		}
	}

	sliceLabels := map[string]string{}
	for k, v := range svc.Labels {
		if k != discoveryv1.LabelServiceName && k != discoveryv1.LabelManagedBy && k != corev1.IsHeadlessService {
			sliceLabels[k] = v
		}
	}
	sliceLabels[discoveryv1.LabelServiceName] = svc.Name
	sliceLabels[discoveryv1.LabelManagedBy] = EndpointSliceManagedBy
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		sliceLabels[corev1.IsHeadlessService] = ""
	}
	owner := metav1.OwnerReference{
		APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
	}

	var out []*discoveryv1.EndpointSlice
	for _, g := range groups {
		key := portsKey(g.ports)
		if s := reuse[key]; s != nil {
			s = s.DeepCopy()
			s.Labels, s.OwnerReferences = sliceLabels, []metav1.OwnerReference{owner}
			s.AddressType = discoveryv1.AddressTypeIPv4
			s.Endpoints, s.Ports = g.endpoints, g.ports
			s, err = api.Update(ctx, s, metav1.UpdateOptions{})
			if err != nil {
				return nil, fmt.Errorf("kubetest: update endpointslice of %s/%s: %w", svc.Namespace, svc.Name, err)
			}
			out = append(out, s)
			continue
		}
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				GenerateName: svc.Name + "-", Namespace: svc.Namespace,
				Labels: sliceLabels, OwnerReferences: []metav1.OwnerReference{owner},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   g.endpoints,
			Ports:       g.ports,
		}
		s, err = api.Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("kubetest: create endpointslice of %s/%s: %w", svc.Namespace, svc.Name, err)
		}
		out = append(out, s)
	}
	for _, name := range stale {
		if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("kubetest: delete endpointslice %s/%s: %w", svc.Namespace, name, err)
		}
	}
	return out, nil
}

func podIPv4(pod *corev1.Pod) string {
	ips := []string{pod.Status.PodIP}
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			return a.String()
		}
	}
	return ""
}

func podEndpoint(svc *corev1.Service, pod *corev1.Pod, addr string) discoveryv1.Endpoint {
	serving := false
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady {
			serving = cond.Status == corev1.ConditionTrue
		}
	}
	terminating := pod.DeletionTimestamp != nil
	ready := svc.Spec.PublishNotReadyAddresses || (serving && !terminating)
	ep := discoveryv1.Endpoint{
		Addresses: []string{addr},
		Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(terminating),
		},
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
	}
	if pod.Spec.NodeName != "" {
		ep.NodeName = ptr.To(pod.Spec.NodeName)
	}
	if pod.Spec.Hostname != "" && pod.Spec.Subdomain == svc.Name && pod.Namespace == svc.Namespace {
		ep.Hostname = ptr.To(pod.Spec.Hostname)
	}
	return ep
}

// endpointPorts resolves the service's ports against the pod's containers
// (podutil.FindPort): a named target port needs a container port of that
// name and protocol, else the service port is left out for this pod.
func endpointPorts(svc *corev1.Service, pod *corev1.Pod) []discoveryv1.EndpointPort {
	ports := []discoveryv1.EndpointPort{}
	for _, sp := range svc.Spec.Ports {
		num, ok := findPort(pod, &sp)
		if !ok {
			continue
		}
		ports = append(ports, discoveryv1.EndpointPort{
			Name:        ptr.To(sp.Name),
			Port:        ptr.To(num),
			Protocol:    ptr.To(sp.Protocol),
			AppProtocol: sp.AppProtocol,
		})
	}
	return ports
}

func findPort(pod *corev1.Pod, sp *corev1.ServicePort) (int32, bool) {
	switch sp.TargetPort.Type {
	case intstr.Int:
		if sp.TargetPort.IntVal != 0 {
			return sp.TargetPort.IntVal, true
		}
		return sp.Port, true
	case intstr.String:
		for _, ctr := range pod.Spec.Containers {
			for _, p := range ctr.Ports {
				if p.Name == sp.TargetPort.StrVal && p.Protocol == sp.Protocol {
					return p.ContainerPort, true
				}
			}
		}
	}
	return 0, false
}

func portsKey(ports []discoveryv1.EndpointPort) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		parts = append(parts, fmt.Sprintf("%s/%s/%d/%s",
			ptr.Deref(p.Name, ""), ptr.Deref(p.Protocol, ""), ptr.Deref(p.Port, 0), ptr.Deref(p.AppProtocol, "")))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
