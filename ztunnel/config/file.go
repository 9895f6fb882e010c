package config

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/strait-mesh/strait/identity"
	"github.com/strait-mesh/strait/ztunnel/rbac"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// Defaults.
const (
	DefaultTrustDomain   = "cluster.local"
	DefaultClusterDomain = "cluster.local"
	// MaxFileSize is the largest file Load and the Watcher read.
	MaxFileSize = 16 << 20
)

// File is a parsed, validated configuration file. Its objects are the
// store's own types, ready for [store.NewSnapshot]; defaults are filled in
// (service account "default", healthy true, hostnames, target ports,
// policy scopes and actions).
type File struct {
	Name                  string // the filename given to Parse
	TrustDomain           string
	ClusterDomain         string
	Workloads             []*store.Workload
	Services              []*store.Service
	AuthorizationPolicies []*rbac.Policy
	PeerAuthentications   []*rbac.PeerAuthentication
}

// Parse decodes and validates a configuration file; filename is only used
// in error messages. Decoding is strict: unknown fields, wrong YAML types,
// duplicate keys, bad addresses, ports out of range, unknown enum values,
// missing required fields and duplicate uids, IPs, VIPs and names are all
// errors. Parse reports every problem it finds, joined, in file order, each
// a *FieldError naming the file, the line and the field path.
func Parse(data []byte, filename string) (*File, error) {
	d := &decoder{file: filename}
	root := d.parseYAML(data)
	var f *File
	if root != nil && !d.fatal {
		f = d.decodeFile(root)
	}
	if len(d.errs) > 0 {
		slices.SortStableFunc(d.errs, func(a, b *FieldError) int { return cmp.Compare(a.Line, b.Line) })
		if d.truncated {
			d.errs = append(d.errs, &FieldError{File: filename, Kind: ErrInvalidValue,
				Msg: fmt.Sprintf("too many errors; stopped after %d", maxErrors)})
		}
		return nil, joinFieldErrors(d.errs)
	}
	return f, nil
}

// Load reads and parses the file at path (at most MaxFileSize bytes).
func Load(path string) (*File, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("config: %s: larger than %d bytes: %w", path, MaxFileSize, ErrInvalidValue)
	}
	return data, nil
}

// Snapshot builds a store snapshot from f. For a File returned by Parse it
// is expected to succeed (Parse checks everything NewSnapshot does); errors
// are prefixed "config: <file>: ".
func (f *File) Snapshot() (*store.Snapshot, error) {
	s, err := store.NewSnapshot(f.Workloads, f.Services, f.AuthorizationPolicies, f.PeerAuthentications)
	if err != nil {
		return nil, wrapEach(err, "config: %s", f.Name)
	}
	return s, nil
}

// seenAt remembers where a value was first used, for duplicate errors.
type seenAt struct {
	path string
	line int
}

// index of everything that must be unique across the file.
type uniques struct {
	uids      map[string]seenAt
	ips       map[netip.Addr]seenAt // workload IPs
	vips      map[netip.Addr]seenAt
	services  map[[2]string]seenAt // namespace, name
	hostnames map[[2]string]seenAt // namespace, hostname
	policies  map[[2]string]seenAt
	peerAuths map[[2]string]seenAt
	wideAuths map[string]seenAt // namespace ("" for mesh) → the one wide peer authentication
}

var (
	topFields      = []string{"trustDomain", "clusterDomain", "workloads", "services", "authorizationPolicies", "peerAuthentications"}
	workloadFields = []string{"uid", "name", "namespace", "serviceAccount", "node", "ips", "protocol", "labels", "healthy"}
	serviceFields  = []string{"name", "namespace", "hostname", "vips", "ports", "selector", "sans"}
	portFields     = []string{"name", "port", "targetPort"}
	policyFields   = []string{"name", "namespace", "scope", "selector", "action", "rules"}
	ruleFields     = []string{"from", "to"}
	sourceFields   = []string{"principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks"}
	opFields       = []string{"ports", "notPorts"}
	peerAuthFields = []string{"name", "namespace", "scope", "selector", "mode"}
)

