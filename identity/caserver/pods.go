package caserver

import (
	"context"
	"fmt"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

const (
	nodeIndex = "node"
	// defaultMaxLiveLists bounds concurrent live Lists, so a burst of
	// misses (or a caller probing for pods that do not exist) cannot
	// flood the API server.
	defaultMaxLiveLists = 4
)

// PodCache is a PodFinder backed by a pod informer indexed by
// spec.nodeName, holding slim pods (name, namespace, uid, node, service
// account, phase), with a live List on a miss.
type PodCache struct {
	client  kubernetes.Interface
	log     *zap.Logger
	metrics *Metrics
	factory informers.SharedInformerFactory
	inf     cache.SharedIndexInformer
	lists   chan struct{}

	mu     sync.Mutex
	cancel context.CancelFunc
}

// NewPodCache returns a PodCache; call Start to run its informer and Stop
// to end it. metrics and log may be nil.
func NewPodCache(client kubernetes.Interface, metrics *Metrics, log *zap.Logger) (*PodCache, error) {
	if log == nil {
		log = zap.NewNop()
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(slimPod))
	inf := f.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{nodeIndex: indexByNode}); err != nil {
		return nil, fmt.Errorf("caserver: pod informer: %w", err)
	}
	return &PodCache{
		client: client, log: log, metrics: metrics, factory: f, inf: inf,
		lists: make(chan struct{}, defaultMaxLiveLists),
	}, nil
}

// Start runs the informer until ctx ends or Stop; it does not wait for
// the cache to sync (see Synced and WaitForSync).
func (p *PodCache) Start(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	p.mu.Lock()
	p.cancel = cancel
	p.mu.Unlock()
	p.factory.Start(ctx.Done())
}

// Stop ends the informer and waits for its goroutines.
func (p *PodCache) Stop() {
	p.mu.Lock()
	cancel := p.cancel
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	p.factory.Shutdown()
}

// Synced reports whether the informer has listed every pod once.
func (p *PodCache) Synced() bool { return p.inf.HasSynced() }

// WaitForSync waits until the cache has synced or ctx ends.
func (p *PodCache) WaitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), p.inf.HasSynced) {
		return fmt.Errorf("caserver: pod cache did not sync: %w", context.Cause(ctx))
	}
	return nil
}

// HasPod implements PodFinder: the cache first, then, on a miss, a live
// List of the namespace's pods on that node with that service account
// (a field-selected, consistent read).
func (p *PodCache) HasPod(ctx context.Context, node, ns, sa string) (bool, error) {
	objs, err := p.inf.GetIndexer().ByIndex(nodeIndex, node)
	if err != nil {
		return false, fmt.Errorf("caserver: pod cache: %w", err)
	}
	for _, o := range objs {
		if pod, ok := o.(*corev1.Pod); ok && matches(pod, node, ns, sa) {
			p.metrics.lookup(LookupCache)
			return true, nil
		}
	}

	select {
	case p.lists <- struct{}{}:
		defer func() { <-p.lists }()
	case <-ctx.Done():
		return false, fmt.Errorf("caserver: waiting to list pods: %w", context.Cause(ctx))
	}
	p.metrics.lookup(LookupAPI)
	sel := fields.AndSelectors(
		fields.OneTermEqualSelector("spec.nodeName", node),
		fields.OneTermEqualSelector("spec.serviceAccountName", sa),
	)
	list, err := p.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return false, fmt.Errorf("caserver: list pods of %s on node %s: %w", ns, node, err)
	}
	for i := range list.Items {
		if matches(&list.Items[i], node, ns, sa) {
			p.log.Debug("pod found by a live list (not in the cache yet)",
				zap.String("pod", ns+"/"+list.Items[i].Name), zap.String("node", node))
			return true, nil
		}
	}
	return false, nil
}

// matches: scheduled on node, service account ns/sa, not terminated.
func matches(pod *corev1.Pod, node, ns, sa string) bool {
	return pod.Spec.NodeName == node && pod.Namespace == ns && pod.Spec.ServiceAccountName == sa &&
		pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

func indexByNode(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return nil, nil
	}
	return []string{pod.Spec.NodeName}, nil
}

// slimPod keeps only what authorization reads, so the cache of every pod
// in the cluster stays small. Tombstones pass through unchanged.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}, nil
}
