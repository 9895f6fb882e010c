// Package kube is ztunnel's Kubernetes source: shared informers on Pods,
// Namespaces, Services and EndpointSlices (and the Strait policy CRDs)
// feed the same [store.Store] the local config file feeds, so the data
// path has one data model whatever the source.
//
// Informers cache slim copies of the objects (see [Slim]): only the fields
// the translation reads, so memory grows by well under 2 KiB per pod.
// Every change only marks the view dirty; one goroutine rebuilds a whole
// snapshot at most every Debounce and swaps it in atomically, so a burst
// of events (a rollout, the initial list) costs one rebuild, and the data
// path never sees half an update.
//
// Enrollment: a pod is in the mesh (protocol HBONE) when its namespace
// has the label strait.dev/dataplane-mode=ambient, or the pod itself has
// it, unless the pod has strait.dev/dataplane-mode=none. Every other pod is
// a plain TCP workload.
//
// The source is ready after the informers' initial sync and the first
// snapshot. API server restarts and expired watches are handled by the
// informers (relist and rewatch); meanwhile the last snapshot stays in
// place, so data-plane traffic does not notice.
package kube
