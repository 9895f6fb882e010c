package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// The iptables ruleset: chains STRAIT_PRERT and STRAIT_OUTPUT in the nat
// and mangle tables, jumped to from the first rule of PREROUTING and
// OUTPUT; the same in ip6tables when the kernel has IPv6.
const (
	IPTablesChainPrefix = "STRAIT_"

	iptChainPre = IPTablesChainPrefix + "PRERT"
	iptChainOut = IPTablesChainPrefix + "OUTPUT"

	iptJumpComment = commentPrefix + "jump"
)

var iptTables = []string{"mangle", "nat"}

// iptFamily is one of iptables (IPv4) and ip6tables (IPv6).
type iptFamily struct {
	v6      bool
	save    string // iptables-save binary
	restore string // iptables-restore binary
}

type iptBackend struct {
	log      *zap.Logger
	families []iptFamily
	restore  []string // for logs: the restore binaries used
}

func (b *iptBackend) Kind() Kind { return IPTables }

// newIPTables finds the binaries. legacy prefers the iptables-legacy
// variants: Auto falls back here when nf_tables does not work, and then
// the nf_tables-based iptables would not work either.
func newIPTables(log *zap.Logger, legacy bool) (*iptBackend, error) {
	b := &iptBackend{log: log}
	for _, v6 := range []bool{false, true} {
		base := "iptables"
		if v6 {
			base = "ip6tables"
			if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
				log.Info("kernel without IPv6: installing IPv4 rules only")
				continue
			}
		}
		f, err := findIPTables(base, legacy)
		if err != nil {
			if v6 {
				log.Warn("ip6tables not found: installing IPv4 rules only", zap.Error(err))
				continue
			}
			return nil, fmt.Errorf("redirect: iptables: %w", err)
		}
		f.v6 = v6
		b.families = append(b.families, f)
		b.restore = append(b.restore, f.restore)
	}
	return b, nil
}

func findIPTables(base string, legacy bool) (iptFamily, error) {
	var variants []string
	if legacy {
		variants = append(variants, base+"-legacy")
	}
	variants = append(variants, base)
	var firstErr error
	for _, v := range variants {
		save, err1 := exec.LookPath(v + "-save")
		restore, err2 := exec.LookPath(v + "-restore")
		if err := errors.Join(err1, err2); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		return iptFamily{save: save, restore: restore}, nil
	}
	return iptFamily{}, firstErr
}

func (f iptFamily) name() string {
	if f.v6 {
		return "ip6tables"
	}
	return "iptables"
}

// Apply reads the nat and mangle tables, then in one iptables-restore
// --noflush per family (each table committed atomically) deletes every
// jump to a STRAIT_ chain, flushes our chains, deletes STRAIT_ chains the
// current version does not use, and installs the current rules.
func (b *iptBackend) Apply(ctx context.Context, r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	for _, f := range b.families {
		cur, err := b.read(ctx, f, false)
		if err != nil {
			return wrap("iptables", "apply", err)
		}
		want := iptRules(r, f.v6)
		if err := b.run(ctx, f, iptScript(cur, want)); err != nil {
			return wrap("iptables", "apply", err)
		}
	}
	b.log.Debug("applied ruleset", zap.String("backend", "iptables"))
	return nil
}

// Remove deletes the jumps to STRAIT_ chains and those chains, and
// nothing else.
func (b *iptBackend) Remove(ctx context.Context) error {
	for _, f := range b.families {
		cur, err := b.read(ctx, f, false)
		if err != nil {
			return wrap("iptables", "remove", err)
		}
		script := iptScript(cur, nil)
		if script == "" {
			continue
		}
		if err := b.run(ctx, f, script); err != nil {
			return wrap("iptables", "remove", err)
		}
	}
	b.log.Debug("removed ruleset", zap.String("backend", "iptables"))
	return nil
}

