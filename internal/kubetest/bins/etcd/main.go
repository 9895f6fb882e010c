// Command etcd is the etcd server built from its module, for tests
// (internal/kubetest). Built by ../../build-bins.sh, never by the main module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
