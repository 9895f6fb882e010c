// Package metrics holds the node proxy's Prometheus metrics: Istio's TCP
// metrics with Istio's names and labels, so existing dashboards (Kiali,
// Grafana's Istio boards) read Strait unchanged, plus a few Strait-specific
// gauges and counters.
//
// Everything lives on the package's own *prometheus.Registry (never the
// global one) together with the Go runtime and process collectors; Handler
// serves it in the Prometheus text exposition format. The admin package
// mounts that handler on :15020 at /metrics and /stats/prometheus.
//
// # Metrics
//
// Istio TCP metrics (counters), all with the labels of Labels:
//
//	istio_tcp_connections_opened_total
//	istio_tcp_connections_closed_total
//	istio_tcp_received_bytes_total   request direction: client → server
//	istio_tcp_sent_bytes_total       response direction: server → client
//
// Labels: reporter (source|destination), source_workload,
// source_workload_namespace, source_principal, destination_workload,
// destination_workload_namespace, destination_principal,
// destination_service, connection_security_policy (mutual_tls|none) and
// response_flags (- | DENY | CONNECT).
//
// As in Istio's ztunnel, an empty string label is exposed as "unknown",
// an empty response flag as "-", and the enumerated labels (reporter,
// connection_security_policy, response_flags) are clamped to their
// documented sets: any other value is exposed as "unknown" (reporter,
// policy) or "UNKNOWN" (flags), so a bug upstream cannot blow up
// cardinality. Byte counters follow Istio's definition for both reporters:
// "received" is what the client sent toward the server, "sent" is what
// came back.
//
// Strait metrics:
//
//	strait_connection_failures_total{direction,reason}  counter
//	strait_hbone_pool_connections                       gauge
//	strait_hbone_pool_streams                           gauge
//	strait_cert_expiry_timestamp_seconds{identity}      gauge, Unix seconds
//	strait_config_reloads_total{result="ok|rejected"}   counter
//	strait_workloads                                    gauge
//	strait_active_connections{direction}                gauge
//	strait_build_info{version}                          gauge, always 1
//
// direction is inbound|outbound (anything else becomes "unknown").
//
// # Cardinality
//
// The Istio TCP series number at most (distinct label sets seen) × 4. A
// label set is one (reporter, source workload, destination workload or
// service, policy, flag) combination, so on a node the count is bounded by
// local workloads × the peers they talk to × a handful of enum values; it
// is the same as Istio's ztunnel, which also never forgets a series.
// Principals are SPIFFE ids, one per service account, so they add no
// factor beyond the workload. Labels must never carry per-connection values
// (addresses, ports, request ids).
//
// reason in strait_connection_failures_total is the caller's: it must come
// from a small fixed set of constants (e.g. "dial", "policy", "tls",
// "no_workload"), never from an error string. identity in
// strait_cert_expiry_timestamp_seconds is one series per local identity;
// call DeleteCertExpiry when the last workload of an identity leaves the
// node.
//
// # Hot path
//
// ConnOpened costs one map lookup under a read lock (the four counters of a
// label set are resolved once and cached) and one small allocation for the
// returned ConnRecorder. AddSent, AddReceived and Close are single atomic
// adds and never allocate. A nil *Metrics and a nil *ConnRecorder are valid
// no-ops, so tests of the data path need no registry.
package metrics
