package rbac

import (
	"fmt"
	"testing"
)

// benchPolicies is a realistic mix of ten policies for one workload: mesh,
// namespace and workload scope, DENY and ALLOW, principals in every form,
// namespaces, service accounts, IP blocks and ports. None of them matches
// the benchmark connection before the last ALLOW, so Evaluate walks all ten.
func benchPolicies() []*Policy {
	ps := []*Policy{
		{Name: "deny-blocklist", Namespace: "istio-system", Scope: ScopeMesh, Action: ActionDeny,
			Rules: []Rule{{From: []Source{{SourceIPs: pfx("192.0.2.0/24", "198.51.100.0/24")}}}}},
		{Name: "require-mtls", Namespace: "shop", Scope: ScopeNamespace, Action: ActionDeny,
			Rules: []Rule{{From: []Source{{NotPrincipals: []string{"*"}}}}}},
		{Name: "deny-ops", Namespace: "shop", Scope: ScopeNamespace, Action: ActionDeny,
			Rules: []Rule{{From: []Source{{Namespaces: []string{"ops", "ops-*"}}}, To: []Operation{{Ports: []uint16{22}}}}}},
		{Name: "deny-debug-port", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"app": "checkout"}, Action: ActionDeny,
			Rules: []Rule{{To: []Operation{{Ports: []uint16{6060, 9090}}}}}},
	}
	for i := range 5 {
		ps = append(ps, &Policy{Name: fmt.Sprintf("allow-%d", i), Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"app": "checkout"}, Action: ActionAllow,
			Rules: []Rule{
				{From: []Source{{Principals: []string{fmt.Sprintf("spiffe://cluster.local/ns/team-%d/sa/client", i), "*/sa/batch"}}}, To: []Operation{{Ports: []uint16{8080}}}},
				{From: []Source{{ServiceAccounts: []string{fmt.Sprintf("team-%d/admin", i)}, SourceIPs: pfx("10.0.0.0/8")}}},
			}})
	}
	ps = append(ps, &Policy{Name: "allow-frontend", Namespace: "shop", Scope: ScopeWorkload, Selector: map[string]string{"app": "checkout"}, Action: ActionAllow,
		Rules: []Rule{{From: []Source{{Principals: []string{"cluster.local/ns/shop/sa/frontend"}, NotNamespaces: []string{"ops"}}}, To: []Operation{{Ports: []uint16{8080}, NotPorts: []uint16{22}}}}}})
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			panic(err)
		}
	}
	return ps
}

func BenchmarkEvaluate(b *testing.B) {
	ps := benchPolicies()
	if len(ps) != 10 {
		b.Fatalf("%d policies", len(ps))
	}
	for _, bc := range []struct {
		name string
		c    Connection
		want bool
	}{
		{"allow-last", conn(frontend, "10.1.2.3", 8080), true},
		{"deny-none-matched", conn(backend, "10.1.2.3", 8080), false},
		{"deny-plaintext", conn(Connection{}.Identity, "10.1.2.3", 8080), false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if d := Evaluate(ps, bc.c); d.Allow != bc.want {
				b.Fatalf("Evaluate = %+v", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				Evaluate(ps, bc.c)
			}
		})
	}
}
