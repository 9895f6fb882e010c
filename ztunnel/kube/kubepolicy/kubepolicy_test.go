package kubepolicy

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
	"github.com/strait-mesh/strait/ztunnel/rbac"
)

func ap(ns string, spec v1alpha1.AuthorizationPolicySpec) *v1alpha1.AuthorizationPolicy {
	return &v1alpha1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns}, Spec: spec}
}

func from(s v1alpha1.Source) []v1alpha1.RuleFrom { return []v1alpha1.RuleFrom{{Source: s}} }

func to(o v1alpha1.Operation) []v1alpha1.RuleTo { return []v1alpha1.RuleTo{{Operation: o}} }

func portList(p ...v1alpha1.Port) []v1alpha1.Port { return p }

var (
	frontend = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")
	other    = spiffeid.RequireFromString("spiffe://cluster.local/ns/other/sa/x")
)

// conn is a connection to check the converted policy's behaviour with.
type conn struct {
	id    spiffeid.ID
	port  uint16
	match bool
}

func TestToRBAC(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       *v1alpha1.AuthorizationPolicy
		root     string
		want     *rbac.Policy
		warnings []string // substrings, one per warning, in order
		err      error    // wrapped sentinel
		errText  string   // substring of the error
		conns    []conn   // Matches on the result
	}{
		{
			name: "allow from a namespace to 8080",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionAllow, Rules: []v1alpha1.Rule{{
				From: from(v1alpha1.Source{Namespaces: []v1alpha1.NamespaceMatch{"shop"}}),
				To:   to(v1alpha1.Operation{Ports: portList(8080)}),
			}}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow, Rules: []rbac.Rule{{
				From: []rbac.Source{{Namespaces: []string{"shop"}}},
				To:   []rbac.Operation{{Ports: []uint16{8080}}},
			}}},
			conns: []conn{{frontend, 8080, true}, {frontend, 80, false}, {other, 8080, false}, {spiffeid.ID{}, 8080, false}},
		},
		{
			name: "empty action is ALLOW, no rules allow nothing",
			in:   ap("shop", v1alpha1.AuthorizationPolicySpec{}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow},
		},
		{
			name:  "root namespace without selector is mesh-wide",
			in:    ap("strait-system", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionDeny, Rules: []v1alpha1.Rule{{}}}),
			want:  &rbac.Policy{Name: "p", Namespace: "strait-system", Scope: rbac.ScopeMesh, Action: rbac.ActionDeny, Rules: []rbac.Rule{{}}},
			conns: []conn{{frontend, 1, true}, {spiffeid.ID{}, 65535, true}},
		},
		{
			name: "custom root namespace",
			root: "mesh-root",
			in:   ap("mesh-root", v1alpha1.AuthorizationPolicySpec{}),
			want: &rbac.Policy{Name: "p", Namespace: "mesh-root", Scope: rbac.ScopeMesh, Action: rbac.ActionAllow},
		},
		{
			name: "strait-system is not the root when another one is given",
			root: "mesh-root",
			in:   ap("strait-system", v1alpha1.AuthorizationPolicySpec{}),
			want: &rbac.Policy{Name: "p", Namespace: "strait-system", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow},
		},
		{
			name: "selector is workload scope",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{
				Selector: &v1alpha1.WorkloadSelector{MatchLabels: map[string]string{"app": "cart"}},
			}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeWorkload, Selector: map[string]string{"app": "cart"}, Action: rbac.ActionAllow},
		},
		{
			name: "empty matchLabels is the namespace",
			in:   ap("shop", v1alpha1.AuthorizationPolicySpec{Selector: &v1alpha1.WorkloadSelector{MatchLabels: map[string]string{}}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow},
		},
		{
			name: "selector in the root namespace is refused",
			in: ap("strait-system", v1alpha1.AuthorizationPolicySpec{
				Selector: &v1alpha1.WorkloadSelector{MatchLabels: map[string]string{"app": "cart"}},
			}),
			err:     ErrUnsupported,
			errText: "AuthorizationPolicy strait-system/p: a selector in the root namespace",
		},
		{
			name: "every source field and ip block forms",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{{
				From: []v1alpha1.RuleFrom{{Source: v1alpha1.Source{
					Principals:         []v1alpha1.Principal{"cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/a/*"},
					NotPrincipals:      []v1alpha1.Principal{"*/sa/admin"},
					Namespaces:         []v1alpha1.NamespaceMatch{"shop", "team-*"},
					NotNamespaces:      []v1alpha1.NamespaceMatch{"*-test"},
					ServiceAccounts:    []v1alpha1.ServiceAccountRef{"shop/frontend"},
					NotServiceAccounts: []v1alpha1.ServiceAccountRef{"shop/x.y"},
					IPBlocks:           []v1alpha1.IPBlock{"10.1.2.3", "10.1.2.3/8", "::ffff:192.168.0.0/112", "fd00::1/64"},
					NotIPBlocks:        []v1alpha1.IPBlock{"::ffff:10.0.0.1"},
				}}},
				To: to(v1alpha1.Operation{Ports: portList(1, 65535), NotPorts: portList(9090)}),
			}}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow, Rules: []rbac.Rule{{
				From: []rbac.Source{{
					Principals:         []string{"cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/a/*"},
					NotPrincipals:      []string{"*/sa/admin"},
					Namespaces:         []string{"shop", "team-*"},
					NotNamespaces:      []string{"*-test"},
					ServiceAccounts:    []string{"shop/frontend"},
					NotServiceAccounts: []string{"shop/x.y"},
					SourceIPs: []netip.Prefix{
						netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("10.0.0.0/8"),
						netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fd00::/64"),
					},
					NotSourceIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")},
				}},
				To: []rbac.Operation{{Ports: []uint16{1, 65535}, NotPorts: []uint16{9090}}},
			}}},
		},
		{
			name: "ALLOW: a rule with L7 fields is dropped, the L4 rule stays",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{
				{
					From: from(v1alpha1.Source{Namespaces: []v1alpha1.NamespaceMatch{"shop"}}),
					To:   to(v1alpha1.Operation{Ports: portList(8080), Methods: []string{"GET"}}),
				},
				{To: to(v1alpha1.Operation{Ports: portList(9090)})},
			}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow, Rules: []rbac.Rule{
				{To: []rbac.Operation{{Ports: []uint16{9090}}}},
			}},
			warnings: []string{"rules[0] dropped: L7 field rules[0].to[0].operation.methods only a waypoint can check"},
			conns:    []conn{{frontend, 8080, false}, {frontend, 9090, true}},
		},
		{
			name: "ALLOW: only L7 rules left: allows nothing",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{
				{From: from(v1alpha1.Source{RequestPrincipals: []string{"iss/sub"}})},
				{
					From: from(v1alpha1.Source{Principals: []v1alpha1.Principal{"*"}, NotRemoteIPBlocks: []v1alpha1.IPBlock{"10.0.0.0/8"}}),
					To:   to(v1alpha1.Operation{Hosts: []string{"a"}, NotPaths: []string{"/admin"}}),
					When: []v1alpha1.Condition{{Key: "request.headers[x]", Values: []string{"y"}}},
				},
			}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionAllow},
			warnings: []string{
				"rules[0] dropped: L7 field rules[0].from[0].source.requestPrincipals",
				"rules[1] dropped: L7 fields rules[1].from[0].source.notRemoteIpBlocks, rules[1].to[0].operation.hosts, rules[1].to[0].operation.notPaths, rules[1].when",
				"allows nothing",
			},
			conns: []conn{{frontend, 8080, false}},
		},
		{
			name: "DENY: L7 fields ignored, L4 fields kept",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionDeny, Rules: []v1alpha1.Rule{{
				From: from(v1alpha1.Source{Namespaces: []v1alpha1.NamespaceMatch{"other"}, NotRequestPrincipals: []string{"*"}}),
				To:   to(v1alpha1.Operation{Ports: portList(8080), Paths: []string{"/admin"}}),
			}}}),
			want: &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionDeny, Rules: []rbac.Rule{{
				From: []rbac.Source{{Namespaces: []string{"other"}}},
				To:   []rbac.Operation{{Ports: []uint16{8080}}},
			}}},
			warnings: []string{"rules[0]: L7 fields rules[0].from[0].source.notRequestPrincipals, rules[0].to[0].operation.paths ignored by the node proxy: this DENY rule matches on its other fields alone"},
			conns:    []conn{{other, 8080, true}, {other, 80, false}, {frontend, 8080, false}},
		},
		{
			name: "DENY: an L7-only operation matches every port, an L7-only source every peer",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionDeny, Rules: []v1alpha1.Rule{{
				From: []v1alpha1.RuleFrom{
					{Source: v1alpha1.Source{Namespaces: []v1alpha1.NamespaceMatch{"other"}}},
					{Source: v1alpha1.Source{RemoteIPBlocks: []v1alpha1.IPBlock{"10.0.0.0/8"}}},
				},
				To: []v1alpha1.RuleTo{
					{Operation: v1alpha1.Operation{Ports: portList(8080)}},
					{Operation: v1alpha1.Operation{Methods: []string{"POST"}}},
				},
			}}}),
			want:     &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionDeny, Rules: []rbac.Rule{{}}},
			warnings: []string{"rules[0]: L7 fields rules[0].from[1].source.remoteIpBlocks, rules[0].to[1].operation.methods ignored"},
			conns:    []conn{{frontend, 80, true}, {spiffeid.ID{}, 8080, true}},
		},
		{
			name: "DENY: when ignored, the rule matches everything",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionDeny, Rules: []v1alpha1.Rule{{
				When: []v1alpha1.Condition{{Key: "request.headers[x]", NotValues: []string{"y"}}},
			}}}),
			want:     &rbac.Policy{Name: "p", Namespace: "shop", Scope: rbac.ScopeNamespace, Action: rbac.ActionDeny, Rules: []rbac.Rule{{}}},
			warnings: []string{"rules[0]: L7 field rules[0].when ignored"},
			conns:    []conn{{frontend, 80, true}},
		},
		{
			name:    "DENY without rules is refused by rbac",
			in:      ap("shop", v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.ActionDeny}),
			err:     rbac.ErrNoRules,
			errText: "AuthorizationPolicy shop/p: rbac: policy \"shop/p\": rules: a DENY policy with no rules matches nothing",
		},
		{
			name:    "unknown action",
			in:      ap("shop", v1alpha1.AuthorizationPolicySpec{Action: "AUDIT"}),
			err:     rbac.ErrInvalidAction,
			errText: `unknown action "AUDIT"`,
		},
		{
			name: "port 0",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{{
				To: to(v1alpha1.Operation{Ports: portList(0)}),
			}}}),
			err:     rbac.ErrInvalidPort,
			errText: "rules[0].to[0].operation.ports[0]: 0 is not a port",
		},
		{
			name: "port 70000",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{{
				To: to(v1alpha1.Operation{NotPorts: portList(80, 70000)}),
			}}}),
			err:     rbac.ErrInvalidPort,
			errText: "rules[0].to[0].operation.notPorts[1]: 70000 is not a port",
		},
		{
			name: "bad ip block",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{{
				From: from(v1alpha1.Source{NotIPBlocks: []v1alpha1.IPBlock{"10.0.0.0/33"}}),
			}}}),
			err:     rbac.ErrInvalidPrefix,
			errText: `rules[0].from[0].source.notIpBlocks[0]: "10.0.0.0/33"`,
		},
		{
			name: "rbac names the rule as written even after an L7 rule",
			in: ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{
				{To: to(v1alpha1.Operation{Methods: []string{"GET"}})},
				{From: from(v1alpha1.Source{Principals: []v1alpha1.Principal{"a*b"}})},
			}}),
			err:     rbac.ErrInvalidPattern,
			errText: "rules[1].from[0].principals[0]",
		},
		{
			name:    "empty source",
			in:      ap("shop", v1alpha1.AuthorizationPolicySpec{Rules: []v1alpha1.Rule{{From: from(v1alpha1.Source{})}}}),
			err:     rbac.ErrEmptyMatch,
			errText: "rules[0].from[0]: source sets no field",
		},
		{
			name:    "no namespace",
			in:      ap("", v1alpha1.AuthorizationPolicySpec{}),
			err:     rbac.ErrInvalidScope,
			errText: "namespace scope needs a namespace",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings, err := ToRBAC(tc.in, tc.root)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want one wrapping %v and containing %q", err, tc.err, tc.errText)
				}
				if got != nil || warnings != nil {
					t.Fatalf("got %+v, %q with an error", got, warnings)
				}
				return
			}
			if err != nil {
				t.Fatalf("ToRBAC: %v", err)
			}
			if got.Key() != got.Namespace+"/"+got.Name {
				t.Errorf("Key %q", got.Key())
			}
			want := tc.want.Clone()
			if err := want.Validate(); err != nil { // records the key, as Validate did on got
				t.Fatalf("want is invalid: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", *got, *want)
			}
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d matching %q", warnings, len(tc.warnings), tc.warnings)
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %d %q does not contain %q", i, warnings[i], w)
				}
			}
			for _, c := range tc.conns {
				if m := got.Matches(rbac.Connection{Identity: c.id, DstPort: c.port}); m != c.match {
					t.Errorf("Matches(%v, port %d) = %v, want %v", c.id, c.port, m, c.match)
				}
			}
		})
	}
}

