package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/sample.md")

// sampleOptions are the defaults of the command, so the golden file shows
// exactly what the doc gets.
var sampleOptions = options{In: "benchmarks/results/latest.json", Doc: "docs/benchmarks.md", Img: "docs/img/bench"}

func loadSample(t *testing.T) *Results {
	t.Helper()
	r, err := loadResults("testdata/sample.json")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestGolden(t *testing.T) {
	out, err := generate(loadSample(t), sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	got := out.Block + "\n"
	if *update {
		if err := os.WriteFile("testdata/sample.md", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/sample.md")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("generated block differs from testdata/sample.md (go test ./benchmarks/report -update to accept):\n%s", firstDiff(string(want), got))
	}
	var names []string
	for _, f := range out.Files {
		names = append(names, f.Name)
		ref := "](img/bench/" + f.Name + ")"
		if !strings.Contains(out.Block, ref) {
			t.Errorf("block does not reference %s as %q", f.Name, ref)
		}
	}
	wantNames := []string{"throughput.svg", "latency-1000rps.svg", "latency-max.svg", "churn.svg", "memory.svg"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("plots %v, want %v", names, wantNames)
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return "line " + strconv.Itoa(i+1) + ":\n want: " + x + "\n  got: " + y
		}
	}
	return "(no line differs)"
}

func TestDeterministic(t *testing.T) {
	a, err := generate(loadSample(t), sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b, err := generate(loadSample(t), sampleOptions)
		if err != nil {
			t.Fatal(err)
		}
		if a.Block != b.Block || len(a.Files) != len(b.Files) {
			t.Fatal("two runs on the same input differ")
		}
		for i := range a.Files {
			if a.Files[i].Name != b.Files[i].Name || !bytes.Equal(a.Files[i].Data, b.Files[i].Data) {
				t.Fatalf("plot %s differs between two runs", a.Files[i].Name)
			}
		}
	}
}

// svgInfo is what a parsed SVG holds.
type svgInfo struct {
	root      string
	polylines map[string][]string // data-system → points of each polyline
	bars      map[string]int      // data-system → bars
	texts     []string
}

func parseSVG(t *testing.T, name string, data []byte) svgInfo {
	t.Helper()
	info := svgInfo{polylines: map[string][]string{}, bars: map[string]int{}}
	dec := xml.NewDecoder(bytes.NewReader(data))
	var inText bool
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: not valid XML: %v", name, err)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			attr := map[string]string{}
			for _, a := range e.Attr {
				attr[a.Name.Local] = a.Value
			}
			if info.root == "" {
				info.root = e.Name.Space + " " + e.Name.Local
			}
			switch e.Name.Local {
			case "polyline":
				info.polylines[attr["data-system"]] = append(info.polylines[attr["data-system"]], attr["points"])
			case "rect":
				if s, ok := attr["data-system"]; ok {
					info.bars[s]++
				}
			case "text":
				inText = true
			}
		case xml.EndElement:
			inText = false
		case xml.CharData:
			if inText {
				info.texts = append(info.texts, string(e))
			}
		}
	}
	if info.root != "http://www.w3.org/2000/svg svg" {
		t.Errorf("%s: root element %q, want svg in the SVG namespace", name, info.root)
	}
	return info
}

func TestSVGs(t *testing.T) {
	r := loadSample(t)
	out, err := generate(r, sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Files) == 0 {
		t.Fatal("no plots")
	}
	for _, f := range out.Files {
		info := parseSVG(t, f.Name, f.Data)
		sc := strings.TrimSuffix(f.Name, ".svg")
		var dists []Distribution
		for _, d := range r.Distributions {
			if d.Scenario == sc {
				dists = append(dists, d)
			}
		}
		if len(dists) == 0 {
			if len(info.polylines) != 0 {
				t.Errorf("%s: polylines in a bar chart", f.Name)
			}
			if len(info.bars) == 0 {
				t.Errorf("%s: no bars", f.Name)
			}
			continue
		}
		if len(info.polylines) != len(dists) {
			t.Errorf("%s: polylines for %d systems, want %d", f.Name, len(info.polylines), len(dists))
		}
		for _, d := range dists {
			pl := info.polylines[d.System]
			if len(pl) != 1 {
				t.Errorf("%s: %d polylines for %s, want 1", f.Name, len(pl), d.System)
				continue
			}
			if n := len(strings.Fields(pl[0])); n != len(d.Points) {
				t.Errorf("%s: %s's polyline has %d points, want %d", f.Name, d.System, n, len(d.Points))
			}
		}
		if !slices.Contains(info.texts, "99.9") || !slices.Contains(info.texts, "90") {
			t.Errorf("%s: nines axis labels missing: %q", f.Name, info.texts)
		}
	}
	// throughput: a bar per system and scenario.
	for _, f := range out.Files {
		if f.Name == "throughput.svg" {
			info := parseSVG(t, f.Name, f.Data)
			for _, s := range r.Systems {
				if info.bars[s] != 2 {
					t.Errorf("throughput.svg: %d bars for %s, want 2", info.bars[s], s)
				}
			}
		}
	}
}

