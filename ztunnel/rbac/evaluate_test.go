package rbac

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	frontend = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")
	backend  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")
	admin    = spiffeid.RequireFromString("spiffe://cluster.local/ns/ops/sa/admin")
	foreign  = spiffeid.RequireFromString("spiffe://other.example/ns/shop/sa/frontend")
	oddPath  = spiffeid.RequireFromString("spiffe://cluster.local/workload/frontend")
)

func conn(id spiffeid.ID, src string, port uint16) Connection {
	c := Connection{Identity: id, DstPort: port}
	if src != "" {
		c.SrcIP = netip.MustParseAddr(src)
	}
	return c
}

func pfx(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// TestSourceFields checks every Source field, its negation and its value
// forms against one ALLOW policy and one DENY policy built from the same
// source (the two differ only for unknown attributes).
func TestSourceFields(t *testing.T) {
	type tc struct {
		name  string
		src   Source
		conn  Connection
		allow bool // does the source match inside an ALLOW policy
		deny  bool // does it match inside a DENY policy
	}
	both := func(name string, src Source, c Connection, m bool) tc { return tc{name, src, c, m, m} }
	plain := conn(spiffeid.ID{}, "10.0.0.1", 80)
	cases := []tc{
		// principals: exact, with and without scheme.
		both("principal exact", Source{Principals: []string{frontend.String()}}, conn(frontend, "", 80), true),
		both("principal exact other", Source{Principals: []string{frontend.String()}}, conn(backend, "", 80), false),
		both("principal istio form", Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}}, conn(frontend, "", 80), true),
		both("principal istio form other td", Source{Principals: []string{"cluster.local/ns/shop/sa/frontend"}}, conn(foreign, "", 80), false),
		both("principal any of several", Source{Principals: []string{admin.String(), frontend.String()}}, conn(frontend, "", 80), true),
		// principals: wildcards.
		both("principal star", Source{Principals: []string{"*"}}, conn(backend, "", 80), true),
		both("principal star odd path", Source{Principals: []string{"*"}}, conn(oddPath, "", 80), true),
		both("principal prefix", Source{Principals: []string{"spiffe://cluster.local/ns/shop/*"}}, conn(backend, "", 80), true),
		both("principal prefix miss", Source{Principals: []string{"spiffe://cluster.local/ns/shop/*"}}, conn(admin, "", 80), false),
		both("principal prefix istio form", Source{Principals: []string{"cluster.local/ns/shop/*"}}, conn(backend, "", 80), true),
		both("principal prefix other td", Source{Principals: []string{"spiffe://cluster.local/*"}}, conn(foreign, "", 80), false),
		both("principal suffix", Source{Principals: []string{"*/sa/frontend"}}, conn(foreign, "", 80), true),
		both("principal suffix miss", Source{Principals: []string{"*/sa/frontend"}}, conn(backend, "", 80), false),
		both("principal suffix with scheme", Source{Principals: []string{"*spiffe://cluster.local/ns/ops/sa/admin"}}, conn(admin, "", 80), true),
		// notPrincipals.
		both("notPrincipal excluded", Source{NotPrincipals: []string{frontend.String()}}, conn(frontend, "", 80), false),
		both("notPrincipal other", Source{NotPrincipals: []string{frontend.String()}}, conn(backend, "", 80), true),
		both("notPrincipal prefix", Source{NotPrincipals: []string{"spiffe://cluster.local/ns/shop/*"}}, conn(backend, "", 80), false),
		both("notPrincipal suffix", Source{NotPrincipals: []string{"*/sa/admin"}}, conn(backend, "", 80), true),
		both("notPrincipal star authenticated", Source{NotPrincipals: []string{"*"}}, conn(backend, "", 80), false),
		// namespaces.
		both("namespace exact", Source{Namespaces: []string{"shop"}}, conn(backend, "", 80), true),
		both("namespace other", Source{Namespaces: []string{"shop"}}, conn(admin, "", 80), false),
		both("namespace any td", Source{Namespaces: []string{"shop"}}, conn(foreign, "", 80), true),
		both("namespace prefix", Source{Namespaces: []string{"sh*"}}, conn(backend, "", 80), true),
		both("namespace suffix", Source{Namespaces: []string{"*ps"}}, conn(admin, "", 80), true),
		both("namespace suffix miss", Source{Namespaces: []string{"*ps"}}, conn(backend, "", 80), false),
		both("namespace star", Source{Namespaces: []string{"*"}}, conn(admin, "", 80), true),
		both("notNamespace excluded", Source{NotNamespaces: []string{"shop"}}, conn(backend, "", 80), false),
		both("notNamespace other", Source{NotNamespaces: []string{"shop"}}, conn(admin, "", 80), true),
		both("notNamespace prefix", Source{NotNamespaces: []string{"o*"}}, conn(admin, "", 80), false),
		// service accounts.
		both("serviceAccount", Source{ServiceAccounts: []string{"shop/frontend"}}, conn(frontend, "", 80), true),
		both("serviceAccount other ns", Source{ServiceAccounts: []string{"ops/frontend"}}, conn(frontend, "", 80), false),
		both("serviceAccount other sa", Source{ServiceAccounts: []string{"shop/backend"}}, conn(frontend, "", 80), false),
		both("serviceAccount one of", Source{ServiceAccounts: []string{"ops/admin", "shop/backend"}}, conn(backend, "", 80), true),
		both("notServiceAccount excluded", Source{NotServiceAccounts: []string{"shop/frontend"}}, conn(frontend, "", 80), false),
		both("notServiceAccount other", Source{NotServiceAccounts: []string{"shop/frontend"}}, conn(backend, "", 80), true),
		// source IPs.
		both("sourceIP in", Source{SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "10.1.2.3", 80), true),
		both("sourceIP out", Source{SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "192.168.1.1", 80), false),
		both("sourceIP host", Source{SourceIPs: pfx("192.168.1.1/32", "10.0.0.0/8")}, conn(frontend, "192.168.1.1", 80), true),
		both("sourceIP v4-mapped", Source{SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "::ffff:10.1.2.3", 80), true),
		both("sourceIP v6", Source{SourceIPs: pfx("fd00::/8")}, conn(frontend, "fd00::1", 80), true),
		both("sourceIP v6 vs v4", Source{SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "fd00::1", 80), false),
		both("notSourceIP in", Source{NotSourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "10.1.2.3", 80), false),
		both("notSourceIP out", Source{NotSourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "11.1.2.3", 80), true),
		both("sourceIP unknown", Source{SourceIPs: pfx("0.0.0.0/0")}, conn(frontend, "", 80), false),
		{"notSourceIP unknown", Source{NotSourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "", 80), false, true},
		// AND across fields, OR within.
		both("and: all match", Source{Namespaces: []string{"shop"}, SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "10.0.0.9", 80), true),
		both("and: ip fails", Source{Namespaces: []string{"shop"}, SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "11.0.0.9", 80), false),
		both("and: ns fails", Source{Namespaces: []string{"ops"}, SourceIPs: pfx("10.0.0.0/8")}, conn(frontend, "10.0.0.9", 80), false),
		both("positive and negative", Source{Namespaces: []string{"shop"}, NotPrincipals: []string{frontend.String()}}, conn(backend, "", 80), true),
		both("positive and negative excluded", Source{Namespaces: []string{"shop"}, NotPrincipals: []string{frontend.String()}}, conn(frontend, "", 80), false),
		// Plaintext: positive identity fields never match.
		both("plaintext principals", Source{Principals: []string{"*"}}, plain, false),
		both("plaintext namespaces", Source{Namespaces: []string{"*"}}, plain, false),
		both("plaintext serviceAccounts", Source{ServiceAccounts: []string{"shop/frontend"}}, plain, false),
		both("plaintext ip only", Source{SourceIPs: pfx("10.0.0.0/8")}, plain, true),
		// Plaintext: negated identity fields match only in DENY policies.
		{"plaintext notPrincipals", Source{NotPrincipals: []string{frontend.String()}}, plain, false, true},
		{"plaintext notPrincipals star", Source{NotPrincipals: []string{"*"}}, plain, false, true},
		{"plaintext notNamespaces", Source{NotNamespaces: []string{"shop"}}, plain, false, true},
		{"plaintext notServiceAccounts", Source{NotServiceAccounts: []string{"shop/frontend"}}, plain, false, true},
		both("plaintext notPrincipals and principals", Source{Principals: []string{"*"}, NotPrincipals: []string{frontend.String()}}, plain, false),
		both("plaintext notNamespaces but ip fails", Source{NotNamespaces: []string{"shop"}, SourceIPs: pfx("192.168.0.0/16")}, plain, false),
		// An id whose path is not /ns/<ns>/sa/<sa>: the principal is known,
		// namespace and service account are not.
		both("odd path principal", Source{Principals: []string{oddPath.String()}}, conn(oddPath, "", 80), true),
		both("odd path namespaces", Source{Namespaces: []string{"*"}}, conn(oddPath, "", 80), false),
		both("odd path serviceAccounts", Source{ServiceAccounts: []string{"workload/frontend"}}, conn(oddPath, "", 80), false),
		{"odd path notNamespaces", Source{NotNamespaces: []string{"shop"}}, conn(oddPath, "", 80), false, true},
		both("odd path notPrincipals", Source{NotPrincipals: []string{frontend.String()}}, conn(oddPath, "", 80), true),
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, act := range []Action{ActionAllow, ActionDeny} {
				p := &Policy{Name: "p", Namespace: "shop", Scope: ScopeNamespace, Action: act, Rules: []Rule{{From: []Source{c.src}}}}
				if err := p.Validate(); err != nil {
					t.Fatalf("invalid test policy: %v", err)
				}
				want := c.allow
				if act == ActionDeny {
					want = c.deny
				}
				if got := p.Matches(c.conn); got != want {
					t.Errorf("%s policy: Matches = %v, want %v", act, got, want)
				}
			}
		})
	}
}

