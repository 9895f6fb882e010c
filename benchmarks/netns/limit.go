package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/strait-mesh/strait/internal/meshtest"
)

// limitBatch is how many connections one "try" command attempts; the
// worker runs limitParallel of them at a time.
const (
	limitBatch    = 1000
	limitParallel = 16
	// limitDeadline bounds one attempt (connect, one-byte write, echo
	// read): a refusal must arrive well within it, a hang hits it.
	limitDeadline = 2 * time.Second
	// Memory is bounded when, over the refused attempts, node-a's live
	// heap (after a forced GC) grows by at most limitLiveMiB (about 400 B
	// per refusal at 5000) and its RSS by at most limitRSSFrac of the RSS
	// at the limit (a one-time step: the GC lets garbage grow to its heap
	// goal before collecting, and Go returns freed memory to the OS only
	// slowly), but never less than limitRSSFloorMiB, since at small
	// scales (-quick) that one-time step is a larger share.
	limitLiveMiB     = 2.0 // about 400 B per refusal at 5000; above GC noise at -quick scale
	limitRSSFrac     = 0.10
	limitRSSFloorMiB = 4.0
)

// limit proves "connections at the limit are refused cleanly and memory
// stays bounded": a third topology of the same shape whose node-a
// ztunnel runs with -max-conns LimitMax; the client pod attempts
// LimitTries connections through it, in batches, holding the accepted
// ones. Recorded (scenario "limit", system "strait", proc ztunnel-node-a
// where per-process): accepted and refused counts, the refusal latency,
// the ztunnel's connection_limit counter, RSS idle / at the limit / after
// the refused attempts / after closing everything, goroutines, and
// whether the held connections still echo after the refusals.
func (b *bench) limit(bin string) error {
	const sc = "limit"
	ctx := b.ctx
	maxConns, tries := b.set.LimitMax, b.set.LimitTries
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && uint64(maxConns)+1000 > rl.Cur {
		b.note("skipping the limit scenario: %d held connections need more than the open files limit %d", maxConns, rl.Cur)
		return nil
	}
	t, err := b.env.build(sc)
	if err != nil {
		return fmt.Errorf("limit topology: %w", err)
	}
	s := &system{name: sc, topo: t, client: t.Pod("client"), server: t.Pod("server")}
	s.dst = s.server.IP
	if err := b.startServers(s, false); err != nil {
		return fmt.Errorf("limit servers: %w", err)
	}
	zts, err := b.env.startMesh(ctx, t, bin, b.set.ZtunnelLog, "limit-",
		map[string][]string{"node-a": {"-max-conns", strconv.Itoa(maxConns)}})
	if err != nil {
		return err
	}
	s.zts = zts
	za := zts[0]
	if za.node.Name != "node-a" {
		return fmt.Errorf("limit: first ztunnel is on %s, want node-a", za.node.Name)
	}
	b.log("limit  topology: client %s (netns %s) → server %s; ztunnel node-a pid %d with -max-conns %d (open files %s), node-b pid %d",
		s.client.IP, s.client.NS, s.server.IP, za.pid(), maxConns, procNoFile(za.pid()), zts[1].pid())

	rec := func(metric string, v float64) { b.rec.add(1, sc, sysStrait, metric, "", v) }
	recZ := func(metric string, v float64) { b.rec.add(1, sc, sysStrait, metric, za.name(), v) }
	snap := func(label string) (rssMiB float64, g int, err error) {
		kib, err := procRSSKiB(za.pid())
		if err != nil {
			return 0, 0, err
		}
		g = b.goroutines(za)
		rssMiB = float64(kib) / 1024
		b.log("limit  %-24s %s RSS %.1f MiB, %d fds, %d goroutines", label, za.name(), rssMiB, procFDs(za.pid()), g)
		return rssMiB, g, nil
	}

	// Idle, after enrollment.
	sleep(ctx, 2*time.Second)
	rssIdle, gIdle, err := snap("idle")
	if err != nil {
		return err
	}
	recZ("rss_mib_idle", rssIdle)
	recZ("goroutines_idle", float64(gIdle))
	counter0, err := b.limitCounter(za)
	if err != nil {
		return err
	}

	pr, pw := io.Pipe()
	var outBuf safeLines
	p, err := b.env.start("limit-hold", s.client.NS, pr, &outBuf, b.env.self, "worker", "hold",
		"-addr", fmt.Sprintf("%s:%d", s.server.IP, echoPort), "-parallel", strconv.Itoa(limitParallel),
		"-try-deadline", limitDeadline.String())
	if err != nil {
		return err
	}
	closed := false
	closeHold := func() {
		if closed {
			return
		}
		closed = true
		fmt.Fprintln(pw, "close")
		pw.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
		}
	}
	defer closeHold()
	ask := func(cmd string, v any) error {
		fmt.Fprintln(pw, cmd)
		line, err := outBuf.wait(ctx, p, 120*time.Second)
		if err != nil {
			return fmt.Errorf("limit %s: %w (log: %s)", cmd, err, tail(p.log.Name()))
		}
		j, ok := strings.CutPrefix(line, "ok ")
		if !ok {
			return fmt.Errorf("limit %s: %s", cmd, line)
		}
		return json.Unmarshal([]byte(j), v)
	}

	// Attempts in batches: up to the limit, then beyond it.
	var total tryResult
	var refuseMS, acceptMS []float64
	var rssLimit, rssFirst, liveLimit float64
	var gLimit, firstN int
	t0 := time.Now()
	for done := 0; done < tries; {
		n := min(limitBatch, tries-done)
		if done < maxConns {
			n = min(n, maxConns-done) // the first phase stops exactly at the limit
		}
		var r tryResult
		if err := ask(fmt.Sprintf("try %d", n), &r); err != nil {
			return err
		}
		done += n
		total.Attempts += r.Attempts
		total.Accepted += r.Accepted
		total.Reset += r.Reset
		total.EOF += r.EOF
		total.ConnRefuse += r.ConnRefuse
		total.Timeout += r.Timeout
		total.Other += r.Other
		if total.FirstOther == "" {
			total.FirstOther = r.FirstOther
		}
		refuseMS = append(refuseMS, r.RefuseMS...)
		acceptMS = append(acceptMS, r.AcceptMS...)
		kib, _ := procRSSKiB(za.pid())
		b.log("limit  tried %5d/%d: +%d accepted, +%d reset, +%d EOF, +%d conn refused, +%d timed out, +%d other; held %d (%.1fs; %s RSS %.1f MiB)",
			done, tries, r.Accepted, r.Reset, r.EOF, r.ConnRefuse, r.Timeout, r.Other, r.Held, r.Seconds, za.name(), float64(kib)/1024)
		if err := b.checkAlive(s); err != nil {
			return err
		}
		if done == maxConns {
			sleep(ctx, 3*time.Second) // let the proxy settle, as in the idle scenario
			if rssLimit, gLimit, err = snap(fmt.Sprintf("at the limit (%d held)", r.Held)); err != nil {
				return err
			}
			b.memStats(za, 1, sc+"_at_limit")
			liveLimit = b.liveHeapMiB(za)
		}
		if done > maxConns && rssFirst == 0 {
			rssFirst, firstN = float64(kib)/1024, done-maxConns
		}
	}
	elapsed := time.Since(t0)
	sleep(ctx, 3*time.Second)
	rssAfter, gAfter, err := snap(fmt.Sprintf("after %d attempts", tries))
	if err != nil {
		return err
	}
	b.memStats(za, 1, sc+"_after_refusals")
	liveAfter := b.liveHeapMiB(za)
	counter1, err := b.limitCounter(za)
	if err != nil {
		return err
	}
	var chk checkResult
	if err := ask("check", &chk); err != nil {
		return err
	}
	b.log("limit  held connections echo after the refusals: %d ok, %d failed %s", chk.OK, chk.Failed, chk.FirstError)

	// Close everything and wait for node-a to return near idle.
	closeHold()
	var rssClosed float64
	var gClosed int
	for i := 0; i < 20; i++ { // up to 10 s for the goroutines to go
		sleep(ctx, 500*time.Millisecond)
		if gClosed = b.goroutines(za); gClosed >= 0 && gClosed <= gIdle+5 {
			break
		}
	}
	sleep(ctx, 2*time.Second)
	if rssClosed, gClosed, err = snap("after closing all"); err != nil {
		return err
	}
	b.memStats(za, 1, sc+"_after_close")
	liveClosed := b.liveHeapMiB(za)
	if gClosed > gIdle+5 {
		b.goroutineDump(za, "limit-after-close")
	}

	refused := total.Reset + total.EOF + total.ConnRefuse
	slices.Sort(refuseMS)
	slices.Sort(acceptMS)
	growth := rssAfter - rssLimit
	rec("attempts", float64(total.Attempts))
	rec("accepted", float64(total.Accepted))
	rec("refused", float64(refused))
	rec("refused_reset", float64(total.Reset))
	rec("refused_eof", float64(total.EOF))
	rec("refused_connect", float64(total.ConnRefuse))
	rec("hung", float64(total.Timeout))
	rec("other_errors", float64(total.Other))
	rec("refuse_p50_ms", pct(refuseMS, 50))
	rec("refuse_p99_ms", pct(refuseMS, 99))
	rec("refuse_max_ms", pct(refuseMS, 100))
	rec("accept_p50_ms", pct(acceptMS, 50))
	rec("accept_p99_ms", pct(acceptMS, 99))
	rec("attempt_seconds", elapsed.Seconds())
	rec("held_echo_ok", float64(chk.OK))
	rec("held_echo_failed", float64(chk.Failed))
	recZ("limit_counter", counter1-counter0)
	recZ("rss_mib_at_limit", rssLimit)
	recZ("rss_mib_after_refusals", rssAfter)
	recZ("rss_growth_mib", growth)
	recZ("rss_mib_after_close", rssClosed)
	if later := tries - maxConns - firstN; later > 0 { // none in -quick runs (one batch)
		recZ("rss_kib_per_refusal_after_first_batch", (rssAfter-rssFirst)*1024/float64(later))
	}
	recZ("heap_live_mib_at_limit", liveLimit)
	recZ("heap_live_mib_after_refusals", liveAfter)
	recZ("heap_live_mib_after_close", liveClosed)
	recZ("goroutines_at_limit", float64(gLimit))
	recZ("goroutines_after_refusals", float64(gAfter))
	recZ("goroutines_after_close", float64(gClosed))
	if total.Timeout+total.Other > 0 {
		b.note("limit: %d attempts hung until the %v deadline and %d failed otherwise (first: %s)", total.Timeout, limitDeadline, total.Other, total.FirstOther)
	}

	beyond := tries - maxConns
	rssMax := max(limitRSSFrac*rssLimit, limitRSSFloorMiB)
	bounded := liveAfter-liveLimit <= limitLiveMiB && growth <= rssMax
	pass := total.Accepted == maxConns && refused == beyond && total.Timeout == 0 && total.Other == 0 &&
		int(counter1-counter0) == beyond && chk.OK == maxConns && chk.Failed == 0 && bounded
	recZ("memory_bounded", b2f(bounded))
	rec("pass", b2f(pass))
	verdict := "PASS"
	if !pass {
		verdict = "FAIL"
		b.note("limit: FAIL: accepted %d (want %d), refused %d (want %d), hung %d, other %d, counter +%.0f, held echo %d/%d, live heap %+.2f MiB (max +%.1f), RSS %+.2f MiB (max +%.1f)",
			total.Accepted, maxConns, refused, beyond, total.Timeout, total.Other, counter1-counter0, chk.OK, maxConns,
			liveAfter-liveLimit, limitLiveMiB, growth, rssMax)
	}
	b.log("limit  %s: %d attempts, %d accepted, %d refused (%d reset, %d EOF, %d connect refused), %d hung, %d other; "+
		"refusal p50 %.2f p99 %.2f max %.2f ms; connection_limit counter +%.0f; %s RSS idle %.1f → at limit %.1f → after refusals %.1f MiB (%+.2f MiB; %+.2f MiB after the first %d refused) → closed %.1f MiB; live heap %.1f → %.1f → %.1f MiB; goroutines %d → %d → %d → %d",
		verdict, total.Attempts, total.Accepted, refused, total.Reset, total.EOF, total.ConnRefuse, total.Timeout, total.Other,
		pct(refuseMS, 50), pct(refuseMS, 99), pct(refuseMS, 100), counter1-counter0, za.name(),
		rssIdle, rssLimit, rssAfter, growth, rssAfter-rssFirst, firstN, rssClosed, liveLimit, liveAfter, liveClosed, gIdle, gLimit, gAfter, gClosed)
	return nil
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// pct is the p-th percentile (nearest rank) of sorted values, NaN if none.
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// limitCounter reads strait_connection_failures_total{direction="outbound",
// reason="connection_limit"} from a ztunnel's metrics (0 before the first
// refusal, when the series does not exist yet).
func (b *bench) limitCounter(z *ztunnel) (float64, error) {
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15020", "/metrics", 10*time.Second)
	if err == nil && code != 200 {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err != nil {
		return 0, fmt.Errorf("%s metrics: %w", z.name(), err)
	}
	return parseLimitCounter(string(body)), nil
}

func parseLimitCounter(metrics string) float64 {
	var v float64
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, "strait_connection_failures_total{") ||
			!strings.Contains(line, `direction="outbound"`) || !strings.Contains(line, `reason="connection_limit"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if f, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64); err == nil {
			v += f
		}
	}
	return v
}

// procNoFile is the open-files soft/hard limit of pid, from /proc.
func procNoFile(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			if len(f) >= 5 {
				return f[3] + "/" + f[4]
			}
		}
	}
	return "?"
}

// liveHeapMiB forces a GC in a ztunnel (through its heap profile
// endpoint) and returns its heap in use afterwards, in MiB: the live
// heap, which RSS hides behind garbage and memory not yet returned to
// the OS. NaN on error.
func (b *bench) liveHeapMiB(z *ztunnel) float64 {
	if _, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15000", "/debug/pprof/heap?gc=1", 30*time.Second); err != nil || code != 200 {
		return math.NaN()
	}
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15020", "/metrics", 10*time.Second)
	if err != nil || code != 200 {
		return math.NaN()
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return f / (1 << 20)
			}
		}
	}
	return math.NaN()
}

// goroutineDump saves a ztunnel's goroutine profile (debug=1) next to
// the other profiles, to see what did not go away.
func (b *bench) goroutineDump(z *ztunnel, label string) {
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15000", "/debug/pprof/goroutine?debug=1", 10*time.Second)
	if err == nil && code != 200 {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err == nil {
		err = b.ensureOutDir()
	}
	if err != nil {
		b.note("goroutine dump of %s: %v", z.name(), err)
		return
	}
	f := filepath.Join(b.outDir, fmt.Sprintf("%s-%s-goroutines.txt", label, z.node.Name))
	if err := os.WriteFile(f, body, 0o644); err != nil {
		b.note("goroutine dump of %s: %v", z.name(), err)
		return
	}
	b.profs[label+"-goroutines/"+z.node.Name] = f
	b.log("limit  goroutines of %s not back to idle: dump → %s", z.name(), f)
}
