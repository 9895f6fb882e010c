package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/strait-mesh/strait/ztunnel/rbac"
	"github.com/strait-mesh/strait/ztunnel/store"
)

var update = flag.Bool("update", false, "rewrite the golden .err and .json files in testdata")

// TestGolden parses every testdata/*.yaml. A file with a .err twin must
// fail with exactly that text; any other must parse, convert to a snapshot,
// and dump (MarshalJSON) exactly as its .json twin.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) < 10 {
		t.Fatalf("testdata: %v, %d files", err, len(files))
	}
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			base := strings.TrimSuffix(path, ".yaml")
			bad := strings.HasPrefix(name, "bad-")
			f, perr := Parse(data, name)
			if bad {
				if perr == nil {
					t.Fatal("Parse succeeded, want an error")
				}
				checkErrorShape(t, perr)
				golden(t, base+".err", []byte(perr.Error()+"\n"))
				return
			}
			if perr != nil {
				t.Fatalf("Parse: %v", perr)
			}
			s, err := f.Snapshot()
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			dump, err := json.MarshalIndent(s, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, base+".json", append(dump, '\n'))
		})
	}
	// Every golden file belongs to a yaml file.
	for _, ext := range []string{"err", "json"} {
		extra, _ := filepath.Glob("testdata/*." + ext)
		for _, g := range extra {
			if _, err := os.Stat(strings.TrimSuffix(g, "."+ext) + ".yaml"); err != nil {
				t.Errorf("%s has no .yaml twin", g)
			}
		}
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var errLine = regexp.MustCompile(`^config: [^:]+(:\d+)?: `)

// checkErrorShape: every line of a Parse error is one *FieldError
// "config: <file>:<line>: <path>: <msg>", in file order, and all of them
// are reachable with errors.As.
func checkErrorShape(t *testing.T, err error) {
	t.Helper()
	lines := strings.Split(err.Error(), "\n")
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Parse error %T is not a joined error", err)
	}
	list := j.Unwrap()
	if len(list) != len(lines) {
		t.Fatalf("%d errors but %d lines", len(list), len(lines))
	}
	last := 0
	for i, e := range list {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("error %d is %T, not *FieldError", i, e)
		}
		if !errLine.MatchString(lines[i]) {
			t.Errorf("error line %q does not start with config: <file>[:<line>]: ", lines[i])
		}
		if fe.Kind == nil || !errors.Is(fe, fe.Kind) {
			t.Errorf("error %q: kind %v not reachable", lines[i], fe.Kind)
		}
		if fe.Line > 0 && fe.Line < last {
			t.Errorf("error %q out of file order", lines[i])
		}
		if fe.Line > 0 {
			last = fe.Line
		}
	}
}

