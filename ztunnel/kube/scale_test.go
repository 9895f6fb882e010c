package kube_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/strait-mesh/strait/internal/kubetest"
	"github.com/strait-mesh/strait/ztunnel/kube"
	"github.com/strait-mesh/strait/ztunnel/store"
)

var (
	scalePods     = flag.Int("kube-pods", 1000, "BenchmarkSyncScale: pods in the API server (make bench-kube: 10000)")
	scaleServices = flag.Int("kube-services", 200, "BenchmarkSyncScale: services, each with an EndpointSlice (make bench-kube: 2000)")
)

// BenchmarkSyncScale fills a real API server with -kube-pods pods (ready,
// with IPs, spread over 10 namespaces, half of them enrolled) and
// -kube-services services with their EndpointSlices, then measures one
// source's initial sync: time from Run to the first snapshot, and the Go
// heap it holds afterwards (informer caches + snapshot) per pod.
func BenchmarkSyncScale(b *testing.B) {
	c := kubetest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 5000, 5000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	c.Client = cs // the kubelet helpers use it too
	// A ztunnel process against the empty cluster: the RSS baseline.
	dir := b.TempDir()
	zt := filepath.Join(dir, "ztunnel")
	if out, err := exec.Command("go", "build", "-o", zt, "github.com/strait-mesh/strait/ztunnel/cmd/ztunnel").CombinedOutput(); err != nil {
		b.Fatalf("go build ztunnel: %v\n%s", err, out)
	}
	_, rss0 := ztunnelRSS(b, zt, c.KubeconfigPath, dir)
	const namespaces = 10
	for i := range namespaces {
		if err := c.EnsureNamespace(ctx, fmt.Sprintf("ns-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	fill := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *scalePods {
					return
				}
				labels := map[string]string{"app": fmt.Sprintf("app-%d", i%*scaleServices)}
				if i%2 == 0 {
					labels[kube.LabelDataplaneMode] = kube.ModeAmbient
				}
				_, err := c.CreatePod(ctx, kubetest.PodSpec{Namespace: fmt.Sprintf("ns-%d", i%namespaces), Name: fmt.Sprintf("pod-%d", i),
					Node: fmt.Sprintf("node-%d", i%50), ServiceAccount: "default", Labels: labels,
					IP: fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	next.Store(0)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *scaleServices {
					return
				}
				// app-i lives in namespace i%10 for the pods i, i+services, ...
				// when services is a multiple of 10; the selector is what counts.
				svc, err := c.CreateService(ctx, fmt.Sprintf("ns-%d", i%namespaces), fmt.Sprintf("svc-%d", i), "",
					[]corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}, map[string]string{"app": fmt.Sprintf("app-%d", i)})
				if err == nil {
					_, err = c.SyncEndpointSlice(ctx, svc)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("filled the API server with %d pods and %d services in %v", *scalePods, *scaleServices, time.Since(fill).Round(time.Millisecond))

	// The same ztunnel binary against the full cluster.
	readyIn, rss1 := ztunnelRSS(b, zt, c.KubeconfigPath, dir)
	b.ReportMetric(float64(rss1-rss0)/float64(*scalePods), "ztunnel_rss_KiB/pod")
	b.Logf("ztunnel process (-kube): RSS %.1f MiB with an empty cluster, %.1f MiB with %d pods and %d services (%.2f KiB per pod), ready %v after start",
		float64(rss0)/1024, float64(rss1)/1024, *scalePods, *scaleServices, float64(rss1-rss0)/float64(*scalePods), readyIn.Round(time.Millisecond))
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		st := store.New()
		src, err := kube.New(kube.Options{Config: c.Config, Store: st, Translator: kube.Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"}, Logger: zap.NewNop()})
		if err != nil {
			b.Fatal(err)
		}
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- src.Run(rctx) }()
		select {
		case <-src.Ready():
		case err := <-done:
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		snap := st.Load()
		// +1: the API server's own default/kubernetes service.
		if len(snap.Workloads()) != *scalePods || len(snap.Services()) != *scaleServices+1 {
			b.Fatalf("snapshot holds %d workloads and %d services, want %d and %d", len(snap.Workloads()), len(snap.Services()), *scalePods, *scaleServices+1)
		}
		heap := float64(m1.HeapAlloc) - float64(m0.HeapAlloc)
		// The store's own share: a second snapshot of the same view.
		m := kube.Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"}.Translate(src.View())
		var m2, m3 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m2)
		snap2, err := store.NewSnapshot(m.Workloads, m.Services, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		m = kube.Mesh{}
		runtime.GC()
		runtime.ReadMemStats(&m3)
		storeHeap := float64(m3.HeapAlloc) - float64(m2.HeapAlloc)
		runtime.KeepAlive(snap2)
		b.ReportMetric(storeHeap/float64(*scalePods)/1024, "store_KiB/pod")
		b.ReportMetric(src.SyncTime().Seconds(), "sync_s")
		b.ReportMetric(heap/float64(*scalePods)/1024, "heap_KiB/pod")
		b.ReportMetric(heap/(1<<20), "heap_MiB")
		b.Logf("%d pods, %d services: initial sync %v, heap held %.1f MiB = %.2f KiB per pod (informer caches + snapshot), of which the store's snapshot %.2f KiB per pod",
			*scalePods, *scaleServices, src.SyncTime().Round(time.Millisecond), heap/(1<<20), heap/float64(*scalePods)/1024, storeHeap/float64(*scalePods)/1024)
		runtime.KeepAlive(src)
		rcancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// ztunnelRSS starts the ztunnel binary with -kube against the cluster
// (no node agent, file CA), waits until it is ready, lets it settle and
// returns the time to ready and its VmRSS in KiB.
func ztunnelRSS(b *testing.B, bin, kubeconfig, dir string) (time.Duration, int64) {
	b.Helper()
	ready := freeAddr(b)
	cmd := exec.Command(bin, "-kube", "-kubeconfig", kubeconfig, "-node", "node-0", "-ca-dir", filepath.Join(dir, "ca"), "-zds-socket", "",
		"-admin-addr", freeAddr(b), "-ready-addr", ready, "-metrics-addr", freeAddr(b), "-log-level", "warn")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	var readyIn time.Duration
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		resp, err := http.Get("http://" + ready + "/healthz/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				readyIn = time.Since(start)
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("ztunnel not ready after 60 s:\n%s", out.String())
		}
	}
	time.Sleep(3 * time.Second) // settle: the first rebuilds' garbage collected
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kib, _ := strconv.ParseInt(f[1], 10, 64)
			return readyIn, kib
		}
	}
	b.Fatal("no VmRSS")
	return 0, 0
}

func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
