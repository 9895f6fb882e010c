// Scratch module: build-bins.sh copies this directory to a temporary one,
// runs `go mod tidy` and builds etcd. Not part of the main module.
module strait.local/kubebins/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.6.16
