package rbac

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := func() *Policy {
		return &Policy{Name: "p", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"app": "x"}, Action: ActionAllow,
			Rules: []Rule{{From: []Source{{Principals: []string{"spiffe://cluster.local/ns/shop/sa/a"}}}, To: []Operation{{Ports: []uint16{80}}}}}}
	}
	cases := []struct {
		name   string
		mutate func(p *Policy)
		want   []string // substrings, one per expected error line
		is     error
	}{
		{"valid", func(*Policy) {}, nil, nil},
		{"valid allow without rules (allow nothing)", func(p *Policy) { p.Rules = nil }, nil, nil},
		{"valid deny all", func(p *Policy) { p.Action = ActionDeny; p.Rules = []Rule{{}} }, nil, nil},
		{"valid mesh", func(p *Policy) { p.Scope = ScopeMesh; p.Selector = nil; p.Namespace = "" }, nil, nil},
		{"valid wildcards", func(p *Policy) {
			p.Rules[0].From[0] = Source{
				Principals: []string{"*", "cluster.local/ns/shop/*", "*/sa/x", "spiffe://cluster.local/*"}, NotPrincipals: []string{"cluster.local/ns/shop/sa/b"},
				Namespaces: []string{"*", "sh*", "*op", "shop"}, NotNamespaces: []string{"ops"},
				ServiceAccounts: []string{"shop/a"}, NotServiceAccounts: []string{"shop/b.c"},
				SourceIPs: pfx("10.0.0.0/8"), NotSourceIPs: pfx("fd00::/8")}
		}, nil, nil},
		{"no name", func(p *Policy) { p.Name = "" }, []string{`policy "shop/": name: is empty`}, ErrInvalidPolicy},
		{"empty action", func(p *Policy) { p.Action = "" }, []string{"action: is empty (want ALLOW or DENY)"}, ErrInvalidAction},
		{"unknown action", func(p *Policy) { p.Action = "AUDIT" }, []string{`action: unknown action "AUDIT" (want ALLOW or DENY)`}, ErrInvalidAction},
		{"lowercase action", func(p *Policy) { p.Action = "allow" }, []string{`unknown action "allow"`}, ErrInvalidAction},
		{"deny without rules", func(p *Policy) { p.Action = ActionDeny; p.Rules = nil }, []string{`rules: a DENY policy with no rules matches nothing (it does not mean "deny all"); to deny every connection write one empty rule (rules: [{}])`}, ErrNoRules},
		{"empty scope", func(p *Policy) { p.Scope = "" }, []string{"scope: is empty (want mesh, namespace or workload)"}, ErrInvalidScope},
		{"unknown scope", func(p *Policy) { p.Scope = "cluster" }, []string{`scope: unknown scope "cluster"`}, ErrInvalidScope},
		{"workload without selector", func(p *Policy) { p.Selector = nil }, []string{"scope: workload scope needs a non-empty selector"}, ErrInvalidScope},
		{"workload without namespace", func(p *Policy) { p.Namespace = "" }, []string{"scope: workload scope needs a namespace"}, ErrInvalidScope},
		{"workload empty label name", func(p *Policy) { p.Selector = map[string]string{"": "x"} }, []string{"selector has an empty label name"}, ErrInvalidScope},
		{"namespace with selector", func(p *Policy) { p.Scope = ScopeNamespace }, []string{"namespace scope takes no selector"}, ErrInvalidScope},
		{"namespace without namespace", func(p *Policy) { p.Scope = ScopeNamespace; p.Selector = nil; p.Namespace = "" }, []string{"namespace scope needs a namespace"}, ErrInvalidScope},
		{"mesh with selector", func(p *Policy) { p.Scope = ScopeMesh }, []string{"mesh scope takes no selector"}, ErrInvalidScope},
		{"empty source", func(p *Policy) { p.Rules[0].From = []Source{{}} }, []string{"rules[0].from[0]: source sets no field"}, ErrEmptyMatch},
		{"empty operation", func(p *Policy) { p.Rules[0].To = []Operation{{}} }, []string{"rules[0].to[0]: operation sets no field"}, ErrEmptyMatch},
		{"port zero", func(p *Policy) { p.Rules[0].To[0].Ports = []uint16{80, 0} }, []string{"rules[0].to[0].ports[1]: 0 is not a port"}, ErrInvalidPort},
		{"notPort zero", func(p *Policy) { p.Rules[0].To[0].NotPorts = []uint16{0} }, []string{"rules[0].to[0].notPorts[0]: 0 is not a port"}, ErrInvalidPort},
		{"bad principal", func(p *Policy) { p.Rules[0].From[0].Principals = []string{"spiffe://bad host/x"} }, []string{`rules[0].from[0].principals[0]: principal "spiffe://bad host/x" contains white space`}, ErrInvalidPattern},
		{"principal not spiffe", func(p *Policy) { p.Rules[0].From[0].NotPrincipals = []string{"spiffe://UPPER/ns/a/sa/b"} }, []string{`notPrincipals[0]: principal "spiffe://UPPER/ns/a/sa/b" is not a SPIFFE id`}, ErrInvalidPattern},
		{"principal middle star", func(p *Policy) { p.Rules[0].From[0].Principals = []string{"spiffe://td/ns/*/sa/x"} }, []string{"has '*' in the middle"}, ErrInvalidPattern},
		{"principal two stars", func(p *Policy) { p.Rules[0].From[0].Principals = []string{"*foo*"} }, []string{"has more than one '*'"}, ErrInvalidPattern},
		{"principal empty", func(p *Policy) { p.Rules[0].From[0].Principals = []string{""} }, []string{`principal "" is empty`}, ErrInvalidPattern},
		{"bad namespace", func(p *Policy) { p.Rules[0].From[0] = Source{Namespaces: []string{"Shop"}} }, []string{`from[0].namespaces[0]: namespace "Shop" is not a namespace name`}, ErrInvalidPattern},
		{"bad namespace prefix", func(p *Policy) { p.Rules[0].From[0] = Source{NotNamespaces: []string{"a_b*"}} }, []string{`namespace "a_b*" has invalid character '_'`}, ErrInvalidPattern},
		{"sa without namespace", func(p *Policy) { p.Rules[0].From[0] = Source{ServiceAccounts: []string{"frontend"}} }, []string{`service account "frontend": want <namespace>/<serviceaccount>`}, ErrInvalidPattern},
		{"sa with wildcard", func(p *Policy) { p.Rules[0].From[0] = Source{NotServiceAccounts: []string{"shop/*"}} }, []string{"wildcards are not supported here"}, ErrInvalidPattern},
		{"sa bad name", func(p *Policy) { p.Rules[0].From[0] = Source{ServiceAccounts: []string{"shop/Front"}} }, []string{`name "Front" is not a DNS-1123 subdomain`}, ErrInvalidPattern},
		{"sa bad namespace", func(p *Policy) { p.Rules[0].From[0] = Source{ServiceAccounts: []string{"a.b/front"}} }, []string{`namespace "a.b" is not a DNS-1123 label`}, ErrInvalidPattern},
		{"sa extra slash", func(p *Policy) { p.Rules[0].From[0] = Source{ServiceAccounts: []string{"a/b/c"}} }, []string{"want <namespace>/<serviceaccount>"}, ErrInvalidPattern},
		{"invalid prefix", func(p *Policy) { p.Rules[0].From[0] = Source{NotSourceIPs: []netip.Prefix{{}}} }, []string{"notSourceIPs[0]: is not a valid prefix"}, ErrInvalidPrefix},
		{"several errors reported", func(p *Policy) {
			p.Action = "MAYBE"
			p.Rules[0].To[0].Ports = []uint16{0}
			p.Rules = append(p.Rules, Rule{From: []Source{{}}})
		}, []string{`unknown action "MAYBE"`, "rules[0].to[0].ports[0]", "rules[1].from[0]: source sets no field"}, ErrInvalidAction},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := ok()
			c.mutate(p)
			err := p.Validate()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if p.key != p.Key() || p.key == "" {
					t.Errorf("key not recorded: %q", p.key)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate succeeded, want an error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(c.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(lines), len(c.want), err)
			}
			for i, w := range c.want {
				if i < len(lines) && !strings.Contains(lines[i], w) {
					t.Errorf("error %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
			for _, l := range lines {
				if !strings.HasPrefix(l, "rbac: policy ") {
					t.Errorf("error %q lacks the rbac: policy prefix", l)
				}
			}
			if !errors.Is(err, c.is) {
				t.Errorf("errors.Is(err, %v) = false: %v", c.is, err)
			}
			if p.key != "" {
				t.Errorf("invalid policy recorded key %q", p.key)
			}
		})
	}
	var nilp *Policy
	if err := nilp.Validate(); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("nil policy: %v", err)
	}
}

