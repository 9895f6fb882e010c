package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strait-mesh/strait/internal/meshtest"
	"github.com/strait-mesh/strait/internal/netnstest"
	"github.com/strait-mesh/strait/ztunnel/inpod"
)

// Restart test settings. The first generation of ztunnels holds the
// long-lived connections for the whole test, hence its long grace; later
// generations drain fast (short requests only), and the last one's short
// grace is what keep-alive connections meet.
const (
	restartQPS    = 500
	firstGrace    = 40 * time.Second
	laterGrace    = 2 * time.Second
	restartRounds = 3 // each round restarts node-a's ztunnel, then node-b's
)

// restartMesh is two nodes (a client pod on node-a, a server pod on
// node-b), the test node agent per node, and ztunnel processes that the
// test starts and stops: one current generation per node, older ones
// draining.
type restartMesh struct {
	t      *testing.T
	dir    string
	bin    string
	cfg    string
	topo   *meshtest.Topology
	agents map[string]*meshtest.Agent
	cur    map[string]*ztProc
	all    []*ztProc
}

// ztProc is one ztunnel process.
type ztProc struct {
	node    string
	gen     int
	grace   time.Duration
	cmd     *exec.Cmd
	ready   string // readiness address
	logPath string
	started time.Time
	readyIn time.Duration // start → /healthz/ready 200
	termAt  time.Time     // SIGTERM sent
	done    chan struct{} // closed when the process has exited
	exitAt  time.Time
	exitErr error
}

func (p *ztProc) String() string { return fmt.Sprintf("ztunnel %s gen %d", p.node, p.gen) }

