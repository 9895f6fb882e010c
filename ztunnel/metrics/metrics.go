package metrics

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Label values of the enumerated labels.
const (
	// reporter: which side of the connection counted it.
	ReporterSource      = "source"      // the client's node proxy (outbound)
	ReporterDestination = "destination" // the server's node proxy (inbound)

	// connection_security_policy.
	SecurityMutualTLS = "mutual_tls"
	SecurityNone      = "none"

	// response_flags, as Istio's ztunnel sets them.
	FlagNone    = "-"       // the connection went through (also what "" becomes)
	FlagDeny    = "DENY"    // refused by authorization policy
	FlagConnect = "CONNECT" // the upstream connection could not be established

	// direction of the Strait metrics.
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"

	// Unknown replaces an empty label value and an out-of-set reporter,
	// policy or direction.
	Unknown = "unknown"
	// FlagUnknown replaces a response flag outside the documented set.
	FlagUnknown = "UNKNOWN"

	// Config reload results.
	ReloadOK       = "ok"
	ReloadRejected = "rejected"
)

// Metric names.
const (
	NameConnectionsOpened = "istio_tcp_connections_opened_total"
	NameConnectionsClosed = "istio_tcp_connections_closed_total"
	NameSentBytes         = "istio_tcp_sent_bytes_total"
	NameReceivedBytes     = "istio_tcp_received_bytes_total"
	NameFailures          = "strait_connection_failures_total"
	NamePoolConnections   = "strait_hbone_pool_connections"
	NamePoolStreams       = "strait_hbone_pool_streams"
	NameCertExpiry        = "strait_cert_expiry_timestamp_seconds"
	NameConfigReloads     = "strait_config_reloads_total"
	NameWorkloads         = "strait_workloads"
	NameActiveConnections = "strait_active_connections"
	NameBuildInfo         = "strait_build_info"
)

// tcpLabelNames is the label order of the Istio TCP metrics; Labels.values
// returns values in the same order.
var tcpLabelNames = []string{
	"reporter",
	"source_workload",
	"source_workload_namespace",
	"source_principal",
	"destination_workload",
	"destination_workload_namespace",
	"destination_principal",
	"destination_service",
	"connection_security_policy",
	"response_flags",
}

// Labels are the Istio labels of one connection. Empty fields are exposed
// as "unknown" (ResponseFlags as "-"); see the package documentation for
// the allowed values and cardinality.
type Labels struct {
	Reporter             string // ReporterSource or ReporterDestination
	SourceWorkload       string
	SourceNamespace      string
	SourcePrincipal      string // SPIFFE id from the mTLS handshake
	DestinationWorkload  string
	DestinationNamespace string
	DestinationPrincipal string
	DestinationService   string // service hostname, e.g. web.default.svc.cluster.local
	SecurityPolicy       string // SecurityMutualTLS or SecurityNone
	ResponseFlags        string // "", FlagNone, FlagDeny or FlagConnect
}

func (l Labels) normalized() Labels {
	l.Reporter = oneOf(l.Reporter, Unknown, ReporterSource, ReporterDestination)
	l.SourceWorkload = clean(l.SourceWorkload)
	l.SourceNamespace = clean(l.SourceNamespace)
	l.SourcePrincipal = clean(l.SourcePrincipal)
	l.DestinationWorkload = clean(l.DestinationWorkload)
	l.DestinationNamespace = clean(l.DestinationNamespace)
	l.DestinationPrincipal = clean(l.DestinationPrincipal)
	l.DestinationService = clean(l.DestinationService)
	l.SecurityPolicy = oneOf(l.SecurityPolicy, Unknown, SecurityMutualTLS, SecurityNone)
	l.ResponseFlags = normFlags(l.ResponseFlags)
	return l
}

func (l *Labels) values() []string {
	return []string{
		l.Reporter,
		l.SourceWorkload,
		l.SourceNamespace,
		l.SourcePrincipal,
		l.DestinationWorkload,
		l.DestinationNamespace,
		l.DestinationPrincipal,
		l.DestinationService,
		l.SecurityPolicy,
		l.ResponseFlags,
	}
}

