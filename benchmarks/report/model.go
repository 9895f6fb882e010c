package main

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// Display orders. Names not listed follow in the order they first appear
// in the input.
var (
	scenarioOrder = []string{"throughput-1", "throughput-8", "latency-1000rps", "latency-max", "churn", "idle", "idle-5k", "idle-10k", "ready"}
	systemOrder   = []string{"direct", "strait", "strait-quic", "haproxy", "stunnel", "istio-go"}
	metricOrder   = []string{"gbit_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "rps", "conns_per_s", "rss_mib", "rss_kib_per_conn", "cpu_ms_per_1k_req", "cpu_ms_per_1k_conns", "vcpu", "ready_ms", "errors", "retransmits", "other_vcpu"}
)

// scenarioDesc is the one-line description printed under each scenario.
var scenarioDesc = map[string]string{
	"throughput-1":    "iperf3, one TCP stream (`-P 1`): Gbit/s received.",
	"throughput-8":    "iperf3, eight parallel TCP streams (`-P 8`): Gbit/s received.",
	"latency-1000rps": "fortio, HTTP/1.1 keep-alive, 1000 requests/s over 16 connections, 1 KiB payload: latency percentiles at a fixed rate, and proxy CPU per 1000 requests (both nodes summed).",
	"latency-max":     "fortio, HTTP/1.1 keep-alive, as fast as it goes (`-qps 0`) over 16 connections, 1 KiB payload: the maximum request rate and its latency.",
	"churn":           "A new TCP connection per request (connect, 1-byte echo, close with RST), 64 parallel loops: connections/s and per-connection latency.",
	"idle":            "Each proxy process 2 s after start, no connections: RSS (the larger node).",
	"idle-5k":         "5 000 idle connections held through the proxies, each checked with a 1-byte echo: RSS, and RSS per connection above idle (the larger node). The harness skips a count a system cannot hold under the 20 000 open-files limit (see the notes).",
	"idle-10k":        "10 000 idle connections held through the proxies, each checked with a 1-byte echo: RSS, and RSS per connection above idle (the larger node).",
	"ready":           "Time from starting each proxy process until it is ready (ztunnel: `/healthz/ready` answers 200 with config and certificates loaded; the others: their listener accepts): the larger node.",
}

// metricLabel is how a metric is named in tables and plots.
var metricLabel = map[string]string{
	"gbit_per_s":          "Gbit/s",
	"p50_ms":              "p50 (ms)",
	"p90_ms":              "p90 (ms)",
	"p99_ms":              "p99 (ms)",
	"p999_ms":             "p99.9 (ms)",
	"rps":                 "requests/s",
	"conns_per_s":         "connections/s",
	"rss_mib":             "RSS (MiB)",
	"rss_kib_per_conn":    "RSS per connection (KiB)",
	"cpu_ms_per_1k_req":   "CPU ms per 1000 requests",
	"cpu_ms_per_1k_conns": "CPU ms per 1000 connections",
	"vcpu":                "CPU (vCPU)",
	"ready_ms":            "ready (ms)",
	"errors":              "errors",
	"retransmits":         "TCP retransmits",
	"other_vcpu":          "outside load (vCPU)",
}

// label returns a metric's display name; unknown metrics keep their key.
func label(metric string) string {
	if l, ok := metricLabel[metric]; ok {
		return l
	}
	return metric
}

// ordered returns the names in seen, known ones first in known's order,
// then the others in the order of seen, without duplicates.
func ordered(known, seen []string) []string {
	set := map[string]bool{}
	for _, s := range seen {
		set[s] = true
	}
	var out []string
	for _, k := range known {
		if set[k] {
			out = append(out, k)
			delete(set, k)
		}
	}
	for _, s := range seen {
		if set[s] {
			out = append(out, s)
			delete(set, s)
		}
	}
	return out
}

type hkey struct{ scenario, system, metric string }

type procRow struct {
	system, proc, metric string
	value                float64
}

// model indexes a Results file for display.
type model struct {
	res       *Results
	scenarios []string              // every scenario with a row or a distribution, display order
	systems   []string              // every system, display order
	head      map[hkey]float64      // headline values (first row wins)
	metrics   map[string][]string   // scenario → headline metrics, display order
	procs     map[string][]procRow  // scenario → per-process rows, input order
	dists     map[[2]string][]Point // (scenario, system) → points sorted by percentile
	rounds    int                   // highest round in samples
	colors    map[string]string     // system → plot color
}

func newModel(r *Results) *model {
	m := &model{
		res:     r,
		head:    map[hkey]float64{},
		metrics: map[string][]string{},
		procs:   map[string][]procRow{},
		dists:   map[[2]string][]Point{},
	}
	var scen, sys []string
	sys = append(sys, r.Systems...)
	seenMetric := map[string][]string{}
	for _, row := range r.Rows {
		scen = append(scen, row.Scenario)
		sys = append(sys, row.System)
		if row.Proc != "" {
			m.procs[row.Scenario] = append(m.procs[row.Scenario], procRow{row.System, row.Proc, row.Metric, row.Value})
			continue
		}
		k := hkey{row.Scenario, row.System, row.Metric}
		if _, dup := m.head[k]; dup {
			continue
		}
		m.head[k] = row.Value
		seenMetric[row.Scenario] = append(seenMetric[row.Scenario], row.Metric)
	}
	for _, d := range r.Distributions {
		scen = append(scen, d.Scenario)
		sys = append(sys, d.System)
		k := [2]string{d.Scenario, d.System}
		if _, dup := m.dists[k]; dup {
			continue
		}
		var pts []Point
		for _, p := range d.Points {
			if p.Percentile >= 0 && p.Percentile < 100 {
				pts = append(pts, p)
			}
		}
		slices.SortStableFunc(pts, func(a, b Point) int {
			switch {
			case a.Percentile < b.Percentile:
				return -1
			case a.Percentile > b.Percentile:
				return 1
			}
			return 0
		})
		m.dists[k] = pts
	}
	for _, s := range r.Samples {
		m.rounds = max(m.rounds, s.Round)
	}
	m.scenarios = ordered(scenarioOrder, scen)
	m.systems = ordered(systemOrder, sys)
	for sc, ms := range seenMetric {
		m.metrics[sc] = ordered(metricOrder, ms)
	}
	m.colors = map[string]string{}
	extra := 0
	for _, s := range m.systems {
		if c, ok := fixedColors[s]; ok {
			m.colors[s] = c
			continue
		}
		m.colors[s] = extraColors[extra%len(extraColors)]
		extra++
	}
	return m
}

// headline returns a system's headline value.
func (m *model) headline(scenario, system, metric string) (float64, bool) {
	v, ok := m.head[hkey{scenario, system, metric}]
	return v, ok
}

// value is what targets and plots use: the headline value or, when the
// system has none for this metric, the sum over its processes (e.g. the
// CPU of both nodes' proxies). n is the number of processes summed, 0
// for a headline value.
func (m *model) value(scenario, system, metric string) (v float64, n int, ok bool) {
	if v, ok := m.headline(scenario, system, metric); ok {
		return v, 0, true
	}
	for _, p := range m.procs[scenario] {
		if p.system == system && p.metric == metric {
			v += p.value
			n++
		}
	}
	return v, n, n > 0
}

// systemsIn returns the systems with a headline value in a scenario.
func (m *model) systemsIn(scenario string) []string {
	var out []string
	for _, s := range m.systems {
		for _, mt := range m.metrics[scenario] {
			if _, ok := m.headline(scenario, s, mt); ok {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// thinSep separates thousands: U+202F NARROW NO-BREAK SPACE.
const thinSep = "\u202f"

// missing marks an absent value.
const missing = "–"

// fmtNum formats v with 3 significant digits, without trailing zeros;
// values of 1000 and more are rounded to an integer and grouped by
// thousands.
func fmtNum(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return missing
	}
	if v == 0 {
		return "0"
	}
	sign := ""
	if v < 0 {
		sign = "−"
		v = -v
	}
	// Round half away from zero to 3 significant digits.
	scale := math.Pow(10, 2-math.Floor(math.Log10(v)))
	r := math.Round(v*scale) / scale
	if r >= 1000 {
		return sign + groupThousands(strconv.FormatFloat(math.Round(v), 'f', 0, 64))
	}
	dec := max(0, 2-int(math.Floor(math.Log10(r))))
	s := strconv.FormatFloat(r, 'f', dec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
	}
	return sign + s
}

func groupThousands(digits string) string {
	var b strings.Builder
	for i, c := range digits {
		if i > 0 && (len(digits)-i)%3 == 0 {
			b.WriteString(thinSep)
		}
		b.WriteRune(c)
	}
	return b.String()
}

// fmtRatio formats a/b as e.g. "0.96×".
func fmtRatio(r float64) string { return fmtNum(r) + "×" }

// fmtDiff formats a difference with its sign, e.g. "+0.12".
func fmtDiff(d float64) string {
	if d < 0 {
		return "−" + fmtNum(-d)
	}
	return "+" + fmtNum(d)
}

// ratio returns num/den when both exist and den is not zero.
func ratio(num float64, numOK bool, den float64, denOK bool) (float64, bool) {
	if !numOK || !denOK || den == 0 {
		return 0, false
	}
	return num / den, true
}

// fmtDuration formats seconds as "42 s" or "5 min 31 s".
func fmtDuration(s float64) string {
	if s < 60 {
		return fmtNum(s) + " s"
	}
	t := int64(math.Round(s))
	return strconv.FormatInt(t/60, 10) + " min " + strconv.FormatInt(t%60, 10) + " s"
}
