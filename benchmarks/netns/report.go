package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Row is one result. Proc names the process a per-process metric (RSS,
// CPU) belongs to, e.g. "ztunnel-node-a"; it is empty otherwise.
type Row struct {
	Scenario string  `json:"scenario"`
	System   string  `json:"system"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Proc     string  `json:"proc,omitempty"`
	Round    int     `json:"round,omitempty"`
}

type key struct{ scenario, system, metric, proc string }

// recorder collects samples in order.
type recorder struct {
	mu      sync.Mutex
	samples []Row
	order   []key
	seen    map[key]bool
}

func newRecorder() *recorder { return &recorder{seen: map[key]bool{}} }

func (r *recorder) add(round int, scenario, system, metric, proc string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := key{scenario, system, metric, proc}
	if !r.seen[k] {
		r.seen[k] = true
		r.order = append(r.order, k)
	}
	r.samples = append(r.samples, Row{Scenario: scenario, System: system, Metric: metric, Value: v, Proc: proc, Round: round})
}

func (r *recorder) values(k key) []float64 {
	var vs []float64
	for _, s := range r.samples {
		if (key{s.Scenario, s.System, s.Metric, s.Proc}) == k {
			vs = append(vs, s.Value)
		}
	}
	return vs
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rows are the medians, plus "added" rows (mesh − direct medians) for
// the latency percentiles.
func (r *recorder) rows() []Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Row
	for _, k := range r.order {
		out = append(out, Row{Scenario: k.scenario, System: k.system, Metric: k.metric, Proc: k.proc, Value: round4(median(r.values(k)))})
	}
	for _, k := range r.order {
		if k.system != "mesh" || !strings.HasSuffix(k.metric, "_ms") {
			continue
		}
		d := key{k.scenario, "direct", k.metric, k.proc}
		if !r.seen[d] {
			continue
		}
		out = append(out, Row{Scenario: k.scenario, System: "added", Metric: k.metric, Proc: k.proc,
			Value: round4(median(r.values(k)) - median(r.values(d)))})
	}
	return out
}

func round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// Report is the JSON file.
type Report struct {
	Command  string            `json:"command"`
	Started  string            `json:"started"`
	Seconds  float64           `json:"seconds"`
	Quick    bool              `json:"quick"`
	Machine  map[string]string `json:"machine"`
	Settings map[string]any    `json:"settings"`
	Rows     []Row             `json:"rows"`
	Samples  []Row             `json:"samples"`
	Notes    []string          `json:"notes,omitempty"`
	Profiles map[string]string `json:"profiles,omitempty"`
}

func writeReport(path string, rep *Report) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// printTable prints the medians of every system side by side (direct,
// mesh, then the reference systems), with the added latency or the
// mesh/direct ratio, the mesh/haproxy ratio, and the raw samples.
// Per-process rows are grouped by node: "ztunnel-node-a" and
// "haproxy-node-a" share the line "node-a".
func (r *recorder) printTable(w io.Writer) {
	r.mu.Lock()
	order := append([]key(nil), r.order...)
	r.mu.Unlock()
	type line struct {
		scenario, metric, node string
	}
	var lines []line
	seen := map[line]bool{}
	systems := []string{"direct", "mesh"}
	for _, k := range order {
		l := line{k.scenario, k.metric, procNode(k.proc)}
		if !seen[l] {
			seen[l] = true
			lines = append(lines, l)
		}
		if k.system != "added" && !slices.Contains(systems, k.system) {
			systems = append(systems, k.system)
		}
	}
	vals := func(l line, system string) []float64 {
		var vs []float64
		for _, k := range order {
			if k.scenario == l.scenario && k.metric == l.metric && k.system == system && procNode(k.proc) == l.node {
				vs = append(vs, r.values(k)...)
			}
		}
		return vs
	}
	fmt.Fprintf(w, "\n%-24s %-19s %-7s", "scenario", "metric", "proc")
	for _, sy := range systems {
		fmt.Fprintf(w, " %9s", sy)
	}
	fmt.Fprintf(w, " %12s %12s   samples (%s)\n", "mesh vs dir", "mesh/haproxy", strings.Join(systems, " | "))
	fmt.Fprintln(w, strings.Repeat("-", 150))
	for _, l := range lines {
		fmt.Fprintf(w, "%-24s %-19s %-7s", l.scenario, l.metric, l.node)
		var samples []string
		med := map[string]float64{}
		for _, sy := range systems {
			vs := vals(l, sy)
			str := "-"
			if len(vs) > 0 {
				med[sy] = median(vs)
				str = fmtVal(med[sy])
			}
			fmt.Fprintf(w, " %9s", str)
			samples = append(samples, fmtVals(vs))
		}
		cmp, href := "", ""
		dv, dok := med["direct"]
		mv, mok := med["mesh"]
		if dok && mok {
			if strings.HasSuffix(l.metric, "_ms") {
				cmp = fmt.Sprintf("%+.3f ms", mv-dv)
			} else if dv != 0 {
				cmp = fmt.Sprintf("%.2fx", mv/dv)
			}
		}
		if hv, ok := med["haproxy"]; ok && mok && hv != 0 {
			href = fmt.Sprintf("%.2fx", mv/hv)
		}
		fmt.Fprintf(w, " %12s %12s   %s\n", cmp, href, strings.Join(samples, " | "))
	}
	fmt.Fprintln(w)
}

// procNode is the node part of a per-process name ("ztunnel-node-a" →
// "node-a"), so the proxies of all systems share a table line.
func procNode(proc string) string {
	if i := strings.Index(proc, "-node-"); i >= 0 {
		return proc[i+1:]
	}
	return proc
}

func fmtVal(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func fmtVals(vs []float64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmtVal(v)
	}
	return strings.Join(s, " ")
}
