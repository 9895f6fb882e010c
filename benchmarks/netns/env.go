package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strait-mesh/strait/internal/meshtest"
)

// nsPrefix starts every namespace this harness makes; the rest of the
// prefix is "d", "m" or "l" (direct, mesh, limit) and the harness's pid, so a later
// run can find and remove what a killed run left behind.
const nsPrefix = "snb"

// tmpPrefix starts the temporary directory, followed by the pid.
const tmpPrefix = "strait-bench-netns-"

var staleTmp = regexp.MustCompile(`^` + tmpPrefix + `([0-9]+)-[0-9]+$`)

var staleNS = regexp.MustCompile(`^` + nsPrefix + `[dmlhsi]([0-9]+)(sw|n[0-9]+|p[0-9]+)$`)

// spec is the same for both systems: node-a with the client pod, node-b
// with the server pod.
var spec = meshtest.Spec{
	Nodes: []string{"node-a", "node-b"},
	Pods: []meshtest.PodSpec{
		{Name: "client", Namespace: "bench", ServiceAccount: "client", Node: "node-a"},
		{Name: "server", Namespace: "bench", ServiceAccount: "server", Node: "node-b"},
	},
}

// proc is a child process (always started through `ip netns exec`, which
// execs, so cmd.Process.Pid is the program itself).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// env owns everything the run creates; close removes it, in reverse.
type env struct {
	dir   string
	self  string
	mu    sync.Mutex
	procs []*proc
	topos []*meshtest.Topology
	agnts []*meshtest.Agent
}

func newEnv() (*env, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", tmpPrefix, os.Getpid()))
	if err != nil {
		return nil, err
	}
	return &env{dir: dir, self: self}, nil
}

