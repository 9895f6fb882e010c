package store

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/ztunnel/rbac"
)

// Sentinel errors; every NewSnapshot error wraps one of them.
var (
	ErrInvalidWorkload = errors.New("invalid workload")
	ErrInvalidService  = errors.New("invalid service")
	ErrInvalidPolicy   = errors.New("invalid policy")
	ErrDuplicate       = errors.New("duplicate")
)

// Snapshot is one immutable, fully indexed view of the mesh. Its methods
// are safe for concurrent use; lookups do not allocate.
type Snapshot struct {
	version uint64

	workloads []*Workload // sorted by UID
	services  []*Service  // sorted by namespace, name
	policies  []*rbac.Policy
	peerAuths []*rbac.PeerAuthentication

	byIP      map[netip.Addr]*Workload
	byUID     map[string]*workloadEntry
	byVIP     map[netip.Addr]*Service
	byHost    map[hostKey]*Service
	endpoints map[*Service][]*Workload

	authz scoped[*rbac.Policy]
	peer  scoped[*rbac.PeerAuthentication]
}

type hostKey struct{ namespace, hostname string }

// workloadEntry holds what is precomputed per workload.
type workloadEntry struct {
	w        *Workload
	policies []*rbac.Policy
	mode     rbac.Mode
}

// scoped indexes policy-like objects by scope.
type scoped[T interface {
	AppliesTo(string, map[string]string) bool
}] struct {
	mesh     []T
	ns       map[string][]T // namespace scope
	workload map[string][]T // workload scope, by namespace
	base     map[string][]T // mesh + namespace scope, shared by workloads no selector picks
}

func (x *scoped[T]) add(scope rbac.Scope, ns string, v T) {
	switch scope {
	case rbac.ScopeMesh:
		x.mesh = append(x.mesh, v)
	case rbac.ScopeNamespace:
		if x.ns == nil {
			x.ns = map[string][]T{}
		}
		x.ns[ns] = append(x.ns[ns], v)
	case rbac.ScopeWorkload:
		if x.workload == nil {
			x.workload = map[string][]T{}
		}
		x.workload[ns] = append(x.workload[ns], v)
	}
}

// forWorkload returns the objects that apply to a workload: mesh, then
// namespace, then selector scope. With cache set, the mesh+namespace part
// is shared between workloads (callers must not append to the result).
func (x *scoped[T]) forWorkload(ns string, labels map[string]string, cache bool) []T {
	var base []T
	if cache {
		if x.base == nil {
			x.base = map[string][]T{}
		}
		b, ok := x.base[ns]
		if !ok {
			b = slices.Concat(x.mesh, x.ns[ns])
			b = b[:len(b):len(b)]
			x.base[ns] = b
		}
		base = b
	} else {
		base = slices.Concat(x.mesh, x.ns[ns])
	}
	var out []T
	for _, v := range x.workload[ns] {
		if v.AppliesTo(ns, labels) {
			if out == nil {
				out = slices.Clone(base)
			}
			out = append(out, v)
		}
	}
	if out == nil {
		return base
	}
	return out[:len(out):len(out)]
}

var empty = &Snapshot{}

