package kube

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// Slim is the informers' transform: it keeps only what Translate and the
// informers themselves need (name, namespace, uid, resource version,
// labels, timestamps; the spec and status fields read below), so the
// caches do not hold managed fields, annotations, container specs and
// the rest of every object. Pods become a [Pod], a third of the size of
// even an empty corev1.Pod. Unknown types pass through unchanged.
func Slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return SlimPod(o), nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: slimMeta(o.ObjectMeta)}, nil
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: slimMeta(o.ObjectMeta)}
		s.Spec.Type = o.Spec.Type
		s.Spec.ClusterIP = o.Spec.ClusterIP
		s.Spec.ClusterIPs = o.Spec.ClusterIPs
		s.Spec.Ports = make([]corev1.ServicePort, len(o.Spec.Ports))
		for i, p := range o.Spec.Ports {
			s.Spec.Ports[i] = corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.TargetPort}
		}
		return s, nil
	case *discoveryv1.EndpointSlice:
		s := &discoveryv1.EndpointSlice{ObjectMeta: slimMeta(o.ObjectMeta), AddressType: o.AddressType, Ports: o.Ports}
		s.Endpoints = make([]discoveryv1.Endpoint, len(o.Endpoints))
		for i, e := range o.Endpoints {
			s.Endpoints[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName}
			if e.TargetRef != nil {
				s.Endpoints[i].TargetRef = &corev1.ObjectReference{Kind: e.TargetRef.Kind, Name: e.TargetRef.Name, Namespace: e.TargetRef.Namespace, UID: e.TargetRef.UID}
			}
		}
		return s, nil
	}
	return obj, nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Generation: m.Generation,
		Labels: m.Labels, CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
	}
}

var _ cache.TransformFunc = Slim

// Pod is what the pod informer caches: the fields Translate reads.
type Pod struct {
	metav1.ObjectMeta
	NodeName       string
	ServiceAccount string
	IPs            []string // status.podIPs (or podIP)
	Phase          corev1.PodPhase
	HostNetwork    bool
	Ready          bool // condition Ready is True
}

// SlimPod keeps what Translate needs of a pod.
func SlimPod(o *corev1.Pod) *Pod {
	p := &Pod{ObjectMeta: slimMeta(o.ObjectMeta), NodeName: o.Spec.NodeName, ServiceAccount: o.Spec.ServiceAccountName,
		Phase: o.Status.Phase, HostNetwork: o.Spec.HostNetwork}
	for _, ip := range o.Status.PodIPs {
		p.IPs = append(p.IPs, ip.IP)
	}
	if len(p.IPs) == 0 && o.Status.PodIP != "" {
		p.IPs = []string{o.Status.PodIP}
	}
	for _, c := range o.Status.Conditions {
		if c.Type == corev1.PodReady {
			p.Ready = c.Status == corev1.ConditionTrue
		}
	}
	return p
}

// GetObjectKind and DeepCopyObject make a Pod a runtime.Object, as
// informer caches expect.
func (p *Pod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject copies the pod.
func (p *Pod) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.IPs = slices.Clone(p.IPs)
	return &c
}