func TestCheckPrincipal(t *testing.T) {
	good := []string{"*", "spiffe://cluster.local/ns/a/sa/b", "cluster.local/ns/a/sa/b", "spiffe://td/any/path", "spiffe://td/ns/a/*", "td/ns/a/*", "*/sa/b", "*b"}
	bad := []string{"", " ", "spiffe://td/ns/a/sa/b ", "**", "a*b", "*a*", "spiffe://", "spiffe://td/ns//sa/b", "http://td/ns/a/sa/b", "td/ns/a/sa/b/", "spiffe://td/%41"}
	for _, v := range good {
		if err := CheckPrincipal(v); err != nil {
			t.Errorf("CheckPrincipal(%q): %v", v, err)
		}
	}
	for _, v := range bad {
		if err := CheckPrincipal(v); !errors.Is(err, ErrInvalidPattern) || !strings.HasPrefix(err.Error(), "rbac: principal ") {
			t.Errorf("CheckPrincipal(%q) = %v, want rbac: ... ErrInvalidPattern", v, err)
		}
	}
}

func TestCheckNamespace(t *testing.T) {
	for _, v := range []string{"*", "shop", "a-b", "a*", "*-prod", "0"} {
		if err := CheckNamespace(v); err != nil {
			t.Errorf("CheckNamespace(%q): %v", v, err)
		}
	}
	for _, v := range []string{"", "Shop", "-a", "a-", "a.b", "a*b", "**", strings.Repeat("a", 64), "a/b*"} {
		if err := CheckNamespace(v); !errors.Is(err, ErrInvalidPattern) || !strings.HasPrefix(err.Error(), "rbac: namespace ") {
			t.Errorf("CheckNamespace(%q) = %v, want ErrInvalidPattern", v, err)
		}
	}
}

