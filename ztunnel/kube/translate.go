package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/strait-mesh/strait/cni/enroll"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// Labels that decide enrollment.
const (
	LabelDataplaneMode = enroll.LabelDataplaneMode
	ModeAmbient        = enroll.ModeAmbient
	ModeNone           = enroll.ModeNone
	// LabelServiceName links an EndpointSlice to its Service.
	LabelServiceName = discoveryv1.LabelServiceName
)

// View is what the informers hold, as plain lists.
type View struct {
	Pods       []*Pod
	Namespaces []*corev1.Namespace
	Services   []*corev1.Service
	Slices     []*discoveryv1.EndpointSlice
}

// Mesh is the translation of a View into the store's model.
type Mesh struct {
	Workloads []*store.Workload
	Services  []*store.Service
	// Skipped names the objects left out and why (one line each).
	Skipped []string
}

// Translator turns Kubernetes objects into store objects.
type Translator struct {
	TrustDomain   string // e.g. cluster.local
	ClusterDomain string // e.g. cluster.local: services are <name>.<ns>.svc.<ClusterDomain>
}

// Enrolled reports whether a pod with these labels, in a namespace with
// nsLabels, is in the mesh (the node agent applies the same rule).
func Enrolled(podLabels, nsLabels map[string]string) bool {
	return enroll.Enrolled(podLabels, nsLabels)
}

// Translate builds workloads and services. It never fails: objects that
// cannot be represented are skipped and listed in Mesh.Skipped.
func (t Translator) Translate(v View) Mesh {
	var m Mesh
	nsLabels := make(map[string]map[string]string, len(v.Namespaces))
	for _, ns := range v.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	m.Workloads = t.workloads(v.Pods, nsLabels, &m.Skipped)
	m.Services = t.services(v.Services, v.Slices, &m.Skipped)
	return m
}

func (t Translator) workloads(pods []*Pod, nsLabels map[string]map[string]string, skipped *[]string) []*store.Workload {
	type cand struct {
		pod *Pod
		w   *store.Workload
	}
	var cands []cand
	for _, p := range pods {
		if p.HostNetwork {
			continue // shares the node's address; not a workload of its own
		}
		if p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed {
			continue // its IP may already belong to another pod
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue // not started yet
		}
		sa := p.ServiceAccount
		if sa == "" {
			sa = "default"
		}
		proto := store.ProtocolTCP
		if Enrolled(p.Labels, nsLabels[p.Namespace]) {
			proto = store.ProtocolHBONE
		}
		cands = append(cands, cand{p, &store.Workload{
			UID: string(p.UID), Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa, Node: p.NodeName,
			IPs: ips, Protocol: proto, Labels: p.Labels, TrustDomain: t.TrustDomain,
			Healthy: p.DeletionTimestamp == nil && p.Ready,
		}})
	}
	// An IP may briefly belong to two pods (one terminating, or a stale
	// watch): the live, newest one keeps it.
	slices.SortStableFunc(cands, func(a, b cand) int {
		if (a.pod.DeletionTimestamp == nil) != (b.pod.DeletionTimestamp == nil) {
			if a.pod.DeletionTimestamp == nil {
				return -1
			}
			return 1
		}
		return cmp.Or(b.pod.CreationTimestamp.Compare(a.pod.CreationTimestamp.Time), cmp.Compare(a.pod.UID, b.pod.UID))
	})
	owner := map[netip.Addr]*Pod{}
	seenUID := map[string]bool{}
	out := make([]*store.Workload, 0, len(cands))
	for _, c := range cands {
		if seenUID[c.w.UID] {
			*skipped = append(*skipped, fmt.Sprintf("pod %s/%s: uid %s seen twice", c.pod.Namespace, c.pod.Name, c.w.UID))
			continue
		}
		keep := c.w.IPs[:0]
		for _, ip := range c.w.IPs {
			if o, dup := owner[ip]; dup {
				*skipped = append(*skipped, fmt.Sprintf("pod %s/%s: IP %s belongs to pod %s/%s", c.pod.Namespace, c.pod.Name, ip, o.Namespace, o.Name))
				continue
			}
			owner[ip] = c.pod
			keep = append(keep, ip)
		}
		if len(keep) == 0 {
			continue
		}
		c.w.IPs = keep
		seenUID[c.w.UID] = true
		out = append(out, c.w)
	}
	return out
}