// clean makes a free-form label value safe: "" becomes Unknown and
// invalid UTF-8 (which client_golang rejects with a panic) is repaired.
func clean(s string) string {
	if s == "" {
		return Unknown
	}
	if !utf8.ValidString(s) {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

// oneOf returns s if it is one of allowed, else def.
func oneOf(s, def string, allowed ...string) string {
	for _, a := range allowed {
		if s == a {
			return a
		}
	}
	return def
}

func normFlags(f string) string {
	switch f {
	case "", FlagNone:
		return FlagNone
	case FlagDeny, FlagConnect:
		return f
	}
	return FlagUnknown
}

func normDirection(d string) string {
	return oneOf(d, Unknown, DirectionInbound, DirectionOutbound)
}

// Option configures New.
type Option func(*options)

type options struct {
	version string
	log     *zap.Logger
}

// WithVersion sets the version label of strait_build_info. Without it the
// main module's version from the build info is used ("unknown" if none).
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithLogger sets the logger for scrape errors (nil: no logging).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }

// Metrics is the node proxy's metric set. Its methods are safe for
// concurrent use, and are no-ops on a nil *Metrics.
type Metrics struct {
	reg     *prometheus.Registry
	handler http.Handler

	opened, closed, sent, received *prometheus.CounterVec

	failures               *prometheus.CounterVec
	poolConns, poolStreams prometheus.Gauge
	certExpiry             *prometheus.GaugeVec
	reloadOK, reloadReject prometheus.Counter
	workloads              prometheus.Gauge
	active                 *prometheus.GaugeVec
	activeIn, activeOut    prometheus.Gauge

	mu     sync.RWMutex
	series map[Labels]*series // key: normalized labels
}

// series is the four Istio counters of one label set, resolved once.
type series struct {
	labels                         Labels
	opened, closed, sent, received prometheus.Counter
}

// New builds the metric set on a fresh registry that also carries the Go
// runtime and process collectors.
func New(opts ...Option) *Metrics {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	if o.version == "" {
		o.version = buildVersion()
	}

	reg := prometheus.NewRegistry()
	m := &Metrics{reg: reg, series: make(map[Labels]*series)}
	counterVec := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	gaugeVec := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}

	m.opened = counterVec(NameConnectionsOpened, "The total number of TCP connections opened", tcpLabelNames)
	m.closed = counterVec(NameConnectionsClosed, "The total number of TCP connections closed", tcpLabelNames)
	m.sent = counterVec(NameSentBytes, "The size of total bytes sent during response in case of a TCP connection", tcpLabelNames)
	m.received = counterVec(NameReceivedBytes, "The size of total bytes received during request in case of a TCP connection", tcpLabelNames)
	m.failures = counterVec(NameFailures, "Connections that failed before or while being proxied, by direction and reason.", []string{"direction", "reason"})
	m.poolConns = gauge(NamePoolConnections, "HBONE connections open in the outbound pool.")
	m.poolStreams = gauge(NamePoolStreams, "HBONE streams (tunnels) open on pooled connections.")
	m.certExpiry = gaugeVec(NameCertExpiry, "Expiry (Unix seconds) of the current certificate of each local identity.", "identity")
	reloads := counterVec(NameConfigReloads, "Configuration updates applied (ok) or refused (rejected).", []string{"result"})
	m.reloadOK = reloads.WithLabelValues(ReloadOK)
	m.reloadReject = reloads.WithLabelValues(ReloadRejected)
	m.workloads = gauge(NameWorkloads, "Workloads known to the node proxy.")
	m.active = gaugeVec(NameActiveConnections, "Connections being proxied now, by direction.", "direction")
	m.activeIn = m.active.WithLabelValues(DirectionInbound)
	m.activeOut = m.active.WithLabelValues(DirectionOutbound)
	buildInfo := gaugeVec(NameBuildInfo, "Strait build information; the value is always 1.", "version")
	buildInfo.WithLabelValues(clean(o.version)).Set(1)

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.opened, m.closed, m.sent, m.received,
		m.failures, m.poolConns, m.poolStreams, m.certExpiry, reloads,
		m.workloads, m.active, buildInfo,
	)
	m.handler = promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      printlnLogger{o.log.Named("metrics")},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
	}))
	return m
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return Unknown
}

// printlnLogger adapts zap to promhttp.Logger.
type printlnLogger struct{ l *zap.Logger }

func (p printlnLogger) Println(v ...any) {
	p.l.Error("metrics: scrape", zap.String("error", strings.TrimSuffix(fmt.Sprintln(v...), "\n")))
}

// Registry is the registry every metric of the set is on. Callers may
// register more collectors on it.
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Handler serves the registry in the Prometheus text format (or the
// protobuf/OpenMetrics format a scraper negotiates) on whatever path it is
// mounted; the admin server mounts it at /metrics and /stats/prometheus.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return m.handler
}

// seriesFor returns the cached counters of a normalized label set.
func (m *Metrics) seriesFor(l Labels) *series {
	m.mu.RLock()
	s := m.series[l]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.series[l]; s != nil {
		return s
	}
	v := l.values()
	s = &series{
		labels:   l,
		opened:   m.opened.WithLabelValues(v...),
		closed:   m.closed.WithLabelValues(v...),
		sent:     m.sent.WithLabelValues(v...),
		received: m.received.WithLabelValues(v...),
	}
	m.series[l] = s
	return s
}

