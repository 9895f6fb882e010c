// Command kube-apiserver is the Kubernetes API server built from its module,
// for tests (internal/kubetest). Built by ../../build-bins.sh, never by the
// main module.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