func TestToRBACDoesNotAlias(t *testing.T) {
	in := ap("shop", v1alpha1.AuthorizationPolicySpec{Selector: &v1alpha1.WorkloadSelector{MatchLabels: map[string]string{"app": "a"}}})
	got, _, err := ToRBAC(in, "")
	if err != nil {
		t.Fatal(err)
	}
	in.Spec.Selector.MatchLabels["app"] = "b"
	if got.Selector["app"] != "a" {
		t.Fatal("the converted selector shares the object's map")
	}
}

func pa(ns string, sel map[string]string, mtls *v1alpha1.MutualTLS) *v1alpha1.PeerAuthentication {
	o := &v1alpha1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "pa", Namespace: ns}, Spec: v1alpha1.PeerAuthenticationSpec{MTLS: mtls}}
	if sel != nil {
		o.Spec.Selector = &v1alpha1.WorkloadSelector{MatchLabels: sel}
	}
	return o
}

func mode(m v1alpha1.MTLSMode) *v1alpha1.MutualTLS { return &v1alpha1.MutualTLS{Mode: m} }

func TestPeerAuthToRBAC(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       *v1alpha1.PeerAuthentication
		want     *rbac.PeerAuthentication
		warnings []string
		err      error
	}{
		{
			name: "STRICT namespace",
			in:   pa("shop", nil, mode(v1alpha1.MTLSModeStrict)),
			want: &rbac.PeerAuthentication{Name: "pa", Namespace: "shop", Scope: rbac.ScopeNamespace, Mode: rbac.ModeStrict},
		},
		{
			name: "PERMISSIVE workload",
			in:   pa("shop", map[string]string{"app": "legacy"}, mode(v1alpha1.MTLSModePermissive)),
			want: &rbac.PeerAuthentication{Name: "pa", Namespace: "shop", Scope: rbac.ScopeWorkload, Selector: map[string]string{"app": "legacy"}, Mode: rbac.ModePermissive},
		},
		{
			name: "STRICT mesh",
			in:   pa("strait-system", map[string]string{}, mode(v1alpha1.MTLSModeStrict)),
			want: &rbac.PeerAuthentication{Name: "pa", Namespace: "strait-system", Scope: rbac.ScopeMesh, Mode: rbac.ModeStrict},
		},
		{name: "no mtls inherits", in: pa("shop", nil, nil)},
		{name: "empty mode inherits", in: pa("shop", map[string]string{"app": "x"}, mode(""))},
		{name: "UNSET inherits", in: pa("shop", nil, mode(v1alpha1.MTLSModeUnset))},
		{
			name:     "selector in the root namespace is ignored",
			in:       pa("strait-system", map[string]string{"app": "x"}, mode(v1alpha1.MTLSModeStrict)),
			warnings: []string{"ignored: a PeerAuthentication with a selector in the root namespace strait-system has no effect"},
		},
		{name: "DISABLE is refused", in: pa("shop", nil, mode("DISABLE")), err: rbac.ErrInvalidMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings, err := PeerAuthToRBAC(tc.in, "")
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), "PeerAuthentication shop/pa") {
					t.Fatalf("error %v, want one wrapping %v naming the object", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PeerAuthToRBAC: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %q", warnings, tc.warnings)
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q does not contain %q", warnings[i], w)
				}
			}
		})
	}
}