func TestCheckServiceAccount(t *testing.T) {
	for _, v := range []string{"shop/frontend", "a/b.c", "a/" + strings.Repeat("b", 63)} {
		if err := CheckServiceAccount(v); err != nil {
			t.Errorf("CheckServiceAccount(%q): %v", v, err)
		}
	}
	for _, v := range []string{"", "/", "a/", "/b", "frontend", "a/b/c", "A/b", "a/B", "*/b", "a/*"} {
		if err := CheckServiceAccount(v); !errors.Is(err, ErrInvalidPattern) || !strings.HasPrefix(err.Error(), "rbac: service account ") {
			t.Errorf("CheckServiceAccount(%q) = %v, want ErrInvalidPattern", v, err)
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	p := &Policy{Name: "p", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"app": "x"}, Action: ActionAllow,
		Rules: []Rule{{From: []Source{{Principals: []string{"*"}, SourceIPs: pfx("10.0.0.0/8")}}, To: []Operation{{Ports: []uint16{80}}}}}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	c := p.Clone()
	if !reflect.DeepEqual(p, c) {
		t.Fatalf("clone differs:\n%+v\n%+v", p, c)
	}
	c.Selector["app"] = "y"
	c.Rules[0].From[0].Principals[0] = "x"
	c.Rules[0].From[0].SourceIPs[0] = netip.Prefix{}
	c.Rules[0].To[0].Ports[0] = 1
	if p.Selector["app"] != "x" || p.Rules[0].From[0].Principals[0] != "*" || !p.Rules[0].From[0].SourceIPs[0].IsValid() || p.Rules[0].To[0].Ports[0] != 80 {
		t.Errorf("mutating the clone changed the original: %+v", p)
	}
	if (*Policy)(nil).Clone() != nil || (*PeerAuthentication)(nil).Clone() != nil {
		t.Error("nil Clone is not nil")
	}
	pa := &PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"a": "b"}, Mode: ModeStrict}
	pc := pa.Clone()
	pc.Selector["a"] = "c"
	if pa.Selector["a"] != "b" {
		t.Error("PeerAuthentication clone shares its selector")
	}
}

