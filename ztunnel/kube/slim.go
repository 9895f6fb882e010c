package kube

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// Slim is the informers' transform: it keeps only what Translate and the
// informers themselves need (name, namespace, uid, resource version,
// labels, timestamps; the spec and status fields read below), so the
// caches do not hold managed fields, annotations, container specs and
// the rest of every object. Unknown types pass through unchanged.
func Slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		p := &corev1.Pod{ObjectMeta: slimMeta(o.ObjectMeta)}
		p.Spec.NodeName = o.Spec.NodeName
		p.Spec.ServiceAccountName = o.Spec.ServiceAccountName
		p.Spec.HostNetwork = o.Spec.HostNetwork
		p.Status.Phase = o.Status.Phase
		p.Status.PodIP = o.Status.PodIP
		p.Status.PodIPs = o.Status.PodIPs
		for _, c := range o.Status.Conditions {
			if c.Type == corev1.PodReady {
				p.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
			}
		}
		return p, nil
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
