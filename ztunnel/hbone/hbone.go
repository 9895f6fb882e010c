// Package hbone implements HBONE, the mesh tunnel: HTTP/2 CONNECT over
// mutual TLS 1.3, as Istio's ztunnel speaks it (docs/hbone.md).
//
// A Client opens tunnels (Dial) over pooled connections keyed by source
// identity, destination identities, destination address and source IP. A
// Server authenticates peers, checks each CONNECT (method, authority,
// arrival address), asks a Handler to dial the destination, answers and
// relays bytes both ways with half-close.
//
// The package knows nothing of workloads, capture or policy: callers
// supply TLS configs, the Handler decides. QUIC will sit behind the same
// types later.
package hbone

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Port is the HBONE listener port.
const Port = 15008

// Identities is a canonical (sorted, de-duplicated, comma-separated) set of
// SPIFFE ids, comparable so it can sit in a pool Key.
type Identities string

// NewIdentities builds the canonical set.
func NewIdentities(ids ...spiffeid.ID) Identities {
	s := make([]string, 0, len(ids))
	for _, id := range ids {
		if !id.IsZero() {
			s = append(s, id.String())
		}
	}
	slices.Sort(s)
	s = slices.Compact(s)
	return Identities(strings.Join(s, ","))
}

// ParseIdentities builds the canonical set from SPIFFE id strings.
func ParseIdentities(ids ...string) (Identities, error) {
	parsed := make([]spiffeid.ID, 0, len(ids))
	for _, s := range ids {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return "", fmt.Errorf("hbone: identity %q: %w", s, err)
		}
		parsed = append(parsed, id)
	}
	return NewIdentities(parsed...), nil
}

// IDs parses the set back into ids.
func (i Identities) IDs() ([]spiffeid.ID, error) {
	if i == "" {
		return nil, nil
	}
	parts := strings.Split(string(i), ",")
	ids := make([]spiffeid.ID, 0, len(parts))
	for _, p := range parts {
		id, err := spiffeid.FromString(p)
		if err != nil {
			return nil, fmt.Errorf("hbone: identity %q: %w", p, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// Key identifies a pooled connection (HBONE.md): a connection is reused
// only by tunnels with the same source identity, expected destination
// identities, destination address and source IP.
type Key struct {
	SrcIdentity   spiffeid.ID
	DstIdentities Identities
	DstAddr       netip.AddrPort // the peer's HBONE listener, e.g. node:15008
	SrcIP         netip.Addr     // local address to dial from; zero = any
}

func (k Key) String() string {
	return fmt.Sprintf("%s->%s[%s]", k.SrcIdentity, k.DstAddr, k.DstIdentities)
}

// Authority is a parsed CONNECT :authority.
type Authority struct {
	Host string         // as sent, without the port
	Addr netip.AddrPort // valid when Host is an IP literal
	Port uint16
}

// IsIP reports whether the authority names an IP literal.
func (a Authority) IsIP() bool { return a.Addr.IsValid() }

// Errors from authority parsing.
var (
	ErrBadAuthority = errors.New("hbone: bad authority")
)

// ParseAuthority parses "<ip>:<port>", "[<ipv6>]:<port>" or
// "<hostname>:<port>". The port must be 1..65535; hostnames must be DNS
// names (letters, digits, '-', '.', at most 253 bytes).
func ParseAuthority(s string) (Authority, error) {
	if s == "" {
		return Authority{}, fmt.Errorf("%w: empty", ErrBadAuthority)
	}
	if len(s) > 260 {
		return Authority{}, fmt.Errorf("%w: %d bytes", ErrBadAuthority, len(s))
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Authority{}, fmt.Errorf("%w: %q: %w", ErrBadAuthority, s, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || portStr[0] == '+' || (len(portStr) > 1 && portStr[0] == '0') {
		return Authority{}, fmt.Errorf("%w: %q: port must be 1-65535", ErrBadAuthority, s)
	}
	a := Authority{Host: host, Port: uint16(port)}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return Authority{}, fmt.Errorf("%w: %q: zoned address", ErrBadAuthority, s)
		}
		if ip.Is6() && !strings.HasPrefix(s, "[") {
			return Authority{}, fmt.Errorf("%w: %q: IPv6 needs brackets", ErrBadAuthority, s)
		}
		a.Addr = netip.AddrPortFrom(ip.Unmap(), a.Port)
		return a, nil
	}
	if strings.HasPrefix(s, "[") {
		return Authority{}, fmt.Errorf("%w: %q: bracketed host is not an IPv6 address", ErrBadAuthority, s)
	}
	if !validHostname(host) {
		return Authority{}, fmt.Errorf("%w: %q: invalid host name", ErrBadAuthority, s)
	}
	return a, nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-':
			if label == 0 {
				return false
			}
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return h[len(h)-1] != '-'
}

// formatForwarded renders the forwarded header value for a client address.
func formatForwarded(ip netip.Addr) string {
	if ip.Is6() && !ip.Is4In6() {
		return `for="[` + ip.String() + `]"`
	}
	return "for=" + ip.Unmap().String()
}

// parseForwarded extracts the first for= address of a forwarded header
// (RFC 7239); a missing or unparsable value gives the zero Addr.
func parseForwarded(v string) netip.Addr {
	for _, elem := range strings.Split(v, ",") {
		for _, pair := range strings.Split(elem, ";") {
			k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok || !strings.EqualFold(k, "for") {
				continue
			}
			val = strings.Trim(val, `"`)
			val = strings.TrimPrefix(val, "[")
			if i := strings.Index(val, "]"); i >= 0 {
				val = val[:i]
			} else if ap, err := netip.ParseAddrPort(val); err == nil {
				return ap.Addr().Unmap()
			}
			if ip, err := netip.ParseAddr(val); err == nil {
				return ip.Unmap()
			}
			return netip.Addr{}
		}
	}
	return netip.Addr{}
}
