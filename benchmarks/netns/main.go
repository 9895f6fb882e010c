// Command netns measures the ztunnel node proxy on a real two-node
// network-namespace topology and compares it, in the same run, with the
// same client and server talking directly (no mesh).
//
// Two topologies of identical shape are built with internal/meshtest:
// node-a holds a client pod, node-b a server pod. In "direct" nothing is
// enrolled and no proxy runs. In "mesh" a ztunnel process runs in each
// node namespace, both pods are enrolled (redirection rules + netns handed
// over ZDS by the harness, which plays the node agent), and traffic
// travels client → ztunnel-a → HBONE (mTLS, HTTP/2) → ztunnel-b → server.
//
// Scenarios, interleaved direct/mesh and repeated -rounds times (medians
// reported):
//
//   - latency_1000rps: fortio load -qps 1000 -c 16 -payload-size 1024
//     against fortio server; p50/p90/p99/p99.9, and each ztunnel's CPU
//     (utime+stime from /proc) per 1000 requests;
//   - throughput_1stream: iperf3 -c, one TCP stream, Gbit/s;
//   - conn_rate: a new TCP connection per request (connect, 1-byte echo,
//     close with SO_LINGER 0), -conn-workers parallel loops;
//
// and once, mesh only: each ztunnel's VmRSS idle after enrollment and
// with 1000 and 5000 idle tunneled connections held open; and "limit", on
// a separate mesh whose node-a ztunnel runs with -max-conns 5000: 10 000
// connection attempts, the ones beyond the limit refused cleanly (reset,
// counted, no hang) with node-a's memory bounded (limit.go).
//
// With -systems (default all), two reference systems join the rounds on
// topologies of the same shape, pods not enrolled, the client connecting
// to node-a's proxy explicitly: haproxy 2.6 as an HBONE peer pair (HTTP/2
// CONNECT over TLS 1.3 mTLS) and stunnel4 as a plain TLS 1.3 tunnel pair
// (refproxy.go); a missing binary skips its system with a note.
//
// Usage (root; `make build` first for bin/ztunnel):
//
//	go run ./benchmarks/netns -out benchmarks/results/netns.json
//	go run ./benchmarks/netns -quick
//	go run ./benchmarks/netns -only limit
//
// Everything it creates (namespaces, links, rules, processes, temporary
// files) is removed on exit and on Ctrl-C; a run killed with SIGKILL
// leaves namespaces named snb[dm]<pid>..., which the next run deletes.
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
	Quick       bool          `json:"quick"`
	Rounds      int           `json:"rounds"`
	LatencyDur  time.Duration `json:"-"`
	ThroughDur  time.Duration `json:"-"`
	ConnDur     time.Duration `json:"-"`
	IdleConns   []int         `json:"idle_conns"`
	ConnWorkers int           `json:"conn_workers"`
	Profile     bool          `json:"profile"`
	ZtunnelBin  string        `json:"ztunnel_bin"`
	ZtunnelLog  string        `json:"ztunnel_log_level"`
	FortioArgs  []string      `json:"fortio_load_args"`
	IperfArgs   []string      `json:"iperf3_client_args"`
	Only        []string      `json:"only,omitempty"`
	LimitMax    int           `json:"limit_max_conns"`
	LimitTries  int           `json:"limit_attempts"`
	Systems     []string      `json:"systems"`
}

// allSystems are the names -systems accepts.
var allSystems = append([]string{"direct", "mesh"}, refSystems...)