func TestSVGEscapesNames(t *testing.T) {
	r := &Results{
		Distributions: []Distribution{
			{Scenario: "a/../b<c>", System: `x"<&>'y`, Points: []Point{{50, 1}, {99, 2}, {100, 9}}},
			{Scenario: "a/../b<c>", System: "strait", Points: []Point{{99.99, 3}, {0, 0.5}}},
		},
		Rows: []Row{{Scenario: "churn", System: `x"<&>'y`, Metric: "conns_per_s", Value: 10}},
	}
	out, err := generate(r, sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range out.Files {
		if strings.ContainsAny(f.Name, "/<>") {
			t.Errorf("unsafe plot file name %q", f.Name)
		}
		info := parseSVG(t, f.Name, f.Data)
		if f.Name == "churn.svg" {
			if info.bars[`x"<&>'y`] != 1 {
				t.Errorf("churn.svg: bars %v", info.bars)
			}
			continue
		}
		if len(info.polylines[`x"<&>'y`]) != 1 || len(info.polylines["strait"]) != 1 {
			t.Fatalf("%s: polylines %v", f.Name, info.polylines)
		}
		// percentile 100 cannot be on the nines axis: dropped.
		if n := len(strings.Fields(info.polylines[`x"<&>'y`][0])); n != 2 {
			t.Errorf("%s: %d points, want 2 (percentile 100 dropped)", f.Name, n)
		}
		if !slices.Contains(info.texts, "99.99") {
			t.Errorf("%s: axis does not reach 99.99: %q", f.Name, info.texts)
		}
	}
}

func rowsOf(vals map[[3]string]float64) []Row {
	var rows []Row
	for k, v := range vals {
		rows = append(rows, Row{Scenario: k[0], System: k[1], Metric: k[2], Value: v})
	}
	slices.SortFunc(rows, func(a, b Row) int {
		return strings.Compare(a.Scenario+a.System+a.Metric, b.Scenario+b.System+b.Metric)
	})
	return rows
}

func TestTargets(t *testing.T) {
	const (
		tp1 = "throughput-1"
		tp8 = "throughput-8"
		lat = "latency-1000rps"
	)
	tests := []struct {
		name     string
		rows     map[[3]string]float64
		procs    []Row
		want     map[string]bool // ID → met; IDs not listed must be absent
		measured map[string]string
	}{
		{
			name: "all met",
			rows: map[[3]string]float64{
				{tp1, "strait", "gbit_per_s"}: 3, {tp1, "haproxy", "gbit_per_s"}: 2,
				{tp8, "strait", "gbit_per_s"}: 5, {tp8, "haproxy", "gbit_per_s"}: 5, // equal is met
				{lat, "direct", "p99_ms"}: 1.0, {lat, "strait", "p99_ms"}: 1.1, {lat, "haproxy", "p99_ms"}: 1.5,
				{"churn", "strait", "conns_per_s"}: 9000, {"churn", "haproxy", "conns_per_s"}: 8000,
				{"idle-10k", "strait", "rss_kib_per_conn"}: 16,
				{lat, "strait", "cpu_ms_per_1k_req"}:       80, {lat, "haproxy", "cpu_ms_per_1k_req"}: 100,
			},
			want: map[string]bool{"throughput-1": true, "throughput-8": true, "latency-added-p99-vs-haproxy": true,
				"latency-added-p99-budget": true, "churn": true, "idle-10k": true, "latency-cpu": true},
			measured: map[string]string{
				"throughput-1":                 "strait 3, haproxy 2 Gbit/s (1.5×)",
				"latency-added-p99-vs-haproxy": "strait +0.1 ms, haproxy +0.5 ms (p99: direct 1, strait 1.1, haproxy 1.5 ms)",
				"churn":                        "strait 9" + thinSep + "000, haproxy 8" + thinSep + "000 connections/s (1.13×)",
			},
		},
		{
			name: "missed",
			rows: map[[3]string]float64{
				{tp1, "strait", "gbit_per_s"}: 1.9, {tp1, "haproxy", "gbit_per_s"}: 2,
				{lat, "direct", "p99_ms"}: 2.7, {lat, "strait", "p99_ms"}: 3.0, {lat, "haproxy", "p99_ms"}: 3.5,
				{"churn", "strait", "conns_per_s"}: 2400, {"churn", "haproxy", "conns_per_s"}: 2500,
				{"idle-10k", "strait", "rss_kib_per_conn"}: 16.5,
				{lat, "haproxy", "cpu_ms_per_1k_req"}:      100,
			},
			// strait's CPU only per process: the sum (110) is compared.
			procs: []Row{
				{Scenario: lat, System: "strait", Metric: "cpu_ms_per_1k_req", Value: 50, Proc: "ztunnel-node-a"},
				{Scenario: lat, System: "strait", Metric: "cpu_ms_per_1k_req", Value: 60, Proc: "ztunnel-node-b"},
			},
			// added p99 0.3 ms: within haproxy's 0.8 ms, over the 0.2 ms budget.
			want: map[string]bool{"throughput-1": false, "latency-added-p99-vs-haproxy": true,
				"latency-added-p99-budget": false, "churn": false, "idle-10k": false, "latency-cpu": false},
			measured: map[string]string{
				"latency-added-p99-budget": "+0.3 ms (p99: direct 2.7, strait 3 ms)",
				"latency-cpu":              "strait 110, haproxy 100 ms (1.1×; strait: sum of 2 processes)",
			},
		},
		{
			name: "float noise at the budget",
			rows: map[[3]string]float64{
				{lat, "direct", "p99_ms"}: 2.0, {lat, "strait", "p99_ms"}: 2.2, // 2.2 − 2.0 = 0.20000000000000018
			},
			want: map[string]bool{"latency-added-p99-budget": true},
		},
		{
			name: "no haproxy",
			rows: map[[3]string]float64{
				{tp1, "strait", "gbit_per_s"}: 2, {tp1, "direct", "gbit_per_s"}: 10,
				{lat, "direct", "p99_ms"}: 1.0, {lat, "strait", "p99_ms"}: 1.5,
				{"churn", "strait", "conns_per_s"}:   2400,
				{lat, "strait", "cpu_ms_per_1k_req"}: 80,
			},
			want: map[string]bool{"latency-added-p99-budget": false},
		},
		{
			name: "no direct, zero haproxy",
			rows: map[[3]string]float64{
				{lat, "strait", "p99_ms"}: 1.5, {lat, "haproxy", "p99_ms"}: 1.4,
				{tp1, "strait", "gbit_per_s"}: 2, {tp1, "haproxy", "gbit_per_s"}: 0,
			},
			want:     map[string]bool{"throughput-1": true},
			measured: map[string]string{"throughput-1": "strait 2, haproxy 0 Gbit/s"},
		},
		{name: "nothing", want: map[string]bool{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Results{Rows: append(rowsOf(tt.rows), tt.procs...)}
			got := map[string]bool{}
			measured := map[string]string{}
			for _, v := range targets(newModel(r)) {
				if _, dup := got[v.ID]; dup {
					t.Errorf("target %s twice", v.ID)
				}
				got[v.ID] = v.Met
				measured[v.ID] = v.Measured
			}
			for id, met := range tt.want {
				g, ok := got[id]
				switch {
				case !ok:
					t.Errorf("target %s not evaluated", id)
				case g != met:
					t.Errorf("target %s: met = %v, want %v (%s)", id, g, met, measured[id])
				}
			}
			for id := range got {
				if _, ok := tt.want[id]; !ok {
					t.Errorf("target %s evaluated without its rows: %s", id, measured[id])
				}
			}
			for id, want := range tt.measured {
				if measured[id] != want {
					t.Errorf("target %s: measured %q, want %q", id, measured[id], want)
				}
			}
		})
	}
}

func TestScenarioTableRatios(t *testing.T) {
	const sc = "throughput-1"
	rows := rowsOf(map[[3]string]float64{
		{sc, "direct", "gbit_per_s"}: 10, {sc, "strait", "gbit_per_s"}: 9.6, {sc, "haproxy", "gbit_per_s"}: 12,
		{sc, "strait-quic", "gbit_per_s"}: 5,
		{sc, "direct", "retransmits"}:     0, {sc, "strait", "retransmits"}: 7, {sc, "haproxy", "retransmits"}: 14, // zero denominator
		{sc, "strait", "vcpu"}:   0.5,                                                          // no reference values
		{sc, "direct", "errors"}: 1, {sc, "strait", "errors"}: 2, {sc, "haproxy", "errors"}: 2, // errors: no ratio
		{sc, "mystery", "zz_metric"}: 1234.5, {sc, "strait", "zz_metric"}: 3, // unknown system and metric
	})
	rows = append(rows, Row{Scenario: sc, System: "strait", Metric: "gbit_per_s", Value: 1, Proc: "ztunnel-node-a"}) // detail, not headline
	m := newModel(&Results{Rows: rows})
	header, table := scenarioTable(m, sc)
	wantHeader := []string{"metric", "direct", "strait", "strait-quic", "haproxy", "mystery",
		"strait / direct", "strait / haproxy", "strait-quic / direct", "strait-quic / haproxy"}
	if !slices.Equal(header, wantHeader) {
		t.Fatalf("header %q, want %q", header, wantHeader)
	}
	want := [][]string{
		{"Gbit/s", "10", "9.6", "5", "12", "–", "0.96×", "0.8×", "0.5×", "0.417×"},
		{"CPU (vCPU)", "–", "0.5", "–", "–", "–", "–", "–", "–", "–"},
		{"errors", "1", "2", "–", "2", "–", "–", "–", "–", "–"},
		{"TCP retransmits", "0", "7", "–", "14", "–", "–", "0.5×", "–", "–"},
		{"zz_metric", "–", "3", "–", "–", "1" + thinSep + "235", "–", "–", "–", "–"},
	}
	if len(table) != len(want) {
		t.Fatalf("table %q, want %q", table, want)
	}
	for i := range want {
		if !slices.Equal(table[i], want[i]) {
			t.Errorf("row %d: %q, want %q", i, table[i], want[i])
		}
	}

	// Without haproxy and strait-quic there are no columns for them.
	m = newModel(&Results{Rows: rowsOf(map[[3]string]float64{
		{sc, "direct", "gbit_per_s"}: 10, {sc, "strait", "gbit_per_s"}: 2,
	})})
	header, table = scenarioTable(m, sc)
	if !slices.Equal(header, []string{"metric", "direct", "strait", "strait / direct"}) || !slices.Equal(table[0], []string{"Gbit/s", "10", "2", "0.2×"}) {
		t.Errorf("without haproxy: %q %q", header, table)
	}
}

func TestOrder(t *testing.T) {
	r := &Results{
		Systems: []string{"zeta", "haproxy", "strait"},
		Rows: []Row{
			{Scenario: "zz-new", System: "alpha", Metric: "x", Value: 1},
			{Scenario: "idle", System: "strait", Metric: "rss_mib", Value: 1},
			{Scenario: "throughput-1", System: "direct", Metric: "gbit_per_s", Value: 1},
			{Scenario: "aa-new", System: "strait", Metric: "x", Value: 1},
		},
	}
	m := newModel(r)
	if want := []string{"throughput-1", "idle", "zz-new", "aa-new"}; !slices.Equal(m.scenarios, want) {
		t.Errorf("scenarios %v, want %v", m.scenarios, want)
	}
	if want := []string{"direct", "strait", "haproxy", "zeta", "alpha"}; !slices.Equal(m.systems, want) {
		t.Errorf("systems %v, want %v", m.systems, want)
	}
	if m.colors["zeta"] == m.colors["alpha"] || m.colors["strait"] != fixedColors["strait"] {
		t.Errorf("colors %v", m.colors)
	}
}

func TestFmtNum(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{2.1, "2.1"},
		{2.14159, "2.14"},
		{0.9567, "0.957"},
		{1.125, "1.13"}, // half away from zero
		{9.996, "10"},
		{10.0, "10"},
		{12.34, "12.3"},
		{99.95, "100"},
		{123.4, "123"},
		{999.4, "999"},
		{999.6, "1" + thinSep + "000"},
		{10554, "10" + thinSep + "554"},
		{1234567.8, "1" + thinSep + "234" + thinSep + "568"},
		{0.0001234, "0.000123"},
		{-3.532, "−3.53"},
	} {
		if got := fmtNum(tt.v); got != tt.want {
			t.Errorf("fmtNum(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
	if got := fmtDuration(331); got != "5 min 31 s" {
		t.Errorf("fmtDuration(331) = %q", got)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, tt := range []struct {
		lo, hi float64
		want   []float64
	}{
		{0, 12.4, []float64{0, 5, 10, 15}},
		{0, 8998, []float64{0, 2000, 4000, 6000, 8000, 10000}},
		{0, 0, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}},
		{0, 1, []float64{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}},
	} {
		got := niceTicks(tt.lo, tt.hi)
		if !slices.Equal(got, tt.want) {
			t.Errorf("niceTicks(%v, %v) = %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
	}
}

func TestImgRel(t *testing.T) {
	for _, tt := range [][3]string{
		{"docs/benchmarks.md", "docs/img/bench", "img/bench"},
		{"README.md", "docs/img", "docs/img"},
		{"docs/x.md", "img", "../img"},
	} {
		if got := imgRel(tt[0], tt[1]); got != tt[2] {
			t.Errorf("imgRel(%q, %q) = %q, want %q", tt[0], tt[1], got, tt[2])
		}
	}
}

func TestReplaceBlock(t *testing.T) {
	const block = beginMarker + "\n\nnew\n\n" + endMarker
	before := "# Title\n\nprose  with trailing spaces  \n\n"
	after := "\n\nmore prose\r\nno final newline"
	doc := before + "<!-- bench:begin (an older wording) -->\nold\n| table |\n" + endMarker + after
	got, err := replaceBlock([]byte(doc), block)
	if err != nil {
		t.Fatal(err)
	}
	if want := before + block + after; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// Idempotent.
	again, err := replaceBlock(got, block)
	if err != nil || !bytes.Equal(again, got) {
		t.Errorf("second replace changed the doc: %q, %v", again, err)
	}

	// No markers: appended, the doc before it untouched.
	for _, doc := range []string{"# T\n\ntext\n", "# T\n\ntext", ""} {
		got, err := replaceBlock([]byte(doc), block)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(got), doc) || !strings.HasSuffix(string(got), block+"\n") {
			t.Errorf("append to %q: %q", doc, got)
		}
		if again, _ := replaceBlock(got, block); !bytes.Equal(again, got) {
			t.Errorf("append to %q not idempotent: %q", doc, again)
		}
	}

	for _, bad := range []string{
		"a\n" + beginMarker + "\nno end\n",
		"a\n" + endMarker + "\nno begin\n",
		"a\n" + endMarker + "\n" + beginMarker + "\n",
		beginMarker + "\n" + endMarker + "\n" + beginMarker + "\n" + endMarker + "\n",
	} {
		if _, err := replaceBlock([]byte(bad), block); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
	// A marker quoted inside a line is not a marker.
	quoted := "see `<!-- bench:begin` below\n"
	if got, err := replaceBlock([]byte(quoted), block); err != nil || !strings.HasPrefix(string(got), quoted) {
		t.Errorf("quoted marker: %q, %v", got, err)
	}
}

func TestInputCannotInjectMarkers(t *testing.T) {
	r := loadSample(t)
	r.Notes = append(r.Notes, "x\n"+endMarker+"\n<script>")
	r.Host["evil"] = endMarker
	out, err := generate(r, sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.Block, "<!-- bench:") != 2 || strings.Contains(out.Block, "<script>") {
		t.Errorf("markers or HTML from the input got into the block")
	}
	r.Command = "go run x\n" + endMarker
	if _, err := generate(r, sampleOptions); err == nil {
		t.Error("a command with a marker line was accepted")
	}
}

func TestQuick(t *testing.T) {
	r := loadSample(t)
	r.Quick = true
	out, err := generate(r, sampleOptions)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.Block, "not meaningful") {
		t.Error("a quick run is not flagged")
	}
	r.Quick = false
	out, _ = generate(r, sampleOptions)
	if strings.Contains(out.Block, "not meaningful") {
		t.Error("a full run is flagged as quick")
	}
}

// TestCommand runs the command on a temporary copy: -check on a stale
// doc fails and writes nothing; a run fixes it; then -check passes until
// a plot or the data changes. Text outside the markers never changes.
func TestCommand(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "latest.json")
	doc := filepath.Join(dir, "docs", "benchmarks.md")
	img := filepath.Join(dir, "docs", "img", "bench")
	sample, err := os.ReadFile("testdata/sample.json")
	if err != nil {
		t.Fatal(err)
	}
	write := func(p string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write(in, sample)
	before := "# Benchmarks\n\nHand-written intro.\n\n"
	after := "\n\n## Analysis\n\nHand-written, kept.\n"
	stale := before + beginMarker + "\n\nold numbers\n\n" + endMarker + after
	write(doc, []byte(stale))

	args := []string{"-in", in, "-doc", doc, "-img", img}
	cmd := func(extra ...string) (int, string) {
		var stdout, stderr bytes.Buffer
		code := run(append(extra, args...), &stdout, &stderr)
		return code, stderr.String()
	}

	if code, msg := cmd("-check"); code != 1 || !strings.Contains(msg, "generated block differs") {
		t.Fatalf("-check on a stale doc: exit %d, %q", code, msg)
	}
	if read(doc) != stale {
		t.Fatal("-check wrote the doc")
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("-check created the image directory: %v", err)
	}

	if code, msg := cmd(); code != 0 {
		t.Fatalf("run: exit %d, %q", code, msg)
	}
	got := read(doc)
	if !strings.HasPrefix(got, before+beginMarker+"\n") || !strings.HasSuffix(got, endMarker+after) {
		t.Fatalf("text outside the markers changed:\n%s", got)
	}
	want, err := generate(loadSample(t), options{In: in, Doc: doc, Img: img})
	if err != nil {
		t.Fatal(err)
	}
	if got != before+want.Block+after {
		t.Error("doc does not hold the generated block")
	}
	if !strings.Contains(got, "](img/bench/latency-1000rps.svg)") {
		t.Error("plot path not relative to the doc")
	}
	for _, f := range want.Files {
		if read(filepath.Join(img, f.Name)) != string(f.Data) {
			t.Errorf("%s not written", f.Name)
		}
	}

	if code, msg := cmd("-check"); code != 0 {
		t.Fatalf("-check after a run: exit %d, %q", code, msg)
	}
	// Editing outside the block is fine.
	write(doc, []byte("edited\n"+got+"appended\n"))
	if code, msg := cmd("-check"); code != 0 {
		t.Fatalf("-check after editing outside the block: exit %d, %q", code, msg)
	}
	// A changed plot is stale.
	plot := filepath.Join(img, "churn.svg")
	write(plot, []byte("<svg/>"))
	if code, msg := cmd("-check"); code != 1 || !strings.Contains(msg, "churn.svg") {
		t.Fatalf("-check with a changed plot: exit %d, %q", code, msg)
	}
	if code, _ := cmd(); code != 0 {
		t.Fatal("run failed")
	}
	// New data is stale too.
	write(in, bytes.Replace(sample, []byte(`"value": 2657`), []byte(`"value": 2700`), 1))
	if code, msg := cmd("-check"); code != 1 {
		t.Fatalf("-check with new data: exit %d, %q", code, msg)
	}
	if code, _ := cmd(); code != 0 || read(doc) == got {
		t.Fatal("run did not update the doc")
	}

	// Errors: bad input, missing doc.
	write(in, []byte(`{"rows": [{"scenario": "x"}]}`))
	if code, _ := cmd(); code != 2 {
		t.Errorf("invalid rows: exit %d, want 2", code)
	}
	if code := run([]string{"-in", filepath.Join(dir, "nope.json"), "-doc", doc, "-img", img}, io.Discard, io.Discard); code != 2 {
		t.Errorf("missing input: exit %d, want 2", code)
	}
}
