package store

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity"
)

// Protocol is how a workload is reached.
type Protocol string

// Protocols.
const (
	// ProtocolHBONE: the workload is enrolled in the mesh; its node proxy
	// terminates HBONE on port 15008 on its behalf.
	ProtocolHBONE Protocol = "HBONE"
	// ProtocolTCP: the workload is not enrolled; it is reached with plain
	// TCP.
	ProtocolTCP Protocol = "TCP"
)

// Workload is a pod (or any other addressable endpoint).
type Workload struct {
	UID            string            `json:"uid"`
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	Node           string            `json:"node,omitempty"`
	IPs            []netip.Addr      `json:"ips"`
	Protocol       Protocol          `json:"protocol"`
	Labels         map[string]string `json:"labels,omitempty"`
	TrustDomain    string            `json:"trustDomain"`
	Healthy        bool              `json:"healthy"`

	// id caches Identity for workloads owned by a snapshot.
	id     spiffeid.ID
	idDone bool
}

// Identity returns spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>,
// or the zero ID when those parts do not form a valid identity (a TCP
// workload need not have one; an HBONE workload in a snapshot always does).
// For workloads returned by a [Snapshot] it does not allocate.
func (w *Workload) Identity() spiffeid.ID {
	if w == nil {
		return spiffeid.ID{}
	}
	if w.idDone {
		return w.id
	}
	id, _ := workloadIdentity(w)
	return id
}

func workloadIdentity(w *Workload) (spiffeid.ID, error) {
	id, err := identity.New(w.TrustDomain, w.Namespace, w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return id.SPIFFEID(), nil
}

// clone deep-copies w, unmapping its addresses.
func (w *Workload) clone() *Workload {
	c := *w
	c.id, c.idDone = spiffeid.ID{}, false
	c.IPs = make([]netip.Addr, len(w.IPs))
	for i, ip := range w.IPs {
		c.IPs[i] = normalize(ip)
	}
	c.Labels = maps.Clone(w.Labels)
	return &c
}

// ServicePort maps a service port to the workload port behind it.
type ServicePort struct {
	Name string `json:"name,omitempty"`
	Port uint16 `json:"port"`
	// TargetPort is the workload port; 0 in NewSnapshot's input means
	// "same as Port", a snapshot's services always have it set.
	TargetPort uint16 `json:"targetPort"`
}

// Service is a Kubernetes service: virtual IPs and ports in front of the
// workloads its selector picks.
type Service struct {
	Name      string        `json:"name"`
	Namespace string        `json:"namespace"`
	Hostname  string        `json:"hostname"`
	VIPs      []netip.Addr  `json:"vips"`
	Ports     []ServicePort `json:"ports"`
	// SANs are extra identities the service's endpoints may present,
	// besides each endpoint's own.
	SANs []string `json:"sans,omitempty"`
	// Selector picks the endpoints (workloads of the service's namespace
	// whose labels include it); an empty selector picks none.
	Selector map[string]string `json:"selector,omitempty"`
	// EndpointUIDs, when not nil, lists the endpoints explicitly by
	// workload UID (from Kubernetes EndpointSlices) and Selector is
	// ignored; UIDs of workloads the snapshot does not hold are skipped.
	EndpointUIDs []string `json:"endpointUIDs,omitempty"`
}

// Port returns the ServicePort for port p, if the service has one.
func (s *Service) Port(p uint16) (ServicePort, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return ServicePort{}, false
}

func (s *Service) clone() *Service {
	c := *s
	c.VIPs = make([]netip.Addr, len(s.VIPs))
	for i, ip := range s.VIPs {
		c.VIPs[i] = normalize(ip)
	}
	c.Ports = append([]ServicePort{}, s.Ports...)
	for i := range c.Ports {
		if c.Ports[i].TargetPort == 0 {
			c.Ports[i].TargetPort = c.Ports[i].Port
		}
	}
	c.SANs = slices.Clone(s.SANs)
	c.Selector = maps.Clone(s.Selector)
	if s.EndpointUIDs != nil {
		c.EndpointUIDs = slices.Clone(s.EndpointUIDs)
	}
	return &c
}

func normalize(ip netip.Addr) netip.Addr { return ip.Unmap().WithZone("") }
