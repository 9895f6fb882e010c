package redirect

import (
	"context"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The nftables ruleset: one table of the inet family (IPv4 and IPv6).
const (
	TableName = "strait"

	nftChainPrerouting       = "prerouting"        // nat, prerouting, dstnat (-100)
	nftChainOutput           = "output"            // nat, output, -100
	nftChainManglePrerouting = "mangle-prerouting" // filter, prerouting, mangle (-150)
	nftChainMangleOutput     = "mangle-output"     // route, output, mangle (-150)

	// rulesetVersion starts the comment of every rule we install (both
	// backends): Installed looks for it, so bump it when the rules change
	// and a restarted agent re-applies.
	rulesetVersion = "strait/v1"
	commentPrefix  = rulesetVersion + ":"

	nftProbeTable = "strait-probe"
)

var nftChainNames = []string{nftChainManglePrerouting, nftChainMangleOutput, nftChainPrerouting, nftChainOutput}

type nftBackend struct {
	log *zap.Logger
}

func (b *nftBackend) Kind() Kind { return NFTables }

func ourTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// Apply replaces the table in one transaction: create it if missing (so
// the delete cannot fail), delete it with whatever it holds, create it
// again with the current ruleset.
func (b *nftBackend) Apply(ctx context.Context, r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return wrap("nftables", "apply", err)
	}
	c, err := nftables.New()
	if err != nil {
		return wrap("nftables", "apply", err)
	}
	t := ourTable()
	c.AddTable(t)
	c.DelTable(t)
	nftBuild(c, t, r)
	if err := c.Flush(); err != nil {
		return wrap("nftables", "apply: netlink", err)
	}
	b.log.Debug("applied ruleset", zap.String("backend", "nftables"), zap.String("table", "inet "+TableName))
	return nil
}

// Remove deletes the table (with its chains, rules and counters) if it is
// there, in one transaction. Nothing outside it is touched.
func (b *nftBackend) Remove(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return wrap("nftables", "remove", err)
	}
	c, err := nftables.New()
	if err != nil {
		return wrap("nftables", "remove", err)
	}
	t := ourTable()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return wrap("nftables", "remove: netlink", err)
	}
	b.log.Debug("removed ruleset", zap.String("backend", "nftables"))
	return nil
}

// Installed: the table exists with all four chains, and every rule of the
// NAT chains carries the current version's comment.
func (b *nftBackend) Installed(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, wrap("nftables", "check installed", err)
	}
	c, err := nftables.New()
	if err != nil {
		return false, wrap("nftables", "check installed", err)
	}
	ok, err := nftHasTable(c)
	if err != nil || !ok {
		return false, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, wrap("nftables", "check installed: list chains", err)
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			have[ch.Name] = ch
		}
	}
	for _, name := range nftChainNames {
		if have[name] == nil {
			return false, nil
		}
	}
	for _, name := range []string{nftChainPrerouting, nftChainOutput} {
		rules, err := c.GetRules(ourTable(), have[name])
		if err != nil {
			return false, wrap("nftables", "check installed: list rules", err)
		}
		if len(rules) == 0 {
			return false, nil
		}
		for _, r := range rules {
			if comment, _ := userdata.GetString(r.UserData, userdata.TypeComment); !strings.HasPrefix(comment, commentPrefix) {
				return false, nil
			}
		}
	}
	return true, nil
}

// Counters reads the named counter objects of the table.
func (b *nftBackend) Counters(ctx context.Context) (map[string]Counter, error) {
	if err := ctx.Err(); err != nil {
		return nil, wrap("nftables", "read counters", err)
	}
	c, err := nftables.New()
	if err != nil {
		return nil, wrap("nftables", "read counters", err)
	}
	ok, err := nftHasTable(c)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotInstalled
	}
	objs, err := c.GetObjects(ourTable())
	if err != nil {
		return nil, wrap("nftables", "read counters", err)
	}
	out := map[string]Counter{}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			out[co.Name] = Counter{Packets: co.Packets, Bytes: co.Bytes}
		}
	}
	return out, nil
}

func nftHasTable(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, wrap("nftables", "list tables: netlink", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// nftProbe sends, in one transaction, the whole default ruleset in a
// scratch table and the deletion of that table: the kernel checks every
// chain type, hook and expression we use and commits nothing.
func nftProbe() error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: nftProbeTable}
	c.AddTable(t)
	c.DelTable(t)
	r := DefaultRules()
	r.CaptureDNS = true
	nftBuild(c, t, r)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return wrap("nftables", "probe: netlink", err)
	}
	return nil
}

