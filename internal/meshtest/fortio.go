package meshtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// FortioVersion is the fortio the benchmarks and the e2e tests run. It
// is pinned: newer module versions are not fetchable here (the proxy
// answers 403 for "latest").
const FortioVersion = "1.68.2"

// EnsureFortio finds fortio at FortioVersion (the given path, the GOPATH
// bin directory, then PATH) or installs it with `go install` into the
// GOPATH bin directory. It never touches go.mod. log, if not nil, is told
// about an install.
func EnsureFortio(ctx context.Context, given string, log func(string, ...any)) (string, error) {
	gobin := ""
	if out, err := exec.CommandContext(ctx, "go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			gobin = lines[0]
			if gobin == "" {
				gobin = filepath.Join(strings.Split(lines[1], string(os.PathListSeparator))[0], "bin")
			}
		}
	}
	var candidates []string
	if given != "" {
		candidates = append(candidates, given)
	}
	if gobin != "" {
		candidates = append(candidates, filepath.Join(gobin, "fortio"))
	}
	if p, err := exec.LookPath("fortio"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		if v, err := exec.CommandContext(ctx, c, "version").Output(); err == nil && strings.TrimSpace(string(v)) == FortioVersion {
			return c, nil
		}
	}
	if given != "" {
		return "", fmt.Errorf("fortio %s: %s is missing or another version", FortioVersion, given)
	}
	if gobin == "" {
		return "", errors.New("fortio missing and `go env GOPATH` failed")
	}
	if log != nil {
		log("installing fortio %s with go install (into %s)", FortioVersion, gobin)
	}
	cmd := exec.CommandContext(ctx, "go", "install", "fortio.org/fortio@v"+FortioVersion)
	cmd.Dir = os.TempDir() // outside any module: go.mod is never consulted or changed
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install fortio.org/fortio@v%s: %w: %s", FortioVersion, err, bytes.TrimSpace(out))
	}
	p := filepath.Join(gobin, "fortio")
	if v, err := exec.CommandContext(ctx, p, "version").Output(); err != nil || strings.TrimSpace(string(v)) != FortioVersion {
		return "", fmt.Errorf("fortio installed at %s but `fortio version` says %q (%v)", p, bytes.TrimSpace(v), err)
	}
	return p, nil
}
