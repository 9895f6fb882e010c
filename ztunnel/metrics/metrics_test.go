package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

var tcpNames = []string{NameConnectionsOpened, NameConnectionsClosed, NameSentBytes, NameReceivedBytes}

func fullLabels() Labels {
	return Labels{
		Reporter:             ReporterDestination,
		SourceWorkload:       "sleep",
		SourceNamespace:      "client-ns",
		SourcePrincipal:      "spiffe://cluster.local/ns/client-ns/sa/sleep",
		DestinationWorkload:  "httpbin",
		DestinationNamespace: "server-ns",
		DestinationPrincipal: "spiffe://cluster.local/ns/server-ns/sa/httpbin",
		DestinationService:   "httpbin.server-ns.svc.cluster.local",
		SecurityPolicy:       SecurityMutualTLS,
		ResponseFlags:        "",
	}
}

const fullLabelText = `connection_security_policy="mutual_tls",destination_principal="spiffe://cluster.local/ns/server-ns/sa/httpbin",destination_service="httpbin.server-ns.svc.cluster.local",destination_workload="httpbin",destination_workload_namespace="server-ns",reporter="destination",response_flags="-",source_principal="spiffe://cluster.local/ns/client-ns/sa/sleep",source_workload="sleep",source_workload_namespace="client-ns"`

const tcpHelp = `# HELP istio_tcp_connections_closed_total The total number of TCP connections closed
# TYPE istio_tcp_connections_closed_total counter
# HELP istio_tcp_connections_opened_total The total number of TCP connections opened
# TYPE istio_tcp_connections_opened_total counter
# HELP istio_tcp_received_bytes_total The size of total bytes received during request in case of a TCP connection
# TYPE istio_tcp_received_bytes_total counter
# HELP istio_tcp_sent_bytes_total The size of total bytes sent during response in case of a TCP connection
# TYPE istio_tcp_sent_bytes_total counter
`

// scrape serves m.Handler on a loopback test server and compares the
// exposition of names with want.
func scrape(t *testing.T, m *Metrics, want string, names ...string) {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	if err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
}

func TestIstioTCPMetricsScrape(t *testing.T) {
	m := New()
	r := m.ConnOpened(fullLabels())
	r.AddReceived(1200)
	r.AddSent(340)
	r.AddSent(60)
	r.AddReceived(0)
	r.AddSent(-5) // ignored
	r.Close()
	r.Close()                  // counted once
	m.ConnOpened(fullLabels()) // still open

	want := tcpHelp + fmt.Sprintf(`istio_tcp_connections_closed_total{%[1]s} 1
istio_tcp_connections_opened_total{%[1]s} 2
istio_tcp_received_bytes_total{%[1]s} 1200
istio_tcp_sent_bytes_total{%[1]s} 400
`, fullLabelText)
	scrape(t, m, want, tcpNames...)
}

