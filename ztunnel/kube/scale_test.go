package kube_test

import (
	"context"
	"flag"
	"fmt"
	"runtime"
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

	// The source reads with protobuf, as ztunnel does (kube.ClientConfig).
	pcs, err := kubernetes.NewForConfig(kube.ClientConfig(rest.CopyConfig(c.Config)))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		st := store.New()
		src, err := kube.New(kube.Options{Client: pcs, Store: st, Translator: kube.Translator{TrustDomain: "cluster.local", ClusterDomain: "cluster.local"}, Logger: zap.NewNop()})
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