// scenarios are the names -only accepts.
var scenarios = []string{"idle", "latency", "throughput", "conn_rate", "limit"}

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
	idle := flag.String("idle-conns", "", "idle tunneled connection counts for the RSS scenario, cumulative (default 1000,5000; 200 with -quick)")
	noProfile := flag.Bool("no-profile", false, "skip the CPU profiles of the ztunnels (always skipped with -quick)")
	ztLog := flag.String("ztunnel-log-level", "info", "ztunnel -log-level")
	only := flag.String("only", "", "run only these scenarios, comma-separated: "+strings.Join(scenarios, ","))
	limitMax := flag.Int("limit-max-conns", 0, "limit scenario: node-a ztunnel -max-conns (default 5000; 200 with -quick)")
	limitTries := flag.Int("limit-attempts", 0, "limit scenario: connections attempted through it (default 10000; 400 with -quick)")
	systemsFlag := flag.String("systems", strings.Join(allSystems, ","), "systems compared in the rounds (direct and mesh always run; a reference system whose binary is missing is skipped with a note)")
	flag.Parse()

	b := &bench{start: time.Now(), rec: newRecorder(), profs: map[string]string{}, fortio: *fortioBin}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "benchmarks/netns: must run as root (it builds network namespaces, installs nftables rules and runs ztunnel in them); try: sudo go run ./benchmarks/netns -quick")
		return 2
	}
	set := settings{Quick: *quick, Rounds: 3, LatencyDur: 10 * time.Second, ThroughDur: 10 * time.Second, ConnDur: 5 * time.Second,
		IdleConns: []int{1000, 5000}, ConnWorkers: *workers, Profile: !*noProfile && !*quick, ZtunnelLog: *ztLog}
	set.LimitMax, set.LimitTries = 5000, 10000
	if *quick {
		set.Rounds, set.LatencyDur, set.ThroughDur, set.ConnDur, set.IdleConns = 1, 2*time.Second, 2*time.Second, time.Second, []int{200}
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
	rounds := b.set.want("latency") || b.set.want("throughput") || b.set.want("conn_rate")
	mainMesh := rounds || b.set.want("idle")
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
		Machine: machine, Settings: b.settingsMap(), Rows: b.rec.rows(), Samples: b.rec.samples, Notes: b.notes, Profiles: b.profs,
	}, nil
}

