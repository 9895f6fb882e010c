package config

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strait-mesh/strait/ztunnel/rbac"
)

// FuzzParse: Parse never panics; a rejected input yields only
// "config: <file>..." lines; an accepted one converts to a snapshot (Parse
// checks everything NewSnapshot does, so a Snapshot error is a Parse gap)
// whose indexes agree with its contents and which dumps to JSON.
// Seeds: every testdata/*.yaml plus testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if file != nil {
				t.Fatal("Parse returned a File and an error")
			}
			for _, l := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(l, "config: fuzz.yaml") {
					t.Fatalf("error line %q lacks the config: fuzz.yaml prefix", l)
				}
			}
			return
		}
		s, err := file.Snapshot()
		if err != nil {
			t.Fatalf("Parse accepted a file that Snapshot rejects:\n%v\ninput:\n%s", err, data)
		}
		for _, w := range s.Workloads() {
			for _, ip := range w.IPs {
				if s.WorkloadByIP(ip) != w {
					t.Fatalf("WorkloadByIP(%s) is not %s", ip, w.UID)
				}
			}
			if s.WorkloadByUID(w.UID) != w {
				t.Fatalf("WorkloadByUID(%s)", w.UID)
			}
			if w.Protocol == "HBONE" && w.Identity().IsZero() {
				t.Fatalf("HBONE workload %s has no identity", w.UID)
			}
			var src netip.Addr
			if len(w.IPs) > 0 {
				src = w.IPs[0]
			}
			rbac.Evaluate(s.Policies(w), rbac.Connection{Identity: w.Identity(), SrcIP: src, DstPort: 8080})
			rbac.Evaluate(s.Policies(w), rbac.Connection{SrcIP: src, DstPort: 80})
			s.PeerAuthMode(w)
		}
		for _, svc := range s.Services() {
			for _, vip := range svc.VIPs {
				if s.ServiceByVIP(vip) != svc {
					t.Fatalf("ServiceByVIP(%s)", vip)
				}
			}
			if s.ServiceByHostname(svc.Namespace, svc.Hostname) != svc {
				t.Fatalf("ServiceByHostname(%s, %s)", svc.Namespace, svc.Hostname)
			}
			for _, ep := range s.Endpoints(svc) {
				if !ep.Healthy || ep.Namespace != svc.Namespace {
					t.Fatalf("endpoint %s of %s", ep.UID, svc.Name)
				}
			}
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatal(err)
		}
	})
}
