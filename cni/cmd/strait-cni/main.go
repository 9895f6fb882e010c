// Command strait-cni is Strait's chained CNI plugin (cni/plugin).
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/strait-mesh/strait/cni/plugin"
)

func main() {
	plugin.SetStderr(os.Stderr)
	skel.PluginMainFuncs(plugin.Funcs(), plugin.Versions, "strait-cni: Strait's chained CNI plugin (enrolls pods with the node agent)")
}