// nftBuild queues the table t with its counters, chains and rules.
//
// In nft syntax (see testdata/nftables.golden for the listing):
//
//	chain mangle-prerouting: meta mark & MASK == Mark  ct mark set ct mark & ~MASK | ConnMark
//	chain mangle-output:     ct mark & MASK == ConnMark  meta mark set ct mark
//	chain prerouting: iifname lo accept; proxy-marked or ConnMark'ed accept;
//	                  tcp from ProbeSNAT(6) accept; tcp dport HBONE accept;
//	                  tcp redirect to :Inbound
//	chain output:     oifname lo accept; proxy-marked or ConnMark'ed accept;
//	                  tcp to ProbeSNAT(6) accept; [udp/tcp dport 53 redirect to :DNS];
//	                  tcp redirect to :Outbound
func nftBuild(c *nftables.Conn, t *nftables.Table, r Rules) {
	c.AddTable(t)
	for _, name := range counterNames {
		c.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	accept := policyRef(nftables.ChainPolicyAccept)
	manglePre := c.AddChain(&nftables.Chain{Name: nftChainManglePrerouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: accept})
	mangleOut := c.AddChain(&nftables.Chain{Name: nftChainMangleOutput, Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle, Policy: accept})
	pre := c.AddChain(&nftables.Chain{Name: nftChainPrerouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: accept})
	out := c.AddChain(&nftables.Chain{Name: nftChainOutput, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: accept})

	add := func(ch *nftables.Chain, comment string, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all,
			UserData: userdata.AppendString(nil, userdata.TypeComment, commentPrefix+comment)})
	}

	// Mangle: remember connections of the proxy (their packets carry its
	// mark, e.g. the proxy's connection to the app over lo) with ConnMark,
	// and put ConnMark back on their locally generated packets.
	add(manglePre, "proxy-connmark",
		matchMetaMark(r.Mark), setCtMark(ConnMark))
	add(mangleOut, "restore-mark",
		matchCtMark(ConnMark), restoreMark())

	// Inbound.
	add(pre, "loopback", matchIfname(expr.MetaKeyIIFNAME, "lo"), verdictAccept())
	add(pre, "proxy-mark", matchMetaMark(r.Mark), verdictAccept())
	add(pre, "skip-connmark", matchCtMark(ConnMark), verdictAccept())
	for _, a := range []netip.Addr{r.ProbeSNAT, r.ProbeSNAT6} {
		if a.IsValid() {
			add(pre, CounterProbe, matchL4(unix.IPPROTO_TCP), matchAddr(a, true), counterRef(CounterProbe), verdictAccept())
		}
	}
	add(pre, CounterHBONE, matchL4(unix.IPPROTO_TCP), matchDport(r.HBONEPort), counterRef(CounterHBONE), verdictAccept())
	add(pre, CounterInbound, matchL4(unix.IPPROTO_TCP), counterRef(CounterInbound), redirectTo(r.InboundPort))

	// Outbound.
	add(out, "loopback", matchIfname(expr.MetaKeyOIFNAME, "lo"), verdictAccept())
	add(out, CounterProxy, matchMetaMark(r.Mark), counterRef(CounterProxy), verdictAccept())
	add(out, "skip-mark", matchMetaMark(ConnMark), verdictAccept())
	add(out, "skip-connmark", matchCtMark(ConnMark), verdictAccept())
	for _, a := range []netip.Addr{r.ProbeSNAT, r.ProbeSNAT6} {
		if a.IsValid() {
			add(out, "kubelet-probe", matchL4(unix.IPPROTO_TCP), matchAddr(a, false), verdictAccept())
		}
	}
	if r.CaptureDNS {
		add(out, CounterDNS, matchL4(unix.IPPROTO_UDP), matchDport(53), counterRef(CounterDNS), redirectTo(r.DNSPort))
		add(out, CounterDNS, matchL4(unix.IPPROTO_TCP), matchDport(53), counterRef(CounterDNS), redirectTo(r.DNSPort))
	}
	add(out, CounterOutbound, matchL4(unix.IPPROTO_TCP), counterRef(CounterOutbound), redirectTo(r.OutboundPort))
}

func policyRef(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

// Expressions. Register 1 holds the value under test; marks are in host
// byte order, ports and addresses in network byte order.

func matchMetaMark(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
	}
}

func matchCtMark(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(MarkMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(v)},
	}
}

// setCtMark: ct mark set ct mark & ~MarkMask | v (iptables CONNMARK --set-xmark v/MarkMask).
func setCtMark(v uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(MarkMask)), Xor: binaryutil.NativeEndian.PutUint32(v)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// restoreMark: meta mark set ct mark (iptables CONNMARK --restore-mark).
func restoreMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

func matchIfname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(name + "\x00")},
	}
}

func matchL4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func matchDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// matchAddr matches the source (src) or destination address, checking the
// family first as the inet table sees both.
func matchAddr(a netip.Addr, src bool) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if src {
		off = 12
	}
	if a.Is6() {
		proto, off = unix.NFPROTO_IPV6, 24
		if src {
			off = 8
		}
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

func counterRef(name string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}}
}

func verdictAccept() []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
}

func redirectTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}
