package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Colors are fixed per system so every plot reads the same; unknown
// systems take the extra colors in display order.
var (
	fixedColors = map[string]string{
		"direct":      "#7f7f7f",
		"strait":      "#1f77b4",
		"strait-quic": "#17becf",
		"haproxy":     "#ff7f0e",
		"stunnel":     "#2ca02c",
		"istio-go":    "#9467bd",
	}
	extraColors = []string{"#d62728", "#8c564b", "#e377c2", "#bcbd22"}
)

// plot is one SVG file and where the doc shows it.
type plot struct {
	after string // scenario whose section shows it
	file  string // file name in the image directory
	alt   string
	svg   []byte
}

// makePlots builds every plot the data allows, in doc order.
func makePlots(m *model) []plot {
	var out []plot
	used := map[string]bool{}
	name := func(base string) string {
		base = sanitize(base)
		n := base + ".svg"
		for i := 2; used[n]; i++ {
			n = base + "-" + strconv.Itoa(i) + ".svg"
		}
		used[n] = true
		return n
	}
	for _, sc := range m.scenarios {
		if svg := latencyPlot(m, sc); svg != nil {
			out = append(out, plot{after: sc, file: name(sc), alt: sc + ": latency by percentile", svg: svg})
		}
	}
	bars := []struct {
		file, title string
		panels      []barPanel
	}{
		{"throughput", "Throughput (iperf3): Gbit/s received", []barPanel{
			{ylabel: "Gbit/s", metric: "gbit_per_s", scenarios: []string{"throughput-1", "throughput-8"}},
		}},
		{"churn", "Connection churn: new connections per second", []barPanel{
			{ylabel: "connections/s", metric: "conns_per_s", scenarios: []string{"churn"}},
		}},
		{"memory", "Memory of the proxies", []barPanel{
			{ylabel: "RSS per idle connection (KiB)", metric: "rss_kib_per_conn", scenarios: []string{"idle-5k", "idle-10k"}},
			{ylabel: "idle RSS (MiB)", metric: "rss_mib", scenarios: []string{"idle"}},
		}},
	}
	for _, bc := range bars {
		svg, after := barPlot(m, bc.title, bc.panels)
		if svg != nil {
			out = append(out, plot{after: after, file: name(bc.file), alt: bc.title, svg: svg})
		}
	}
	// Keep the doc order: plots of one section in the order made above,
	// sections in scenario order.
	rank := map[string]int{}
	for i, sc := range m.scenarios {
		rank[sc] = i
	}
	slices.SortStableFunc(out, func(a, b plot) int { return rank[a.after] - rank[b.after] })
	return out
}

// sanitize keeps a file name to [A-Za-z0-9._-], not starting with a dot.
func sanitize(s string) string {
	var b strings.Builder
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b.WriteRune(c)
		default:
			b.WriteByte('_')
		}
	}
	n := b.String()
	if n == "" || n[0] == '.' {
		n = "_" + n
	}
	return n
}

// Canvas and plot area.
const (
	svgW, svgH  = 640, 400
	plotLeft    = 64.0
	plotRight   = 512.0 // the legend is to the right
	plotTop     = 56.0
	plotBottom  = 336.0
	legendX     = 526.0
	tickFont    = 11
	gridColor   = "#e6e6e6"
	axisColor   = "#333333"
	legendStep  = 20.0
	xLabelY     = svgH - 16.0
	groupLabelY = plotBottom + 18.0
)

// canvas writes an SVG document.
type canvas struct{ b bytes.Buffer }

func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 1, 64)
	if s == "-0.0" {
		s = "0.0"
	}
	return s
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s)) // a bytes.Buffer does not fail
	return b.String()
}

