package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/strait-mesh/strait/identity/caroot"
	"github.com/strait-mesh/strait/internal/kubetest"
)

// TestBinary builds strait-ca, runs it against a real API server with a
// kubeconfig, checks its HTTPS readiness with the published bundle and
// the Service DNS name, and stops it with SIGTERM.
func TestBinary(t *testing.T) {
	c := kubetest.Start(t)
	bin := filepath.Join(t.TempDir(), "strait-ca")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := c.EnsureNamespace(ctx, "strait-system"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-kubeconfig", c.KubeconfigPath, "-listen", "127.0.0.1:0", "-metrics-addr", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	var started struct {
		Addr        string `json:"addr"`
		MetricsAddr string `json:"metrics_addr"`
	}
	var logs []string
	for started.Addr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("strait-ca exited: %v\n%s", <-exited, strings.Join(logs, "\n"))
			}
			logs = append(logs, l)
			if strings.Contains(l, `"strait CA started"`) {
				if err := json.Unmarshal([]byte(l), &started); err != nil {
					t.Fatal(err)
				}
			}
		case <-ctx.Done():
			t.Fatalf("strait-ca did not start\n%s", strings.Join(logs, "\n"))
		}
	}

	cm, err := c.Client.CoreV1().ConfigMaps("strait-system").Get(ctx, caroot.DefaultBundleName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(cm.Data[caroot.KeyRoots])) {
		t.Fatal("no roots in the bundle ConfigMap")
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "strait-ca.strait-system.svc.cluster.local", MinVersion: tls.VersionTLS13},
	}}
	for {
		resp, err := hc.Get("https://" + started.Addr + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		} else if strings.Contains(err.Error(), "certificate") {
			t.Fatalf("TLS: %v", err)
		}
		if ctx.Err() != nil {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v (want status 0)", err)
		}
	case <-ctx.Done():
		t.Fatal("strait-ca did not exit after SIGTERM")
	}
}
