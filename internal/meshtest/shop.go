package meshtest

// The "shop" scenario used by the end-to-end tests and the demo: on
// node-a a client (shop/frontend) and an intruder (attic/scraper), on
// node-b the server (shop/checkout) and a non-enrolled outsider.

// ShopSpec is the scenario's topology.
func ShopSpec() Spec {
	return Spec{
		Nodes: []string{"node-a", "node-b"},
		Pods: []PodSpec{
			{Name: "client", Namespace: "shop", ServiceAccount: "frontend", Node: "node-a"},
			{Name: "intruder", Namespace: "attic", ServiceAccount: "scraper", Node: "node-a"},
			{Name: "server", Namespace: "shop", ServiceAccount: "checkout", Node: "node-b"},
			{Name: "outsider", Namespace: "legacy", ServiceAccount: "default", Node: "node-b"},
		},
	}
}

// ShopEnrolled names the pods the agent enrolls (the outsider stays out).
func ShopEnrolled() map[string]bool {
	return map[string]bool{"client": true, "intruder": true, "server": true}
}

// ShopPolicies is the rest of the scenario's config: the checkout service
// (VIP 10.96.0.10:80 → server:8080), a policy letting only shop/frontend
// reach the server, and STRICT mTLS in namespace shop.
const ShopPolicies = `services:
- name: checkout
  namespace: shop
  vips: [10.96.0.10]
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: server}
authorizationPolicies:
- name: only-frontend
  namespace: shop
  selector: {app: server}
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
peerAuthentications:
- name: strict-shop
  namespace: shop
  mode: STRICT
`