// Hints for fields people copy from Kubernetes or Istio manifests.
var (
	topHints = map[string]string{
		"apiVersion": "this is not a Kubernetes manifest; see ztunnel/config/README.md",
		"kind":       "this is not a Kubernetes manifest; see ztunnel/config/README.md",
	}
	workloadHints = map[string]string{
		"ip":          `write ips: [<address>]`,
		"trustDomain": "the trust domain is set once, at the top of the file",
	}
	serviceHints = map[string]string{
		"vip":       "write vips: [<address>]",
		"clusterIP": "write vips: [<address>]",
	}
	portHints = map[string]string{
		"protocol":    "the node proxy carries TCP only; remove it",
		"appProtocol": "the node proxy carries TCP only; remove it",
	}
	objectHints = map[string]string{
		"metadata":   "write name and namespace directly, without metadata",
		"spec":       "write the fields directly, without spec",
		"targetRef":  "not supported; use selector",
		"targetRefs": "not supported; use selector",
	}
	policyHints = mergeHints(objectHints, map[string]string{
		"provider": "CUSTOM policies are not supported",
	})
	ruleHints = map[string]string{
		"when": "conditions are L7 and not supported by the node proxy",
	}
	sourceHints = map[string]string{
		"source":               "write the source fields directly in the from item: from: [{principals: [...]}]",
		"requestPrincipals":    "JWT principals are L7 and not supported by the node proxy",
		"notRequestPrincipals": "JWT principals are L7 and not supported by the node proxy",
		"remoteIpBlocks":       "not supported; use ipBlocks",
		"notRemoteIpBlocks":    "not supported; use notIpBlocks",
		"sourceIPs":            "write ipBlocks",
		"notSourceIPs":         "write notIpBlocks",
	}
	opHints = map[string]string{
		"operation":  "write the operation fields directly in the to item: to: [{ports: [8080]}]",
		"hosts":      "an HTTP field, not supported by the node proxy",
		"notHosts":   "an HTTP field, not supported by the node proxy",
		"methods":    "an HTTP field, not supported by the node proxy",
		"notMethods": "an HTTP field, not supported by the node proxy",
		"paths":      "an HTTP field, not supported by the node proxy",
		"notPaths":   "an HTTP field, not supported by the node proxy",
	}
	peerAuthHints = mergeHints(objectHints, map[string]string{
		"mtls":          "write mode: STRICT directly, without mtls",
		"portLevelMtls": "not supported",
	})
)