// Installed: in every family and table, PREROUTING and OUTPUT jump to our
// chains with the current version's comment, and those chains hold only
// rules of the current version.
func (b *iptBackend) Installed(ctx context.Context) (bool, error) {
	for _, f := range b.families {
		cur, err := b.read(ctx, f, false)
		if err != nil {
			return false, wrap("iptables", "check installed", err)
		}
		for _, table := range iptTables {
			t := cur[table]
			for _, j := range []struct{ from, to string }{{"PREROUTING", iptChainPre}, {"OUTPUT", iptChainOut}} {
				if !t.hasChain(j.to) || !t.hasJump(j.from, j.to, iptJumpComment) {
					return false, nil
				}
				rules := t.rulesOf(j.to)
				if len(rules) == 0 {
					return false, nil
				}
				for _, rule := range rules {
					if !strings.HasPrefix(rule.comment(), commentPrefix) {
						return false, nil
					}
				}
			}
		}
	}
	return true, nil
}

// Counters sums, over both families, the counters of our rules whose
// comment names a counter.
func (b *iptBackend) Counters(ctx context.Context) (map[string]Counter, error) {
	out := map[string]Counter{}
	found := false
	for _, f := range b.families {
		cur, err := b.read(ctx, f, true)
		if err != nil {
			return nil, wrap("iptables", "read counters", err)
		}
		for _, table := range iptTables {
			t := cur[table]
			for _, rule := range t.rules {
				if !strings.HasPrefix(rule.chain, IPTablesChainPrefix) {
					continue
				}
				found = true
				name, ok := strings.CutPrefix(rule.comment(), commentPrefix)
				if !ok {
					continue
				}
				for _, n := range counterNames {
					if n == name {
						c := out[n]
						c.Packets += rule.packets
						c.Bytes += rule.bytes
						out[n] = c
					}
				}
			}
		}
	}
	if !found {
		return nil, ErrNotInstalled
	}
	for _, n := range counterNames {
		if _, ok := out[n]; !ok {
			out[n] = Counter{}
		}
	}
	return out, nil
}

// iptRules returns, per table, our chains' rules for one family, without
// the "-A CHAIN" head.
func iptRules(r Rules, v6 bool) map[string]map[string][]string {
	c := func(name string) string { return "-m comment --comment " + commentPrefix + name }
	mark := func(v uint32) string { return fmt.Sprintf("-m mark --mark %#x/%#x", v, MarkMask) }
	connmark := fmt.Sprintf("-m connmark --mark %#x/%#x", ConnMark, MarkMask)
	probe, host := r.ProbeSNAT, "/32"
	if v6 {
		probe, host = r.ProbeSNAT6, "/128"
	}

	pre := []string{
		"-i lo " + c("loopback") + " -j ACCEPT",
		mark(r.Mark) + " " + c("proxy-mark") + " -j ACCEPT",
		connmark + " " + c("skip-connmark") + " -j ACCEPT",
	}
	out := []string{
		"-o lo " + c("loopback") + " -j ACCEPT",
		mark(r.Mark) + " " + c(CounterProxy) + " -j ACCEPT",
		mark(ConnMark) + " " + c("skip-mark") + " -j ACCEPT",
		connmark + " " + c("skip-connmark") + " -j ACCEPT",
	}
	if probe.IsValid() {
		pre = append(pre, "-s "+probe.String()+host+" -p tcp "+c(CounterProbe)+" -j ACCEPT")
		out = append(out, "-d "+probe.String()+host+" -p tcp "+c("kubelet-probe")+" -j ACCEPT")
	}
	pre = append(pre,
		fmt.Sprintf("-p tcp -m tcp --dport %d %s -j ACCEPT", r.HBONEPort, c(CounterHBONE)),
		fmt.Sprintf("-p tcp %s -j REDIRECT --to-ports %d", c(CounterInbound), r.InboundPort))
	if r.CaptureDNS {
		out = append(out,
			fmt.Sprintf("-p udp -m udp --dport 53 %s -j REDIRECT --to-ports %d", c(CounterDNS), r.DNSPort),
			fmt.Sprintf("-p tcp -m tcp --dport 53 %s -j REDIRECT --to-ports %d", c(CounterDNS), r.DNSPort))
	}
	out = append(out, fmt.Sprintf("-p tcp %s -j REDIRECT --to-ports %d", c(CounterOutbound), r.OutboundPort))

	return map[string]map[string][]string{
		"mangle": {
			iptChainPre: {mark(r.Mark) + " " + c("proxy-connmark") + fmt.Sprintf(" -j CONNMARK --set-xmark %#x/%#x", ConnMark, MarkMask)},
			iptChainOut: {connmark + " " + c("restore-mark") + " -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"},
		},
		"nat": {iptChainPre: pre, iptChainOut: out},
	}
}