// close kills the children, stops the agents, deletes the namespaces and
// the temporary directory. Safe to call twice.
func (e *env) close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for i := len(e.procs) - 1; i >= 0; i-- {
		p := e.procs[i]
		if !p.exited() {
			p.cmd.Process.Signal(syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				errs = append(errs, fmt.Errorf("%s (pid %d) did not die", p.name, p.pid()))
			}
		}
		p.log.Close()
	}
	e.procs = nil
	for _, a := range e.agnts {
		a.Close()
	}
	e.agnts = nil
	for i := len(e.topos) - 1; i >= 0; i-- {
		if err := e.topos[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	e.topos = nil
	if e.dir != "" {
		os.RemoveAll(e.dir)
		e.dir = ""
	}
	return errors.Join(errs...)
}

// start runs args inside namespace ns, its output going to a log file.
func (e *env) start(name, ns string, stdin io.Reader, stdout io.Writer, args ...string) (*proc, error) {
	lf, err := os.Create(filepath.Join(e.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Dir = e.dir
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = lf, lf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	// Children die with the harness, even on SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dir == "" {
		lf.Close()
		return nil, errors.New("harness is shutting down")
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: lf, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	e.procs = append(e.procs, p)
	return p, nil
}

// nsLetter tells the systems' namespaces apart: snb<letter><pid>...
var nsLetter = map[string]byte{sysDirect: 'd', sysStrait: 'm', scLimit: 'l', "haproxy": 'h', "stunnel": 's', "istio-go": 'i'}

// build makes one topology. Both systems get the same shape and the same
// pod sysctls: a wide ephemeral port range and tcp_tw_reuse, so the
// connection-rate loop never runs out of ports.
func (e *env) build(system string) (*meshtest.Topology, error) {
	letter, ok := nsLetter[system]
	if !ok {
		return nil, fmt.Errorf("no namespace letter for system %q", system)
	}
	t, err := meshtest.Build(fmt.Sprintf("%s%c%d", nsPrefix, letter, os.Getpid()), spec)
	if t != nil || err == nil {
		e.mu.Lock()
		e.topos = append(e.topos, t)
		e.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	for _, p := range t.Pods {
		for _, kv := range [][2]string{
			{"net.ipv4.ip_local_port_range", "1024 65000"},
			{"net.ipv4.tcp_tw_reuse", "1"},
		} {
			if out, err := exec.Command("ip", "netns", "exec", p.NS, "sysctl", "-q", "-w", kv[0]+"="+kv[1]).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("sysctl %s in %s: %w: %s", kv[0], p.NS, err, out)
			}
		}
	}
	return t, nil
}

// ztunnel is one node's proxy.
type ztunnel struct {
	node  *meshtest.Node
	p     *proc
	ready *upWatch // process start → /healthz/ready answers 200
}

// upWatch measures how long a freshly started proxy takes to become
// ready: it polls probe every 2 ms from the moment the process started
// until probe succeeds (or 30 s pass).
type upWatch struct {
	done chan struct{}
	d    time.Duration
	err  error
}

func watchUp(ctx context.Context, started time.Time, probe func(context.Context) bool) *upWatch {
	w := &upWatch{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		for {
			if probe(ctx) {
				w.d = time.Since(started)
				return
			}
			select {
			case <-ctx.Done():
				w.err = fmt.Errorf("not ready after %v", time.Since(started).Round(time.Millisecond))
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return w
}

// wait returns the time to ready.
func (w *upWatch) wait() (time.Duration, error) {
	<-w.done
	return w.d, w.err
}

// httpReady probes http://addr/healthz/ready inside ns.
func httpReady(ns, addr string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		_, code, err := meshtest.Get(ctx, ns, addr, "/healthz/ready", time.Second)
		return err == nil && code == 200
	}
}

// tcpUp probes that addr accepts connections inside ns.
func tcpUp(ns, addr string) func(context.Context) bool {
	return func(ctx context.Context) bool {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := meshtest.DialIn(ctx, ns, addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

// startMesh runs a ztunnel per node of t, plays the node agent and
// enrolls every pod (HBONE between the nodes). tag prefixes the names of
// its files and processes ("" for the main mesh, so a second mesh in the
// same run does not collide); extra holds more ztunnel flags per node name.
func (e *env) startMesh(ctx context.Context, t *meshtest.Topology, bin, logLevel, tag string, extra map[string][]string) ([]*ztunnel, error) {
	cfg := filepath.Join(e.dir, tag+"workloads.yaml")
	if err := os.WriteFile(cfg, t.WorkloadsYAML(nil, ""), 0o644); err != nil {
		return nil, err
	}
	var zts []*ztunnel
	for _, n := range t.Nodes {
		sock := filepath.Join(e.dir, tag+n.Name+".sock")
		agent, err := meshtest.StartAgent(sock)
		if err != nil {
			return nil, err
		}
		e.mu.Lock()
		e.agnts = append(e.agnts, agent)
		e.mu.Unlock()
		args := append([]string{bin,
			"-config", cfg, "-node", n.Name, "-ca-dir", filepath.Join(e.dir, tag+"ca"), "-zds-socket", sock,
			"-admin-addr", "127.0.0.1:15000", "-ready-addr", "127.0.0.1:15021", "-metrics-addr", "127.0.0.1:15020",
			"-drain-grace", "2s", "-log-level", logLevel}, extra[n.Name]...)
		started := time.Now()
		p, err := e.start(tag+"ztunnel-"+n.Name, n.NS, nil, nil, args...)
		if err != nil {
			return nil, err
		}
		ready := watchUp(ctx, started, httpReady(n.NS, "127.0.0.1:15021"))
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err = agent.WaitProxy(wctx)
		if err == nil {
			for _, pod := range t.Pods {
				if pod.Node == n {
					if err = agent.Enroll(wctx, pod); err != nil {
						break
					}
				}
			}
		}
		if err == nil {
			err = agent.SnapshotSent(wctx)
		}
		cancel()
		if err != nil {
			return nil, fmt.Errorf("ztunnel on %s: %w (log: %s)", n.Name, err, tail(p.log.Name()))
		}
		if c := procComm(p.pid()); c != filepath.Base(bin)[:min(15, len(filepath.Base(bin)))] {
			return nil, fmt.Errorf("ztunnel on %s: pid %d is %q, not the proxy (ip netns exec forked?)", n.Name, p.pid(), c)
		}
		zts = append(zts, &ztunnel{node: n, p: p, ready: ready})
	}
	for _, z := range zts {
		if _, err := z.ready.wait(); err != nil {
			return nil, fmt.Errorf("ztunnel on %s not ready: %w (log: %s)", z.node.Name, err, tail(z.p.log.Name()))
		}
	}
	return zts, nil
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// sweepStale deletes namespaces left by a harness run that no longer
// exists (killed with SIGKILL, so it could not clean up).
func sweepStale() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var removed []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || alive(pid) {
			continue // its harness still runs
		}
		if exec.Command("ip", "netns", "del", f[0]).Run() == nil {
			removed = append(removed, f[0])
		}
	}
	return removed
}

// alive reports whether pid runs (a zombie, killed but not reaped, does
// not count).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// sweepStaleTmp removes the temporary directories of dead runs.
func sweepStaleTmp() []string {
	ents, _ := os.ReadDir(os.TempDir())
	var removed []string
	for _, e := range ents {
		m := staleTmp.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); alive(pid) {
			continue
		}
		if os.RemoveAll(filepath.Join(os.TempDir(), e.Name())) == nil {
			removed = append(removed, e.Name())
		}
	}
	return removed
}

// ourNamespaces lists the namespaces of this run still present.
func ourNamespaces() []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if m := staleNS.FindStringSubmatch(f[0]); m != nil && m[1] == strconv.Itoa(os.Getpid()) {
			left = append(left, f[0])
		}
	}
	return left
}