func mergeHints(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func (d *decoder) decodeFile(root *yaml.Node) *File {
	m, _ := d.fields(root, "", topFields, topHints)
	if m == nil {
		return nil
	}
	f := &File{Name: d.file, TrustDomain: DefaultTrustDomain, ClusterDomain: DefaultClusterDomain}
	if s, n, ok := d.str(root, m, "", "trustDomain", false); ok {
		if msg := checkTrustDomain(s); msg != "" {
			d.add(n, "trustDomain", ErrInvalidValue, nil, "%s %s", quoteShort(s), msg)
		} else {
			f.TrustDomain = s
		}
	}
	if s, n, ok := d.str(root, m, "", "clusterDomain", false); ok {
		if msg := checkDNSSubdomain(s); msg != "" {
			d.add(n, "clusterDomain", ErrInvalidValue, nil, "%s %s", quoteShort(s), msg)
		} else {
			f.ClusterDomain = s
		}
	}
	u := &uniques{
		uids: map[string]seenAt{}, ips: map[netip.Addr]seenAt{}, vips: map[netip.Addr]seenAt{},
		services: map[[2]string]seenAt{}, hostnames: map[[2]string]seenAt{},
		policies: map[[2]string]seenAt{}, peerAuths: map[[2]string]seenAt{}, wideAuths: map[string]seenAt{},
	}
	// Workloads first: services check their VIPs against workload IPs.
	d.list(m, "", "workloads", func(n *yaml.Node, p string) {
		if w := d.workload(n, p, f, u); w != nil {
			f.Workloads = append(f.Workloads, w)
		}
	})
	d.list(m, "", "services", func(n *yaml.Node, p string) {
		if s := d.service(n, p, f, u); s != nil {
			f.Services = append(f.Services, s)
		}
	})
	d.list(m, "", "authorizationPolicies", func(n *yaml.Node, p string) {
		if pol := d.policy(n, p, u); pol != nil {
			f.AuthorizationPolicies = append(f.AuthorizationPolicies, pol)
		}
	})
	d.list(m, "", "peerAuthentications", func(n *yaml.Node, p string) {
		if pa := d.peerAuth(n, p, u); pa != nil {
			f.PeerAuthentications = append(f.PeerAuthentications, pa)
		}
	})
	return f
}

func checkTrustDomain(s string) string {
	td, err := spiffeid.TrustDomainFromString(s)
	if err != nil || td.Name() != s {
		return "is not a trust domain name (want a bare SPIFFE trust domain such as cluster.local: lowercase letters, digits, '.', '-' and '_')"
	}
	return ""
}

// name reads a string field and checks it with check; it returns the value
// and whether it is present and valid.
func (d *decoder) name(parent *yaml.Node, m map[string]entry, path, field string, required bool, check func(string) string) (string, *yaml.Node, bool) {
	s, n, ok := d.str(parent, m, path, field, required)
	if !ok {
		return "", n, false
	}
	if msg := check(s); msg != "" {
		d.add(n, join(path, field), ErrInvalidValue, nil, "%s %s", quoteShort(s), msg)
		return "", n, false
	}
	return s, n, true
}

// unique records key in seen, reporting a duplicate; it returns false for a
// duplicate.
func unique[K comparable](d *decoder, seen map[K]seenAt, k K, n *yaml.Node, path, what string) bool {
	if first, dup := seen[k]; dup {
		d.add(n, path, ErrDuplicate, nil, "%s is already used by %s (line %d)", what, first.path, first.line)
		return false
	}
	seen[k] = seenAt{path, n.Line}
	return true
}

func (d *decoder) workload(n *yaml.Node, path string, f *File, u *uniques) *store.Workload {
	m, _ := d.fields(n, path, workloadFields, workloadHints)
	if m == nil {
		return nil
	}
	errsBefore := len(d.errs)
	w := &store.Workload{TrustDomain: f.TrustDomain, ServiceAccount: "default", Healthy: true}
	if s, vn, ok := d.name(n, m, path, "uid", true, checkUID); ok && unique(d, u.uids, s, vn, join(path, "uid"), fmt.Sprintf("uid %q", s)) {
		w.UID = s
	}
	w.Name, _, _ = d.name(n, m, path, "name", true, checkDNSSubdomain)
	w.Namespace, _, _ = d.name(n, m, path, "namespace", true, checkDNSLabel)
	if s, _, ok := d.name(n, m, path, "serviceAccount", false, checkDNSSubdomain); ok {
		w.ServiceAccount = s
	}
	w.Node, _, _ = d.name(n, m, path, "node", false, checkDNSSubdomain)
	if s, vn, ok := d.str(n, m, path, "protocol", true); ok {
		switch p := store.Protocol(s); p {
		case store.ProtocolHBONE, store.ProtocolTCP:
			w.Protocol = p
		default:
			d.add(vn, join(path, "protocol"), ErrInvalidValue, nil, "unknown protocol %s (want HBONE or TCP)", quoteShort(s))
		}
	}
	if _, ok := present(m, "ips"); !ok {
		d.add(n, join(path, "ips"), ErrRequired, nil, "required field is missing")
	} else if ln, ok := d.list(m, path, "ips", func(c *yaml.Node, p string) {
		ip, ok := d.addr(c, p)
		if ok && unique(d, u.ips, ip, c, p, ip.String()) {
			w.IPs = append(w.IPs, ip)
		}
	}); ok && len(ln.Content) == 0 {
		d.add(ln, join(path, "ips"), ErrRequired, nil, "must list at least one address")
	}
	w.Labels = d.labels(m, path, "labels")
	w.Healthy = d.boolean(m, path, "healthy", true)
	if len(d.errs) == errsBefore {
		// Every part is valid on its own; the identity they form must be
		// too (this cannot fail today, it guards future rule changes).
		if _, err := identity.New(w.TrustDomain, w.Namespace, w.ServiceAccount); err != nil {
			d.add(n, path, ErrInvalidValue, err, "no valid identity: %v", err)
		}
	}
	return w
}

func (d *decoder) service(n *yaml.Node, path string, f *File, u *uniques) *store.Service {
	m, _ := d.fields(n, path, serviceFields, serviceHints)
	if m == nil {
		return nil
	}
	s := &store.Service{}
	name, nameNode, nameOK := d.name(n, m, path, "name", true, checkServiceName)
	ns, _, nsOK := d.name(n, m, path, "namespace", true, checkDNSLabel)
	s.Name, s.Namespace = name, ns
	if nameOK && nsOK {
		unique(d, u.services, [2]string{ns, name}, nameNode, join(path, "name"), fmt.Sprintf("service %s/%s", ns, name))
	}
	host, hostNode, hostOK := d.name(n, m, path, "hostname", false, checkDNSSubdomain)
	if _, set := present(m, "hostname"); !set && nameOK && nsOK {
		host, hostNode, hostOK = name+"."+ns+".svc."+f.ClusterDomain, n, true
		if checkDNSSubdomain(host) != "" {
			d.add(n, join(path, "hostname"), ErrInvalidValue, nil, "the default hostname %s is too long; set hostname", quoteShort(host))
			hostOK = false
		}
	}
	if hostOK {
		s.Hostname = host
		if nsOK {
			unique(d, u.hostnames, [2]string{ns, host}, hostNode, join(path, "hostname"), fmt.Sprintf("hostname %s in namespace %s", host, ns))
		}
	}
	d.list(m, path, "vips", func(c *yaml.Node, p string) {
		ip, ok := d.addr(c, p)
		if !ok {
			return
		}
		if w, clash := u.ips[ip]; clash {
			d.add(c, p, ErrDuplicate, nil, "%s is already used by %s (line %d), a workload address", ip, w.path, w.line)
			return
		}
		if unique(d, u.vips, ip, c, p, ip.String()) {
			s.VIPs = append(s.VIPs, ip)
		}
	})
	ports := map[uint16]seenAt{}
	portNames := map[string]seenAt{}
	d.list(m, path, "ports", func(c *yaml.Node, p string) {
		pm, _ := d.fields(c, p, portFields, portHints)
		if pm == nil {
			return
		}
		var sp store.ServicePort
		if pn, pnNode, ok := d.name(c, pm, p, "name", false, checkDNSLabel); ok && unique(d, portNames, pn, pnNode, join(p, "name"), fmt.Sprintf("port name %q", pn)) {
			sp.Name = pn
		}
		if e, ok := present(pm, "port"); !ok {
			d.add(c, join(p, "port"), ErrRequired, nil, "required field is missing")
		} else if v, ok := d.port(e.value, join(p, "port")); ok && unique(d, ports, v, e.value, join(p, "port"), fmt.Sprintf("port %d", v)) {
			sp.Port = v
		}
		sp.TargetPort = sp.Port
		if e, ok := present(pm, "targetPort"); ok {
			if v, ok := d.port(e.value, join(p, "targetPort")); ok {
				sp.TargetPort = v
			}
		}
		s.Ports = append(s.Ports, sp)
	})
	s.Selector = d.labels(m, path, "selector")
	s.SANs = d.strList(m, path, "sans", func(v string) error {
		if _, err := spiffeid.FromString(v); err != nil {
			return fmt.Errorf("%s is not a SPIFFE id (%v)", quoteShort(v), err)
		}
		return nil
	})
	return s
}

// scopeOf reads scope and selector, inferring the scope when absent:
// selector → workload, otherwise namespace.
func (d *decoder) scopeOf(n *yaml.Node, m map[string]entry, path string) (rbac.Scope, map[string]string) {
	sel := d.labels(m, path, "selector")
	if len(sel) == 0 {
		sel = nil
	}
	s, sn, ok := d.str(n, m, path, "scope", false)
	if !ok {
		if _, set := present(m, "scope"); set {
			return "", sel // wrong type, reported
		}
		if sel != nil {
			return rbac.ScopeWorkload, sel
		}
		return rbac.ScopeNamespace, nil
	}
	switch sc := rbac.Scope(s); sc {
	case rbac.ScopeMesh, rbac.ScopeNamespace:
		if sel != nil {
			d.add(m["selector"].value, join(path, "selector"), ErrInvalidValue, nil, "a %s-scoped object takes no selector", sc)
		}
		return sc, nil
	case rbac.ScopeWorkload:
		if sel == nil {
			d.add(sn, join(path, "scope"), ErrRequired, nil, "workload scope needs a non-empty selector")
		}
		return sc, sel
	}
	d.add(sn, join(path, "scope"), ErrInvalidValue, nil, "unknown scope %s (want mesh, namespace or workload)", quoteShort(s))
	return "", sel
}

func (d *decoder) policy(n *yaml.Node, path string, u *uniques) *rbac.Policy {
	m, _ := d.fields(n, path, policyFields, policyHints)
	if m == nil {
		return nil
	}
	errsBefore := len(d.errs)
	p := &rbac.Policy{Action: rbac.ActionAllow}
	name, nameNode, nameOK := d.name(n, m, path, "name", true, checkDNSSubdomain)
	ns, _, nsOK := d.name(n, m, path, "namespace", true, checkDNSLabel)
	p.Name, p.Namespace = name, ns
	if nameOK && nsOK {
		unique(d, u.policies, [2]string{ns, name}, nameNode, join(path, "name"), fmt.Sprintf("authorization policy %s/%s", ns, name))
	}
	p.Scope, p.Selector = d.scopeOf(n, m, path)
	if s, an, ok := d.str(n, m, path, "action", false); ok {
		switch a := rbac.Action(s); a {
		case rbac.ActionAllow, rbac.ActionDeny:
			p.Action = a
		default:
			d.add(an, join(path, "action"), ErrInvalidValue, nil, "unknown action %s (want ALLOW or DENY)", quoteShort(s))
		}
	}
	rulesNode, _ := d.list(m, path, "rules", func(c *yaml.Node, rp string) {
		p.Rules = append(p.Rules, d.rule(c, rp))
	})
	if p.Action == rbac.ActionDeny && len(p.Rules) == 0 {
		at := n
		if rulesNode != nil {
			at = rulesNode
		}
		d.add(at, join(path, "rules"), ErrRequired, nil,
			`a DENY policy with no rules matches nothing (it does not mean "deny all"); to deny every connection write rules: [{}]`)
	}
	if len(d.errs) == errsBefore {
		if err := p.Validate(); err != nil {
			d.add(n, path, ErrInvalidValue, err, "%s", trimSentinel(err))
		}
	}
	return p
}

func (d *decoder) rule(n *yaml.Node, path string) rbac.Rule {
	var r rbac.Rule
	m, _ := d.fields(n, path, ruleFields, ruleHints)
	if m == nil {
		return r
	}
	d.list(m, path, "from", func(c *yaml.Node, p string) {
		before := len(d.errs)
		sm, _ := d.fields(c, p, sourceFields, sourceHints)
		if sm == nil {
			return
		}
		var s rbac.Source
		s.Principals = d.strList(sm, p, "principals", rbac.CheckPrincipal)
		s.NotPrincipals = d.strList(sm, p, "notPrincipals", rbac.CheckPrincipal)
		s.Namespaces = d.strList(sm, p, "namespaces", rbac.CheckNamespace)
		s.NotNamespaces = d.strList(sm, p, "notNamespaces", rbac.CheckNamespace)
		s.ServiceAccounts = d.strList(sm, p, "serviceAccounts", rbac.CheckServiceAccount)
		s.NotServiceAccounts = d.strList(sm, p, "notServiceAccounts", rbac.CheckServiceAccount)
		s.SourceIPs = d.prefixes(sm, p, "ipBlocks")
		s.NotSourceIPs = d.prefixes(sm, p, "notIpBlocks")
		if s.IsEmpty() && len(d.errs) == before {
			d.add(c, p, ErrRequired, nil, "source sets no field (leave from out to match every peer)")
		}
		r.From = append(r.From, s)
	})
	d.list(m, path, "to", func(c *yaml.Node, p string) {
		before := len(d.errs)
		om, _ := d.fields(c, p, opFields, opHints)
		if om == nil {
			return
		}
		var o rbac.Operation
		o.Ports = d.ports(om, p, "ports")
		o.NotPorts = d.ports(om, p, "notPorts")
		if o.IsEmpty() && len(d.errs) == before {
			d.add(c, p, ErrRequired, nil, "operation sets no field (leave to out to match every port)")
		}
		r.To = append(r.To, o)
	})
	return r
}

func (d *decoder) prefixes(m map[string]entry, path, name string) []netip.Prefix {
	var out []netip.Prefix
	d.list(m, path, name, func(c *yaml.Node, p string) {
		if pf, ok := d.prefix(c, p); ok {
			out = append(out, pf)
		}
	})
	return out
}

func (d *decoder) ports(m map[string]entry, path, name string) []uint16 {
	var out []uint16
	d.list(m, path, name, func(c *yaml.Node, p string) {
		if v, ok := d.port(c, p); ok {
			out = append(out, v)
		}
	})
	return out
}

func (d *decoder) peerAuth(n *yaml.Node, path string, u *uniques) *rbac.PeerAuthentication {
	m, _ := d.fields(n, path, peerAuthFields, peerAuthHints)
	if m == nil {
		return nil
	}
	errsBefore := len(d.errs)
	pa := &rbac.PeerAuthentication{}
	name, nameNode, nameOK := d.name(n, m, path, "name", true, checkDNSSubdomain)
	ns, _, nsOK := d.name(n, m, path, "namespace", true, checkDNSLabel)
	pa.Name, pa.Namespace = name, ns
	if nameOK && nsOK {
		unique(d, u.peerAuths, [2]string{ns, name}, nameNode, join(path, "name"), fmt.Sprintf("peer authentication %s/%s", ns, name))
	}
	pa.Scope, pa.Selector = d.scopeOf(n, m, path)
	if s, mn, ok := d.str(n, m, path, "mode", true); ok {
		switch md := rbac.Mode(s); md {
		case rbac.ModeStrict, rbac.ModePermissive:
			pa.Mode = md
		default:
			d.add(mn, join(path, "mode"), ErrInvalidValue, nil, "unknown mode %s (want STRICT or PERMISSIVE)", quoteShort(s))
		}
	}
	if nsOK && (pa.Scope == rbac.ScopeMesh || pa.Scope == rbac.ScopeNamespace) {
		k, what := ns, "namespace "+ns+" already has a namespace-wide peer authentication"
		if pa.Scope == rbac.ScopeMesh {
			k, what = "", "there is already a mesh-wide peer authentication"
		}
		if first, dup := u.wideAuths[k]; dup {
			d.add(n, path, ErrDuplicate, nil, "%s: %s (line %d)", what, first.path, first.line)
		} else {
			u.wideAuths[k] = seenAt{path, n.Line}
		}
	}
	if len(d.errs) == errsBefore {
		if err := pa.Validate(); err != nil {
			d.add(n, path, ErrInvalidValue, err, "%s", trimSentinel(err))
		}
	}
	return pa
}
