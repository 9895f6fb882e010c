// Package deploy holds Strait's Kubernetes manifests (kustomization.yaml,
// base/ and crds/), embedded so straitctl installs exactly what the
// repository ships.
package deploy

import "embed"

// Files are the manifests: base/*.yaml and crds/*.yaml.
//
//go:embed base/*.yaml crds/*.yaml
var Files embed.FS

// Dirs are the directories of Files that hold manifests.
var Dirs = []string{"crds", "base"}