// runMain runs every scenario but limit on the direct and mesh topologies.
func (b *bench) runMain(machine map[string]string, ztCopy string, rounds bool) error {
	ctx := b.ctx
	// Two topologies of the same shape; all addresses live in their own
	// namespaces, so both can use 10.201.x.y.
	names := []string{"mesh"}
	if rounds {
		names = []string{"direct", "mesh"}
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
		if name == "direct" {
			direct = s
		} else {
			mesh = s
		}
		b.log("%-6s topology: client %s (netns %s, node-a) → server %s (netns %s, node-b)", name, s.client.IP, s.client.NS, s.server.IP, s.server.NS)
	}
	b.set.FortioArgs = b.fortioArgs(mesh, b.set.LatencyDur, "OUT.json")
	b.set.IperfArgs = b.iperfArgs(mesh, b.set.ThroughDur)
	zts, err := b.env.startMesh(ctx, mesh.topo, ztCopy, b.set.ZtunnelLog, "", nil)
	if err != nil {
		return err
	}
	mesh.zts = zts
	for _, z := range zts {
		b.log("mesh   ztunnel %s pid %d, client and server pods enrolled", z.node.Name, z.pid())
	}
	machine["redirect_backend"] = b.env.agnts[0].Backend().Kind().String()

	// 1. RSS idle after enrollment, then with idle tunneled connections.
	sleep(ctx, 2*time.Second)
	idle := map[string]int64{}
	for _, z := range mesh.zts {
		rss, err := procRSSKiB(z.pid())
		if err != nil {
			return err
		}
		idle[z.name()] = rss
		b.rec.add(1, "idle", "mesh", "rss_mib", z.name(), float64(rss)/1024)
		g := b.goroutines(z)
		b.rec.add(1, "idle", "mesh", "goroutines", z.name(), float64(g))
		b.memStats(z, 1, "idle")
		b.log("mesh   idle                 %s RSS %.1f MiB, %d fds, %d goroutines", z.name(), float64(rss)/1024, procFDs(z.pid()), g)
	}
	if b.set.want("idle") {
		if err := b.idleConns(mesh, idle); err != nil {
			return err
		}
	}
	if !rounds {
		return nil
	}
	refs, err := b.startRefs(machine)
	if err != nil {
		return err
	}
	var all []*system
	if slices.Contains(b.set.Systems, "direct") {
		all = append(all, direct)
	}
	if slices.Contains(b.set.Systems, "mesh") {
		all = append(all, mesh)
	}
	all = append(all, refs...)
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
		if _, err := b.fortioRun(s, time.Second); err != nil {
			return fmt.Errorf("%s warm-up: %w", s.name, err)
		}
	}
	b.log("warm-up done (1 s of fortio load on each system)")

	// 3. Rounds, interleaved; the order flips every round so drift in the
	// machine's load does not favour one system.
	var scs []func(int, *system) error
	for _, sc := range []struct {
		name string
		run  func(int, *system) error
	}{{"latency", b.latency}, {"throughput", b.throughput}, {"conn_rate", b.connRate}} {
		if b.set.want(sc.name) {
			scs = append(scs, sc.run)
		}
	}
	for r := 1; r <= b.set.Rounds; r++ {
		// Rotate the order every round (with two systems: direct, mesh
		// then mesh, direct).
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
	for _, z := range mesh.zts {
		rss, _ := procRSSKiB(z.pid())
		b.rec.add(1, "after_load", "mesh", "rss_mib", z.name(), float64(rss)/1024)
		b.log("mesh   after load           %s RSS %.1f MiB", z.name(), float64(rss)/1024)
	}
	for _, s := range refs {
		for _, r := range s.refs {
			rss, _ := procRSSKiB(r.p.pid())
			b.rec.add(1, "after_load", s.name, "rss_mib", r.name(), float64(rss)/1024)
			b.log("%-6s after load           %s RSS %.1f MiB", s.name, r.name(), float64(rss)/1024)
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
	m["throughput_seconds"] = b.set.ThroughDur.Seconds()
	m["conn_rate_seconds"] = b.set.ConnDur.Seconds()
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

func (b *bench) fortioArgs(s *system, d time.Duration, jsonPath string) []string {
	return []string{"load", "-qps", "1000", "-c", "16", "-t", d.String(), "-payload-size", "1024",
		"-r", "0.00001", "-p", "50,90,99,99.9", "-loglevel", "warning", "-json", jsonPath,
		fmt.Sprintf("http://%s:%d/echo", s.dst, fortioPort)}
}

func (b *bench) iperfArgs(s *system, d time.Duration) []string {
	return []string{"-c", s.dst.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(int(d.Seconds())), "-J"}
}

func (b *bench) fortioRun(s *system, d time.Duration) (*fortioResult, error) {
	f, err := os.CreateTemp(b.env.dir, "fortio-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := b.runIn(s.client.NS, io.Discard, append([]string{b.fortio}, b.fortioArgs(s, d, f.Name())...)...); err != nil {
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

func (b *bench) latency(round int, s *system) error {
	const sc = "latency_1000rps"
	t0 := time.Now()
	w := b.watchCPU(s.watched())
	r, err := b.fortioRun(s, b.set.LatencyDur)
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
	b.rec.add(round, sc, s.name, "actual_qps", "", r.ActualQPS)
	b.rec.add(round, sc, s.name, "loadavg_1m", "", loadavg1())
	extra := ""
	for i, z := range s.watched() {
		per1k := cpu[i] * 1000 / (float64(r.DurationHistogram.Count) / 1000)
		b.rec.add(round, sc, s.name, "cpu_ms_per_1k_req", z.name, per1k)
		b.rec.add(round, sc, s.name, "vcpu", z.name, cpu[i]/wall)
		extra += fmt.Sprintf("  %s %.1f ms CPU/1k req", z.name, per1k)
	}
	b.log("round %d/%d %-6s %-18s p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f ms, %.0f qps%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, ms[0], ms[1], ms[2], ms[3], r.ActualQPS, extra, time.Since(t0).Seconds(), other)
	return nil
}

func (b *bench) throughput(round int, s *system) error {
	const sc = "throughput_1stream"
	t0 := time.Now()
	w := b.watchCPU(s.watched())
	var out strings.Builder
	if err := b.runIn(s.client.NS, &out, append([]string{b.iperf}, b.iperfArgs(s, b.set.ThroughDur)...)...); err != nil {
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
	b.log("round %d/%d %-6s %-18s %.2f Gbit/s, %d retransmits%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, g, r.End.SumSent.Retransmits, extra, time.Since(t0).Seconds(), other)
	return nil
}

func (b *bench) connRate(round int, s *system) error {
	const sc = "conn_rate"
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
	b.log("round %d/%d %-6s %-18s %.0f conns/s, %d errors%s (%.1fs, outside load %.2f vCPU)",
		round, b.set.Rounds, s.name, sc, rate, r.Errors, extra, time.Since(t0).Seconds(), other)
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

// idleConns opens idle tunneled connections in steps (cumulative) and
// reads each ztunnel's RSS with them held.
func (b *bench) idleConns(s *system, idle map[string]int64) error {
	if len(b.set.IdleConns) == 0 {
		return nil
	}
	pr, pw := io.Pipe()
	var outBuf safeLines
	p, err := b.env.start("hold", s.client.NS, pr, &outBuf, b.env.self, "worker", "hold",
		"-addr", fmt.Sprintf("%s:%d", s.server.IP, echoPort))
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
	}()
	prev, prevRSS := 0, map[string]int64{}
	for k, v := range idle {
		prevRSS[k] = v
	}
	for _, n := range b.set.IdleConns {
		t0 := time.Now()
		fmt.Fprintf(pw, "open %d\n", n-prev)
		line, err := outBuf.wait(b.ctx, p, 120*time.Second)
		if err != nil {
			return fmt.Errorf("idle connections: %w (log: %s)", err, tail(p.log.Name()))
		}
		if !strings.HasPrefix(line, "ok ") {
			return fmt.Errorf("idle connections: opening %d: %s", n, line)
		}
		sc := fmt.Sprintf("idle_conns_%d", n)
		sleep(b.ctx, 3*time.Second) // let the proxies settle (goroutines parked, buffers released)
		for _, z := range s.zts {
			rss, err := procRSSKiB(z.pid())
			if err != nil {
				return err
			}
			per := float64(rss-idle[z.name()]) / float64(n)
			b.rec.add(1, sc, "mesh", "rss_mib", z.name(), float64(rss)/1024)
			b.rec.add(1, sc, "mesh", "rss_kib_per_conn", z.name(), per)
			msg := ""
			if prev > 0 {
				marg := float64(rss-prevRSS[z.name()]) / float64(n-prev)
				b.rec.add(1, fmt.Sprintf("idle_conns_%d_to_%d", prev, n), "mesh", "rss_kib_per_conn", z.name(), marg)
				msg = fmt.Sprintf(", marginal %.1f KiB/conn from %d", marg, prev)
			}
			prevRSS[z.name()] = rss
			g := b.goroutines(z)
			b.rec.add(1, sc, "mesh", "goroutines", z.name(), float64(g))
			b.memStats(z, 1, sc)
			b.log("mesh   %-20s %s RSS %.1f MiB, %.1f KiB/conn over idle%s, %d fds, %d goroutines (%.1fs)",
				sc, z.name(), float64(rss)/1024, per, msg, procFDs(z.pid()), g, time.Since(t0).Seconds())
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
				b.rec.add(round, scenario, "mesh", m, z.name(), v/(1<<20))
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
		{"latency_1000rps", b.set.LatencyDur, func() error { _, err := b.fortioRun(s, b.set.LatencyDur); return err }},
		{"throughput_1stream", b.set.ThroughDur, func() error {
			return b.runIn(s.client.NS, io.Discard, append([]string{b.iperf}, b.iperfArgs(s, b.set.ThroughDur)...)...)
		}},
		{"conn_rate", b.set.ConnDur, func() error { _, err := b.connRateRun(s, b.set.ConnDur); return err }},
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
