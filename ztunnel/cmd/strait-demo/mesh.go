package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/strait-mesh/strait/internal/meshtest"
)

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
}

// runMesh is the root demo. Everything it creates is removed on return.
func runMesh(ctx context.Context, ztunnelBin string) (err error) {
	start := time.Now()
	if _, err := os.Stat(ztunnelBin); err != nil {
		return fmt.Errorf("ztunnel binary: %w (run `make build` first, or use `make demo`)", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "strait-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step := func(format string, args ...any) {
		fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	topo, err := meshtest.Build(fmt.Sprintf("sd%d", os.Getpid()%100000), meshtest.ShopSpec())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		step("removed every namespace, link and rule")
	}()
	for _, n := range topo.Nodes {
		step("node %-7s netns %-10s %s, pods in %s", n.Name, n.NS, n.IP, n.PodCIDR)
	}
	for _, p := range topo.Pods {
		step("pod  %-9s netns %-10s %s on %s (%s/%s)", p.Name, p.NS, p.IP, p.Node.Name, p.Namespace, p.ServiceAccount)
	}

	enrolled := meshtest.ShopEnrolled()
	cfgPath := filepath.Join(dir, "workloads.yaml")
	if err := os.WriteFile(cfgPath, topo.WorkloadsYAML(enrolled, meshtest.ShopPolicies), 0o644); err != nil {
		return err
	}

	var procs []*proc
	defer func() {
		for _, p := range procs {
			if p.cmd.Process != nil && p.cmd.ProcessState == nil {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
			p.log.Close()
		}
	}()
	startProc := func(name string, args ...string) (*proc, error) {
		lf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			lf.Close()
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		p := &proc{name: name, cmd: cmd, log: lf}
		procs = append(procs, p)
		return p, nil
	}

	server := topo.Pod("server")
	if _, err := startProc("server-app", "ip", "netns", "exec", server.NS, self, "echo-server", ":8080"); err != nil {
		return err
	}
	if err := meshtest.WaitTCP(ctx, server.NS, server.IP.String()+":8080"); err != nil {
		return fmt.Errorf("server app: %w", err)
	}
	step("pod server runs a small echo process on :8080")

	ztunnels := map[string]*proc{}
	for _, n := range topo.Nodes {
		sock := filepath.Join(dir, n.Name+".sock")
		agent, err := meshtest.StartAgent(sock)
		if err != nil {
			return err
		}
		defer agent.Close()
		zt, err := startProc("ztunnel-"+n.Name, "ip", "netns", "exec", n.NS, ztunnelBin,
			"-config", cfgPath, "-node", n.Name, "-ca-dir", filepath.Join(dir, "ca"), "-zds-socket", sock,
			"-admin-addr", "127.0.0.1:15000", "-ready-addr", "127.0.0.1:15021", "-metrics-addr", "127.0.0.1:15020",
			"-drain-grace", "5s")
		if err != nil {
			return err
		}
		ztunnels[n.Name] = zt
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		if err := agent.WaitProxy(wctx); err != nil {
			cancel()
			return fmt.Errorf("ztunnel on %s did not connect to its node agent: %w (log: %s)", n.Name, err, tail(zt.log.Name()))
		}
		var names []string
		for _, p := range topo.Pods {
			if p.Node == n && enrolled[p.Name] {
				if err := agent.Enroll(wctx, p); err != nil {
					cancel()
					return fmt.Errorf("enroll %s: %w (log: %s)", p.Name, err, tail(zt.log.Name()))
				}
				names = append(names, p.Name)
			}
		}
		if err := agent.SnapshotSent(wctx); err != nil {
			cancel()
			return err
		}
		cancel()
		step("ztunnel %-7s pid %d, enrolled %s (%s rules + netns over ZDS)", n.Name, zt.cmd.Process.Pid, strings.Join(names, ", "), agent.Backend().Kind())
	}
	for _, n := range topo.Nodes {
		if err := meshtest.WaitReady(ctx, n.NS, "127.0.0.1:15021"); err != nil {
			return fmt.Errorf("ztunnel on %s not ready: %w", n.Name, err)
		}
	}

	fmt.Println()
	type result struct{ what, got string }
	var results []result
	run := func(p *meshtest.Pod, dst, msg string) string {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p.NS, self, "client", dst, msg).CombinedOutput()
		s := strings.TrimSpace(string(out))
		if err != nil && s == "" {
			s = err.Error()
		}
		return s
	}
	results = append(results,
		result{"client → server 10.201.2.2:8080 (node-a → node-b, HBONE)", run(topo.Pod("client"), server.IP.String()+":8080", "hello through the mesh")},
		result{"client → checkout VIP 10.96.0.10:80", run(topo.Pod("client"), "10.96.0.10:80", "hello via the service")},
		result{"intruder (attic/scraper) → server: policy allows only shop/frontend", run(topo.Pod("intruder"), server.IP.String()+":8080", "let me in")},
		result{"outsider (not enrolled, plaintext) → server: STRICT", run(topo.Pod("outsider"), server.IP.String()+":8080", "plaintext")},
	)
	for _, r := range results {
		fmt.Printf("  %-70s %s\n", r.what, r.got)
	}

	fmt.Println("\nwhat the ztunnels counted (Prometheus, Istio names):")
	for _, n := range topo.Nodes {
		body, err := scrapeNode(ctx, n)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(body, "\n") {
			if (strings.HasPrefix(line, "istio_tcp_connections_opened_total{") || strings.HasPrefix(line, "strait_connection_failures_total{")) && !strings.HasSuffix(line, " 0") {
				fmt.Printf("  %-7s %s\n", n.Name, compactLabels(line))
			}
		}
	}

	fmt.Println()
	for _, n := range topo.Nodes {
		zt := ztunnels[n.Name]
		zt.cmd.Process.Signal(syscall.SIGTERM)
		werr := waitExit(zt.cmd, 15*time.Second)
		status := "exit 0"
		if werr != nil {
			status = werr.Error()
		}
		step("ztunnel %s: SIGTERM → drained → %s", n.Name, status)
	}
	ok := strings.HasPrefix(results[0].got, "echo: hello through the mesh") &&
		strings.HasPrefix(results[1].got, "echo: hello via the service") &&
		strings.HasPrefix(results[2].got, "refused") && strings.HasPrefix(results[3].got, "refused")
	if !ok {
		return fmt.Errorf("the mesh did not behave as shown above (logs in %s were removed; rerun with -loopback to compare)", dir)
	}
	fmt.Printf("\nsummary: a tunneled request across nodes, a service VIP, a policy refusal and a STRICT refusal, in %.1fs\n", time.Since(start).Seconds())
	return nil
}

// compactLabels keeps the labels a reader cares about.
func compactLabels(line string) string {
	keep := []string{"reporter", "source_workload", "source_principal", "destination_workload", "connection_security_policy", "direction", "reason"}
	open, close := strings.Index(line, "{"), strings.LastIndex(line, "}")
	if open < 0 || close < open {
		return line
	}
	var out []string
	for _, kv := range strings.Split(line[open+1:close], ",") {
		k, _, _ := strings.Cut(kv, "=")
		for _, want := range keep {
			if k == want {
				out = append(out, kv)
			}
		}
	}
	return line[:open] + "{" + strings.Join(out, ",") + "}" + line[close+1:]
}

func waitExit(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		return fmt.Errorf("did not exit within %v", d)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

func scrapeNode(ctx context.Context, n *meshtest.Node) (string, error) {
	body, _, err := meshtest.Get(ctx, n.NS, "127.0.0.1:15020", "/metrics", 5*time.Second)
	return string(body), err
}

// podEchoServer is the server pod's process: it answers each line with
// "echo: <line>".
func podEchoServer(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: echo-server ADDR")
	}
	ln, err := net.Listen("tcp", args[0])
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil && line == "" {
				return
			}
			fmt.Fprintf(c, "echo: %s (as seen by the server process, from %s)\n", strings.TrimSpace(line), c.RemoteAddr())
		}()
	}
}

// podClient is a client pod's process: it sends one line and prints the
// answer, or "refused: ..." when the mesh refuses the connection.
func podClient(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: client ADDR MSG")
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		fmt.Println("refused:", err)
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s\n", args[1])
	b, err := io.ReadAll(c)
	switch {
	case len(b) > 0:
		fmt.Print(string(b))
	case err != nil:
		fmt.Println("refused:", err)
	default:
		fmt.Println("refused: connection closed without an answer")
	}
	return nil
}
