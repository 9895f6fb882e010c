package main

import (
	"math"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	line := "4242 (zt (x) y) S 1 4242 4242 0 -1 4194560 1521 0 0 0 173 42 0 0 20 0 9 0 123 1000 2000\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if got != 215 {
		t.Fatalf("utime+stime = %d, want 215", got)
	}
	if _, err := parseStatCPU([]byte("4242 (zt) S 1 2")); err == nil {
		t.Fatal("short line accepted")
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS([]byte("Name:\tztunnel\nVmHWM:\t   20000 kB\nVmRSS:\t   12704 kB\nThreads:\t9\n"))
	if err != nil || got != 12704 {
		t.Fatalf("VmRSS = %d, %v; want 12704", got, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Fatal("missing VmRSS accepted")
	}
}

func TestParseFortio(t *testing.T) {
	raw := `{"RequestedQPS":"1000","ActualQPS":999.5,"NumThreads":16,"RetCodes":{"200":9995},
	"DurationHistogram":{"Count":9995,"Avg":0.0004,"Max":0.01,
	"Percentiles":[{"Percentile":50,"Value":0.00031},{"Percentile":99,"Value":0.0012},{"Percentile":99.9,"Value":0.004}]}}`
	r, err := parseFortio([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := r.percentileMS(99); !ok || math.Abs(v-1.2) > 1e-9 {
		t.Fatalf("p99 = %v %v, want 1.2 ms", v, ok)
	}
	if _, ok := r.percentileMS(75); ok {
		t.Fatal("p75 found but not in the input")
	}
	if r.ok() != 9995 {
		t.Fatalf("ok = %d", r.ok())
	}
	if _, err := parseFortio([]byte(`{"DurationHistogram":{"Count":0}}`)); err == nil {
		t.Fatal("empty run accepted")
	}
}

func TestParseIperf(t *testing.T) {
	r, err := parseIperf([]byte(`{"end":{"sum_sent":{"bits_per_second":2.1e9,"retransmits":3},"sum_received":{"bits_per_second":2e9,"seconds":10}}}`))
	if err != nil || r.End.SumReceived.BitsPerSecond != 2e9 || r.End.SumSent.Retransmits != 3 {
		t.Fatalf("got %+v, %v", r, err)
	}
	if _, err := parseIperf([]byte(`{"error":"unable to connect to server"}`)); err == nil {
		t.Fatal("iperf3 error accepted")
	}
}

func TestMedianAndRows(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Fatalf("median = %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median = %v", m)
	}
	r := newRecorder()
	for i, v := range []float64{0.30, 0.20, 0.25} {
		r.add(i+1, scLatency, "direct", "p99_ms", "", v)
	}
	for i, v := range []float64{0.50, 0.40, 0.45} {
		r.add(i+1, scLatency, sysStrait, "p99_ms", "", v)
	}
	// Per-process values get a headline row: CPU summed over the proxies,
	// memory and time to ready the largest.
	for i, v := range []float64{10, 30, 20} {
		r.add(i+1, scLatency, sysStrait, "cpu_ms_per_1k_req", "ztunnel-node-a", v)
		r.add(i+1, scLatency, sysStrait, "cpu_ms_per_1k_req", "ztunnel-node-b", v+5)
		r.add(i+1, scIdle, sysStrait, "rss_mib", "ztunnel-node-a", v)
		r.add(i+1, scIdle, sysStrait, "rss_mib", "ztunnel-node-b", v+5)
	}
	r.add(1, scLatency, sysStrait, "goroutines", "ztunnel-node-a", 7) // no headline for this one
	type k struct{ sc, sys, metric, proc string }
	want := map[k]float64{
		{scLatency, "direct", "p99_ms", ""}:                           0.25,
		{scLatency, sysStrait, "p99_ms", ""}:                          0.45,
		{scLatency, sysStrait, "cpu_ms_per_1k_req", "ztunnel-node-a"}: 20,
		{scLatency, sysStrait, "cpu_ms_per_1k_req", "ztunnel-node-b"}: 25,
		{scLatency, sysStrait, "cpu_ms_per_1k_req", ""}:               45,
		{scIdle, sysStrait, "rss_mib", "ztunnel-node-a"}:              20,
		{scIdle, sysStrait, "rss_mib", "ztunnel-node-b"}:              25,
		{scIdle, sysStrait, "rss_mib", ""}:                            25,
		{scLatency, sysStrait, "goroutines", "ztunnel-node-a"}:        7,
	}
	rows := r.rows()
	if len(rows) != len(want) {
		t.Fatalf("rows = %+v", rows)
	}
	for _, row := range rows {
		w, ok := want[k{row.Scenario, row.System, row.Metric, row.Proc}]
		if !ok || math.Abs(row.Value-w) > 1e-9 || row.Round != 0 {
			t.Fatalf("row %+v, want value %v (known: %v)", row, w, ok)
		}
	}
}

func TestDistributionsPickMedianRound(t *testing.T) {
	r := newRecorder()
	for i, p99 := range []float64{3, 1, 2} {
		r.addDist(i+1, scLatency, sysStrait, p99, []DistPoint{{Percentile: 99, MS: p99}})
	}
	r.addDist(1, scLatency, sysDirect, 0.5, nil)
	ds := r.distributions()
	if len(ds) != 2 || ds[0].System != sysStrait || ds[0].Round != 3 || ds[1].System != sysDirect || ds[1].Round != 1 {
		t.Fatalf("distributions = %+v", ds)
	}
}

func TestStaleNamePattern(t *testing.T) {
	for name, want := range map[string]bool{
		"snbd123sw": true, "snbm123n0": true, "snbm123p1": true, "snbi123p1": true,
		"sd123sw": false, "snbx123sw": false, "snbl123p1": true, "snbd123": false, "snbd123p": false,
	} {
		if got := staleNS.MatchString(name); got != want {
			t.Errorf("%s: match %v, want %v", name, got, want)
		}
	}
}

func TestParseMachineCPU(t *testing.T) {
	busy, steal, err := parseMachineCPU([]byte("cpu  100 5 50 1000 7 2 3 11 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if busy != 160 || steal != 11 {
		t.Fatalf("busy %d steal %d, want 160 and 11", busy, steal)
	}
	if _, _, err := parseMachineCPU([]byte("intr 1 2 3\n")); err == nil {
		t.Fatal("odd line accepted")
	}
}

func TestParseLimitCounter(t *testing.T) {
	m := `# TYPE strait_connection_failures_total counter
strait_connection_failures_total{direction="inbound",reason="connection_limit"} 7
strait_connection_failures_total{direction="outbound",reason="dial"} 3
strait_connection_failures_total{direction="outbound",reason="connection_limit"} 5000
`
	if got := parseLimitCounter(m); got != 5000 {
		t.Fatalf("parseLimitCounter = %v, want 5000", got)
	}
	if got := parseLimitCounter("go_goroutines 15\n"); got != 0 {
		t.Fatalf("parseLimitCounter without the series = %v, want 0", got)
	}
}

func TestPct(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0, 1}} {
		if got := pct(v, c.p); got != c.want {
			t.Errorf("pct(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if !math.IsNaN(pct(nil, 50)) {
		t.Error("pct(nil) is not NaN")
	}
}
