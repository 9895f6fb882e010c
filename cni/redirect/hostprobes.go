package redirect

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// HostProbeTable names the node's two tables (families ip and ip6) that
// make kubelet health probes pass in STRICT mode: every TCP connection
// the node itself opens (its source is a local address of the node) to
// an enrolled pod is SNATed to Rules.ProbeSNAT (ProbeSNAT6), which the
// pod's rules let through to the application unredirected. Istio does
// the same ("socket exists" in its host rules).
//
//	table ip strait-probes {
//		set pods { type ipv4_addr }
//		chain postrouting {
//			type nat hook postrouting priority srcnat
//			ip daddr @pods fib saddr type local meta l4proto tcp counter snat to 169.254.7.127
//		}
//	}
const HostProbeTable = "strait-probes"

const (
	hostProbeSet   = "pods"
	hostProbeChain = "postrouting"
)

// ApplyHostProbes replaces both host tables in one transaction, with the
// pod sets holding pods. Call it in the node's network namespace (the
// agent runs with the host network). Families whose probe address in r
// is invalid get no table. It is idempotent.
func ApplyHostProbes(r Rules, pods []netip.Addr) error {
	if err := r.Validate(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("redirect: host probes: %w", err)
	}
	for _, fam := range []struct {
		family nftables.TableFamily
		snat   netip.Addr
		proto  uint32
		key    nftables.SetDatatype
		off    uint32
		is4    bool
	}{
		{nftables.TableFamilyIPv4, r.ProbeSNAT, unix.NFPROTO_IPV4, nftables.TypeIPAddr, 16, true},
		{nftables.TableFamilyIPv6, r.ProbeSNAT6, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 24, false},
	} {
		t := &nftables.Table{Family: fam.family, Name: HostProbeTable}
		c.AddTable(t)
		c.DelTable(t)
		if !fam.snat.IsValid() {
			continue
		}
		c.AddTable(t)
		set := &nftables.Set{Table: t, Name: hostProbeSet, KeyType: fam.key}
		var elems []nftables.SetElement
		for _, p := range pods {
			if p.Is4() == fam.is4 && !p.Is4In6() {
				elems = append(elems, nftables.SetElement{Key: p.AsSlice()})
			}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("redirect: host probes: set: %w", err)
		}
		ch := c.AddChain(&nftables.Chain{Name: hostProbeChain, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: policyRef(nftables.ChainPolicyAccept)})
		exprs := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.off, Len: uint32(fam.snat.BitLen() / 8)},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		}
		exprs = append(exprs, matchL4(unix.IPPROTO_TCP)...)
		exprs = append(exprs,
			&expr.Counter{},
			&expr.Immediate{Register: 1, Data: fam.snat.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: fam.proto, RegAddrMin: 1},
		)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, commentPrefix+"kubelet-probe-snat")})
	}
	if err := c.Flush(); err != nil {
		return wrap("nftables", "host probes: apply", err)
	}
	return nil
}

// RemoveHostProbes deletes both host tables; absent tables are fine.
func RemoveHostProbes() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("redirect: host probes: %w", err)
	}
	for _, f := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Family: f, Name: HostProbeTable}
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return wrap("nftables", "host probes: remove", err)
	}
	return nil
}

// HostProbePods lists the addresses in the host tables' pod sets (both
// families), or none when the tables are absent.
func HostProbePods() ([]netip.Addr, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("redirect: host probes: %w", err)
	}
	var out []netip.Addr
	for _, f := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Family: f, Name: HostProbeTable}
		set, err := c.GetSetByName(t, hostProbeSet)
		if err != nil {
			continue // no table or no set in this family
		}
		elems, err := c.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("redirect: host probes: list %s: %w", f2s(f), err)
		}
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

func f2s(f nftables.TableFamily) string {
	if f == nftables.TableFamilyIPv6 {
		return "ip6 " + HostProbeTable
	}
	return "ip " + HostProbeTable
}