// exited reports whether the process has exited.
func (p *ztProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (m *restartMesh) start(node string, gen int, grace time.Duration) *ztProc {
	t := m.t
	t.Helper()
	p := &ztProc{node: node, gen: gen, grace: grace, ready: freePort(t), done: make(chan struct{}),
		logPath: filepath.Join(m.dir, fmt.Sprintf("ztunnel-%s-gen%d.log", node, gen))}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(m.bin, "-config", m.cfg, "-node", node, "-ca-dir", filepath.Join(m.dir, "ca"),
		"-zds-socket", filepath.Join(m.dir, node+".sock"),
		"-admin-addr", freePort(t), "-ready-addr", p.ready, "-metrics-addr", freePort(t),
		"-drain-grace", grace.String())
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		p.exitAt = time.Now()
		logf.Close()
		close(p.done)
	}()
	m.all = append(m.all, p)
	for {
		_, code, err := httpGet(p.ready, "/healthz/ready")
		if err == nil && code == 200 {
			p.readyIn = time.Since(p.started)
			return p
		}
		if p.exited() {
			t.Fatalf("%s exited before it was ready: %v", p, p.exitErr)
		}
		if time.Since(p.started) > 20*time.Second {
			t.Fatalf("%s not ready after 20 s (last: %d %v)", p, code, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restart starts the next generation on node, waits until it is ready
// (it has the agent's snapshot and its listeners are bound beside the old
// ones), then sends SIGTERM to the old one, which drains in the
// background.
//
// The old process is busy meanwhile, as a loaded or CPU-throttled one
// is: it is paused (SIGSTOP) from before the new one starts until it gets
// SIGTERM (and SIGCONT). Paused, it accepts nothing, so the connections
// the kernel hashes to its listeners queue up, and it may close its
// listeners before accepting them: the kernel must then hand them to the
// new process (tcp_migrate_req) rather than reset them. Tunnels that
// reached it over its HBONE connections meanwhile wait for it too.
func (m *restartMesh) restart(node string, grace time.Duration) (old, nw *ztProc) {
	m.t.Helper()
	old = m.cur[node]
	if err := old.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		m.t.Fatalf("SIGSTOP %s: %v", old, err)
	}
	nw = m.start(node, old.gen+1, grace)
	old.termAt = time.Now()
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		m.t.Fatalf("SIGTERM %s: %v", old, err)
	}
	if err := old.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		m.t.Fatalf("SIGCONT %s: %v", old, err)
	}
	m.cur[node] = nw
	return old, nw
}

// waitExit waits for p (already sent SIGTERM) to exit, at most its grace
// plus slack, and checks it exited 0.
func (m *restartMesh) waitExit(p *ztProc, slack time.Duration) {
	m.t.Helper()
	limit := p.grace + slack
	select {
	case <-p.done:
	case <-time.After(time.Until(p.termAt.Add(limit))):
	}
	if !p.exited() {
		m.t.Fatalf("%s still running %v after SIGTERM (grace %v)", p, time.Since(p.termAt).Round(time.Millisecond), p.grace)
	}
	if took := p.exitAt.Sub(p.termAt); took > limit {
		m.t.Errorf("%s exited %v after SIGTERM, more than its grace %v", p, took.Round(time.Millisecond), p.grace)
	}
	if p.exitErr != nil {
		m.t.Errorf("%s exited with %v", p, p.exitErr)
	}
}

func startRestartMesh(t *testing.T) *restartMesh {
	t.Helper()
	netnstest.RequireRoot(t)
	dir := t.TempDir()
	m := &restartMesh{t: t, dir: dir, agents: map[string]*meshtest.Agent{}, cur: map[string]*ztProc{}}
	m.bin = buildBin(t, dir, "./ztunnel/cmd/ztunnel")
	topo := clientServerTopology(t, "rs")
	m.topo = topo
	m.cfg = filepath.Join(dir, "workloads.yaml")
	if err := os.WriteFile(m.cfg, topo.WorkloadsYAML(nil, ""), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever is still running (a failed test): stop it, show its log.
		for _, p := range m.all {
			if !p.exited() {
				p.cmd.Process.Kill()
				<-p.done
			}
			if t.Failed() {
				b, _ := os.ReadFile(p.logPath)
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				if len(lines) > 25 {
					lines = lines[len(lines)-25:]
				}
				t.Logf("---- %s:\n%s", p, strings.Join(lines, "\n"))
			}
		}
	})
	// The agents enroll the pods before any ztunnel runs: each ztunnel,
	// the first and every restarted one, gets them in its snapshot.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range topo.Nodes {
		a, err := meshtest.StartAgent(filepath.Join(dir, n.Name+".sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		m.agents[n.Name] = a
		for _, p := range topo.Pods {
			if p.Node == n {
				if err := a.Enroll(ctx, p); err != nil {
					t.Fatalf("enroll %s: %v", p.Name, err)
				}
			}
		}
	}
	// One after the other: the first creates the shared CA directory.
	for _, n := range topo.Nodes {
		m.cur[n.Name] = m.start(n.Name, 0, firstGrace)
	}
	return m
}

// fortioRun is the part of fortio's JSON result the test reads.
type fortioRun struct {
	ActualQPS               float64
	ActualDuration          int64 // ns
	RetCodes                map[string]int64
	DurationHistogram       struct{ Count int64 }
	ErrorsDurationHistogram struct{ Count int64 }
	SocketCount             int64
}

// fortio runs `fortio load` in the client pod against the server's
// fortio server, in the background; wait returns its result.
func (m *restartMesh) fortio(ctx context.Context, bin string, d time.Duration, keepAlive bool) (wait func() *fortioRun) {
	t := m.t
	t.Helper()
	out := filepath.Join(m.dir, fmt.Sprintf("fortio-keepalive-%v.json", keepAlive))
	args := []string{"load", "-qps", strconv.Itoa(restartQPS), "-c", "8", "-t", d.String(),
		"-keepalive=" + strconv.FormatBool(keepAlive), "-timeout", "5s", "-loglevel", "warning", "-json", out,
		fmt.Sprintf("http://%s:8080/echo", m.topo.Pod("server").IP)}
	cmd := meshtest.Exec(ctx, m.topo.Pod("client").NS, bin, args...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return func() *fortioRun {
		t.Helper()
		if err := <-done; err != nil {
			t.Fatalf("fortio load: %v\n%s", err, lastN(logs.String(), 20))
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var r fortioRun
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("fortio json: %v", err)
		}
		if bad := r.DurationHistogram.Count - r.RetCodes["200"]; bad != 0 || r.ErrorsDurationHistogram.Count != 0 || r.DurationHistogram.Count == 0 {
			t.Errorf("fortio (keep-alive %v): %d of %d requests failed, codes %v; fortio said:\n%s",
				keepAlive, bad, r.DurationHistogram.Count, r.RetCodes, lastN(logs.String(), 20))
		}
		if r.ActualQPS < 0.95*restartQPS {
			t.Errorf("fortio (keep-alive %v): %.1f req/s, want about %d", keepAlive, r.ActualQPS, restartQPS)
		}
		return &r
	}
}

// graceCut says what p's log reports about connections it closed when
// its drain grace ran out.
func graceCut(t *testing.T, p *ztProc) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var cut []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "drain grace over: open connections closed") {
			var e struct {
				Pod         string
				Connections int
			}
			if json.Unmarshal([]byte(l), &e) == nil {
				cut = append(cut, fmt.Sprintf("%d of %s's", e.Connections, e.Pod))
			}
		}
	}
	if len(cut) == 0 {
		return "no connection left at the end of the grace"
	}
	return "closed at the end of the grace: " + strings.Join(cut, ", ") + " connections"
}