// NewSnapshot validates its input and builds a snapshot from a deep copy of
// it: the caller keeps ownership of what it passed. Every problem found is
// reported, joined, each prefixed "store: " and naming the offending entry:
// nil entries, missing names, duplicate UIDs, an IP used by two workloads
// (or twice by one), an HBONE workload without a valid identity, duplicate
// services, hostnames or VIPs, a VIP that is also a workload IP, port 0,
// duplicate service ports, a SAN that is not a SPIFFE id, invalid or
// duplicate policies, and more than one mesh-wide or namespace-wide
// PeerAuthentication for the same namespace.
func NewSnapshot(ws []*Workload, ss []*Service, ps []*rbac.Policy, pas []*rbac.PeerAuthentication) (*Snapshot, error) {
	s := &Snapshot{
		byIP:      make(map[netip.Addr]*Workload, len(ws)),
		byUID:     make(map[string]*workloadEntry, len(ws)),
		byVIP:     make(map[netip.Addr]*Service, len(ss)),
		byHost:    make(map[hostKey]*Service, len(ss)),
		endpoints: make(map[*Service][]*Workload, len(ss)),
	}
	var errs []error
	fail := func(sentinel error, format string, args ...any) {
		errs = append(errs, fmt.Errorf("store: "+format+": %w", append(args, sentinel)...))
	}

	// Workloads.
	ipOwner := make(map[netip.Addr]string, len(ws))
	for i, in := range ws {
		if in == nil {
			fail(ErrInvalidWorkload, "workloads[%d]: is nil", i)
			continue
		}
		w := in.clone()
		at := lazy(func() string { return fmt.Sprintf("workloads[%d] (uid %q)", i, w.UID) })
		if w.UID == "" {
			fail(ErrInvalidWorkload, "%s: uid is empty", at)
		} else if _, dup := s.byUID[w.UID]; dup {
			fail(ErrDuplicate, "%s: uid is used by another workload", at)
		}
		if w.Name == "" {
			fail(ErrInvalidWorkload, "%s: name is empty", at)
		}
		if w.Namespace == "" {
			fail(ErrInvalidWorkload, "%s: namespace is empty", at)
		}
		switch w.Protocol {
		case ProtocolHBONE, ProtocolTCP:
		default:
			fail(ErrInvalidWorkload, "%s: protocol %q is neither HBONE nor TCP", at, w.Protocol)
		}
		if w.TrustDomain != "" || w.ServiceAccount != "" || w.Protocol == ProtocolHBONE {
			id, err := workloadIdentity(w)
			if err != nil {
				fail(ErrInvalidWorkload, "%s: no valid identity: %w", at, err)
			}
			w.id = id
		}
		w.idDone = true
		for j, ip := range w.IPs {
			switch {
			case !ip.IsValid():
				fail(ErrInvalidWorkload, "%s: ips[%d] is not a valid address", at, j)
				continue
			case ip.IsUnspecified():
				fail(ErrInvalidWorkload, "%s: ips[%d]: %s is unspecified", at, j, ip)
				continue
			}
			if owner, dup := ipOwner[ip]; dup {
				fail(ErrDuplicate, "%s: ips[%d]: %s is also an IP of workload %q", at, j, ip, owner)
				continue
			}
			ipOwner[ip] = w.UID
			s.byIP[ip] = w
		}
		if w.UID != "" {
			if _, dup := s.byUID[w.UID]; !dup {
				s.byUID[w.UID] = &workloadEntry{w: w}
				s.workloads = append(s.workloads, w)
			}
		}
	}
	slices.SortFunc(s.workloads, func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) })

	// Services.
	type nsName struct{ ns, name string }
	seenSvc := map[nsName]bool{}
	for i, in := range ss {
		if in == nil {
			fail(ErrInvalidService, "services[%d]: is nil", i)
			continue
		}
		svc := in.clone()
		at := lazy(func() string { return fmt.Sprintf("services[%d] (%s/%s)", i, svc.Namespace, svc.Name) })
		ok := true
		if svc.Name == "" {
			fail(ErrInvalidService, "%s: name is empty", at)
			ok = false
		}
		if svc.Namespace == "" {
			fail(ErrInvalidService, "%s: namespace is empty", at)
			ok = false
		}
		if k := (nsName{svc.Namespace, svc.Name}); ok && seenSvc[k] {
			fail(ErrDuplicate, "%s: another service has this namespace and name", at)
			ok = false
		} else {
			seenSvc[k] = true
		}
		if svc.Hostname != "" {
			k := hostKey{svc.Namespace, svc.Hostname}
			if other, dup := s.byHost[k]; dup {
				fail(ErrDuplicate, "%s: hostname %q is also the hostname of service %s/%s", at, svc.Hostname, other.Namespace, other.Name)
			} else if ok {
				s.byHost[k] = svc
			}
		}
		for j, ip := range svc.VIPs {
			switch {
			case !ip.IsValid():
				fail(ErrInvalidService, "%s: vips[%d] is not a valid address", at, j)
				continue
			case ip.IsUnspecified():
				fail(ErrInvalidService, "%s: vips[%d]: %s is unspecified", at, j, ip)
				continue
			}
			if other, dup := s.byVIP[ip]; dup {
				fail(ErrDuplicate, "%s: vips[%d]: %s is also a VIP of service %s/%s", at, j, ip, other.Namespace, other.Name)
				continue
			}
			if owner, dup := ipOwner[ip]; dup {
				fail(ErrDuplicate, "%s: vips[%d]: %s is also an IP of workload %q", at, j, ip, owner)
				continue
			}
			s.byVIP[ip] = svc
		}
		ports := map[uint16]bool{}
		for j, p := range svc.Ports {
			if p.Port == 0 {
				fail(ErrInvalidService, "%s: ports[%d]: port is 0", at, j)
			} else if ports[p.Port] {
				fail(ErrDuplicate, "%s: ports[%d]: port %d is listed twice", at, j, p.Port)
			}
			ports[p.Port] = true
		}
		for j, san := range svc.SANs {
			if _, err := spiffeid.FromString(san); err != nil {
				fail(ErrInvalidService, "%s: sans[%d]: %q is not a SPIFFE id: %w", at, j, san, err)
			}
		}
		if ok {
			s.services = append(s.services, svc)
		}
	}
	slices.SortFunc(s.services, func(a, b *Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	// Authorization policies.
	seenPol := map[string]bool{}
	for i, in := range ps {
		if in == nil {
			fail(ErrInvalidPolicy, "authorizationPolicies[%d]: is nil", i)
			continue
		}
		p := in.Clone()
		if err := p.Validate(); err != nil {
			fail(ErrInvalidPolicy, "authorizationPolicies[%d]: %w", i, err)
			continue
		}
		if seenPol[p.Key()] {
			fail(ErrDuplicate, "authorizationPolicies[%d]: another policy is named %q", i, p.Key())
			continue
		}
		seenPol[p.Key()] = true
		s.policies = append(s.policies, p)
	}
	slices.SortFunc(s.policies, func(a, b *rbac.Policy) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, p := range s.policies {
		s.authz.add(p.Scope, p.Namespace, p)
	}

	// Peer authentications.
	seenPA := map[string]bool{}
	wide := map[string]string{} // "" for mesh scope, else namespace → first key
	for i, in := range pas {
		if in == nil {
			fail(ErrInvalidPolicy, "peerAuthentications[%d]: is nil", i)
			continue
		}
		pa := in.Clone()
		if err := pa.Validate(); err != nil {
			fail(ErrInvalidPolicy, "peerAuthentications[%d]: %w", i, err)
			continue
		}
		if seenPA[pa.Key()] {
			fail(ErrDuplicate, "peerAuthentications[%d]: another peer authentication is named %q", i, pa.Key())
			continue
		}
		seenPA[pa.Key()] = true
		if pa.Scope != rbac.ScopeWorkload {
			k := pa.Namespace
			if pa.Scope == rbac.ScopeMesh {
				k = "\x00mesh"
			}
			if other, dup := wide[k]; dup {
				fail(ErrDuplicate, "peerAuthentications[%d] (%s): %s already has a %s-wide peer authentication", i, pa.Key(), other, pa.Scope)
				continue
			}
			wide[k] = pa.Key()
		}
		s.peerAuths = append(s.peerAuths, pa)
	}
	slices.SortFunc(s.peerAuths, func(a, b *rbac.PeerAuthentication) int { return cmp.Compare(a.Key(), b.Key()) })
	for _, pa := range s.peerAuths {
		s.peer.add(pa.Scope, pa.Namespace, pa)
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Per-workload decisions and service endpoints.
	byNS := map[string][]*Workload{}
	for _, w := range s.workloads { // sorted by UID, so endpoints are too
		e := s.byUID[w.UID]
		e.policies = s.authz.forWorkload(w.Namespace, w.Labels, true)
		e.mode = rbac.ResolveMode(s.peer.forWorkload(w.Namespace, w.Labels, true))
		byNS[w.Namespace] = append(byNS[w.Namespace], w)
	}
	for _, svc := range s.services {
		s.endpoints[svc] = s.serviceEndpoints(svc, byNS[svc.Namespace])
	}
	return s, nil
}

// lazy formats an entry's name only when an error needs it.
type lazy func() string

func (l lazy) String() string { return l() }

func selectEndpoints(ws []*Workload, sel map[string]string) []*Workload {
	var out []*Workload
	for _, w := range ws {
		if w.Healthy && rbac.SelectorMatches(sel, w.Labels) {
			out = append(out, w)
		}
	}
	return out[:len(out):len(out)]
}

// Version is the store version this snapshot was published as by
// [Store.Replace] (0 for a snapshot not published yet, and for the empty
// snapshot a new Store starts with).
func (s *Snapshot) Version() uint64 { return s.version }

// WorkloadByIP returns the workload with address ip, or nil.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) *Workload {
	return s.byIP[normalize(ip)]
}

// WorkloadByUID returns the workload with the given UID, or nil.
func (s *Snapshot) WorkloadByUID(uid string) *Workload {
	if e := s.byUID[uid]; e != nil {
		return e.w
	}
	return nil
}

// ServiceByVIP returns the service with virtual IP ip, or nil.
func (s *Snapshot) ServiceByVIP(ip netip.Addr) *Service {
	return s.byVIP[normalize(ip)]
}

// ServiceByHostname returns the service of namespace with the given
// hostname, or nil.
func (s *Snapshot) ServiceByHostname(namespace, hostname string) *Service {
	return s.byHost[hostKey{namespace, hostname}]
}

// Endpoints returns the healthy workloads of svc.Namespace whose labels
// include svc.Selector, sorted by UID. The slice is shared: do not modify
// it. For a service of this snapshot it does not allocate; for another one
// (from an older snapshot, say) it is computed against this snapshot's
// workloads.
func (s *Snapshot) Endpoints(svc *Service) []*Workload {
	if svc == nil {
		return nil
	}
	if eps, ok := s.endpoints[svc]; ok {
		return eps
	}
	var ns []*Workload
	for _, w := range s.workloads {
		if w.Namespace == svc.Namespace {
			ns = append(ns, w)
		}
	}
	return s.serviceEndpoints(svc, ns)
}

// serviceEndpoints resolves a service's healthy endpoints: its explicit
// EndpointUIDs (sorted by UID; unknown ones and workloads of another
// namespace skipped), or the workloads of ns its selector picks.
func (s *Snapshot) serviceEndpoints(svc *Service, ns []*Workload) []*Workload {
	if svc.EndpointUIDs == nil {
		return selectEndpoints(ns, svc.Selector)
	}
	var out []*Workload
	for _, uid := range svc.EndpointUIDs {
		if e, ok := s.byUID[uid]; ok && e.w.Healthy && e.w.Namespace == svc.Namespace && !slices.Contains(out, e.w) {
			out = append(out, e.w)
		}
	}
	slices.SortFunc(out, func(a, b *Workload) int { return cmp.Compare(a.UID, b.UID) })
	return out[:len(out):len(out)]
}

// Policies returns the authorization policies that apply to w: mesh scope,
// then namespace scope, then the workload-scope policies of w's namespace
// whose selector matches w's labels (each group sorted by namespace/name).
// The slice is shared: do not modify it. For a workload of this snapshot it
// does not allocate; for another one it is computed from w's namespace and
// labels.
func (s *Snapshot) Policies(w *Workload) []*rbac.Policy {
	if w == nil {
		return nil
	}
	if e := s.byUID[w.UID]; e != nil && e.w == w {
		return e.policies
	}
	return s.authz.forWorkload(w.Namespace, w.Labels, false)
}

// PeerAuthMode returns w's mTLS mode ([rbac.ResolveMode] over the peer
// authentications that apply to it).
func (s *Snapshot) PeerAuthMode(w *Workload) rbac.Mode {
	if w == nil {
		return rbac.ModePermissive
	}
	if e := s.byUID[w.UID]; e != nil && e.w == w {
		return e.mode
	}
	return rbac.ResolveMode(s.peer.forWorkload(w.Namespace, w.Labels, false))
}

// Workloads returns every workload, sorted by UID. Do not modify the slice.
func (s *Snapshot) Workloads() []*Workload { return s.workloads[:len(s.workloads):len(s.workloads)] }

// Services returns every service, sorted by namespace and name. Do not
// modify the slice.
func (s *Snapshot) Services() []*Service { return s.services[:len(s.services):len(s.services)] }

// AuthorizationPolicies returns every policy, sorted by namespace/name.
func (s *Snapshot) AuthorizationPolicies() []*rbac.Policy {
	return s.policies[:len(s.policies):len(s.policies)]
}

// PeerAuthentications returns every peer authentication, sorted by
// namespace/name.
func (s *Snapshot) PeerAuthentications() []*rbac.PeerAuthentication {
	return s.peerAuths[:len(s.peerAuths):len(s.peerAuths)]
}

// MarshalJSON renders the snapshot for the admin /config_dump: every object
// with its exported fields plus, per workload, its identity, the keys of the
// policies that apply and its mTLS mode, and per service the UIDs of its
// endpoints.
func (s *Snapshot) MarshalJSON() ([]byte, error) {
	type workloadDump struct {
		*Workload
		ID           string    `json:"identity,omitempty"`
		Policies     []string  `json:"policies,omitempty"`
		PeerAuthMode rbac.Mode `json:"peerAuthMode"`
	}
	type serviceDump struct {
		*Service
		Endpoints []string `json:"endpoints"`
	}
	d := struct {
		Version               uint64                     `json:"version"`
		Workloads             []workloadDump             `json:"workloads"`
		Services              []serviceDump              `json:"services"`
		AuthorizationPolicies []*rbac.Policy             `json:"authorizationPolicies"`
		PeerAuthentications   []*rbac.PeerAuthentication `json:"peerAuthentications"`
	}{
		Version:               s.version,
		Workloads:             make([]workloadDump, 0, len(s.workloads)),
		Services:              make([]serviceDump, 0, len(s.services)),
		AuthorizationPolicies: append([]*rbac.Policy{}, s.policies...),
		PeerAuthentications:   append([]*rbac.PeerAuthentication{}, s.peerAuths...),
	}
	for _, w := range s.workloads {
		wd := workloadDump{Workload: w, PeerAuthMode: s.PeerAuthMode(w)}
		if id := w.Identity(); !id.IsZero() {
			wd.ID = id.String()
		}
		for _, p := range s.Policies(w) {
			wd.Policies = append(wd.Policies, p.Key())
		}
		d.Workloads = append(d.Workloads, wd)
	}
	for _, svc := range s.services {
		sd := serviceDump{Service: svc, Endpoints: []string{}}
		for _, w := range s.Endpoints(svc) {
			sd.Endpoints = append(sd.Endpoints, w.UID)
		}
		d.Services = append(d.Services, sd)
	}
	return json.Marshal(d)
}
