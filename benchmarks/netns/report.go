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

// DistPoint is one point of a latency distribution.
type DistPoint struct {
	Percentile float64 `json:"percentile"`
	MS         float64 `json:"ms"`
}

// Dist is the latency distribution of one system in one scenario: the
// round whose p99 is the median of the rounds' p99s.
type Dist struct {
	Scenario string      `json:"scenario"`
	System   string      `json:"system"`
	Round    int         `json:"round"`
	Points   []DistPoint `json:"points"`
}

type distSample struct {
	Dist
	p99 float64
}

// recorder collects samples in order.
type recorder struct {
	mu      sync.Mutex
	samples []Row
	order   []key
	seen    map[key]bool
	dists   []distSample
}

// addDist records one round's latency distribution.
func (r *recorder) addDist(round int, scenario, system string, p99 float64, pts []DistPoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dists = append(r.dists, distSample{Dist{scenario, system, round, pts}, p99})
}

// distributions picks, per scenario and system, the round with the
// median p99 (the lower middle one for an even count).
func (r *recorder) distributions() []Dist {
	r.mu.Lock()
	defer r.mu.Unlock()
	type sk struct{ scenario, system string }
	var order []sk
	by := map[sk][]distSample{}
	for _, d := range r.dists {
		k := sk{d.Scenario, d.System}
		if _, ok := by[k]; !ok {
			order = append(order, k)
		}
		by[k] = append(by[k], d)
	}
	var out []Dist
	for _, k := range order {
		ds := append([]distSample(nil), by[k]...)
		sort.SliceStable(ds, func(i, j int) bool { return ds[i].p99 < ds[j].p99 })
		out = append(out, ds[(len(ds)-1)/2].Dist)
	}
	return out
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

// rows are the medians of every key, plus a headline row (no proc) for
// each per-process metric that has none: the sum over the system's
// proxies for CPU (the cost of a request through both nodes), the
// largest for memory and time to ready (the worst node).
func (r *recorder) rows() []Row {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Row
	type hk struct{ scenario, system, metric string }
	var horder []hk
	per := map[hk][]float64{}
	for _, k := range r.order {
		m := round4(median(r.values(k)))
		out = append(out, Row{Scenario: k.scenario, System: k.system, Metric: k.metric, Proc: k.proc, Value: m})
		if k.proc == "" {
			continue
		}
		h := hk{k.scenario, k.system, k.metric}
		if _, ok := per[h]; !ok {
			horder = append(horder, h)
		}
		per[h] = append(per[h], m)
	}
	for _, h := range horder {
		if r.seen[key{h.scenario, h.system, h.metric, ""}] {
			continue
		}
		v, ok := headline(h.metric, per[h])
		if !ok {
			continue
		}
		out = append(out, Row{Scenario: h.scenario, System: h.system, Metric: h.metric, Value: round4(v)})
	}
	return out
}

// headline combines per-process medians into one value per system.
func headline(metric string, vs []float64) (float64, bool) {
	switch metric {
	case "cpu_ms_per_1k_req", "cpu_ms_per_1k_conns", "vcpu":
		var sum float64
		for _, v := range vs {
			sum += v
		}
		return sum, true
	case "rss_mib", "rss_kib_per_conn", "ready_ms":
		return slices.Max(vs), true
	}
	return 0, false
}

func round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }

// Report is the JSON file (benchmarks/results/latest.json), read by
// benchmarks/report to regenerate docs/benchmarks.md. Rows are medians
// over the rounds; rows without proc are the headline values.
type Report struct {
	Command       string            `json:"command"`
	Started       string            `json:"started"`
	Seconds       float64           `json:"seconds"`
	Quick         bool              `json:"quick"`
	Host          map[string]string `json:"host"`
	Systems       []string          `json:"systems"`
	Settings      map[string]any    `json:"settings"`
	Rows          []Row             `json:"rows"`
	Samples       []Row             `json:"samples"`
	Distributions []Dist            `json:"distributions,omitempty"`
	Notes         []string          `json:"notes,omitempty"`
	Profiles      map[string]string `json:"profiles,omitempty"`
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
	systems := []string{"direct", sysStrait}
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
	fmt.Fprintf(w, " %12s %12s   samples (%s)\n", "strait vs dir", "strait/hapx", strings.Join(systems, " | "))
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
		mv, mok := med[sysStrait]
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

// systems lists the systems that have rows, in the order first seen.
func (r *recorder) systems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, k := range r.order {
		if !slices.Contains(out, k.system) {
			out = append(out, k.system)
		}
	}
	return out
}
