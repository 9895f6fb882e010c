package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/strait-mesh/strait/internal/meshtest"
)

// fortioVersion is pinned in meshtest (the e2e tests run the same one).
const fortioVersion = meshtest.FortioVersion

// ensureFortio finds fortio at the pinned version or installs it with
// `go install` (meshtest.EnsureFortio). It never touches go.mod.
func ensureFortio(ctx context.Context, given string, log func(string, ...any)) (string, error) {
	return meshtest.EnsureFortio(ctx, given, log)
}

// ensureIperf3 finds iperf3 or installs the Debian package.
func ensureIperf3(ctx context.Context, log func(string, ...any)) (string, error) {
	if p, err := exec.LookPath("iperf3"); err == nil {
		return p, nil
	}
	log("installing iperf3 with apt-get")
	inst := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "iperf3")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install iperf3: %w: %s", err, lastLines(out, 3))
		}
		return nil
	}
	if err := inst(); err != nil {
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("%v; apt-get update: %v: %s", err, uerr, lastLines(out, 3))
		}
		if err := inst(); err != nil {
			return "", err
		}
	}
	return exec.LookPath("iperf3")
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func toolVersion(ctx context.Context, name string, args ...string) string {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return "unknown"
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	// stunnel starts with "Initializing inetd mode configuration".
	for _, l := range lines {
		if strings.HasPrefix(strings.ToLower(l), strings.ToLower(filepath.Base(name))[:min(5, len(filepath.Base(name)))]) {
			return l
		}
	}
	return lines[0]
}

// fortioResult is the part of `fortio load -json` the harness reads.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    int64 // ns
	RequestedQPS      string
	NumThreads        int
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Avg         float64
		Max         float64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

func parseFortio(b []byte) (*fortioResult, error) {
	var r fortioResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("fortio json: %w", err)
	}
	if r.DurationHistogram.Count == 0 {
		return nil, errors.New("fortio json: no requests")
	}
	return &r, nil
}

// percentileMS returns percentile p in milliseconds.
func (r *fortioResult) percentileMS(p float64) (float64, bool) {
	for _, x := range r.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return x.Value * 1000, true
		}
	}
	return 0, false
}

func (r *fortioResult) ok() int64 { return r.RetCodes["200"] }

// iperfResult is the part of `iperf3 -J` the harness reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
			Retransmits   int64   `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		CPU struct {
			HostTotal   float64 `json:"host_total"`
			RemoteTotal float64 `json:"remote_total"`
		} `json:"cpu_utilization_percent"`
	} `json:"end"`
}

func parseIperf(b []byte) (*iperfResult, error) {
	var r iperfResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("iperf3 json: %w", err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond == 0 {
		return nil, errors.New("iperf3 json: nothing received")
	}
	return &r, nil
}
