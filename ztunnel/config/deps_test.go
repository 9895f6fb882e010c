package config

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportBoundaries pins config → store → rbac → identity: none of the
// three packages may reach the data path, the tunnel or anything above.
// (internal/archtest holds the module-wide rules; these belong there too.)
func TestImportBoundaries(t *testing.T) {
	const mod = "github.com/strait-mesh/strait/"
	forbidden := []string{"ztunnel/hbone", "ztunnel/inbound", "ztunnel/outbound", "ztunnel/inpod", "ztunnel/admin", "ztunnel/app", "ztunnel/metrics", "ztunnel/cmd", "waypoint", "cni"}
	allowed := map[string][]string{
		"ztunnel/rbac":   {"identity"},
		"ztunnel/store":  {"identity", "ztunnel/rbac"},
		"ztunnel/config": {"identity", "ztunnel/rbac", "ztunnel/store"},
	}
	for pkg, ok := range allowed {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "../../"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			rel, ours := strings.CutPrefix(dep, mod)
			if !ours || rel == pkg {
				continue
			}
			for _, f := range forbidden {
				if strings.HasPrefix(rel, f) {
					t.Errorf("%s depends on %s", pkg, rel)
				}
			}
			fine := false
			for _, a := range ok {
				if rel == a || strings.HasPrefix(rel, a+"/") {
					fine = true
				}
			}
			if !fine {
				t.Errorf("%s depends on %s, outside %v", pkg, rel, ok)
			}
		}
	}
}
