package main

import (
	"fmt"
	"math"
	"strings"
)

// Budgets of the targets that are absolute.
const (
	addedP99BudgetMs    = 0.2 // latency-1000rps: strait p99 − direct p99
	rssPerConnBudgetKiB = 16  // idle-10k: strait RSS per idle connection
)

// verdict is one evaluated target.
type verdict struct {
	ID       string // stable name, e.g. "throughput-1"
	Target   string // what is required
	Measured string // the numbers behind the verdict
	Met      bool
}

// le and ge compare with a tolerance for float noise (e.g. 2.9 − 2.7).
func le(a, b float64) bool { return a <= b+1e-9*math.Max(1, math.Abs(b)) }
func ge(a, b float64) bool { return le(b, a) }

// targets evaluates every target whose rows exist, in a fixed order.
// Values are headline rows or, when a system has none for the metric, the
// sum over its processes (said in the measured text).
func targets(m *model) []verdict {
	var out []verdict
	// val's note says when a value is a sum over processes.
	val := func(sc, sys, metric string) (float64, string, bool) {
		v, n, ok := m.value(sc, sys, metric)
		note := ""
		if n > 0 {
			note = fmt.Sprintf("%s: sum of %d processes", sys, n)
		}
		return v, note, ok
	}
	paren := func(parts ...string) string {
		var ps []string
		for _, p := range parts {
			if p != "" {
				ps = append(ps, p)
			}
		}
		if len(ps) == 0 {
			return ""
		}
		return " (" + strings.Join(ps, "; ") + ")"
	}
	// versus compares strait with haproxy on one metric.
	versus := func(id, sc, metric, unit string, higherIsBetter bool) {
		s, sn, sok := val(sc, "strait", metric)
		h, hn, hok := val(sc, "haproxy", metric)
		if !sok || !hok {
			return
		}
		op, met := "≤", le(s, h)
		if higherIsBetter {
			op, met = "≥", ge(s, h)
		}
		rs := ""
		if r, ok := ratio(s, true, h, true); ok {
			rs = fmtRatio(r)
		}
		measured := fmt.Sprintf("strait %s, haproxy %s %s", fmtNum(s), fmtNum(h), unit) + paren(rs, sn, hn)
		out = append(out, verdict{
			ID:       id,
			Target:   fmt.Sprintf("%s: strait %s %s haproxy's", sc, label(metric), op),
			Measured: measured,
			Met:      met,
		})
	}

	versus("throughput-1", "throughput-1", "gbit_per_s", "Gbit/s", true)
	versus("throughput-8", "throughput-8", "gbit_per_s", "Gbit/s", true)

	const lat = "latency-1000rps"
	s, _, sok := val(lat, "strait", "p99_ms")
	d, _, dok := val(lat, "direct", "p99_ms")
	h, _, hok := val(lat, "haproxy", "p99_ms")
	if sok && dok {
		added := s - d
		if hok {
			addedH := h - d
			out = append(out, verdict{
				ID:       "latency-added-p99-vs-haproxy",
				Target:   lat + ": added p99 (system − direct) of strait ≤ haproxy's",
				Measured: fmt.Sprintf("strait %s ms, haproxy %s ms (p99: direct %s, strait %s, haproxy %s ms)", fmtDiff(added), fmtDiff(addedH), fmtNum(d), fmtNum(s), fmtNum(h)),
				Met:      le(added, addedH),
			})
		}
		out = append(out, verdict{
			ID:       "latency-added-p99-budget",
			Target:   fmt.Sprintf("%s: added p99 of strait ≤ %s ms", lat, fmtNum(addedP99BudgetMs)),
			Measured: fmt.Sprintf("%s ms (p99: direct %s, strait %s ms)", fmtDiff(added), fmtNum(d), fmtNum(s)),
			Met:      le(added, addedP99BudgetMs),
		})
	}

	versus("churn", "churn", "conns_per_s", "connections/s", true)

	if v, note, ok := val("idle-10k", "strait", "rss_kib_per_conn"); ok {
		out = append(out, verdict{
			ID:       "idle-10k",
			Target:   fmt.Sprintf("idle-10k: strait RSS per idle connection ≤ %s KiB", fmtNum(rssPerConnBudgetKiB)),
			Measured: fmt.Sprintf("%s KiB", fmtNum(v)) + paren(note),
			Met:      le(v, rssPerConnBudgetKiB),
		})
	}

	versus("latency-cpu", lat, "cpu_ms_per_1k_req", "ms", false)
	return out
}
