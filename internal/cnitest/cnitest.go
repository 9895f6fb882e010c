// Package cnitest puts the real CNI plugins a test chain needs into a
// directory: Strait's strait-cni built from this module, and the
// reference bridge and host-local plugins of containernetworking/plugins
// at the version go.mod pins (go install pkg@version keeps their
// dependencies out of our go.mod).
package cnitest

import (
	"os"
	"os/exec"
	"testing"
)

// PluginsVersion is the containernetworking/plugins version of go.mod.
const PluginsVersion = "v1.9.1"

// Install builds strait-cni and installs bridge and host-local into dir.
// The build runs from the module root, which the test names by its
// relative path (e.g. "../.." from cni/plugin).
func Install(t testing.TB, dir, moduleRoot string) {
	t.Helper()
	for _, args := range [][]string{
		{"build", "-o", dir + "/", "github.com/strait-mesh/strait/cni/cmd/strait-cni"},
		{"install", "github.com/containernetworking/plugins/plugins/main/bridge@" + PluginsVersion,
			"github.com/containernetworking/plugins/plugins/ipam/host-local@" + PluginsVersion},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cnitest: go %v: %v\n%s", args, err, out)
		}
	}
}
