// Scratch module: build-bins.sh copies this directory to a temporary one,
// adds a replace of every kubernetes staging module to v0.34.4 (computed
// from kubernetes' own go.mod), runs `go mod tidy` and builds
// kube-apiserver. Not part of the main module.
module strait.local/kubebins/kube-apiserver

go 1.26.0

require k8s.io/kubernetes v1.34.4