// iptScript is the iptables-restore --noflush input that turns cur into
// want (nil want: remove everything of ours). It is "" when there is
// nothing to do.
func iptScript(cur map[string]*iptTable, want map[string]map[string][]string) string {
	var sb strings.Builder
	for _, table := range iptTables {
		t := cur[table]
		if t == nil {
			t = &iptTable{}
		}
		wantChains := want[table]
		var body strings.Builder
		// Declaring a chain creates it, or flushes it if it exists.
		declared := map[string]bool{}
		for _, ch := range append(t.ourChains(), sortedKeys(wantChains)...) {
			if !declared[ch] {
				declared[ch] = true
				fmt.Fprintf(&body, ":%s - [0:0]\n", ch)
			}
		}
		// Jumps into our chains from elsewhere, whatever version added them.
		for _, rule := range t.rules {
			if !strings.HasPrefix(rule.chain, IPTablesChainPrefix) && strings.HasPrefix(rule.target(), IPTablesChainPrefix) {
				fmt.Fprintf(&body, "-D %s\n", strings.TrimPrefix(rule.text, "-A "))
			}
		}
		for _, ch := range t.ourChains() {
			if _, keep := wantChains[ch]; !keep {
				fmt.Fprintf(&body, "-X %s\n", ch)
			}
		}
		if len(wantChains) > 0 {
			fmt.Fprintf(&body, "-I PREROUTING 1 -m comment --comment %s -j %s\n", iptJumpComment, iptChainPre)
			fmt.Fprintf(&body, "-I OUTPUT 1 -m comment --comment %s -j %s\n", iptJumpComment, iptChainOut)
			for _, ch := range sortedKeys(wantChains) {
				for _, spec := range wantChains[ch] {
					fmt.Fprintf(&body, "-A %s %s\n", ch, spec)
				}
			}
		}
		if body.Len() == 0 {
			continue
		}
		fmt.Fprintf(&sb, "*%s\n%sCOMMIT\n", table, body.String())
	}
	return sb.String()
}

func sortedKeys(m map[string][]string) []string {
	// Only our two chains: PRERT before OUTPUT reads like the packet path.
	var out []string
	for _, k := range []string{iptChainPre, iptChainOut} {
		if _, ok := m[k]; ok {
			out = append(out, k)
		}
	}
	return out
}

// read runs iptables-save for the nat and mangle tables of one family.
func (b *iptBackend) read(ctx context.Context, f iptFamily, counters bool) (map[string]*iptTable, error) {
	out := map[string]*iptTable{}
	for _, table := range iptTables {
		args := []string{"-t", table}
		if counters {
			args = append(args, "-c")
		}
		stdout, err := runCmd(ctx, f.save, args, "")
		if err != nil {
			return nil, err
		}
		t, err := parseIPTablesSave(stdout, table)
		if err != nil {
			return nil, fmt.Errorf("%s -t %s: %w", f.save, table, err)
		}
		out[table] = t
	}
	return out, nil
}