func newCanvas(title string) *canvas {
	c := &canvas{}
	fmt.Fprintf(&c.b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"+
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
		svgW, svgH, svgW, svgH)
	fmt.Fprintf(&c.b, "<title>%s</title>\n", esc(title))
	fmt.Fprintf(&c.b, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", svgW, svgH)
	c.text(svgW/2, 26, "middle", title, `font-size="15" font-weight="bold"`)
	return c
}

func (c *canvas) text(x, y float64, anchor, s, attrs string) {
	if attrs != "" {
		attrs = " " + attrs
	}
	fmt.Fprintf(&c.b, "<text x=\"%s\" y=\"%s\" text-anchor=\"%s\"%s>%s</text>\n", num(x), num(y), anchor, attrs, esc(s))
}

func (c *canvas) line(x1, y1, x2, y2 float64, stroke string, width float64) {
	fmt.Fprintf(&c.b, "<line x1=\"%s\" y1=\"%s\" x2=\"%s\" y2=\"%s\" stroke=\"%s\" stroke-width=\"%s\"/>\n",
		num(x1), num(y1), num(x2), num(y2), stroke, num(width))
}

func (c *canvas) rect(x, y, w, h float64, fill, attrs string) {
	if attrs != "" {
		attrs = " " + attrs
	}
	fmt.Fprintf(&c.b, "<rect x=\"%s\" y=\"%s\" width=\"%s\" height=\"%s\" fill=\"%s\"%s/>\n", num(x), num(y), num(w), num(h), fill, attrs)
}

func (c *canvas) bytes() []byte {
	c.b.WriteString("</svg>\n")
	return c.b.Bytes()
}

// yAxis draws horizontal grid lines with tick labels from x0 to x1 and
// a rotated axis label, and returns the value → pixel mapping.
func (c *canvas) yAxis(x0, x1 float64, ticks []float64, label string) func(float64) float64 {
	lo, hi := ticks[0], ticks[len(ticks)-1]
	y := func(v float64) float64 { return plotBottom - (v-lo)/(hi-lo)*(plotBottom-plotTop) }
	for _, t := range ticks {
		c.line(x0, y(t), x1, y(t), gridColor, 1)
		c.text(x0-6, y(t)+4, "end", fmtNum(t), fmt.Sprintf(`font-size="%d"`, tickFont))
	}
	c.line(x0, plotTop, x0, plotBottom, axisColor, 1)
	ym := (plotTop + plotBottom) / 2
	c.text(x0-48, ym, "middle", label, fmt.Sprintf(`transform="rotate(-90 %s %s)"`, num(x0-48), num(ym)))
	return y
}

// niceTicks returns about five evenly spaced round values (steps of 1, 2
// or 5 times a power of ten) covering [lo, hi].
func niceTicks(lo, hi float64) []float64 {
	if !(hi > lo) {
		hi = lo + 1
	}
	raw := (hi - lo) / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, f := range []float64{1, 2, 5} {
		if f*mag >= raw*(1-1e-9) {
			step = f * mag
			break
		}
	}
	start := math.Floor(lo/step+1e-9) * step
	n := int(math.Ceil((hi-start)/step - 1e-9))
	ticks := make([]float64, 0, n+1)
	for i := 0; i <= n; i++ {
		ticks = append(ticks, start+float64(i)*step)
	}
	return ticks
}

// nines maps a percentile to the "nines" axis: 0 → 0, 90 → 1, 99 → 2,
// 99.9 → 3.
func nines(p float64) float64 { return -math.Log10(1 - p/100) }

// ninesLabel is the percentile at k nines: 0, 90, 99, 99.9, 99.99, ...
func ninesLabel(k int) string {
	switch k {
	case 0:
		return "0"
	case 1:
		return "90"
	case 2:
		return "99"
	}
	return "99." + strings.Repeat("9", k-2)
}

// latencyPlot draws one polyline per system: ms over percentile on the
// nines axis. It returns nil when the scenario has no distribution.
func latencyPlot(m *model, sc string) []byte {
	var systems []string
	xmax, ymax := 1.0, 0.0
	for _, s := range m.systems {
		pts := m.dists[[2]string{sc, s}]
		if len(pts) == 0 {
			continue
		}
		systems = append(systems, s)
		for _, p := range pts {
			xmax = math.Max(xmax, nines(p.Percentile))
			ymax = math.Max(ymax, p.Ms)
		}
	}
	if len(systems) == 0 {
		return nil
	}
	kmax := int(math.Ceil(xmax - 1e-9))
	c := newCanvas(sc + ": latency by percentile")
	y := c.yAxis(plotLeft, plotRight, niceTicks(0, ymax), "latency (ms)")
	x := func(v float64) float64 { return plotLeft + v/float64(kmax)*(plotRight-plotLeft) }
	type tick struct {
		v     float64
		label string
	}
	var ticks []tick
	for k := 0; k <= kmax; k++ {
		ticks = append(ticks, tick{float64(k), ninesLabel(k)})
		if k == 0 {
			ticks = append(ticks, tick{nines(50), "50"})
		}
	}
	for _, t := range ticks {
		c.line(x(t.v), plotTop, x(t.v), plotBottom, gridColor, 1)
		c.line(x(t.v), plotBottom, x(t.v), plotBottom+5, axisColor, 1)
		c.text(x(t.v), plotBottom+18, "middle", t.label, fmt.Sprintf(`font-size="%d"`, tickFont))
	}
	c.line(plotLeft, plotBottom, plotRight, plotBottom, axisColor, 1)
	c.text((plotLeft+plotRight)/2, xLabelY, "middle", "percentile (log scale of 100 − p)", "")
	for i, s := range systems {
		color := m.colors[s]
		var pts []string
		for _, p := range m.dists[[2]string{sc, s}] {
			pts = append(pts, num(x(nines(p.Percentile)))+","+num(y(p.Ms)))
		}
		fmt.Fprintf(&c.b, "<polyline data-system=\"%s\" points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
			esc(s), strings.Join(pts, " "), color)
		for _, p := range m.dists[[2]string{sc, s}] {
			fmt.Fprintf(&c.b, "<circle cx=\"%s\" cy=\"%s\" r=\"3\" fill=\"%s\"/>\n", num(x(nines(p.Percentile))), num(y(p.Ms)), color)
		}
		ly := plotTop + float64(i)*legendStep
		c.line(legendX, ly, legendX+22, ly, color, 2)
		c.text(legendX+28, ly+4, "start", s, "")
	}
	return c.bytes()
}

// barPanel is one y axis of a bar chart: a group of bars per scenario,
// a bar per system.
type barPanel struct {
	ylabel    string
	metric    string
	scenarios []string
}

// barPlot draws side-by-side panels of grouped bars. It returns nil when
// no panel has a value, and the scenario (of those with values, the last
// in display order) whose section should show it.
func barPlot(m *model, title string, panels []barPanel) ([]byte, string) {
	type group struct {
		scenario string
		vals     map[string]float64
	}
	type panel struct {
		barPanel
		groups []group
	}
	var ps []panel
	has := map[string]bool{}
	after, afterRank := "", -1
	for _, bp := range panels {
		p := panel{barPanel: bp}
		for _, sc := range bp.scenarios {
			g := group{scenario: sc, vals: map[string]float64{}}
			for _, s := range m.systems {
				if v, _, ok := m.value(sc, s, bp.metric); ok {
					g.vals[s] = v
					has[s] = true
				}
			}
			if len(g.vals) > 0 {
				p.groups = append(p.groups, g)
				if r := slices.Index(m.scenarios, sc); r > afterRank {
					after, afterRank = sc, r
				}
			}
		}
		if len(p.groups) > 0 {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil, ""
	}
	var systems []string
	for _, s := range m.systems {
		if has[s] {
			systems = append(systems, s)
		}
	}
	c := newCanvas(title)
	pw := plotRight / float64(len(ps))
	for i, p := range ps {
		x0, x1 := float64(i)*pw+plotLeft, float64(i+1)*pw-12
		lo, hi := 0.0, 0.0
		for _, g := range p.groups {
			for _, v := range g.vals {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		y := c.yAxis(x0, x1, niceTicks(lo, hi), p.ylabel)
		c.line(x0, y(0), x1, y(0), axisColor, 1)
		gw := (x1 - x0) / float64(len(p.groups))
		bw := gw * 0.8 / float64(len(systems))
		for gi, g := range p.groups {
			gx := x0 + float64(gi)*gw + gw*0.1
			for si, s := range systems {
				v, ok := g.vals[s]
				if !ok {
					continue
				}
				bx := gx + float64(si)*bw + bw*0.1
				top, bottom := y(math.Max(v, 0)), y(math.Min(v, 0))
				c.rect(bx, top, bw*0.8, bottom-top, m.colors[s], fmt.Sprintf(`data-system="%s"`, esc(s)))
				c.text(bx+bw*0.4, top-4, "middle", fmtNum(v), `font-size="10"`)
			}
			c.text(x0+(float64(gi)+0.5)*gw, groupLabelY, "middle", g.scenario, "")
		}
	}
	for i, s := range systems {
		ly := plotTop + float64(i)*legendStep
		c.rect(legendX, ly-9, 12, 12, m.colors[s], "")
		c.text(legendX+18, ly+2, "start", s, "")
	}
	return c.bytes(), after
}