func TestJSON(t *testing.T) {
	p := &Policy{Name: "p", Namespace: "shop", Scope: ScopeNamespace, Action: ActionDeny,
		Rules: []Rule{{From: []Source{{NotPrincipals: []string{"*"}, SourceIPs: pfx("10.0.0.0/8")}}, To: []Operation{{Ports: []uint16{80}}}}}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"name":"p","namespace":"shop","scope":"namespace","action":"DENY","rules":[{"from":[{"notPrincipals":["*"],"ipBlocks":["10.0.0.0/8"]}],"to":[{"ports":[80]}]}]}`
	if string(b) != want {
		t.Errorf("JSON:\n got %s\nwant %s", b, want)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, p) {
		t.Errorf("round trip: %+v", back)
	}
}

func TestPeerAuthenticationValidate(t *testing.T) {
	cases := []struct {
		pa   PeerAuthentication
		want string
		is   error
	}{
		{PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeNamespace, Mode: ModeStrict}, "", nil},
		{PeerAuthentication{Name: "a", Scope: ScopeMesh, Mode: ModePermissive}, "", nil},
		{PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"a": "b"}, Mode: ModeStrict}, "", nil},
		{PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeNamespace, Mode: "DISABLE"}, `rbac: peer authentication "shop/a": mode: unknown mode "DISABLE" (want STRICT or PERMISSIVE)`, ErrInvalidMode},
		{PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeNamespace}, "mode: is empty", ErrInvalidMode},
		{PeerAuthentication{Name: "a", Namespace: "shop", Scope: ScopeWorkload, Mode: ModeStrict}, "workload scope needs a non-empty selector", ErrInvalidScope},
		{PeerAuthentication{Namespace: "shop", Scope: ScopeNamespace, Mode: ModeStrict}, "name: is empty", ErrInvalidPolicy},
	}
	for _, c := range cases {
		err := c.pa.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.pa, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, c.is) {
			t.Errorf("%+v: Validate = %v, want %q wrapping %v", c.pa, err, c.want, c.is)
		}
	}
	var nilpa *PeerAuthentication
	if err := nilpa.Validate(); err == nil {
		t.Error("nil PeerAuthentication validated")
	}
}

func TestResolveMode(t *testing.T) {
	mesh := func(m Mode) *PeerAuthentication { return &PeerAuthentication{Name: "m", Scope: ScopeMesh, Mode: m} }
	ns := func(m Mode) *PeerAuthentication {
		return &PeerAuthentication{Name: "n", Namespace: "shop", Scope: ScopeNamespace, Mode: m}
	}
	wl := func(m Mode) *PeerAuthentication {
		return &PeerAuthentication{Name: "w", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"a": "b"}, Mode: m}
	}
	cases := []struct {
		name string
		pas  []*PeerAuthentication
		want Mode
	}{
		{"none", nil, ModePermissive},
		{"nil entry", []*PeerAuthentication{nil}, ModePermissive},
		{"mesh strict", []*PeerAuthentication{mesh(ModeStrict)}, ModeStrict},
		{"namespace beats mesh", []*PeerAuthentication{mesh(ModeStrict), ns(ModePermissive)}, ModePermissive},
		{"namespace beats mesh, any order", []*PeerAuthentication{ns(ModePermissive), mesh(ModeStrict)}, ModePermissive},
		{"workload beats namespace", []*PeerAuthentication{ns(ModeStrict), wl(ModePermissive)}, ModePermissive},
		{"workload beats all", []*PeerAuthentication{wl(ModeStrict), ns(ModePermissive), mesh(ModePermissive)}, ModeStrict},
		{"same scope: strict wins", []*PeerAuthentication{wl(ModePermissive), wl(ModeStrict), wl(ModePermissive)}, ModeStrict},
		{"unknown mode counts as strict", []*PeerAuthentication{ns("DISABLE")}, ModeStrict},
	}
	for _, c := range cases {
		if got := ResolveMode(c.pas); got != c.want {
			t.Errorf("%s: ResolveMode = %s, want %s", c.name, got, c.want)
		}
	}
	if ModeStrict.AllowsPlaintext() || !ModePermissive.AllowsPlaintext() || Mode("x").AllowsPlaintext() {
		t.Error("AllowsPlaintext")
	}
}