// podIPs returns the pod's valid, distinct IPs.
func podIPs(p *Pod) []netip.Addr {
	var out []netip.Addr
	for _, s := range p.IPs {
		if ip, err := netip.ParseAddr(s); err == nil && !ip.IsUnspecified() && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func (t Translator) services(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice, skipped *[]string) []*store.Service {
	type nsName struct{ ns, name string }
	bySvc := map[nsName][]*discoveryv1.EndpointSlice{}
	for _, s := range eps {
		if name := s.Labels[LabelServiceName]; name != "" {
			k := nsName{s.Namespace, name}
			bySvc[k] = append(bySvc[k], s)
		}
	}
	vipOwner := map[netip.Addr]string{}
	out := make([]*store.Service, 0, len(svcs))
	for _, s := range svcs {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		key := s.Namespace + "/" + s.Name
		sl := bySvc[nsName{s.Namespace, s.Name}]
		svc := &store.Service{
			Name: s.Name, Namespace: s.Namespace, Hostname: fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, t.ClusterDomain),
			EndpointUIDs: endpointUIDs(sl),
		}
		for _, c := range clusterIPs(s) {
			ip, err := netip.ParseAddr(c)
			if err != nil {
				*skipped = append(*skipped, fmt.Sprintf("service %s: cluster IP %q: %v", key, c, err))
				continue
			}
			ip = ip.Unmap()
			if o, dup := vipOwner[ip]; dup {
				*skipped = append(*skipped, fmt.Sprintf("service %s: cluster IP %s belongs to service %s", key, ip, o))
				continue
			}
			vipOwner[ip] = key
			svc.VIPs = append(svc.VIPs, ip)
		}
		for _, p := range s.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue
			}
			if p.Port <= 0 || p.Port > 65535 {
				continue
			}
			sp := store.ServicePort{Name: p.Name, Port: uint16(p.Port)}
			switch {
			case p.TargetPort.IntValue() > 0 && p.TargetPort.IntValue() <= 65535:
				sp.TargetPort = uint16(p.TargetPort.IntValue())
			case p.TargetPort.StrVal != "":
				// A named container port: the EndpointSlices carry the number.
				tp, ok := slicePort(sl, p.Name)
				if !ok {
					*skipped = append(*skipped, fmt.Sprintf("service %s: port %d: target port %q not resolved by any EndpointSlice yet", key, p.Port, p.TargetPort.StrVal))
					continue
				}
				sp.TargetPort = tp
			default:
				sp.TargetPort = sp.Port
			}
			svc.Ports = append(svc.Ports, sp)
		}
		out = append(out, svc)
	}
	return out
}

func clusterIPs(s *corev1.Service) []string {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	var out []string
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, ip)
		}
	}
	return out
}

// endpointUIDs lists the pods behind a service's slices; never nil, so a
// service with no slice yet has no endpoints rather than its selector's.
func endpointUIDs(sl []*discoveryv1.EndpointSlice) []string {
	out := []string{}
	for _, s := range sl {
		for _, e := range s.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" && e.TargetRef.UID != "" {
				out = append(out, string(e.TargetRef.UID))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// slicePort finds the number of the slices' port with this name.
func slicePort(sl []*discoveryv1.EndpointSlice, name string) (uint16, bool) {
	for _, s := range sl {
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == name && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
				return uint16(*p.Port), true
			}
		}
	}
	return 0, false
}