func TestErrorKinds(t *testing.T) {
	cases := []struct {
		yaml string
		kind error
	}{
		{"workloads: [", ErrSyntax},
		{"", ErrSyntax},
		{"a: 1\n---\nb: 2\n", ErrSyntax},
		{"bogus: 1", ErrUnknownField},
		{"workloads: {}", ErrType},
		{"workloads: [{}]", ErrRequired},
		{"trustDomain: x y", ErrInvalidValue},
		{"peerAuthentications: [{name: a, namespace: n, mode: STRICT}, {name: a, namespace: n, mode: STRICT}]", ErrDuplicate},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml), "k.yaml")
		if !errors.Is(err, c.kind) {
			t.Errorf("Parse(%q) = %v, want %v", c.yaml, err, c.kind)
		}
	}
	// The yaml.v3 cause stays reachable.
	_, err := Parse([]byte("a: [b"), "k.yaml")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Err == nil || fe.Line == 0 {
		t.Errorf("syntax error: %#v", fe)
	}
	// A field error's message has the documented shape.
	_, err = Parse([]byte("workloads:\n- uid: a\n  name: a\n  namespace: n\n  protocol: TCP\n  ips: [10.0.0.300]\n"), "example.yaml")
	if got, want := err.Error(), `config: example.yaml:6: workloads[0].ips[0]: "10.0.0.300" is not an IP address`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestParseResult(t *testing.T) {
	f, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "testdata/example.yaml" || f.TrustDomain != "cluster.local" || len(f.Workloads) != 3 || len(f.Services) != 2 ||
		len(f.AuthorizationPolicies) != 3 || len(f.PeerAuthentications) != 2 {
		t.Fatalf("parsed: %+v", f)
	}
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	client := s.WorkloadByIP(netip.MustParseAddr("10.244.1.2"))
	checkout := s.WorkloadByIP(netip.MustParseAddr("fd00:10:244:2::7"))
	if client == nil || checkout == nil || checkout.UID != "pod-b-uid" {
		t.Fatalf("lookups: %v %v", client, checkout)
	}
	svc := s.ServiceByVIP(netip.MustParseAddr("10.96.0.10"))
	if eps := s.Endpoints(svc); len(eps) != 1 || eps[0] != checkout {
		t.Errorf("endpoints: %v", eps)
	}
	if p, _ := svc.Port(9090); p.TargetPort != 9090 {
		t.Errorf("targetPort default: %+v", p)
	}
	// The example's policies behave as its comments say.
	pols := s.Policies(checkout)
	frontend := client.Identity()
	for _, c := range []struct {
		conn rbac.Connection
		want bool
	}{
		{rbac.Connection{Identity: frontend, SrcIP: netip.MustParseAddr("10.244.1.2"), DstPort: 8080}, true},
		{rbac.Connection{Identity: frontend, SrcIP: netip.MustParseAddr("10.244.1.2"), DstPort: 9090}, false},
		{rbac.Connection{SrcIP: netip.MustParseAddr("10.244.1.2"), DstPort: 8080}, false},
		{rbac.Connection{Identity: frontend, SrcIP: netip.MustParseAddr("192.0.2.1"), DstPort: 8080}, false},
	} {
		if d := rbac.Evaluate(pols, c.conn); d.Allow != c.want {
			t.Errorf("Evaluate(%+v) = %v", c.conn, d)
		}
	}
	if s.PeerAuthMode(checkout) != rbac.ModeStrict || s.PeerAuthMode(s.WorkloadByUID("pod-c-uid")) != rbac.ModePermissive {
		t.Error("peer authentication modes")
	}
	if s.WorkloadByUID("pod-c-uid").Protocol != store.ProtocolTCP {
		t.Error("protocol")
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "config: ") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#\n"), MaxFileSize/2+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); !errors.Is(err, ErrInvalidValue) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: %v", err)
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString("workloads:\n")
	for i := range 2 * maxErrors {
		fmt.Fprintf(&b, "- {uid: u%d, name: n, namespace: ns, protocol: TCP, ips: [bad]}\n", i)
	}
	_, err := Parse([]byte(b.String()), "many.yaml")
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 || lines[len(lines)-1] != "config: many.yaml: too many errors; stopped after 1000" {
		t.Errorf("%d lines, last %q", len(lines), lines[len(lines)-1])
	}
}

// TestSnapshotErrorsArePrefixed: a File built by hand (not by Parse) can
// still fail in NewSnapshot; the errors say which file.
func TestSnapshotErrorsArePrefixed(t *testing.T) {
	f := &File{Name: "hand.yaml", Workloads: []*store.Workload{nil, {UID: "x"}}}
	_, err := f.Snapshot()
	if err == nil {
		t.Fatal("no error")
	}
	for _, l := range strings.Split(err.Error(), "\n") {
		if !strings.HasPrefix(l, "config: hand.yaml: store: ") {
			t.Errorf("line %q", l)
		}
	}
	if !errors.Is(err, store.ErrInvalidWorkload) {
		t.Error("store sentinel lost")
	}
}
