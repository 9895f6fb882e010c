// Package redirect installs the traffic redirection rules inside an
// enrolled pod's network namespace, so that the pod's TCP goes to the node
// proxy (ztunnel) listening inside that same namespace (Istio ambient
// in-pod mode, which Strait is compatible with).
//
// Inbound TCP is redirected to InboundPort (15006), except connections to
// the HBONE port (15008), from the kubelet probe address (169.254.7.127)
// and over loopback. Outbound TCP is redirected to OutboundPort (15001),
// except over loopback (127.0.0.0/8, ::1 and the pod's own addresses).
// Packets carrying the proxy's mark (SO_MARK 1337 = 0x539, under the mask
// 0xfff) and connections carrying the conntrack mark 0x111 are never
// redirected: the proxy's own sockets would loop otherwise. With
// CaptureDNS, UDP and TCP to port 53 go to DNSPort (15053); REDIRECT
// delivers those to 127.0.0.1 (::1), so the DNS proxy must answer UDP from
// there (bind 127.0.0.1:15053 and [::1]:15053, or use IP_PKTINFO) for
// conntrack to turn the answer back into one from the original server.
//
// Listeners inside the pod netns: OutboundPort must accept on 127.0.0.1
// and ::1 (0.0.0.0 / [::] will do), InboundPort and HBONEPort on the pod's
// addresses. The original destination of a redirected connection is in
// SO_ORIGINAL_DST (SOL_IP) / IP6T_SO_ORIGINAL_DST (SOL_IPV6).
//
// Two backends implement the same rules: nftables (default; one table
// "inet strait", written over netlink in one atomic transaction, no nft
// binary needed) and iptables (fallback; chains STRAIT_PRERT and
// STRAIT_OUTPUT in the nat and mangle tables, through iptables-restore).
// The exact rulesets are in testdata/nftables.golden and
// testdata/iptables.golden.
//
// Every Backend method acts on the network namespace of the calling OS
// thread: wrap calls in InNetNS.
//
//	b, err := redirect.New(redirect.Auto, logger)
//	...
//	err = redirect.InNetNS("/var/run/netns/pod", func() error {
//		return b.Apply(ctx, redirect.DefaultRules())
//	})
//
// The package stays small (netlink, x/sys, zap, CNI's pkg/ns) because the
// CNI plugin binary imports it.
package redirect