func TestOperations(t *testing.T) {
	cases := []struct {
		name string
		op   Operation
		port uint16
		want bool
	}{
		{"port listed", Operation{Ports: []uint16{80, 8080}}, 8080, true},
		{"port not listed", Operation{Ports: []uint16{80, 8080}}, 443, false},
		{"notPort listed", Operation{NotPorts: []uint16{22}}, 22, false},
		{"notPort other", Operation{NotPorts: []uint16{22}}, 80, true},
		{"port and notPort", Operation{Ports: []uint16{80, 22}, NotPorts: []uint16{22}}, 22, false},
		{"port and notPort ok", Operation{Ports: []uint16{80, 22}, NotPorts: []uint16{22}}, 80, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &Policy{Name: "p", Namespace: "shop", Scope: ScopeNamespace, Action: ActionAllow, Rules: []Rule{{To: []Operation{c.op}}}}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			// Ports do not depend on identity: plaintext and mTLS agree.
			for _, id := range []spiffeid.ID{{}, frontend} {
				if got := p.Matches(conn(id, "10.0.0.1", c.port)); got != c.want {
					t.Errorf("id %q: Matches = %v, want %v", id, got, c.want)
				}
			}
		})
	}
}

func TestRules(t *testing.T) {
	fromShop := Source{Namespaces: []string{"shop"}}
	fromOps := Source{Namespaces: []string{"ops"}}
	port80 := Operation{Ports: []uint16{80}}
	port443 := Operation{Ports: []uint16{443}}
	cases := []struct {
		name  string
		rules []Rule
		conn  Connection
		want  bool
	}{
		{"no rules match nothing", nil, conn(frontend, "", 80), false},
		{"empty rule matches all", []Rule{{}}, conn(frontend, "", 80), true},
		{"empty rule matches plaintext", []Rule{{}}, conn(spiffeid.ID{}, "", 80), true},
		{"from only", []Rule{{From: []Source{fromShop}}}, conn(frontend, "", 1), true},
		{"to only", []Rule{{To: []Operation{port80}}}, conn(admin, "", 80), true},
		{"from and to", []Rule{{From: []Source{fromShop}, To: []Operation{port80}}}, conn(frontend, "", 80), true},
		{"from ok, to fails", []Rule{{From: []Source{fromShop}, To: []Operation{port80}}}, conn(frontend, "", 443), false},
		{"to ok, from fails", []Rule{{From: []Source{fromShop}, To: []Operation{port80}}}, conn(admin, "", 80), false},
		{"any source", []Rule{{From: []Source{fromOps, fromShop}}}, conn(frontend, "", 80), true},
		{"any operation", []Rule{{To: []Operation{port443, port80}}}, conn(frontend, "", 80), true},
		{"any rule", []Rule{{From: []Source{fromOps}}, {To: []Operation{port80}}}, conn(frontend, "", 80), true},
		{"no rule", []Rule{{From: []Source{fromOps}}, {To: []Operation{port443}}}, conn(frontend, "", 80), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &Policy{Name: "p", Namespace: "shop", Scope: ScopeNamespace, Action: ActionAllow, Rules: c.rules}
			if got := p.Matches(c.conn); got != c.want {
				t.Errorf("Matches = %v, want %v", got, c.want)
			}
		})
	}
}

