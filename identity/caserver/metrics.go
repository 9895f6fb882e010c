package caserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	NameRequests   = "strait_ca_requests_total"
	NameDenied     = "strait_ca_denied_total"
	NamePodLookups = "strait_ca_pod_lookups_total"
)

// Values of the result label of strait_ca_requests_total.
const (
	ResultIssued          = "issued"
	ResultDenied          = "denied"
	ResultUnauthenticated = "unauthenticated"
	ResultInvalid         = "invalid"
	ResultError           = "error"
)

// Values of the source label of strait_ca_pod_lookups_total: where the pod
// that allowed (or the absence that refused) a request was found.
const (
	LookupCache = "cache" // the informer's cache had a matching pod
	LookupAPI   = "api"   // a live List against the API server
)

// Metrics are the CA's Prometheus metrics.
type Metrics struct {
	requests *prometheus.CounterVec
	denied   *prometheus.CounterVec
	lookups  *prometheus.CounterVec
}

// NewMetrics creates the metrics, with every label value of the bounded
// sets at zero, and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameRequests, Help: "Certificate requests by result: issued, denied, unauthenticated, invalid, error.",
		}, []string{"result"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameDenied, Help: "Certificate requests refused by authorization, by reason.",
		}, []string{"reason"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NamePodLookups, Help: "Pod lookups for authorization, by source: cache (informer) or api (live List on a cache miss).",
		}, []string{"source"}),
	}
	for _, r := range []string{ResultIssued, ResultDenied, ResultUnauthenticated, ResultInvalid, ResultError} {
		m.requests.WithLabelValues(r)
	}
	for _, r := range denyReasons {
		m.denied.WithLabelValues(string(r))
	}
	for _, s := range []string{LookupCache, LookupAPI} {
		m.lookups.WithLabelValues(s)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.denied, m.lookups)
	}
	return m
}

func (m *Metrics) request(result string) {
	if m != nil {
		m.requests.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) deny(r DenyReason) {
	if m != nil {
		m.denied.WithLabelValues(string(r.bounded())).Inc()
	}
}

func (m *Metrics) lookup(source string) {
	if m != nil {
		m.lookups.WithLabelValues(source).Inc()
	}
}
