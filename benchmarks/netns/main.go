// Command netns is the benchmark harness: it measures Strait's ztunnel
// and reference systems on the same two-node network-namespace topology,
// in the same run, so that a noisy machine still gives honest ratios.
//
// Topologies of identical shape are built with internal/meshtest, one per
// system: node-a holds a client pod, node-b a server pod. Systems:
//
//   - direct: nothing enrolled, no proxy (the physical limit);
//   - strait: a ztunnel process in each node namespace, both pods
//     enrolled (redirection rules + netns handed over ZDS by the harness,
//     which plays the node agent): client → ztunnel-a → HBONE (mTLS,
//     HTTP/2 CONNECT) → ztunnel-b → server;
//   - haproxy, stunnel, istio-go: reference proxy pairs (refproxy.go),
//     pods not enrolled, the client connecting to node-a's proxy.
//
// Scenarios (JSON names), interleaved across the systems and repeated
// -rounds times, medians reported:
//
//   - latency-1000rps, latency-max: fortio, 16 connections, 1 KiB, at
//     1000 req/s and at the maximum rate; p50/p90/p99/p99.9, req/s and
//     each proxy's CPU (utime+stime from /proc) per 1000 requests;
//   - throughput-1, throughput-8: iperf3, one and eight TCP streams;
//   - churn: a new TCP connection per request (connect, 1-byte echo,
//     close with SO_LINGER 0), -conn-workers parallel loops;
//
// and once per proxied system: ready (process start → ready), idle (RSS
// with nothing open), idle-10k (RSS with 10 000 idle connections held,
// KiB per connection); and "limit", on a separate strait mesh whose
// node-a ztunnel runs with -max-conns 5000: 10 000 connection attempts,
// the ones beyond the limit refused cleanly (limit.go).
//
// Usage (root; `make build` first for bin/ztunnel):
//
//	go run ./benchmarks/netns -out benchmarks/results/latest.json   # make bench
//	go run ./benchmarks/netns -quick                                # ~1 s per scenario
//	go run ./benchmarks/netns -only limit
//
// Writing to latest.json also keeps a dated copy beside it. Everything it
// creates (namespaces, links, rules, processes, temporary files) is
// removed on exit and on Ctrl-C; a run killed with SIGKILL leaves
// namespaces named snb<letter><pid>..., which the next run deletes.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strait-mesh/strait/internal/meshtest"
)

const (
	fortioPort = 8080
	iperfPort  = 5201
	echoPort   = 9000
)

// System and scenario names, as they appear in the JSON and the report.
const (
	sysDirect = "direct"
	sysStrait = "strait"

	scReady      = "ready"           // process start → ready
	scIdle       = "idle"            // proxy RSS with no connection
	scLatency    = "latency-1000rps" // fortio, 1000 req/s, 16 connections, 1 KiB
	scLatencyMax = "latency-max"     // fortio at max rate, 16 connections, 1 KiB
	scThrough1   = "throughput-1"    // iperf3, one stream
	scThrough8   = "throughput-8"    // iperf3, eight streams
	scChurn      = "churn"           // a new TCP connection per request
	scAfterLoad  = "after-load"      // proxy RSS after the rounds
	scLimit      = "limit"           // 10 000 connections against -max-conns 5000
)

// idleScenario names the idle-connections scenario for n connections:
// "idle-10k" for 10 000, "idle-200" for 200.
func idleScenario(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("idle-%dk", n/1000)
	}
	return fmt.Sprintf("idle-%d", n)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := runWorker(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(run())
}

type settings struct {
	Quick         bool          `json:"quick"`
	Rounds        int           `json:"rounds"`
	LatencyDur    time.Duration `json:"-"`
	LatencyMaxDur time.Duration `json:"-"`
	ThroughDur    time.Duration `json:"-"`
	ConnDur       time.Duration `json:"-"`
	IdleConns     []int         `json:"idle_conns"`
	ConnWorkers   int           `json:"conn_workers"`
	Profile       bool          `json:"profile"`
	ZtunnelBin    string        `json:"ztunnel_bin"`
	ZtunnelLog    string        `json:"ztunnel_log_level"`
	FortioArgs    []string      `json:"fortio_load_args"`
	IperfArgs     []string      `json:"iperf3_client_args"`
	Only          []string      `json:"only,omitempty"`
	LimitMax      int           `json:"limit_max_conns"`
	LimitTries    int           `json:"limit_attempts"`
	Systems       []string      `json:"systems"`
}

// allSystems are the names -systems accepts.
var allSystems = append([]string{sysDirect, sysStrait}, refSystems...)

// scenarios are the names -only accepts.
var scenarios = []string{"ready", "idle", "latency", "throughput", "churn", "limit"}

// want reports whether scenario sc runs (every one without -only).
func (s *settings) want(sc string) bool {
	return len(s.Only) == 0 || slices.Contains(s.Only, sc)
}

type bench struct {
	ctx    context.Context
	start  time.Time
	env    *env
	rec    *recorder
	set    settings
	fortio string
	iperf  string
	outDir string
	notes  []string
	profs  map[string]string
}

func (b *bench) log(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	b.log("NOTE: %s", s)
}

// system is one side of the comparison.
type system struct {
	name           string
	topo           *meshtest.Topology
	client, server *meshtest.Pod
	zts            []*ztunnel  // nil in direct
	refs           []*refProxy // the reference proxies (haproxy, stunnel)
	dst            netip.Addr  // where the clients connect: the server pod, or node-a's proxy
}

// watched is a proxy process whose CPU the scenarios measure.
type watched struct {
	name, node string
	pid        int
}

// watched lists the system's proxy processes (none in direct).
func (s *system) watched() []watched {
	var ws []watched
	for _, z := range s.zts {
		ws = append(ws, watched{z.name(), z.node.Name, z.pid()})
	}
	for _, r := range s.refs {
		ws = append(ws, watched{r.name(), r.node.Name, r.p.pid()})
	}
	return ws
}