func TestEmptyLabelsAreUnknown(t *testing.T) {
	m := New()
	m.ConnOpened(Labels{}).Close()
	lt := `connection_security_policy="unknown",destination_principal="unknown",destination_service="unknown",destination_workload="unknown",destination_workload_namespace="unknown",reporter="unknown",response_flags="-",source_principal="unknown",source_workload="unknown",source_workload_namespace="unknown"`
	want := `# HELP istio_tcp_connections_opened_total The total number of TCP connections opened
# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{` + lt + `} 1
# HELP istio_tcp_connections_closed_total The total number of TCP connections closed
# TYPE istio_tcp_connections_closed_total counter
istio_tcp_connections_closed_total{` + lt + `} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), NameConnectionsOpened, NameConnectionsClosed); err != nil {
		t.Fatal(err)
	}
}

func TestEnumLabelsClamped(t *testing.T) {
	cases := []struct {
		name string
		in   Labels
		want map[string]string
	}{
		{"valid", Labels{Reporter: ReporterSource, SecurityPolicy: SecurityNone, ResponseFlags: FlagDeny},
			map[string]string{"reporter": "source", "connection_security_policy": "none", "response_flags": "DENY"}},
		{"connect", Labels{Reporter: ReporterDestination, SecurityPolicy: SecurityMutualTLS, ResponseFlags: FlagConnect},
			map[string]string{"reporter": "destination", "connection_security_policy": "mutual_tls", "response_flags": "CONNECT"}},
		{"dash", Labels{ResponseFlags: FlagNone},
			map[string]string{"response_flags": "-"}},
		{"bogus", Labels{Reporter: "client", SecurityPolicy: "tls", ResponseFlags: "UF,URX"},
			map[string]string{"reporter": "unknown", "connection_security_policy": "unknown", "response_flags": "UNKNOWN"}},
		{"bad utf8", Labels{SourceWorkload: "a\xffb"},
			map[string]string{"source_workload": "a\uFFFDb"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := New()
			m.ConnOpened(c.in)
			mfs, err := m.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, mf := range mfs {
				if mf.GetName() != NameConnectionsOpened {
					continue
				}
				if len(mf.GetMetric()) != 1 {
					t.Fatalf("%d series, want 1", len(mf.GetMetric()))
				}
				for _, lp := range mf.GetMetric()[0].GetLabel() {
					got[lp.GetName()] = lp.GetValue()
				}
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("label %s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestCloseWithFlags(t *testing.T) {
	m := New()
	l := fullLabels()
	l.Reporter = ReporterSource
	r := m.ConnOpened(l)
	r.AddReceived(10)
	r.CloseWithFlags(FlagConnect)
	r.Close() // already closed
	r.CloseWithFlags(FlagDeny)

	ok := m.ConnOpened(l)
	ok.CloseWithFlags("") // same series as ConnOpened

	lt := strings.Replace(fullLabelText, `reporter="destination"`, `reporter="source"`, 1)
	ltConnect := strings.Replace(lt, `response_flags="-"`, `response_flags="CONNECT"`, 1)
	want := tcpHelp + fmt.Sprintf(`istio_tcp_connections_closed_total{%[1]s} 1
istio_tcp_connections_closed_total{%[2]s} 1
istio_tcp_connections_opened_total{%[1]s} 2
istio_tcp_received_bytes_total{%[1]s} 10
istio_tcp_sent_bytes_total{%[1]s} 0
`, lt, ltConnect)
	scrape(t, m, want, tcpNames...)
}

func TestStraitMetricsScrape(t *testing.T) {
	m := New(WithVersion("v1.2.3"))
	m.Failure(DirectionOutbound, "dial")
	m.Failure(DirectionOutbound, "dial")
	m.Failure(DirectionInbound, "policy")
	m.Failure("sideways", "")
	m.SetPool(3, 17)
	exp := time.Unix(1_900_000_000, 0)
	m.SetCertExpiry("spiffe://cluster.local/ns/a/sa/x", exp)
	m.SetCertExpiry("spiffe://cluster.local/ns/b/sa/y", exp.Add(time.Hour))
	m.SetCertExpiry("spiffe://cluster.local/ns/c/sa/z", exp)
	m.DeleteCertExpiry("spiffe://cluster.local/ns/c/sa/z")
	m.ConfigReload(true)
	m.ConfigReload(true)
	m.ConfigReload(false)
	m.SetWorkloads(42)
	m.ActiveConn(DirectionInbound, 1)
	m.ActiveConn(DirectionInbound, 1)
	m.ActiveConn(DirectionOutbound, 1)
	m.ActiveConn(DirectionOutbound, -1)
	m.ActiveConn("", 1)

	want := `# HELP strait_active_connections Connections being proxied now, by direction.
# TYPE strait_active_connections gauge
strait_active_connections{direction="inbound"} 2
strait_active_connections{direction="outbound"} 0
strait_active_connections{direction="unknown"} 1
# HELP strait_build_info Strait build information; the value is always 1.
# TYPE strait_build_info gauge
strait_build_info{version="v1.2.3"} 1
# HELP strait_cert_expiry_timestamp_seconds Expiry (Unix seconds) of the current certificate of each local identity.
# TYPE strait_cert_expiry_timestamp_seconds gauge
strait_cert_expiry_timestamp_seconds{identity="spiffe://cluster.local/ns/a/sa/x"} 1.9e+09
strait_cert_expiry_timestamp_seconds{identity="spiffe://cluster.local/ns/b/sa/y"} 1.9000036e+09
# HELP strait_config_reloads_total Configuration updates applied (ok) or refused (rejected).
# TYPE strait_config_reloads_total counter
strait_config_reloads_total{result="ok"} 2
strait_config_reloads_total{result="rejected"} 1
# HELP strait_connection_failures_total Connections that failed before or while being proxied, by direction and reason.
# TYPE strait_connection_failures_total counter
strait_connection_failures_total{direction="inbound",reason="policy"} 1
strait_connection_failures_total{direction="outbound",reason="dial"} 2
strait_connection_failures_total{direction="unknown",reason="unknown"} 1
# HELP strait_hbone_pool_connections HBONE connections open in the outbound pool.
# TYPE strait_hbone_pool_connections gauge
strait_hbone_pool_connections 3
# HELP strait_hbone_pool_streams HBONE streams (tunnels) open on pooled connections.
# TYPE strait_hbone_pool_streams gauge
strait_hbone_pool_streams 17
# HELP strait_workloads Workloads known to the node proxy.
# TYPE strait_workloads gauge
strait_workloads 42
`
	scrape(t, m, want, NameActiveConnections, NameBuildInfo, NameCertExpiry, NameConfigReloads,
		NameFailures, NamePoolConnections, NamePoolStreams, NameWorkloads)

	if got := testutil.ToFloat64(m.certExpiry.WithLabelValues("spiffe://cluster.local/ns/a/sa/x")); got != float64(exp.Unix()) {
		t.Fatalf("expiry %v, want %v", got, exp.Unix())
	}
}

func TestBuildInfoDefaultVersion(t *testing.T) {
	m := New()
	if n := testutil.CollectAndCount(m.Registry(), NameBuildInfo); n != 1 {
		t.Fatalf("%d build_info series, want 1", n)
	}
}

func TestHandlerTextFormatAndCollectors(t *testing.T) {
	m := New()
	m.ConnOpened(fullLabels())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	for _, path := range []string{"/metrics", "/stats/prometheus"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Fatalf("%s: Content-Type %q, want the Prometheus text format", path, ct)
		}
		text := string(body)
		for _, want := range []string{
			"# TYPE istio_tcp_connections_opened_total counter\n",
			"istio_tcp_connections_opened_total{" + fullLabelText + "} 1\n",
			"# TYPE go_goroutines gauge\n",
			"# TYPE process_cpu_seconds_total counter\n",
			"# TYPE strait_build_info gauge\n",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: scrape lacks %q", path, want)
			}
		}
	}
}

func TestOwnRegistryNotGlobal(t *testing.T) {
	m := New()
	m.ConnOpened(fullLabels())
	if m.Registry() == prometheus.DefaultRegisterer {
		t.Fatal("Registry is the global registry")
	}
	if n, err := testutil.GatherAndCount(prometheus.DefaultGatherer, NameConnectionsOpened); err != nil || n != 0 {
		t.Fatalf("global registry has %d %s series (err %v)", n, NameConnectionsOpened, err)
	}
	// Two sets side by side do not collide.
	m2 := New()
	m2.ConnOpened(fullLabels()).Close()
	if got := testutil.ToFloat64(m.closed); got != 0 {
		t.Fatalf("first set's closed = %v, want 0", got)
	}
}

func TestPromlint(t *testing.T) {
	m := New()
	m.ConnOpened(fullLabels())
	m.Failure(DirectionInbound, "x")
	m.SetCertExpiry("id", time.Now())
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "istio_") || strings.HasPrefix(p.Metric, "strait_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestNilMetricsAndRecorderAreNoOps(t *testing.T) {
	var m *Metrics
	r := m.ConnOpened(fullLabels())
	r.AddSent(1)
	r.AddReceived(1)
	r.Close()
	r.CloseWithFlags(FlagDeny)
	m.Failure(DirectionInbound, "x")
	m.SetPool(1, 1)
	m.SetCertExpiry("id", time.Now())
	m.DeleteCertExpiry("id")
	m.ConfigReload(true)
	m.SetWorkloads(1)
	m.ActiveConn(DirectionInbound, 1)
	if m.Registry() != nil {
		t.Fatal("nil Metrics has a registry")
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("nil Metrics handler: %d", rec.Code)
	}
}

// TestConcurrentRecorders: many goroutines open, count and close
// connections over a few label sets; totals must add up (run with -race).
func TestConcurrentRecorders(t *testing.T) {
	m := New()
	const workers, perWorker = 8, 500
	labelSets := []Labels{fullLabels(), {Reporter: ReporterSource}, {Reporter: ReporterDestination, ResponseFlags: FlagDeny}}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				r := m.ConnOpened(labelSets[(w+i)%len(labelSets)])
				var inner sync.WaitGroup
				inner.Add(2)
				go func() { defer inner.Done(); r.AddSent(3) }()
				go func() { defer inner.Done(); r.AddReceived(5) }()
				inner.Wait()
				r.Close()
			}
		}()
	}
	wg.Wait()
	const total = workers * perWorker
	for name, want := range map[string]float64{
		NameConnectionsOpened: total, NameConnectionsClosed: total,
		NameSentBytes: 3 * total, NameReceivedBytes: 5 * total,
	} {
		got := sumOf(t, m, name)
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n := testutil.CollectAndCount(m.opened); n != len(labelSets) {
		t.Errorf("%d opened series, want %d", n, len(labelSets))
	}
}

func sumOf(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, s := range mf.GetMetric() {
				sum += s.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestNoDataPathImports: the metrics package takes values, never the data
// path's packages (internal/archtest checks the whole module's graph).
func TestNoDataPathImports(t *testing.T) {
	checkNoDataPathImports(t, ".")
}

func checkNoDataPathImports(t *testing.T, dir string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", dir)
	cmd.Dir = filepath.Dir(file)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/strait-mesh/strait/"
	for _, dep := range strings.Fields(string(out)) {
		for _, bad := range []string{"ztunnel/inbound", "ztunnel/outbound", "ztunnel/inpod", "ztunnel/hbone", "ztunnel/app", "ztunnel/relay"} {
			if strings.HasPrefix(dep, mod+bad) {
				t.Errorf("depends on %s", dep)
			}
		}
	}
}

func BenchmarkConnOpenedClose(b *testing.B) {
	m := New()
	l := fullLabels()
	b.ReportAllocs()
	for b.Loop() {
		r := m.ConnOpened(l)
		r.AddSent(4096)
		r.AddReceived(1024)
		r.Close()
	}
}

func BenchmarkConnOpenedCloseParallel(b *testing.B) {
	m := New()
	l := fullLabels()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := m.ConnOpened(l)
			r.AddSent(4096)
			r.AddReceived(1024)
			r.Close()
		}
	})
}
