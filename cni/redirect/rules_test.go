package redirect

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestDefaultRulesValid(t *testing.T) {
	r := DefaultRules()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.CaptureDNS {
		t.Fatal("DNS capture is on by default")
	}
	if r.InboundPort != 15006 || r.OutboundPort != 15001 || r.HBONEPort != 15008 || r.DNSPort != 15053 || r.Mark != 1337 ||
		r.ProbeSNAT.String() != "169.254.7.127" {
		t.Fatalf("defaults %+v", r)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Rules)
		want   string // substring of the error, "" for valid
	}{
		{"zero port", func(r *Rules) { r.InboundPort = 0 }, "InboundPort is 0"},
		{"same ports", func(r *Rules) { r.OutboundPort = r.InboundPort }, "InboundPort and OutboundPort are both 15006"},
		{"dns port unused when off", func(r *Rules) { r.DNSPort = 0 }, ""},
		{"dns port needed when on", func(r *Rules) { r.DNSPort = 0; r.CaptureDNS = true }, "DNSPort is 0"},
		{"dns port clash", func(r *Rules) { r.DNSPort = r.HBONEPort; r.CaptureDNS = true }, "HBONEPort and DNSPort"},
		{"probe addresses swapped", func(r *Rules) { r.ProbeSNAT, r.ProbeSNAT6 = r.ProbeSNAT6, r.ProbeSNAT }, "not an IPv4"},
		{"v4-mapped probe6", func(r *Rules) { r.ProbeSNAT6 = netip.AddrFrom16(r.ProbeSNAT.As16()) }, "not an IPv6"},
		{"no probe exception", func(r *Rules) { r.ProbeSNAT, r.ProbeSNAT6 = netip.Addr{}, netip.Addr{} }, ""},
		{"no mark", func(r *Rules) { r.Mark = 0 }, "Mark is 0"},
		{"mark outside mask", func(r *Rules) { r.Mark = 0x10539 }, "outside the mask 0xfff"},
		{"mark is connmark", func(r *Rules) { r.Mark = ConnMark }, "connection mark"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := DefaultRules()
			tc.mutate(&r)
			err := r.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "redirect: invalid rules: ")):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseKind(t *testing.T) {
	for _, k := range []Kind{Auto, NFTables, IPTables} {
		got, err := ParseKind(strings.ToUpper(k.String()))
		if err != nil || got != k {
			t.Fatalf("ParseKind(%q) = %v, %v", k, got, err)
		}
	}
	if _, err := ParseKind("ebpf"); err == nil {
		t.Fatal("ParseKind accepted ebpf")
	}
	if _, err := New(Kind(42), nil); err == nil {
		t.Fatal("New accepted Kind(42)")
	}
}

func TestErrorWrapping(t *testing.T) {
	err := wrap("nftables", "apply: netlink", &os.SyscallError{Syscall: "netlink receive", Err: syscall.EPERM})
	const want = "redirect: nftables: apply: netlink: netlink receive: operation not permitted (need CAP_NET_ADMIN in the pod netns)"
	if err.Error() != want {
		t.Fatalf("got  %q\nwant %q", err, want)
	}
	if !errors.Is(err, syscall.EPERM) {
		t.Fatal("EPERM not wrapped")
	}
	if err := wrap("nftables", "apply", syscall.ENOENT); strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("hint on ENOENT: %v", err)
	}
}

// Auto falls back to iptables, and says why, when nftables is unusable.
func TestAutoFallsBackToIPTables(t *testing.T) {
	for _, bin := range []string{"iptables-save", "iptables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed: apt-get install iptables (.ci/run does): %v", bin, err)
		}
	}
	saved := probeNFTables
	t.Cleanup(func() { probeNFTables = saved })
	probeNFTables = func() error { return errors.New("redirect: nftables: probe: netlink: protocol not supported") }

	core, logs := observer.New(zap.InfoLevel)
	b, err := New(Auto, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if b.Kind() != IPTables {
		t.Fatalf("Auto picked %v", b.Kind())
	}
	entries := logs.FilterMessageSnippet("falling back to iptables").All()
	if len(entries) != 1 || !strings.Contains(entries[0].ContextMap()["error"].(string), "protocol not supported") {
		t.Fatalf("fallback log: %+v", logs.All())
	}
}
