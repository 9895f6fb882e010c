# Strait: ambient service mesh data plane. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
STATICCHECK_VERSION := v0.7.0
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(GOBIN_DIR)/staticcheck
# deepcopy and CRD YAML for deploy/api; run through `go run`, so go.mod is untouched.
CONTROLLER_GEN_VERSION := v0.23.0
CONTROLLER_GEN := $(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
API_PKGS := ./deploy/api/...
CRD_DIR := deploy/crds
# Nested modules kept apart so product binaries never pull their heavy deps.
INTEROP_MODULES := internal/istiointerop
CMDS := $(shell $(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' ./... 2>/dev/null)
TEST_FLAGS ?= -race -shuffle=on -count=1 -timeout 20m

.PHONY: help demo build test test-unit test-allocs test-interop lint fmt bench bench-kube bench-smoke tools kube-bins clean

help: ## list targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

demo: build ## two nodes, four pods, one ztunnel per node (root; loopback story otherwise)
	$(BIN)/strait-demo -ztunnel $(BIN)/ztunnel

build: ## static binaries (CGO off) into bin/
	@mkdir -p $(BIN)
	@if [ -n "$(CMDS)" ]; then CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/ $(CMDS); fi
	@ls $(BIN)

test: test-unit test-allocs test-interop ## every test, -race, shuffled (root-only tests skip with a reason when not root)

test-unit: kube-bins ## tests of the main module (builds the kube-apiserver and etcd test binaries first, once)
	$(GO) test $(TEST_FLAGS) ./...

test-allocs: ## allocation budgets (without -race, which makes sync.Pool drop items)
	$(GO) test -count=1 -run 'AllocBudget|NoAllocs' ./...

test-interop: ## interop tests against Istio's Go HBONE (separate module)
	@for m in $(INTEROP_MODULES); do [ -f $$m/go.mod ] || continue; echo "== $$m"; (cd $$m && $(GO) test $(TEST_FLAGS) ./...) || exit 1; done

lint: tools verify-gen ## go vet + staticcheck (pinned), generated files current
	$(GO) vet ./...
	$(STATICCHECK) ./...
	@for m in $(INTEROP_MODULES); do [ -f $$m/go.mod ] || continue; (cd $$m && $(GO) vet ./... && $(STATICCHECK) ./...) || exit 1; done

fmt: ## gofmt every Go file
	gofmt -s -w $$(git ls-files '*.go')

.PHONY: generate verify-gen
generate: ## deepcopy and CRD YAML (deploy/crds) from deploy/api, controller-gen pinned
	$(CONTROLLER_GEN) object paths=$(API_PKGS) crd paths=$(API_PKGS) output:crd:artifacts:config=$(CRD_DIR)

verify-gen: ## fail when deepcopy or CRD YAML differ from what make generate writes
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(CONTROLLER_GEN) crd paths=$(API_PKGS) output:crd:artifacts:config=$$tmp/crds; \
	stale=0; \
	diff -r --exclude=kustomization.yaml --exclude='*.go' $(CRD_DIR) $$tmp/crds || stale=1; \
	for d in $$($(GO) list -f '{{.Dir}}' $(API_PKGS)); do \
	  rel=$${d#$(CURDIR)/}; mkdir -p $$tmp/obj/$$rel; \
	  $(CONTROLLER_GEN) object paths=./$$rel output:object:dir=$$tmp/obj/$$rel; \
	  if [ -f $$tmp/obj/$$rel/zz_generated.deepcopy.go ] || [ -f $$rel/zz_generated.deepcopy.go ]; then \
	    diff -N $$rel/zz_generated.deepcopy.go $$tmp/obj/$$rel/zz_generated.deepcopy.go || stale=1; fi; \
	done; \
	if [ $$stale = 1 ]; then echo "generated files are stale: run make generate" >&2; exit 1; fi

bench: build ## every system side by side on the netns topology (root, ~12 min), then regenerates docs/benchmarks.md
	$(GO) run ./benchmarks/netns -ztunnel $(BIN)/ztunnel -out benchmarks/results/latest.json
	$(GO) run ./benchmarks/report -in benchmarks/results/latest.json -doc docs/benchmarks.md -img docs/img/bench

bench-kube: ## ztunnel's Kubernetes source with 10 000 pods and 2 000 services in a real API server: sync time, memory (make kube-bins first; ~4 min)
	$(GO) test -count=1 -run '^$$' -bench SyncScale -benchtime=1x -timeout 30m ./ztunnel/kube/ -args -kube-pods 10000 -kube-services 2000

SMOKE_DIR ?= $(or $(TMPDIR),/tmp)/strait-bench-smoke
bench-smoke: build ## every go benchmark once, then the harness for ~1 s per scenario and the report on its output (root), so none rots
	$(GO) test -run '^$$' -bench . -benchtime=1x ./...
	@if [ "$$(id -u)" != 0 ]; then echo "bench-smoke: skipping the netns harness (needs root for network namespaces)"; exit 0; fi; \
	set -e; rm -rf $(SMOKE_DIR); mkdir -p $(SMOKE_DIR); cp docs/benchmarks.md $(SMOKE_DIR)/benchmarks.md; \
	$(GO) run ./benchmarks/netns -quick -ztunnel $(BIN)/ztunnel -out $(SMOKE_DIR)/smoke.json; \
	$(GO) run ./benchmarks/report -in $(SMOKE_DIR)/smoke.json -doc $(SMOKE_DIR)/benchmarks.md -img $(SMOKE_DIR)/img; \
	echo "bench-smoke: harness and report ok ($(SMOKE_DIR))"

tools: ## pinned Go tools
	@[ -x $(STATICCHECK) ] && $(STATICCHECK) -version | grep -q '$(STATICCHECK_VERSION:v%=%)' || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

kube-bins: ## build etcd and kube-apiserver for internal/kubetest into ~/.cache/strait, STRAIT_KUBE_BINS overrides (once: ~9 min, then ~1 s)
	GO=$(GO) bash internal/kubetest/build-bins.sh

clean: ## remove build outputs
	rm -rf $(BIN)
