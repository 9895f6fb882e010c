package redirect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"go.uber.org/zap"
)

// Ports, marks and addresses of the Istio ambient in-pod contract.
const (
	DefaultInboundPort  = 15006 // plaintext inbound capture
	DefaultOutboundPort = 15001 // outbound capture
	DefaultHBONEPort    = 15008 // HBONE, never redirected
	DefaultDNSPort      = 15053 // DNS capture (only with CaptureDNS)

	// DefaultMark is the SO_MARK the proxy puts on its own sockets (1337).
	DefaultMark = 0x539
	// ConnMark is the conntrack mark of connections that skip redirection.
	// Connections whose packets carry the proxy mark get it.
	ConnMark = 0x111
	// MarkMask is the part of the packet and conntrack marks the rules
	// read and write; other bits belong to others.
	MarkMask = 0xfff
)

// Probe source addresses: the host SNATs kubelet health probes to these
// before they enter the pod, so the rules let them through unredirected.
var (
	DefaultProbeSNAT  = netip.MustParseAddr("169.254.7.127")
	DefaultProbeSNAT6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
)

// Counter names, the same for both backends (see Backend.Counters).
// nftables rules see only the first packet of a connection, so in the NAT
// chains one packet is one connection.
const (
	CounterProbe    = "probe"    // inbound connections from the probe address, let through
	CounterHBONE    = "hbone"    // inbound connections to the HBONE port, let through
	CounterInbound  = "inbound"  // inbound connections redirected to InboundPort
	CounterProxy    = "proxy"    // outbound connections of the proxy (Mark), let through
	CounterDNS      = "dns"      // DNS queries / connections redirected to DNSPort
	CounterOutbound = "outbound" // outbound TCP connections redirected to OutboundPort
)

// counterNames lists every counter a backend reports, in rule order.
var counterNames = []string{CounterProbe, CounterHBONE, CounterInbound, CounterProxy, CounterDNS, CounterOutbound}

// Rules parametrises the ruleset. The zero value is invalid: start from
// DefaultRules.
type Rules struct {
	InboundPort  uint16 // inbound TCP is redirected here (15006)
	OutboundPort uint16 // outbound TCP is redirected here (15001)
	HBONEPort    uint16 // inbound TCP to this port is not redirected (15008)
	DNSPort      uint16 // DNS (UDP and TCP 53) is redirected here when CaptureDNS (15053)
	CaptureDNS   bool   // off by default

	// ProbeSNAT is the IPv4 source of host health probes, let through to
	// the pod (169.254.7.127). Invalid (zero): no probe exception.
	ProbeSNAT netip.Addr
	// ProbeSNAT6 is its IPv6 counterpart (Istio's
	// fd16:9254:7127:1337:ffff:ffff:ffff:ffff). Invalid: no exception.
	ProbeSNAT6 netip.Addr

	// Mark is the packet mark (SO_MARK) of the proxy's own sockets, compared
	// under MarkMask: marked traffic is never redirected (0x539).
	Mark uint32
}

// DefaultRules returns the Istio-compatible defaults, DNS capture off.
func DefaultRules() Rules {
	return Rules{
		InboundPort:  DefaultInboundPort,
		OutboundPort: DefaultOutboundPort,
		HBONEPort:    DefaultHBONEPort,
		DNSPort:      DefaultDNSPort,
		ProbeSNAT:    DefaultProbeSNAT,
		ProbeSNAT6:   DefaultProbeSNAT6,
		Mark:         DefaultMark,
	}
}

