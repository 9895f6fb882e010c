package redirect

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy routing for source-IP preservation. The proxy dials a pod from
// the original client's address (IP_TRANSPARENT), so the app's replies
// are addressed off-pod. The mangle rules mark those replies (ConnMark);
// this rule and table route them to the local stack, where the proxy's
// transparent socket takes them. Istio uses the same scheme.
const (
	// RouteTable is the routing table holding the local default route.
	RouteTable = 133
	// RulePriority places our rule before the main table (32766).
	RulePriority = 32764
)

func preserveRule(family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = RulePriority
	r.Table = RouteTable
	r.Mark = ConnMark
	mask := uint32(MarkMask)
	r.Mask = &mask
	return r
}

func localDefault(family int, lo netlink.Link) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{Dst: dst, Type: unix.RTN_LOCAL, Table: RouteTable, LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_HOST, Family: family}
}

// ApplyRoutes installs the fwmark rule and the local route table in the
// current network namespace (call it inside InNetNS). It is idempotent.
func ApplyRoutes() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: routes: %w", err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if err := netlink.RuleAdd(preserveRule(fam)); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("redirect: routes: add fwmark rule: %w", err)
		}
		if err := netlink.RouteReplace(localDefault(fam, lo)); err != nil {
			if fam == netlink.FAMILY_V6 && errors.Is(err, syscall.EAFNOSUPPORT) {
				continue // IPv6 disabled in this namespace
			}
			return fmt.Errorf("redirect: routes: local route table %d: %w", RouteTable, err)
		}
	}
	return nil
}

// RemoveRoutes deletes what ApplyRoutes installed; absent entries are fine.
func RemoveRoutes() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("redirect: routes: %w", err)
	}
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if err := netlink.RuleDel(preserveRule(fam)); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("redirect: routes: delete fwmark rule: %w", err))
		}
		if err := netlink.RouteDel(localDefault(fam, lo)); err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EAFNOSUPPORT) {
			errs = append(errs, fmt.Errorf("redirect: routes: delete local route: %w", err))
		}
	}
	return errors.Join(errs...)
}