// TestPeerAuthInheritance checks the documented resolution end to end: a
// workload PeerAuthentication with mode UNSET defers to the namespace one,
// which overrides the mesh one; with nothing the mode is PERMISSIVE.
func TestPeerAuthInheritance(t *testing.T) {
	objs := []*v1alpha1.PeerAuthentication{
		pa("strait-system", nil, mode(v1alpha1.MTLSModeStrict)),
		pa("shop", nil, mode(v1alpha1.MTLSModePermissive)),
		pa("shop", map[string]string{"app": "cart"}, mode(v1alpha1.MTLSModeUnset)),
		pa("shop", map[string]string{"app": "pay"}, mode(v1alpha1.MTLSModeStrict)),
	}
	var pas []*rbac.PeerAuthentication
	for _, o := range objs {
		p, _, err := PeerAuthToRBAC(o, "")
		if err != nil {
			t.Fatal(err)
		}
		if p != nil {
			pas = append(pas, p)
		}
	}
	resolve := func(ns string, labels map[string]string, pas []*rbac.PeerAuthentication) rbac.Mode {
		var applies []*rbac.PeerAuthentication
		for _, p := range pas {
			if p.AppliesTo(ns, labels) {
				applies = append(applies, p)
			}
		}
		return rbac.ResolveMode(applies)
	}
	for _, tc := range []struct {
		ns     string
		labels map[string]string
		pas    []*rbac.PeerAuthentication
		want   rbac.Mode
	}{
		{"shop", map[string]string{"app": "cart"}, pas, rbac.ModePermissive}, // UNSET → namespace
		{"shop", map[string]string{"app": "pay"}, pas, rbac.ModeStrict},      // workload
		{"other", nil, pas, rbac.ModeStrict},                                 // mesh
		{"other", nil, nil, rbac.ModePermissive},                             // nothing
	} {
		if got := resolve(tc.ns, tc.labels, tc.pas); got != tc.want {
			t.Errorf("%s %v: mode %s, want %s", tc.ns, tc.labels, got, tc.want)
		}
	}
}

func TestNil(t *testing.T) {
	if _, _, err := ToRBAC(nil, ""); err == nil {
		t.Error("ToRBAC(nil): no error")
	}
	if _, _, err := PeerAuthToRBAC(nil, ""); err == nil {
		t.Error("PeerAuthToRBAC(nil): no error")
	}
}