func allow(name string, rules ...Rule) *Policy {
	p := &Policy{Name: name, Namespace: "shop", Scope: ScopeNamespace, Action: ActionAllow, Rules: rules}
	if err := p.Validate(); err != nil {
		panic(err)
	}
	return p
}

func deny(name string, rules ...Rule) *Policy {
	p := &Policy{Name: name, Namespace: "shop", Scope: ScopeNamespace, Action: ActionDeny, Rules: rules}
	if err := p.Validate(); err != nil {
		panic(err)
	}
	return p
}

func TestEvaluateOrder(t *testing.T) {
	fromFrontend := Rule{From: []Source{{Principals: []string{frontend.String()}}}}
	fromShop := Rule{From: []Source{{Namespaces: []string{"shop"}}}}
	toAdminPort := Rule{To: []Operation{{Ports: []uint16{9000}}}}
	requireMTLS := Rule{From: []Source{{NotPrincipals: []string{"*"}}}}
	cases := []struct {
		name     string
		policies []*Policy
		conn     Connection
		want     Decision
	}{
		{"no policies", nil, conn(frontend, "", 80), Decision{true, "", ReasonNoAllow}},
		{"nil entries", []*Policy{nil, nil}, conn(frontend, "", 80), Decision{true, "", ReasonNoAllow}},
		{"only non-matching deny", []*Policy{deny("d", toAdminPort)}, conn(frontend, "", 80), Decision{true, "", ReasonNoAllow}},
		{"matching deny", []*Policy{deny("d", toAdminPort)}, conn(frontend, "", 9000), Decision{false, "shop/d", ReasonDenyMatched}},
		{"allow matched", []*Policy{allow("a", fromFrontend)}, conn(frontend, "", 80), Decision{true, "shop/a", ReasonAllowMatched}},
		{"allow not matched", []*Policy{allow("a", fromFrontend)}, conn(backend, "", 80), Decision{false, "", ReasonNoneMatched}},
		{"allow nothing", []*Policy{allow("a")}, conn(frontend, "", 80), Decision{false, "", ReasonNoneMatched}},
		{"deny wins over allow", []*Policy{allow("a", fromShop), deny("d", fromFrontend)}, conn(frontend, "", 80), Decision{false, "shop/d", ReasonDenyMatched}},
		{"deny wins whatever the order", []*Policy{deny("d", fromFrontend), allow("a", fromShop)}, conn(frontend, "", 80), Decision{false, "shop/d", ReasonDenyMatched}},
		{"deny after several allows", []*Policy{allow("a1", fromShop), allow("a2", fromFrontend), deny("d", toAdminPort)}, conn(frontend, "", 9000), Decision{false, "shop/d", ReasonDenyMatched}},
		{"first matching allow reported", []*Policy{allow("a1", toAdminPort), allow("a2", fromShop), allow("a3", fromFrontend)}, conn(frontend, "", 80), Decision{true, "shop/a2", ReasonAllowMatched}},
		{"allow when deny misses", []*Policy{deny("d", toAdminPort), allow("a", fromShop)}, conn(backend, "", 80), Decision{true, "shop/a", ReasonAllowMatched}},
		{"plaintext vs allow on principals", []*Policy{allow("a", fromShop)}, conn(spiffeid.ID{}, "10.0.0.1", 80), Decision{false, "", ReasonNoneMatched}},
		{"istio require-mTLS recipe denies plaintext", []*Policy{deny("mtls", requireMTLS)}, conn(spiffeid.ID{}, "10.0.0.1", 80), Decision{false, "shop/mtls", ReasonDenyMatched}},
		{"istio require-mTLS recipe lets mTLS in", []*Policy{deny("mtls", requireMTLS)}, conn(backend, "10.0.0.1", 80), Decision{true, "", ReasonNoAllow}},
		{"unknown action fails closed", []*Policy{{Name: "x", Namespace: "shop", Scope: ScopeNamespace, Action: "AUDIT", Rules: []Rule{{}}}}, conn(frontend, "", 80), Decision{false, "shop/x", ReasonDenyMatched}},
		{"unvalidated policy still named", []*Policy{{Name: "raw", Namespace: "shop", Scope: ScopeNamespace, Action: ActionAllow, Rules: []Rule{{}}}}, conn(frontend, "", 80), Decision{true, "shop/raw", ReasonAllowMatched}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Evaluate(c.policies, c.conn); got != c.want {
				t.Errorf("Evaluate = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestDecisionString(t *testing.T) {
	for _, c := range []struct {
		d    Decision
		want string
	}{
		{Decision{true, "", ReasonNoAllow}, "allow (no ALLOW policy applies)"},
		{Decision{false, "shop/d", ReasonDenyMatched}, "deny (DENY policy matched: shop/d)"},
	} {
		if got := c.d.String(); got != c.want {
			t.Errorf("String = %q, want %q", got, c.want)
		}
	}
}

func TestScoping(t *testing.T) {
	labels := map[string]string{"app": "checkout", "version": "v1"}
	cases := []struct {
		name   string
		p      Policy
		ns     string
		labels map[string]string
		want   bool
	}{
		{"mesh applies everywhere", Policy{Scope: ScopeMesh, Namespace: "istio-system"}, "shop", labels, true},
		{"namespace same", Policy{Scope: ScopeNamespace, Namespace: "shop"}, "shop", labels, true},
		{"namespace other", Policy{Scope: ScopeNamespace, Namespace: "shop"}, "ops", labels, false},
		{"workload selected", Policy{Scope: ScopeWorkload, Namespace: "shop", Selector: map[string]string{"app": "checkout"}}, "shop", labels, true},
		{"workload all labels", Policy{Scope: ScopeWorkload, Namespace: "shop", Selector: map[string]string{"app": "checkout", "version": "v1"}}, "shop", labels, true},
		{"workload label value differs", Policy{Scope: ScopeWorkload, Namespace: "shop", Selector: map[string]string{"app": "checkout", "version": "v2"}}, "shop", labels, false},
		{"workload label missing", Policy{Scope: ScopeWorkload, Namespace: "shop", Selector: map[string]string{"tier": "web"}}, "shop", labels, false},
		{"workload other namespace", Policy{Scope: ScopeWorkload, Namespace: "ops", Selector: map[string]string{"app": "checkout"}}, "shop", labels, false},
		{"workload empty selector", Policy{Scope: ScopeWorkload, Namespace: "shop"}, "shop", labels, false},
		{"workload no labels", Policy{Scope: ScopeWorkload, Namespace: "shop", Selector: map[string]string{"app": "checkout"}}, "shop", nil, false},
		{"unknown scope", Policy{Scope: "cluster", Namespace: "shop"}, "shop", labels, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.p.AppliesTo(c.ns, c.labels); got != c.want {
				t.Errorf("Policy.AppliesTo = %v, want %v", got, c.want)
			}
			pa := PeerAuthentication{Scope: c.p.Scope, Namespace: c.p.Namespace, Selector: c.p.Selector, Mode: ModeStrict}
			if got := pa.AppliesTo(c.ns, c.labels); got != c.want {
				t.Errorf("PeerAuthentication.AppliesTo = %v, want %v", got, c.want)
			}
		})
	}
}

func TestSplitNSSA(t *testing.T) {
	for _, c := range []struct {
		path   string
		ns, sa string
		ok     bool
	}{
		{"/ns/shop/sa/frontend", "shop", "frontend", true},
		{"/ns/shop/sa/a.b", "shop", "a.b", true},
		{"/ns/shop/sa/", "", "", false},
		{"/ns/shop/sa/x/y", "", "", false},
		{"/ns//sa/x", "", "", false},
		{"/ns/shop", "", "", false},
		{"/ns/shop/xa/x", "", "", false},
		{"/workload/x", "", "", false},
		{"", "", "", false},
	} {
		ns, sa, ok := splitNSSA(c.path)
		if ns != c.ns || sa != c.sa || ok != c.ok {
			t.Errorf("splitNSSA(%q) = %q, %q, %v; want %q, %q, %v", c.path, ns, sa, ok, c.ns, c.sa, c.ok)
		}
	}
}

// TestEvaluateConcurrent runs Evaluate from many goroutines on shared
// policies (under -race this checks Evaluate only reads).
func TestEvaluateConcurrent(t *testing.T) {
	ps := benchPolicies()
	c := conn(frontend, "10.1.2.3", 8080)
	want := Evaluate(ps, c)
	done := make(chan Decision)
	for range 8 {
		go func() {
			var d Decision
			for range 1000 {
				d = Evaluate(ps, c)
			}
			done <- d
		}()
	}
	for range 8 {
		if got := <-done; got != want {
			t.Errorf("concurrent Evaluate = %+v, want %+v", got, want)
		}
	}
}
