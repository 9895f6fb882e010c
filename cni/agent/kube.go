package agent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// kubeWatch holds the informers on this node's pods and on namespaces,
// and the queue of pods to look at again.
type kubeWatch struct {
	cs      kubernetes.Interface
	pods    informers.SharedInformerFactory // this node's pods only
	nss     informers.SharedInformerFactory
	podList listersv1.PodLister
	nsList  listersv1.NamespaceLister
	synced  []cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[string]
}

func newKubeWatch(cfg Config) (*kubeWatch, error) {
	rc := *cfg.Kube
	rc.UserAgent = "strait-cni-agent/" + cfg.Node
	cs, err := kubernetes.NewForConfig(&rc)
	if err != nil {
		return nil, fmt.Errorf("agent: kube client: %w", err)
	}
	onNode := fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
	pods := informers.NewSharedInformerFactoryWithOptions(cs, cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = onNode }))
	nss := informers.NewSharedInformerFactory(cs, cfg.Resync)
	k := &kubeWatch{
		cs: cs, pods: pods, nss: nss,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "strait-cni-agent"}),
	}
	pi := pods.Core().V1().Pods()
	ni := nss.Core().V1().Namespaces()
	k.podList, k.nsList = pi.Lister(), ni.Lister()
	k.synced = []cache.InformerSynced{pi.Informer().HasSynced, ni.Informer().HasSynced}
	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := pi.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePod, UpdateFunc: func(_, o any) { enqueuePod(o) }, DeleteFunc: enqueuePod,
	}); err != nil {
		return nil, fmt.Errorf("agent: pod informer: %w", err)
	}
	// A namespace's label decides for its pods: look at each again.
	enqueueNS := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			if d, ok2 := obj.(cache.DeletedFinalStateUnknown); ok2 {
				ns, ok = d.Obj.(*corev1.Namespace)
			}
			if !ok {
				return
			}
		}
		list, _ := k.podList.Pods(ns.Name).List(labels.Everything())
		for _, p := range list {
			k.queue.Add(podKey(p.Namespace, p.Name))
		}
	}
	if _, err := ni.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, UpdateFunc: func(_, o any) { enqueueNS(o) }, DeleteFunc: enqueueNS,
	}); err != nil {
		return nil, fmt.Errorf("agent: namespace informer: %w", err)
	}
	return k, nil
}

func (k *kubeWatch) run(ctx context.Context) error {
	k.pods.Start(ctx.Done())
	k.nss.Start(ctx.Done())
	<-ctx.Done()
	k.queue.ShutDown()
	k.pods.Shutdown()
	k.nss.Shutdown()
	return nil
}

func (k *kubeWatch) waitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), k.synced...) {
		return fmt.Errorf("agent: informers not synced: %w", context.Cause(ctx))
	}
	return nil
}

// work runs sync for each queued pod key until the queue shuts down; a
// failed sync is retried with backoff.
func (k *kubeWatch) work(ctx context.Context, sync func(context.Context, string) error) {
	for {
		key, quit := k.queue.Get()
		if quit {
			return
		}
		if err := sync(ctx, key); err != nil && ctx.Err() == nil {
			k.queue.AddRateLimited(key)
		} else {
			k.queue.Forget(key)
		}
		k.queue.Done(key)
	}
}

// pod returns the pod from the cache, or from the API server when the
// cache does not have it yet (a CNI ADD can come before the watch event).
// A nil pod with a nil error means it does not exist.
func (k *kubeWatch) pod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	if p, err := k.podList.Pods(ns).Get(name); err == nil {
		return p, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := k.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: get pod %s/%s: %w", ns, name, err)
	}
	return p, nil
}

// nsLabels returns a namespace's labels, from the cache or the API server.
func (k *kubeWatch) nsLabels(ctx context.Context, name string) (map[string]string, error) {
	if ns, err := k.nsList.Get(name); err == nil {
		return ns.Labels, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ns, err := k.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent: get namespace %s: %w", name, err)
	}
	return ns.Labels, nil
}