func lastN(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// longConn is a connection through the mesh opened before the restarts
// that keeps exchanging bytes with the echo server across them.
type longConn struct {
	c         net.Conn
	sent, got int64
	err       error
}

// pingPong writes a numbered 512-byte chunk every 20 ms and checks its
// echo, until stop.
func (l *longConn) pingPong(stop <-chan struct{}) {
	buf, back := make([]byte, 512), make([]byte, 512)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		for j := range buf {
			buf[j] = byte(i + j)
		}
		l.c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := l.c.Write(buf); err != nil {
			l.err = fmt.Errorf("write chunk %d: %w", i, err)
			return
		}
		l.sent += int64(len(buf))
		if _, err := io.ReadFull(l.c, back); err != nil {
			l.err = fmt.Errorf("read chunk %d: %w", i, err)
			return
		}
		if !bytes.Equal(buf, back) {
			l.err = fmt.Errorf("chunk %d came back altered", i)
			return
		}
		l.got += int64(len(back))
	}
}

// finish half-closes, expects the echo server's EOF and nothing more.
func (l *longConn) finish() error {
	defer l.c.Close()
	if l.err != nil {
		return l.err
	}
	l.c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := l.c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("half-close: %w", err)
	}
	rest, err := io.ReadAll(l.c)
	if err != nil {
		return fmt.Errorf("waiting for the echo's EOF: %w", err)
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d unexpected bytes before EOF", len(rest))
	}
	if l.sent != l.got || l.sent == 0 {
		return fmt.Errorf("sent %d bytes, %d came back", l.sent, l.got)
	}
	return nil
}

