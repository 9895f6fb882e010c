package archtest

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const mod = "github.com/strait-mesh/strait"

// rules: packages under prefix must not depend (directly or not) on any
// package matching a forbidden prefix.
var rules = []struct {
	prefix    string
	forbidden []string
	why       string
}{
	{mod + "/identity", []string{mod + "/ztunnel", mod + "/waypoint", mod + "/cni"}, "identity is below everything else"},
	{mod + "/identity/caclient", []string{"k8s.io/", mod + "/identity/caserver", mod + "/identity/caroot"}, "the node-side CA client speaks HTTPS+JSON only: no client-go, no server"},
	{mod + "/ztunnel/hbone", []string{mod + "/ztunnel/outbound", mod + "/ztunnel/inbound", mod + "/ztunnel/inpod", mod + "/ztunnel/config", mod + "/ztunnel/workload", mod + "/ztunnel/kube", mod + "/ztunnel/app"}, "the tunnel protocol knows nothing of capture or workloads"},
	{mod + "/ztunnel/relay", []string{mod + "/ztunnel/hbone", mod + "/identity"}, "the relay copies bytes and knows no protocol"},
	{mod + "/internal/bufpool", []string{mod + "/"}, "a leaf helper"},
	{mod + "/cni/plugin", []string{"k8s.io/client-go", mod + "/ztunnel"}, "the CNI plugin stays tiny"},
	{mod + "/cni/cmd/strait-cni", []string{"k8s.io/client-go", mod + "/ztunnel"}, "the CNI plugin binary stays tiny"},
	{mod + "/", []string{"istio.io/"}, "Istio is only an interop peer in a separate module"},
	{mod + "/ztunnel/rbac", []string{mod + "/ztunnel/store", mod + "/ztunnel/config", mod + "/ztunnel/hbone"}, "authorization is a pure model below the store"},
	{mod + "/ztunnel/store", []string{mod + "/ztunnel/config", mod + "/ztunnel/hbone", mod + "/ztunnel/inbound", mod + "/ztunnel/outbound"}, "the store is fed by config and kube, never the reverse"},
	{mod + "/ztunnel/config", []string{mod + "/ztunnel/hbone", mod + "/ztunnel/inbound", mod + "/ztunnel/outbound", mod + "/ztunnel/app"}, "config only builds store snapshots"},
	{mod + "/ztunnel/inbound", []string{mod + "/ztunnel/app", mod + "/ztunnel/inpod", mod + "/ztunnel/outbound"}, "data path packages get sockets injected by the app"},
	{mod + "/ztunnel/outbound", []string{mod + "/ztunnel/app", mod + "/ztunnel/inpod", mod + "/ztunnel/inbound"}, "data path packages get sockets injected by the app"},
	{mod + "/ztunnel/inpod", []string{mod + "/ztunnel/app", mod + "/ztunnel/inbound", mod + "/ztunnel/outbound", mod + "/ztunnel/hbone"}, "in-pod mode manages namespaces, not traffic"},
	{mod + "/ztunnel/metrics", []string{mod + "/ztunnel/hbone", mod + "/ztunnel/inbound", mod + "/ztunnel/outbound", mod + "/ztunnel/app"}, "metrics are a leaf"},
	{mod + "/ztunnel/admin", []string{mod + "/ztunnel/hbone", mod + "/ztunnel/inbound", mod + "/ztunnel/outbound", mod + "/ztunnel/app"}, "admin takes functions, not the data path"},
	{mod + "/cni/redirect", []string{"k8s.io/client-go", mod + "/ztunnel"}, "the CNI plugin will link the redirect rules: no client-go, no proxy"},
	{mod + "/cni/zds", []string{"k8s.io/client-go", mod + "/ztunnel"}, "the protocol is shared by the agent and the proxy"},
	{mod + "/cni/agent", []string{mod + "/ztunnel", mod + "/identity", mod + "/deploy"}, "the node agent hands namespaces to ztunnel over ZDS; it links no proxy code"},
	{mod + "/cni/enroll", []string{mod + "/", "k8s.io/"}, "the enrollment rule is a leaf shared by the agent and ztunnel"},
	{mod + "/deploy/api", []string{mod + "/ztunnel", mod + "/waypoint", mod + "/cni", mod + "/identity", "k8s.io/client-go"}, "the API types are imported by every client: no proxy code, no client library"},
	{mod + "/ztunnel/kube/kubepolicy", []string{"k8s.io/client-go", mod + "/ztunnel/store", mod + "/ztunnel/config"}, "policy conversion is a pure function of the API types"},
}

func TestImportGraph(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	cmd := exec.Command("go", "list", "-deps=false", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		pkg, deps := fields[0], fields[1:]
		for _, r := range rules {
			if !under(pkg, r.prefix) {
				continue
			}
			checked++
			for _, d := range deps {
				for _, f := range r.forbidden {
					if strings.HasPrefix(d, f) && !under(d, r.prefix) {
						t.Errorf("%s depends on %s: %s", pkg, d, r.why)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d package/rule pairs checked: is go list seeing the module?", checked)
	}
}

// under reports whether pkg is the package prefix or inside it
// (cni/cmd/strait-cni-agent is not under cni/cmd/strait-cni); a prefix
// ending in "/" is a plain prefix.
func under(pkg, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(pkg, prefix)
	}
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}
