#!/bin/sh
# Regenerates zdspb/zds.pb.go from zds.proto; run through `go generate
# ./cni/zds`. Needs protoc (Debian: apt-get install protobuf-compiler; the
# checked-in file was made with libprotoc 3.21.12) and the Go toolchain;
# protoc-gen-go is built at the version go.mod pins (v1.36.12) into a
# temporary directory. CI never runs this: the generated file is checked in.
set -eu
cd "$(dirname "$0")"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" GOFLAGS=-buildvcs=false go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
protoc --plugin=protoc-gen-go="$bin/protoc-gen-go" \
	--go_out=. --go_opt=module=github.com/strait-mesh/strait/cni/zds \
	zds.proto