// Validate reports why r cannot be installed, or nil.
func (r Rules) Validate() error {
	var bad []string
	ports := map[string]uint16{"InboundPort": r.InboundPort, "OutboundPort": r.OutboundPort, "HBONEPort": r.HBONEPort}
	if r.CaptureDNS {
		ports["DNSPort"] = r.DNSPort
	}
	seen := map[uint16]string{}
	for _, name := range []string{"InboundPort", "OutboundPort", "HBONEPort", "DNSPort"} {
		p, ok := ports[name]
		if !ok {
			continue
		}
		if p == 0 {
			bad = append(bad, name+" is 0")
			continue
		}
		if other, dup := seen[p]; dup {
			bad = append(bad, fmt.Sprintf("%s and %s are both %d", other, name, p))
		}
		seen[p] = name
	}
	if r.ProbeSNAT.IsValid() && !r.ProbeSNAT.Is4() {
		bad = append(bad, fmt.Sprintf("ProbeSNAT %s is not an IPv4 address", r.ProbeSNAT))
	}
	if r.ProbeSNAT6.IsValid() && (!r.ProbeSNAT6.Is6() || r.ProbeSNAT6.Is4In6()) {
		bad = append(bad, fmt.Sprintf("ProbeSNAT6 %s is not an IPv6 address", r.ProbeSNAT6))
	}
	switch {
	case r.Mark == 0:
		bad = append(bad, "Mark is 0")
	case r.Mark&^MarkMask != 0:
		bad = append(bad, fmt.Sprintf("Mark %#x has bits outside the mask %#x", r.Mark, MarkMask))
	case r.Mark == ConnMark:
		bad = append(bad, fmt.Sprintf("Mark %#x is the connection mark", r.Mark))
	}
	if len(bad) > 0 {
		return fmt.Errorf("redirect: invalid rules: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Kind selects a backend.
type Kind int

const (
	// Auto uses nftables when the kernel accepts our ruleset there, and
	// iptables otherwise (logging why).
	Auto Kind = iota
	// NFTables talks netlink to the kernel: no binary needed.
	NFTables
	// IPTables runs iptables-save and iptables-restore (and the ip6tables
	// ones when the kernel has IPv6).
	IPTables
)

func (k Kind) String() string {
	switch k {
	case Auto:
		return "auto"
	case NFTables:
		return "nftables"
	case IPTables:
		return "iptables"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ParseKind reads "auto", "nftables" or "iptables" (as in a flag or a
// config file).
func ParseKind(s string) (Kind, error) {
	for _, k := range []Kind{Auto, NFTables, IPTables} {
		if strings.EqualFold(s, k.String()) {
			return k, nil
		}
	}
	return 0, fmt.Errorf("redirect: unknown backend %q (want auto, nftables or iptables)", s)
}

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// ErrNotInstalled is returned by Counters when our ruleset is absent.
var ErrNotInstalled = errors.New("redirect: ruleset not installed")

// Backend installs the ruleset. Every method acts on the network namespace
// of the calling OS thread, so call it inside InNetNS. A Backend keeps no
// per-namespace state: one value serves any number of namespaces, from
// concurrent goroutines.
type Backend interface {
	// Apply installs r, atomically replacing whatever version of our
	// ruleset is there. Applying twice leaves one ruleset.
	Apply(ctx context.Context, r Rules) error
	// Remove deletes our ruleset and nothing else. Removing an absent
	// ruleset is not an error.
	Remove(ctx context.Context) error
	// Installed reports whether the current version of our ruleset is
	// present (an older version reports false; Apply replaces it).
	Installed(ctx context.Context) (bool, error)
	// Counters returns the named counters (Counter* constants) of the
	// installed ruleset, or ErrNotInstalled.
	Counters(ctx context.Context) (map[string]Counter, error)
	// Kind is NFTables or IPTables.
	Kind() Kind
}

// New returns a backend. For Auto it probes nftables in the calling
// thread's network namespace (an atomic no-op transaction, so call it
// where the Backend will act, e.g. inside InNetNS or in the host netns of
// the same kernel) and falls back to iptables, logging why. A nil logger
// logs nothing.
func New(kind Kind, logger *zap.Logger) (Backend, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	logger = logger.Named("redirect")
	switch kind {
	case NFTables:
		return &nftBackend{log: logger}, nil
	case IPTables:
		return newIPTables(logger, false)
	case Auto:
		err := probeNFTables()
		if err == nil {
			logger.Debug("using nftables")
			return &nftBackend{log: logger}, nil
		}
		b, ierr := newIPTables(logger, true)
		if ierr != nil {
			return nil, fmt.Errorf("redirect: no usable backend: nftables: %w; iptables: %w", err, ierr)
		}
		logger.Info("nftables unusable, falling back to iptables",
			zap.Error(err), zap.String("iptables", b.restore[0]))
		return b, nil
	}
	return nil, fmt.Errorf("redirect: unknown backend %v", kind)
}

// probeNFTables is a variable so tests can make nftables look unusable.
var probeNFTables = nftProbe

// InNetNS runs fn inside the network namespace named by netns, a path
// (/var/run/netns/NAME, /proc/PID/ns/net) or an open *os.File of one, on
// a locked OS thread that is put back afterwards (containernetworking
// pkg/ns). Sockets and processes fn creates belong to that namespace;
// goroutines fn starts do not.
func InNetNS[NS string | *os.File](netns NS, fn func() error) error {
	var (
		path string
		keep *os.File
	)
	switch v := any(netns).(type) {
	case string:
		path = v
	case *os.File:
		keep = v
		path = fmt.Sprintf("/proc/self/fd/%d", v.Fd())
	}
	h, err := ns.GetNS(path)
	runtime.KeepAlive(keep)
	if err != nil {
		return fmt.Errorf("redirect: netns %s: %w", path, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return fn() })
}

// permHint is appended to errors that mean missing privileges.
const permHint = " (need CAP_NET_ADMIN in the pod netns)"

// wrap makes the package's error for op of backend.
func wrap(backend, op string, err error) error {
	hint := ""
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		hint = permHint
	}
	return fmt.Errorf("redirect: %s: %s: %w%s", backend, op, err, hint)
}