func (b *iptBackend) run(ctx context.Context, f iptFamily, script string) error {
	b.log.Debug("iptables-restore", zap.String("family", f.name()), zap.String("input", script))
	_, err := runCmd(ctx, f.restore, []string{"-w", "--noflush"}, script)
	if err != nil {
		return fmt.Errorf("%w\ninput:\n%s", err, script)
	}
	return nil
}

// runCmd runs a binary in the calling thread's network namespace (the
// child inherits it) and returns its stdout.
func runCmd(ctx context.Context, bin string, args []string, stdin string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return "", fmt.Errorf("%s %s: %w", bin, strings.Join(args, " "), err)
		}
		if strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted") {
			msg += permHint
		}
		return "", fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// iptTable is the part of an iptables-save table we look at.
type iptTable struct {
	chains []string // user-defined chains
	rules  []iptRule
}

type iptRule struct {
	text           string   // "-A CHAIN ..." as saved (quoting kept)
	chain          string   // CHAIN
	args           []string // unquoted words after CHAIN
	packets, bytes uint64   // with iptables-save -c
}

func (t *iptTable) ourChains() []string {
	var out []string
	for _, c := range t.chains {
		if strings.HasPrefix(c, IPTablesChainPrefix) {
			out = append(out, c)
		}
	}
	return out
}

func (t *iptTable) hasChain(name string) bool {
	for _, c := range t.chains {
		if c == name {
			return true
		}
	}
	return false
}

func (t *iptTable) hasJump(from, to, comment string) bool {
	for _, r := range t.rules {
		if r.chain == from && r.target() == to && r.comment() == comment {
			return true
		}
	}
	return false
}

func (t *iptTable) rulesOf(chain string) []iptRule {
	var out []iptRule
	for _, r := range t.rules {
		if r.chain == chain {
			out = append(out, r)
		}
	}
	return out
}

// option returns the word after the first occurrence of flag.
func (r iptRule) option(flags ...string) string {
	for i := 0; i+1 < len(r.args); i++ {
		for _, f := range flags {
			if r.args[i] == f {
				return r.args[i+1]
			}
		}
	}
	return ""
}

func (r iptRule) target() string  { return r.option("-j", "-g") }
func (r iptRule) comment() string { return r.option("--comment") }

// parseIPTablesSave reads one table of iptables-save output.
func parseIPTablesSave(out, table string) (*iptTable, error) {
	t := &iptTable{}
	in := false
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			in = line[1:] == table
		case !in:
		case line == "COMMIT":
			in = false
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) >= 2 && f[1] == "-" {
				t.chains = append(t.chains, f[0])
			}
		default:
			r := iptRule{}
			if strings.HasPrefix(line, "[") {
				end := strings.IndexByte(line, ']')
				pb := strings.SplitN(line[1:max(end, 1)], ":", 2)
				if end < 0 || len(pb) != 2 {
					return nil, fmt.Errorf("bad counters in %q", line)
				}
				var err1, err2 error
				r.packets, err1 = strconv.ParseUint(pb[0], 10, 64)
				r.bytes, err2 = strconv.ParseUint(pb[1], 10, 64)
				if err := errors.Join(err1, err2); err != nil {
					return nil, fmt.Errorf("bad counters in %q: %w", line, err)
				}
				line = strings.TrimSpace(line[end+1:])
			}
			words, err := splitWords(line)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
			if len(words) < 2 || words[0] != "-A" {
				return nil, fmt.Errorf("unexpected line %q", line)
			}
			r.text, r.chain, r.args = line, words[1], words[2:]
			t.rules = append(t.rules, r)
		}
	}
	return t, nil
}

// splitWords splits a saved rule into words, honouring the double quotes
// and backslash escapes iptables-save uses.
func splitWords(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inQ   bool
		have  bool
	)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			have = true
		case ch == '"':
			inQ = !inQ
			have = true
		case (ch == ' ' || ch == '\t') && !inQ:
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if inQ {
		return nil, errors.New("unterminated quote")
	}
	if have {
		words = append(words, cur.String())
	}
	return words, nil
}
