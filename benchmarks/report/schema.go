package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// Results is the JSON file the benchmark harness writes
// (benchmarks/results/latest.json). Fields this program does not know are
// ignored.
type Results struct {
	// Host holds machine facts: "vcpus", "cpu", "kernel", "go", "memory",
	// "fortio", "iperf3", "haproxy", "stunnel", "git", ... (any keys).
	Host map[string]string `json:"host"`
	// Command is the exact command line that produced the file.
	Command string `json:"command"`
	// Started is when the run started (RFC 3339, UTC).
	Started string `json:"started"`
	// Seconds is how long the run took.
	Seconds float64 `json:"seconds"`
	// Quick marks a smoke run whose numbers are not meaningful.
	Quick bool `json:"quick"`
	// Systems lists the systems of the run, e.g. "direct", "strait",
	// "haproxy", "stunnel", "istio-go".
	Systems []string `json:"systems"`
	// Notes are free text (markdown), e.g. why a system was skipped.
	Notes []string `json:"notes"`
	// Rows are the values reported (medians over the rounds). A row
	// without Proc is a headline value of its system; a row with Proc is
	// a per-process detail (e.g. "ztunnel-node-a", "haproxy-node-b").
	Rows []Row `json:"rows"`
	// Samples are the per-round values (Round set), same shape as Rows.
	Samples []Row `json:"samples"`
	// Distributions are latency distributions (percentile → ms).
	Distributions []Distribution `json:"distributions"`
}

// Row is one value.
type Row struct {
	Scenario string  `json:"scenario"` // e.g. "throughput-1", "latency-1000rps"
	System   string  `json:"system"`   // e.g. "strait"
	Metric   string  `json:"metric"`   // e.g. "gbit_per_s", "p99_ms"
	Value    float64 `json:"value"`
	Proc     string  `json:"proc,omitempty"`  // empty for headline values
	Round    int     `json:"round,omitempty"` // samples only, from 1
}

// Distribution is one system's latency distribution in one scenario.
type Distribution struct {
	Scenario string  `json:"scenario"`
	System   string  `json:"system"`
	Points   []Point `json:"points"`
}

// Point is one percentile of a distribution.
type Point struct {
	Percentile float64 `json:"percentile"` // 0 ≤ percentile < 100, e.g. 99.9
	Ms         float64 `json:"ms"`
}

// loadResults reads and validates a results file.
func loadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseResults(b)
}

func parseResults(b []byte) (*Results, error) {
	var r Results
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("results: %w", err)
	}
	check := func(what string, i int, row Row) error {
		if row.Scenario == "" || row.System == "" || row.Metric == "" {
			return fmt.Errorf("results: %s[%d]: scenario, system and metric must be set: %+v", what, i, row)
		}
		return nil
	}
	for i, row := range r.Rows {
		if err := check("rows", i, row); err != nil {
			return nil, err
		}
	}
	for i, row := range r.Samples {
		if err := check("samples", i, row); err != nil {
			return nil, err
		}
	}
	for i, d := range r.Distributions {
		if d.Scenario == "" || d.System == "" {
			return nil, fmt.Errorf("results: distributions[%d]: scenario and system must be set", i)
		}
	}
	return &r, nil
}