func run() (code int) {
	out := flag.String("out", "", "write JSON results to this file (e.g. benchmarks/results/netns.json)")
	quick := flag.Bool("quick", false, "smoke run (~1 min): 1 round, short runs, 200 idle connections, no profiles")
	rounds := flag.Int("rounds", 0, "rounds per scenario (default 3, 1 with -quick)")
	ztBin := flag.String("ztunnel", "bin/ztunnel", "ztunnel binary (`make build`)")
	fortioBin := flag.String("fortio", "", "fortio "+fortioVersion+" binary (default: GOPATH/bin or PATH, installed with go install if missing)")
	workers := flag.Int("conn-workers", 64, "parallel loops of the connection-rate client")
	idle := flag.String("idle-conns", "", "idle tunneled connection counts for the RSS scenario, cumulative (default 5000,10000; 200 with -quick)")
	noProfile := flag.Bool("no-profile", false, "skip the CPU profiles of the ztunnels (always skipped with -quick)")
	ztLog := flag.String("ztunnel-log-level", "info", "ztunnel -log-level")
	only := flag.String("only", "", "run only these scenarios, comma-separated: "+strings.Join(scenarios, ","))
	limitMax := flag.Int("limit-max-conns", 0, "limit scenario: node-a ztunnel -max-conns (default 5000; 200 with -quick)")
	limitTries := flag.Int("limit-attempts", 0, "limit scenario: connections attempted through it (default 10000; 400 with -quick)")
	systemsFlag := flag.String("systems", strings.Join(allSystems, ","), "systems compared (a reference system whose binary is missing is skipped with a note)")
	flag.Parse()

	b := &bench{start: time.Now(), rec: newRecorder(), profs: map[string]string{}, fortio: *fortioBin}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "benchmarks/netns: must run as root (it builds network namespaces, installs nftables rules and runs ztunnel in them); try: sudo go run ./benchmarks/netns -quick")
		return 2
	}
	set := settings{Quick: *quick, Rounds: 3, LatencyDur: 10 * time.Second, LatencyMaxDur: 5 * time.Second,
		ThroughDur: 5 * time.Second, ConnDur: 5 * time.Second,
		IdleConns: []int{5000, 10000}, ConnWorkers: *workers, Profile: !*noProfile && !*quick, ZtunnelLog: *ztLog}
	set.LimitMax, set.LimitTries = 5000, 10000
	if *quick {
		// About a second per scenario: keeps the harness working (CI).
		set.Rounds, set.LatencyDur, set.LatencyMaxDur, set.ThroughDur, set.ConnDur, set.IdleConns = 1, time.Second, time.Second, time.Second, time.Second, []int{200}
		set.LimitMax, set.LimitTries = 200, 400
	}
	if *limitMax > 0 {
		set.LimitMax = *limitMax
	}
	if *limitTries > 0 {
		set.LimitTries = *limitTries
	}
	if set.LimitTries <= set.LimitMax {
		fmt.Fprintln(os.Stderr, "benchmarks/netns: -limit-attempts must be above -limit-max-conns")
		return 2
	}
	if *only != "" {
		for _, sc := range strings.Split(*only, ",") {
			sc = strings.TrimSpace(sc)
			if !slices.Contains(scenarios, sc) {
				fmt.Fprintf(os.Stderr, "benchmarks/netns: -only: unknown scenario %q (have %s)\n", sc, strings.Join(scenarios, ","))
				return 2
			}
			set.Only = append(set.Only, sc)
		}
	}
	for _, sy := range strings.Split(*systemsFlag, ",") {
		sy = strings.TrimSpace(sy)
		if sy == "" {
			continue
		}
		if !slices.Contains(allSystems, sy) {
			fmt.Fprintf(os.Stderr, "benchmarks/netns: -systems: unknown system %q (have %s)\n", sy, strings.Join(allSystems, ","))
			return 2
		}
		if !slices.Contains(set.Systems, sy) {
			set.Systems = append(set.Systems, sy)
		}
	}
	if *rounds > 0 {
		set.Rounds = *rounds
	}
	if *idle != "" {
		set.IdleConns = nil
		for _, s := range strings.Split(*idle, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n <= 0 || (len(set.IdleConns) > 0 && n <= set.IdleConns[len(set.IdleConns)-1]) {
				fmt.Fprintln(os.Stderr, "benchmarks/netns: -idle-conns wants increasing positive counts, e.g. 1000,5000")
				return 2
			}
			set.IdleConns = append(set.IdleConns, n)
		}
	}
	bin, err := filepath.Abs(*ztBin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchmarks/netns: ztunnel binary: %v (run `make build` first, or pass -ztunnel)\n", err)
		return 2
	}
	set.ZtunnelBin = bin
	b.set = set
	if *out != "" {
		b.outDir = strings.TrimSuffix(*out, filepath.Ext(*out)) + "-profiles"
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	b.ctx = ctx

	if removed := sweepStale(); len(removed) > 0 {
		b.log("removed namespaces left by an earlier killed run: %s", strings.Join(removed, " "))
	}
	if removed := sweepStaleTmp(); len(removed) > 0 {
		b.log("removed temporary directories of earlier killed runs: %s", strings.Join(removed, " "))
	}
	e, err := newEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmarks/netns:", err)
		return 1
	}
	b.env = e
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintln(os.Stderr, "benchmarks/netns: panic:", r)
			code = 1
		}
		if err := e.close(); err != nil {
			fmt.Fprintln(os.Stderr, "benchmarks/netns: cleanup:", err)
			code = 1
		}
		if left := ourNamespaces(); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "benchmarks/netns: namespaces left behind:", strings.Join(left, " "))
			code = 1
		} else {
			b.log("cleaned up: every namespace, rule, process and temporary file of this run is gone")
		}
	}()

	rep, err := b.runAll()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "benchmarks/netns: interrupted")
		} else {
			fmt.Fprintln(os.Stderr, "benchmarks/netns:", err)
		}
		return 1
	}
	if *out != "" {
		rep.Command = "go run ./benchmarks/netns " + strings.Join(os.Args[1:], " ")
		if err := writeReport(*out, rep); err != nil {
			fmt.Fprintln(os.Stderr, "benchmarks/netns:", err)
			return 1
		}
		b.log("wrote %s", *out)
		if filepath.Base(*out) == "latest.json" {
			dated := filepath.Join(filepath.Dir(*out), fmt.Sprintf("%s-%s.json", b.start.UTC().Format("2006-01-02T1504Z"), gitShort()))
			if err := writeReport(dated, rep); err != nil {
				fmt.Fprintln(os.Stderr, "benchmarks/netns:", err)
				return 1
			}
			b.log("wrote %s", dated)
		}
	}
	return 0
}