// ConnOpened counts a new connection (istio_tcp_connections_opened_total)
// and returns the recorder for its bytes and its close. Call it once per
// connection.
func (m *Metrics) ConnOpened(l Labels) *ConnRecorder {
	if m == nil {
		return nil
	}
	s := m.seriesFor(l.normalized())
	s.opened.Inc()
	return &ConnRecorder{m: m, s: s}
}

// ConnRecorder records one connection's bytes and close. Its methods are
// safe for concurrent use (each direction of a relay may report its own
// bytes) and are no-ops on a nil *ConnRecorder.
type ConnRecorder struct {
	m      *Metrics
	s      *series
	closed atomic.Bool
}

// AddSent adds n bytes of the response direction (server → client) to
// istio_tcp_sent_bytes_total. It does not allocate; calling it once at
// close with the relay's total is cheapest.
func (r *ConnRecorder) AddSent(n int64) {
	if r == nil || n <= 0 {
		return
	}
	r.s.sent.Add(float64(n))
}

// AddReceived adds n bytes of the request direction (client → server) to
// istio_tcp_received_bytes_total.
func (r *ConnRecorder) AddReceived(n int64) {
	if r == nil || n <= 0 {
		return
	}
	r.s.received.Add(float64(n))
}

// Close counts the connection closed (istio_tcp_connections_closed_total)
// with the labels it was opened with. Only the first Close or
// CloseWithFlags counts.
func (r *ConnRecorder) Close() {
	if r == nil || !r.closed.CompareAndSwap(false, true) {
		return
	}
	r.s.closed.Inc()
}

// CloseWithFlags is Close with response_flags replaced on the closed
// counter, as Istio's ztunnel does when a connection ends in a policy
// denial (FlagDeny) or an upstream failure (FlagConnect). The opened and
// byte counters keep the labels of ConnOpened.
func (r *ConnRecorder) CloseWithFlags(flags string) {
	if r == nil || !r.closed.CompareAndSwap(false, true) {
		return
	}
	flags = normFlags(flags)
	if flags == r.s.labels.ResponseFlags {
		r.s.closed.Inc()
		return
	}
	// Only the closed counter gets the flagged label set, so no
	// zero-valued opened or byte series appear for it.
	l := r.s.labels
	l.ResponseFlags = flags
	r.m.closed.WithLabelValues(l.values()...).Inc()
}

// Failure counts a connection failure (strait_connection_failures_total).
// direction is DirectionInbound or DirectionOutbound; reason must come
// from a small fixed set of constants, never from an error string.
func (m *Metrics) Failure(direction, reason string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(normDirection(direction), clean(reason)).Inc()
}

// SetPool sets the HBONE pool gauges: open pooled connections and the
// streams on them.
func (m *Metrics) SetPool(conns, streams int) {
	if m == nil {
		return
	}
	m.poolConns.Set(float64(conns))
	m.poolStreams.Set(float64(streams))
}

// SetCertExpiry records when the current certificate of identity id (a
// SPIFFE id) expires, in Unix seconds.
func (m *Metrics) SetCertExpiry(id string, t time.Time) {
	if m == nil {
		return
	}
	m.certExpiry.WithLabelValues(clean(id)).Set(float64(t.Unix()))
}

// DeleteCertExpiry drops the series of identity id, when no local
// workload uses it any more.
func (m *Metrics) DeleteCertExpiry(id string) {
	if m == nil {
		return
	}
	m.certExpiry.DeleteLabelValues(clean(id))
}

// ConfigReload counts a configuration update: applied (ok) or rejected.
func (m *Metrics) ConfigReload(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.reloadOK.Inc()
	} else {
		m.reloadReject.Inc()
	}
}

// SetWorkloads sets the number of workloads the proxy knows.
func (m *Metrics) SetWorkloads(n int) {
	if m == nil {
		return
	}
	m.workloads.Set(float64(n))
}

// ActiveConn moves strait_active_connections{direction} by delta: +1 when
// a connection starts being proxied, -1 when it ends. It is independent
// of ConnOpened so callers choose what counts as active.
func (m *Metrics) ActiveConn(direction string, delta int) {
	if m == nil {
		return
	}
	var g prometheus.Gauge
	switch direction {
	case DirectionInbound:
		g = m.activeIn
	case DirectionOutbound:
		g = m.activeOut
	default:
		g = m.active.WithLabelValues(Unknown)
	}
	g.Add(float64(delta))
}
