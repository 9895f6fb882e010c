package agent

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the agent's Prometheus metrics.
type Metrics struct {
	enrolled prometheus.Gauge
	proxies  prometheus.Gauge
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		enrolled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "strait_cni_agent_enrolled_pods",
			Help: "Pods of this node in the mesh: rules installed and handed to ztunnel."}),
		proxies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "strait_cni_agent_ztunnel_connections",
			Help: "ztunnel processes connected over ZDS (2 while one takes over from another)."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_cni_agent_cni_requests_total",
			Help: "CNI plugin requests, by command and result (ok, error)."}, []string{"command", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strait_cni_agent_errors_total",
			Help: "Failures by stage: rules (pod netns), ztunnel (ZDS), probes (host tables), netns (finding a pod's namespace), kube."}, []string{"stage"}),
	}
	if reg != nil {
		reg.MustRegister(m.enrolled, m.proxies, m.requests, m.errors)
	}
	return m
}