func (b *bench) runAll() (*Report, error) {
	ctx := b.ctx
	// Raise the open-files soft limit to the hard limit; children inherit it.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		b.log("open files limit %d", rl.Cur)
		var keep []int
		for _, n := range b.set.IdleConns {
			if uint64(n)+1000 > rl.Cur {
				b.note("skipping %d idle connections: the open files limit is %d", n, rl.Cur)
				continue
			}
			keep = append(keep, n)
		}
		b.set.IdleConns = keep
	}
	// The main mesh (and its servers, which need fortio and iperf3) only
	// when a scenario other than limit runs; direct only with the rounds.
	rounds := b.set.want("latency") || b.set.want("throughput") || b.set.want("churn")
	mainMesh := rounds || b.set.want("idle") || b.set.want("ready")
	var err error
	if mainMesh {
		if b.fortio, err = ensureFortio(ctx, b.fortio, b.log); err != nil {
			return nil, err
		}
		if b.iperf, err = ensureIperf3(ctx, b.log); err != nil {
			return nil, err
		}
	}
	machine := b.machineFacts()
	for _, k := range []string{"cpu", "vcpus", "kernel", "go", "fortio", "iperf3", "git"} {
		b.log("%-7s %s", k, machine[k])
	}
	// Run a private copy: a concurrent `make build` must not swap the
	// binary between the two nodes or under the profiles.
	ztCopy := filepath.Join(b.env.dir, "ztunnel")
	if err := copyFile(b.set.ZtunnelBin, ztCopy); err != nil {
		return nil, err
	}
	machine["ztunnel_sha256"] = fileSHA(ztCopy)

	if mainMesh {
		if err := b.runMain(machine, ztCopy, rounds); err != nil {
			return nil, err
		}
	}
	if b.set.want("limit") {
		if err := b.limit(ztCopy); err != nil {
			return nil, err
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	b.rec.printTable(os.Stdout)
	for _, n := range b.notes {
		fmt.Println("note:", n)
	}
	machine["loadavg_end"] = readTrim("/proc/loadavg")
	return &Report{
		Started: b.start.UTC().Format(time.RFC3339), Seconds: time.Since(b.start).Seconds(), Quick: b.set.Quick,
		Host: machine, Systems: b.rec.systems(), Settings: b.settingsMap(), Rows: b.rec.rows(), Samples: b.rec.samples,
		Distributions: b.rec.distributions(), Notes: b.notes, Profiles: b.profs,
	}, nil
}

// runMain runs every scenario but limit on the direct, strait and
// reference topologies.
func (b *bench) runMain(machine map[string]string, ztCopy string, rounds bool) error {
	ctx := b.ctx
	// Topologies of the same shape; all addresses live in their own
	// namespaces, so every system can use 10.201.x.y.
	names := []string{sysStrait}
	if rounds {
		names = []string{sysDirect, sysStrait}
	}
	var direct, mesh *system
	for _, name := range names {
		t, err := b.env.build(name)
		if err != nil {
			return fmt.Errorf("%s topology: %w", name, err)
		}
		s := &system{name: name, topo: t, client: t.Pod("client"), server: t.Pod("server")}
		s.dst = s.server.IP
		if err := b.startServers(s, true); err != nil {
			return fmt.Errorf("%s servers: %w", name, err)
		}
		if name == sysDirect {
			direct = s
		} else {
			mesh = s
		}
		b.log("%-8s topology: client %s (netns %s, node-a) → server %s (netns %s, node-b)", name, s.client.IP, s.client.NS, s.server.IP, s.server.NS)
	}
	b.set.FortioArgs = b.fortioArgs(mesh, b.set.LatencyDur, 1000, "OUT.json")
	b.set.IperfArgs = b.iperfArgs(mesh, b.set.ThroughDur, 1)
	zts, err := b.env.startMesh(ctx, mesh.topo, ztCopy, b.set.ZtunnelLog, "", nil)
	if err != nil {
		return err
	}
	mesh.zts = zts
	for _, z := range zts {
		b.log("%-8s ztunnel %s pid %d, client and server pods enrolled", sysStrait, z.node.Name, z.pid())
	}
	machine["redirect_backend"] = b.env.agnts[0].Backend().Kind().String()
	refs, err := b.startRefs(machine)
	if err != nil {
		return err
	}
	proxied := append([]*system{mesh}, refs...)
	if !slices.Contains(b.set.Systems, sysStrait) {
		proxied = refs
	}

	// 1. Time to ready, RSS idle, then with idle connections held.
	for _, s := range proxied {
		b.recordReady(s)
	}
	sleep(ctx, 2*time.Second)
	idle := map[string]int64{}
	for _, s := range proxied {
		for _, w := range s.watched() {
			rss, err := procRSSKiB(w.pid)
			if err != nil {
				return err
			}
			idle[w.name] = rss
			b.rec.add(1, scIdle, s.name, "rss_mib", w.name, float64(rss)/1024)
			b.log("%-8s idle                 %s pid %d RSS %.1f MiB, %d fds", s.name, w.name, w.pid, float64(rss)/1024, procFDs(w.pid))
		}
		for _, z := range s.zts {
			b.rec.add(1, scIdle, s.name, "goroutines", z.name(), float64(b.goroutines(z)))
			b.memStats(z, 1, scIdle)
		}
	}
	if b.set.want("idle") {
		for _, s := range proxied {
			if err := b.idleConns(s, idle); err != nil {
				if s.name == sysStrait {
					return err
				}
				b.note("%s: idle connections: %v", s.name, err)
			}
		}
	}
	if !rounds {
		return nil
	}
	var all []*system
	if slices.Contains(b.set.Systems, sysDirect) {
		all = append(all, direct)
	}
	all = append(all, proxied...)
	if len(all) == 0 {
		return errors.New("-systems: no system left to measure")
	}
	checkAll := func() error {
		for _, s := range append([]*system{mesh}, refs...) {
			if err := b.checkAlive(s); err != nil {
				return err
			}
		}
		return nil
	}

	// 2. Warm-up (not recorded): connections, pools, certificates, caches.
	for _, s := range all {
		if _, err := b.fortioRun(s, time.Second, 1000); err != nil {
			return fmt.Errorf("%s warm-up: %w", s.name, err)
		}
	}
	b.log("warm-up done (1 s of fortio load on each system)")

	// 3. Rounds, interleaved; the order rotates every round so drift in
	// the machine's load does not favour one system.
	var scs []func(int, *system) error
	for _, sc := range []struct {
		name string
		run  func(int, *system) error
	}{{"latency", b.latency}, {"throughput", b.throughput}, {"churn", b.connRate}} {
		if b.set.want(sc.name) {
			scs = append(scs, sc.run)
		}
	}
	for r := 1; r <= b.set.Rounds; r++ {
		k := (r - 1) % len(all)
		order := append(append([]*system(nil), all[k:]...), all[:k]...)
		for _, sc := range scs {
			for _, s := range order {
				if err := sc(r, s); err != nil {
					return err
				}
				if err := checkAll(); err != nil {
					return err
				}
				sleep(ctx, 500*time.Millisecond)
			}
		}
	}
	for _, s := range proxied {
		for _, w := range s.watched() {
			rss, _ := procRSSKiB(w.pid)
			b.rec.add(1, scAfterLoad, s.name, "rss_mib", w.name, float64(rss)/1024)
			b.log("%-8s after load           %s RSS %.1f MiB", s.name, w.name, float64(rss)/1024)
		}
	}

	// 4. CPU profiles of both ztunnels under each load (separate runs, not
	// recorded, so profiling never skews the numbers above).
	if b.set.Profile {
		if err := b.profiles(mesh); err != nil {
			b.note("profiles failed: %v", err)
		}
	}
	return ctx.Err()
}

// recordReady records each proxy's time from process start to ready.
func (b *bench) recordReady(s *system) {
	type named struct {
		name string
		w    *upWatch
	}
	var ws []named
	for _, z := range s.zts {
		ws = append(ws, named{z.name(), z.ready})
	}
	for _, r := range s.refs {
		ws = append(ws, named{r.name(), r.ready})
	}
	for _, n := range ws {
		if n.w == nil {
			continue
		}
		d, err := n.w.wait()
		if err != nil {
			b.note("%s: %v", n.name, err)
			continue
		}
		b.rec.add(1, scReady, s.name, "ready_ms", n.name, float64(d.Microseconds())/1000)
		b.log("%-8s ready                %s %.1f ms after start", s.name, n.name, float64(d.Microseconds())/1000)
	}
}

func (z *ztunnel) name() string { return "ztunnel-" + z.node.Name }
func (z *ztunnel) pid() int     { return z.p.pid() }

func (b *bench) checkAlive(s *system) error {
	for _, z := range s.zts {
		if z.p.exited() {
			return fmt.Errorf("%s exited: %v (log: %s)", z.name(), z.p.err, tail(z.p.log.Name()))
		}
	}
	for _, r := range s.refs {
		if r.p.exited() {
			return fmt.Errorf("%s exited: %v (log: %s)", r.name(), r.p.err, tail(r.p.log.Name()))
		}
	}
	return nil
}

func (b *bench) settingsMap() map[string]any {
	var m map[string]any
	j, _ := json.Marshal(b.set)
	json.Unmarshal(j, &m)
	m["latency_seconds"] = b.set.LatencyDur.Seconds()
	m["latency_max_seconds"] = b.set.LatencyMaxDur.Seconds()
	m["throughput_seconds"] = b.set.ThroughDur.Seconds()
	m["churn_seconds"] = b.set.ConnDur.Seconds()
	return m
}

// startServers runs the echo server and, if full, fortio server and
// iperf3 -s in the server pod and waits until they accept connections
// (from inside the pod, before any redirection is installed).
func (b *bench) startServers(s *system, full bool) error {
	srv := s.server
	pre := s.name + "-"
	ports := []int{echoPort}
	if full {
		if _, err := b.env.start(pre+"fortio-server", srv.NS, nil, nil, b.fortio, "server",
			"-http-port", strconv.Itoa(fortioPort), "-grpc-port", "disabled", "-redirect-port", "disabled",
			"-ui-path", "", "-loglevel", "warning"); err != nil {
			return err
		}
		if _, err := b.env.start(pre+"iperf3-server", srv.NS, nil, nil, b.iperf, "-s", "-p", strconv.Itoa(iperfPort)); err != nil {
			return err
		}
		ports = append(ports, fortioPort, iperfPort)
	}
	if _, err := b.env.start(pre+"echo-server", srv.NS, nil, nil, b.env.self, "worker", "echo-server", "-addr", fmt.Sprintf(":%d", echoPort)); err != nil {
		return err
	}
	for _, port := range ports {
		if err := meshtest.WaitTCP(b.ctx, srv.NS, fmt.Sprintf("%s:%d", srv.IP, port)); err != nil {
			return fmt.Errorf("server port %d: %w", port, err)
		}
	}
	return nil
}

// runIn runs a client program inside a namespace and returns its stdout.
func (b *bench) runIn(ns string, stdout io.Writer, args ...string) error {
	cmd := exec.CommandContext(b.ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		return fmt.Errorf("%s: %w: %s", filepath.Base(args[0]), err, lastLines([]byte(stderr.String()), 3))
	}
	return nil
}

// distPercentiles are the latency percentiles fortio reports: the four
// of the tables plus enough points to draw the distribution.
var distPercentiles = []float64{10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99}

// fortioArgs is a fortio load of 16 connections with 1 KiB payloads at
// qps requests per second (0: as fast as it can).
func (b *bench) fortioArgs(s *system, d time.Duration, qps int, jsonPath string) []string {
	ps := make([]string, len(distPercentiles))
	for i, p := range distPercentiles {
		ps[i] = strconv.FormatFloat(p, 'f', -1, 64)
	}
	return []string{"load", "-qps", strconv.Itoa(qps), "-c", "16", "-t", d.String(), "-payload-size", "1024",
		"-r", "0.00001", "-p", strings.Join(ps, ","), "-loglevel", "warning", "-json", jsonPath,
		fmt.Sprintf("http://%s:%d/echo", s.dst, fortioPort)}
}

// iperfArgs is an iperf3 client run of `streams` parallel TCP streams.
func (b *bench) iperfArgs(s *system, d time.Duration, streams int) []string {
	return []string{"-c", s.dst.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(max(1, int(d.Seconds()))),
		"-P", strconv.Itoa(streams), "-J"}
}

func (b *bench) fortioRun(s *system, d time.Duration, qps int) (*fortioResult, error) {
	f, err := os.CreateTemp(b.env.dir, "fortio-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := b.runIn(s.client.NS, io.Discard, append([]string{b.fortio}, b.fortioArgs(s, d, qps, f.Name())...)...); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(f.Name())
	if err != nil {
		return nil, err
	}
	r, err := parseFortio(raw)
	if err != nil {
		return nil, err
	}
	if bad := r.DurationHistogram.Count - r.ok(); bad > 0 {
		return r, fmt.Errorf("fortio: %d of %d requests failed: %v", bad, r.DurationHistogram.Count, r.RetCodes)
	}
	return r, nil
}

// cpuWatch reads the ztunnels' CPU ticks at the start and the end of a
// sample, and how much CPU the rest of the machine used meanwhile.
type cpuWatch struct {
	b     *bench
	zts   []watched
	t0    time.Time
	ticks []int64
	busy  int64 // machine busy ticks
	steal int64
	ours  int64 // this harness, its waited-for children, its live children
}

func (b *bench) watchCPU(zts []watched) *cpuWatch {
	w := &cpuWatch{b: b, zts: zts}
	w.busy, w.steal, _ = machineCPU()
	w.ours = b.ourTicks()
	w.t0 = time.Now()
	for _, z := range zts {
		t, _ := procCPU(z.pid)
		w.ticks = append(w.ticks, t)
	}
	return w
}

// ourTicks is the CPU of every process of the benchmark: the harness
// with the clients it waited for, and the live servers and proxies.
func (b *bench) ourTicks() int64 {
	t, _ := procCPUWithChildren(os.Getpid())
	b.env.mu.Lock()
	defer b.env.mu.Unlock()
	for _, p := range b.env.procs {
		if !p.exited() {
			c, _ := procCPU(p.pid())
			t += c
		}
	}
	return t
}

// stop returns, per ztunnel, CPU seconds used and the wall seconds, and
// records the whole machine's busy CPU (busy_vcpu), the part of it used
// outside the benchmark (other_vcpu: other processes plus kernel work not
// charged to a benchmark process, e.g. softirq on an idle CPU) and the
// hypervisor's steal, all in vCPU.
func (w *cpuWatch) stop(round int, scenario, system string) (cpu []float64, wall, other float64) {
	wall = time.Since(w.t0).Seconds()
	for i, z := range w.zts {
		t, _ := procCPU(z.pid)
		cpu = append(cpu, float64(t-w.ticks[i])/clockTicks)
	}
	busy, steal, _ := machineCPU()
	ours := w.b.ourTicks()
	other = max(float64((busy-w.busy)-(ours-w.ours))/clockTicks/wall, 0)
	w.b.rec.add(round, scenario, system, "busy_vcpu", "", float64(busy-w.busy)/clockTicks/wall)
	w.b.rec.add(round, scenario, system, "other_vcpu", "", other)
	w.b.rec.add(round, scenario, system, "steal_vcpu", "", float64(steal-w.steal)/clockTicks/wall)
	return cpu, wall, other
}

// latency runs fortio at 1000 req/s, then at its maximum rate.
func (b *bench) latency(round int, s *system) error {
	if err := b.latencyAt(round, s, scLatency, 1000, b.set.LatencyDur); err != nil {
		return err
	}
	return b.latencyAt(round, s, scLatencyMax, 0, b.set.LatencyMaxDur)
}

func (b *bench) latencyAt(round int, s *system, sc string, qps int, d time.Duration) error {
	t0 := time.Now()
	w := b.watchCPU(s.watched())
	r, err := b.fortioRun(s, d, qps)
	if err != nil {
		return fmt.Errorf("%s %s: %w", s.name, sc, err)
	}
	cpu, wall, other := w.stop(round, sc, s.name)
	var ms [4]float64
	for i, p := range []float64{50, 90, 99, 99.9} {
		v, ok := r.percentileMS(p)
		if !ok {
			return fmt.Errorf("%s %s: fortio gave no p%v", s.name, sc, p)
		}
		ms[i] = v
	}
	for i, m := range []string{"p50_ms", "p90_ms", "p99_ms", "p999_ms"} {
		b.rec.add(round, sc, s.name, m, "", ms[i])
	}
	var pts []DistPoint
	for _, p := range distPercentiles {
		if v, ok := r.percentileMS(p); ok {
			pts = append(pts, DistPoint{Percentile: p, MS: round4(v)})
		}
	}
	b.rec.addDist(round, sc, s.name, ms[2], pts)
	b.rec.add(round, sc, s.name, "rps", "", r.ActualQPS)
	b.rec.add(round, sc, s.name, "loadavg_1m", "", loadavg1())
	extra := ""
	reqs := float64(r.DurationHistogram.Count)
	for i, z := range s.watched() {
		per1k := cpu[i] * 1000 / (reqs / 1000)
		b.rec.add(round, sc, s.name, "cpu_ms_per_1k_req", z.name, per1k)
		b.rec.add(round, sc, s.name, "vcpu", z.name, cpu[i]/wall)
		extra += fmt.Sprintf("  %s %.1f ms CPU/1k req", z.name, per1k)
	}
	b.log("round %d/%d %-8s %-16s p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f ms, %.0f req/s%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, ms[0], ms[1], ms[2], ms[3], r.ActualQPS, extra, time.Since(t0).Seconds(), other)
	return nil
}

// throughput runs iperf3 with one stream, then with eight.
func (b *bench) throughput(round int, s *system) error {
	if err := b.throughputN(round, s, scThrough1, 1); err != nil {
		return err
	}
	return b.throughputN(round, s, scThrough8, 8)
}

func (b *bench) throughputN(round int, s *system, sc string, streams int) error {
	t0 := time.Now()
	w := b.watchCPU(s.watched())
	var out strings.Builder
	if err := b.runIn(s.client.NS, &out, append([]string{b.iperf}, b.iperfArgs(s, b.set.ThroughDur, streams)...)...); err != nil {
		// iperf3 -J reports its errors in the JSON on stdout.
		if r, perr := parseIperf([]byte(out.String())); perr != nil || r == nil {
			return fmt.Errorf("%s %s: %w (%v)", s.name, sc, err, perr)
		}
		return fmt.Errorf("%s %s: %w", s.name, sc, err)
	}
	cpu, wall, other := w.stop(round, sc, s.name)
	r, err := parseIperf([]byte(out.String()))
	if err != nil {
		return fmt.Errorf("%s %s: %w", s.name, sc, err)
	}
	g := r.End.SumReceived.BitsPerSecond / 1e9
	b.rec.add(round, sc, s.name, "gbit_per_s", "", g)
	b.rec.add(round, sc, s.name, "retransmits", "", float64(r.End.SumSent.Retransmits))
	b.rec.add(round, sc, s.name, "loadavg_1m", "", loadavg1())
	extra := ""
	for i, z := range s.watched() {
		b.rec.add(round, sc, s.name, "vcpu", z.name, cpu[i]/wall)
		extra += fmt.Sprintf("  %s %.2f vCPU", z.name, cpu[i]/wall)
	}
	b.log("round %d/%d %-8s %-16s %.2f Gbit/s, %d retransmits%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, g, r.End.SumSent.Retransmits, extra, time.Since(t0).Seconds(), other)
	return nil
}

func (b *bench) connRate(round int, s *system) error {
	sc := scChurn
	t0 := time.Now()
	w := b.watchCPU(s.watched())
	r, err := b.connRateRun(s, b.set.ConnDur)
	if err != nil {
		return fmt.Errorf("%s %s: %w", s.name, sc, err)
	}
	cpu, wall, other := w.stop(round, sc, s.name)
	rate := float64(r.Conns) / r.Seconds
	b.rec.add(round, sc, s.name, "conns_per_s", "", rate)
	b.rec.add(round, sc, s.name, "errors", "", float64(r.Errors))
	if r.Conns > 0 {
		b.rec.add(round, sc, s.name, "p50_ms", "", r.P50MS)
		b.rec.add(round, sc, s.name, "p99_ms", "", r.P99MS)
	}
	b.rec.add(round, sc, s.name, "loadavg_1m", "", loadavg1())
	if r.Errors > 0 {
		b.note("%s %s round %d: %d failed connections (first: %s)", s.name, sc, round, r.Errors, r.FirstError)
	}
	extra := ""
	for i, z := range s.watched() {
		b.rec.add(round, sc, s.name, "vcpu", z.name, cpu[i]/wall)
		if r.Conns > 0 {
			b.rec.add(round, sc, s.name, "cpu_ms_per_1k_conns", z.name, cpu[i]*1000/(float64(r.Conns)/1000))
		}
		extra += fmt.Sprintf("  %s %.2f vCPU", z.name, cpu[i]/wall)
	}
	b.log("round %d/%d %-8s %-16s %.0f conns/s, p50 %.2f p99 %.2f ms, %d errors%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, rate, r.P50MS, r.P99MS, r.Errors, extra, time.Since(t0).Seconds(), other)
	return nil
}

func (b *bench) connRateRun(s *system, d time.Duration) (*connRateResult, error) {
	var out strings.Builder
	if err := b.runIn(s.client.NS, &out, b.env.self, "worker", "connrate",
		"-addr", fmt.Sprintf("%s:%d", s.dst, echoPort), "-workers", strconv.Itoa(b.set.ConnWorkers), "-d", d.String()); err != nil {
		return nil, err
	}
	var r connRateResult
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
		return nil, fmt.Errorf("connrate output %q: %w", out.String(), err)
	}
	return &r, nil
}

// idleConns opens idle connections through a system's proxies in steps
// (cumulative) and reads each proxy's RSS with them held; idle holds each
// proxy's RSS before, in KiB.
func (b *bench) idleConns(s *system, idle map[string]int64) error {
	if len(b.set.IdleConns) == 0 {
		return nil
	}
	pr, pw := io.Pipe()
	var outBuf safeLines
	p, err := b.env.start(s.name+"-hold", s.client.NS, pr, &outBuf, b.env.self, "worker", "hold",
		"-addr", fmt.Sprintf("%s:%d", s.dst, echoPort))
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(pw, "close")
		pw.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
		}
		sleep(b.ctx, time.Second) // let the proxies see the closes before the next system
	}()
	prev, prevRSS := 0, map[string]int64{}
	for k, v := range idle {
		prevRSS[k] = v
	}
	var rl syscall.Rlimit
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	for _, n := range b.set.IdleConns {
		if need := uint64(n*fdsPerConn(s.name)) + 1000; need > rl.Cur {
			b.note("%s: %s skipped: its proxies need about %d open files per connection, %d in all, above the open-files limit %d", s.name, idleScenario(n), fdsPerConn(s.name), need, rl.Cur)
			break
		}
		t0 := time.Now()
		fmt.Fprintf(pw, "open %d\n", n-prev)
		line, err := outBuf.wait(b.ctx, p, 180*time.Second)
		if err != nil {
			return fmt.Errorf("idle connections: %w (log: %s)", err, tail(p.log.Name()))
		}
		if !strings.HasPrefix(line, "ok ") {
			return fmt.Errorf("idle connections: opening %d: %s", n, line)
		}
		sc := idleScenario(n)
		sleep(b.ctx, 3*time.Second) // let the proxies settle (goroutines parked, buffers released)
		for _, w := range s.watched() {
			rss, err := procRSSKiB(w.pid)
			if err != nil {
				return err
			}
			per := float64(rss-idle[w.name]) / float64(n)
			b.rec.add(1, sc, s.name, "rss_mib", w.name, float64(rss)/1024)
			b.rec.add(1, sc, s.name, "rss_kib_per_conn", w.name, per)
			msg := ""
			if prev > 0 {
				marg := float64(rss-prevRSS[w.name]) / float64(n-prev)
				b.rec.add(1, fmt.Sprintf("%s-to-%s", idleScenario(prev), idleScenario(n)), s.name, "rss_kib_per_conn", w.name, marg)
				msg = fmt.Sprintf(", marginal %.1f KiB/conn from %d", marg, prev)
			}
			prevRSS[w.name] = rss
			b.log("%-8s %-20s %s RSS %.1f MiB, %.1f KiB/conn over idle%s, %d fds (%.1fs)",
				s.name, sc, w.name, float64(rss)/1024, per, msg, procFDs(w.pid), time.Since(t0).Seconds())
		}
		for _, z := range s.zts {
			g := b.goroutines(z)
			b.rec.add(1, sc, s.name, "goroutines", z.name(), float64(g))
			b.memStats(z, 1, sc)
			b.log("%-8s %-20s %s %d goroutines", s.name, sc, z.name(), g)
			if b.set.Profile && n == b.set.IdleConns[len(b.set.IdleConns)-1] {
				if err := b.heapProfile(z, sc); err != nil {
					b.note("heap profile of %s: %v", z.name(), err)
				}
			}
		}
		prev = n
	}
	return nil
}

// fdsPerConn is how many sockets a system's busiest proxy holds per
// client connection: one for the multiplexing HBONE proxies (their
// tunnels share a few TLS connections), two for stunnel (one TLS
// connection per client connection), four for the haproxy glue (the
// backend socket plus both ends of the internal abns@ hop on node-b).
func fdsPerConn(system string) int {
	switch system {
	case "haproxy":
		return 3
	case "stunnel":
		return 2
	}
	return 1
}

// safeLines collects a child's stdout lines.
type safeLines struct {
	mu    sync.Mutex
	buf   strings.Builder
	lines []string
}

func (s *safeLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	for {
		str := s.buf.String()
		i := strings.IndexByte(str, '\n')
		if i < 0 {
			break
		}
		s.lines = append(s.lines, str[:i])
		s.buf.Reset()
		s.buf.WriteString(str[i+1:])
	}
	return len(p), nil
}

func (s *safeLines) wait(ctx context.Context, p *proc, d time.Duration) (string, error) {
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		if len(s.lines) > 0 {
			l := s.lines[0]
			s.lines = s.lines[1:]
			s.mu.Unlock()
			return l, nil
		}
		s.mu.Unlock()
		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case p.exited():
			return "", fmt.Errorf("%s exited: %v", p.name, p.err)
		case time.Now().After(deadline):
			return "", fmt.Errorf("%s: no answer within %v", p.name, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goroutines asks a ztunnel's pprof for its goroutine count (-1 on error).
func (b *bench) goroutines(z *ztunnel) int {
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15000", "/debug/pprof/goroutine?debug=1", 10*time.Second)
	if err != nil || code != 200 {
		return -1
	}
	var n int
	if _, err := fmt.Sscanf(string(body), "goroutine profile: total %d", &n); err != nil {
		return -1
	}
	return n
}

// memStats records the Go runtime's view of a ztunnel's memory from its
// Prometheus endpoint (the Go collector): goroutine stacks, heap in use
// and everything the runtime holds from the OS, to explain the RSS.
func (b *bench) memStats(z *ztunnel, round int, scenario string) {
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15020", "/metrics", 10*time.Second)
	if err != nil || code != 200 {
		return
	}
	want := map[string]string{
		"go_memstats_stack_inuse_bytes": "stack_inuse_mib",
		"go_memstats_heap_inuse_bytes":  "heap_inuse_mib",
		"go_memstats_sys_bytes":         "go_sys_mib",
	}
	for _, line := range strings.Split(string(body), "\n") {
		name, val, ok := strings.Cut(line, " ")
		if m, hit := want[name]; ok && hit {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				b.rec.add(round, scenario, sysStrait, m, z.name(), v/(1<<20))
			}
		}
	}
}

// heapProfile saves a ztunnel's heap profile and its in-use top list.
func (b *bench) heapProfile(z *ztunnel, scenario string) error {
	if err := b.ensureOutDir(); err != nil {
		return err
	}
	body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15000", "/debug/pprof/heap?gc=1", 30*time.Second)
	if err == nil && code != 200 {
		err = fmt.Errorf("HTTP %d", code)
	}
	if err != nil {
		return err
	}
	f := filepath.Join(b.outDir, fmt.Sprintf("%s-%s-heap.prof", scenario, z.node.Name))
	if err := os.WriteFile(f, body, 0o644); err != nil {
		return err
	}
	return b.pprofTop(f, fmt.Sprintf("%s-heap/%s", scenario, z.node.Name), []string{"-top", "-sample_index=inuse_space"}, []string{"-top", "-cum", "-sample_index=inuse_space"})
}

func (b *bench) ensureOutDir() error {
	if b.outDir == "" {
		b.outDir = filepath.Join(b.env.dir, "profiles")
	}
	return os.MkdirAll(b.outDir, 0o755)
}

// pprofTop writes `go tool pprof` top lists of a profile next to it.
func (b *bench) pprofTop(f, label string, modes ...[]string) error {
	var top strings.Builder
	for _, mode := range modes {
		cmd := exec.CommandContext(b.ctx, "go", append(append([]string{"tool", "pprof"}, mode...), "-nodecount=30", f)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go tool pprof %s: %w: %s", f, err, lastLines(out, 3))
		}
		top.Write(out)
		top.WriteString("\n")
	}
	txt := strings.TrimSuffix(f, ".prof") + ".txt"
	if err := os.WriteFile(txt, []byte(top.String()), 0o644); err != nil {
		return err
	}
	b.profs[label] = txt
	b.log("profile %-28s → %s", label, txt)
	return nil
}

// profiles takes a CPU profile of both ztunnels under each load.
func (b *bench) profiles(s *system) error {
	if err := b.ensureOutDir(); err != nil {
		return err
	}
	type load struct {
		name string
		d    time.Duration
		run  func() error
	}
	loads := []load{
		{scLatency, b.set.LatencyDur, func() error { _, err := b.fortioRun(s, b.set.LatencyDur, 1000); return err }},
		{scThrough1, b.set.ThroughDur, func() error {
			return b.runIn(s.client.NS, io.Discard, append([]string{b.iperf}, b.iperfArgs(s, b.set.ThroughDur, 1)...)...)
		}},
		{scChurn, b.set.ConnDur, func() error { _, err := b.connRateRun(s, b.set.ConnDur); return err }},
	}
	for _, l := range loads {
		secs := int(l.d.Seconds()) - 1
		if secs < 1 {
			secs = 1
		}
		var wg sync.WaitGroup
		errs := make([]error, len(s.zts))
		for i, z := range s.zts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body, code, err := meshtest.Get(b.ctx, z.node.NS, "127.0.0.1:15000", fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), time.Duration(secs+30)*time.Second)
				if err == nil && code != 200 {
					err = fmt.Errorf("HTTP %d: %s", code, lastLines(body, 2))
				}
				if err == nil {
					err = os.WriteFile(filepath.Join(b.outDir, fmt.Sprintf("%s-%s.prof", l.name, z.node.Name)), body, 0o644)
				}
				errs[i] = err
			}()
		}
		time.Sleep(300 * time.Millisecond) // profile covers the steady state
		lerr := l.run()
		wg.Wait()
		if lerr != nil {
			return fmt.Errorf("%s: %w", l.name, lerr)
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
		for _, z := range s.zts {
			f := filepath.Join(b.outDir, fmt.Sprintf("%s-%s.prof", l.name, z.node.Name))
			if err := b.pprofTop(f, l.name+"/"+z.node.Name, []string{"-top"}, []string{"-top", "-cum"}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *bench) machineFacts() map[string]string {
	m := map[string]string{
		"vcpus":         strconv.Itoa(runtime.NumCPU()),
		"kernel":        readTrim("/proc/sys/kernel/osrelease"),
		"go":            runtime.Version(),
		"fortio":        toolVersion(b.ctx, b.fortio, "version"),
		"iperf3":        toolVersion(b.ctx, b.iperf, "--version"),
		"loadavg_start": readTrim("/proc/loadavg"),
	}
	if fi, err := os.Stat(b.set.ZtunnelBin); err == nil {
		m["ztunnel_mtime"] = fi.ModTime().UTC().Format(time.RFC3339)
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m["memory"] = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		st, _ := exec.Command("git", "status", "--porcelain").Output()
		n := 0
		if s := strings.TrimSpace(string(st)); s != "" {
			n = len(strings.Split(s, "\n"))
		}
		m["git"] = fmt.Sprintf("%s (%d uncommitted paths)", strings.TrimSpace(string(out)), n)
	}
	return m
}

func fileSHA(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// loadavg1 is the 1-minute load average, recorded with every sample:
// the machine is shared, and this says how busy it was.
func loadavg1() float64 {
	v, _ := strconv.ParseFloat(loadavg(), 64)
	return v
}

func loadavg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 1 {
		return "?"
	}
	return f[0]
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// gitShort is the short commit of the working tree ("nogit" outside one).
func gitShort() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "nogit"
	}
	return strings.TrimSpace(string(out))
}