// TestRestartUnderLoad restarts each node's ztunnel three times while
// fortio sends 500 req/s through the mesh, a new connection per request:
// the new process binds beside the old one (SO_REUSEPORT), is ready once
// it has the agent's snapshot, then the old one gets SIGTERM, stops
// accepting and drains. No request may fail, and connections opened
// before the first restart keep exchanging bytes and close cleanly. Then
// the same with keep-alive connections, which stay on the old process
// until its grace ends: it closes them and fortio reconnects.
func TestRestartUnderLoad(t *testing.T) {
	m := startRestartMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fortioBin, err := meshtest.EnsureFortio(ctx, "", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	server, client := m.topo.Pod("server"), m.topo.Pod("client")
	srv := meshtest.Exec(ctx, server.NS, fortioBin, "server", "-http-port", "8080", "-grpc-port", "disabled",
		"-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled", "-loglevel", "warning")
	var srvLog bytes.Buffer
	srv.Stdout, srv.Stderr = &srvLog, &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("---- fortio server:\n%s", lastN(srvLog.String(), 10))
		}
	})
	echo, err := meshtest.Serve(server, 8081, meshtest.Echo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	// The fortio server itself (the pod's own address is not redirected),
	// then through the mesh from the client pod.
	if err := meshtest.WaitTCP(ctx, server.NS, server.IP.String()+":8080"); err != nil {
		t.Fatal(err)
	}
	if _, code, err := meshtest.Get(ctx, client.NS, server.IP.String()+":8080", "/echo", 5*time.Second); err != nil || code != 200 {
		t.Fatalf("GET through the mesh: %d %v", code, err)
	}

	// Long-lived connections, through the first generation on both nodes.
	cns, err := client.OpenNetNS()
	if err != nil {
		t.Fatal(err)
	}
	defer cns.Close()
	longs := make([]*longConn, 4)
	for i := range longs {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := cns.Dial(dctx, netip.Addr{}, netip.AddrPortFrom(server.IP, 8081), inpod.SocketOpts{})
		dcancel()
		if err != nil {
			t.Fatal(err)
		}
		longs[i] = &longConn{c: c}
	}
	stopPing := make(chan struct{})
	var pings sync.WaitGroup
	for _, l := range longs {
		pings.Add(1)
		go func() { defer pings.Done(); l.pingPong(stopPing) }()
	}

	// Phase 1: a new connection per request, three restarts per node.
	const d1 = 14 * time.Second
	begin := time.Now()
	wait := m.fortio(ctx, fortioBin, d1, false)
	time.Sleep(1500 * time.Millisecond)
	var olds []*ztProc
	for round := 0; round < restartRounds; round++ {
		for _, node := range []string{"node-a", "node-b"} {
			old, nw := m.restart(node, laterGrace)
			olds = append(olds, old)
			t.Logf("restart %d of %s at %v: gen %d ready in %v, SIGTERM to gen %d",
				round+1, node, time.Since(begin).Round(time.Millisecond), nw.gen, nw.readyIn.Round(time.Millisecond), old.gen)
			time.Sleep(700 * time.Millisecond)
		}
	}
	if el := time.Since(begin); el > d1-time.Second {
		t.Errorf("the restarts took %v: too close to the end of the %v load", el, d1)
	}
	r1 := wait()
	t.Logf("keep-alive off: %d requests, %.1f req/s over %v, codes %v, %d sockets",
		r1.DurationHistogram.Count, r1.ActualQPS, time.Duration(r1.ActualDuration).Round(time.Millisecond), r1.RetCodes, r1.SocketCount)

	// The intermediate generations only had short requests: they drained
	// and exited at once. The first holds the long-lived connections.
	for _, p := range olds {
		if p.gen == 0 {
			if p.exited() {
				t.Errorf("%s exited while its long-lived connections were open: %v", p, p.exitErr)
			}
			continue
		}
		m.waitExit(p, time.Second)
		t.Logf("%s: exited %v after SIGTERM", p, p.exitAt.Sub(p.termAt).Round(time.Millisecond))
	}
	close(stopPing)
	pings.Wait()
	closed := time.Now()
	for i, l := range longs {
		err := l.finish()
		t.Logf("long-lived connection %d: %d bytes sent, %d echoed across %d restarts: %v", i, l.sent, l.got, 2*restartRounds, err)
		if err != nil {
			t.Errorf("long-lived connection %d broke: %v", i, err)
		}
	}
	for _, p := range olds {
		if p.gen == 0 {
			m.waitExit(p, time.Second)
			t.Logf("%s: exited %v after SIGTERM, %v after its last connection closed",
				p, p.exitAt.Sub(p.termAt).Round(time.Millisecond), p.exitAt.Sub(closed).Round(time.Millisecond))
		}
	}

	// Phase 2: keep-alive. The old process keeps its connections until
	// they end or its grace does; then it closes them (FIN), and fortio,
	// finding a reused connection closed before any byte of a response,
	// reconnects (to the new process) and retries.
	const d2 = 8 * time.Second
	begin = time.Now()
	wait = m.fortio(ctx, fortioBin, d2, true)
	time.Sleep(1500 * time.Millisecond)
	olds = olds[:0]
	for _, node := range []string{"node-a", "node-b"} {
		old, nw := m.restart(node, laterGrace)
		olds = append(olds, old)
		t.Logf("keep-alive restart of %s at %v: gen %d ready in %v, SIGTERM to gen %d",
			node, time.Since(begin).Round(time.Millisecond), nw.gen, nw.readyIn.Round(time.Millisecond), old.gen)
		time.Sleep(500 * time.Millisecond)
	}
	for _, p := range olds {
		m.waitExit(p, time.Second)
		t.Logf("%s: exited %v after SIGTERM (grace %v); %s", p, p.exitAt.Sub(p.termAt).Round(time.Millisecond), p.grace, graceCut(t, p))
	}
	if el := time.Since(begin); el > d2-time.Second {
		t.Errorf("the keep-alive restarts took %v: too close to the end of the %v load", el, d2)
	}
	r2 := wait()
	t.Logf("keep-alive on: %d requests, %.1f req/s over %v, codes %v, %d sockets",
		r2.DurationHistogram.Count, r2.ActualQPS, time.Duration(r2.ActualDuration).Round(time.Millisecond), r2.RetCodes, r2.SocketCount)
	if r2.SocketCount <= 8 {
		t.Errorf("fortio opened %d connections: the old ztunnel's keep-alive connections were not closed at the end of its grace", r2.SocketCount)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("test timed out")
	}
}
