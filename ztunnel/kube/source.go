package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/strait-mesh/strait/ztunnel/store"
)

// ClientConfig tunes a client configuration for the source: protobuf on
// the wire (several times cheaper to decode than JSON, which matters for
// the initial list of every pod in the cluster) and a rate limit that
// does not throttle the informers' few requests.
func ClientConfig(c *rest.Config) *rest.Config {
	c.ContentType = "application/vnd.kubernetes.protobuf"
	c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if c.QPS == 0 {
		c.QPS, c.Burst = 50, 100
	}
	return c
}

// Options configure a Source.
type Options struct {
	Client kubernetes.Interface
	Store  *store.Store
	Translator
	// Debounce is the least time between two rebuilds (default 100 ms).
	Debounce time.Duration
	// OnRebuild, if set, is called after every rebuild attempt.
	OnRebuild func(Stats)
	Logger    *zap.Logger
}

// Stats describe one rebuild.
type Stats struct {
	Workloads, Services, Skipped int
	Took                         time.Duration
	Err                          error // the snapshot was refused; the old one stays
}

// Source keeps a store in step with the API server.
type Source struct {
	o       Options
	log     *zap.Logger
	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer
	nss     cache.SharedIndexInformer
	svcs    cache.SharedIndexInformer
	slices  cache.SharedIndexInformer

	kick      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
	synced    time.Duration // start → first snapshot

	mu      sync.Mutex
	skipped []string // of the last rebuild
}

// New prepares the informers; nothing runs until Run.
func New(o Options) (*Source, error) {
	if o.Client == nil || o.Store == nil {
		return nil, errors.New("kube: a client and a store are required")
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = "cluster.local"
	}
	if o.Debounce <= 0 {
		o.Debounce = 100 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	s := &Source{o: o, log: o.Logger, kick: make(chan struct{}, 1), ready: make(chan struct{})}
	s.factory = informers.NewSharedInformerFactoryWithOptions(o.Client, 0, informers.WithTransform(Slim))
	s.pods = s.factory.Core().V1().Pods().Informer()
	s.nss = s.factory.Core().V1().Namespaces().Informer()
	s.svcs = s.factory.Core().V1().Services().Informer()
	s.slices = s.factory.Discovery().V1().EndpointSlices().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.dirty() },
		UpdateFunc: func(any, any) { s.dirty() },
		DeleteFunc: func(any) { s.dirty() },
	}
	for _, inf := range []cache.SharedIndexInformer{s.pods, s.nss, s.svcs, s.slices} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	return s, nil
}

func (s *Source) dirty() {
	select {
	case s.kick <- struct{}{}:
	default: // a rebuild is already pending: changes coalesce
	}
}

// Ready is closed once the informers have synced and the first snapshot
// is in the store.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// SyncTime is how long the first snapshot took from Run (0 before).
func (s *Source) SyncTime() time.Duration {
	select {
	case <-s.ready:
		return s.synced
	default:
		return 0
	}
}

// Skipped lists the objects the last rebuild left out, and why.
func (s *Source) Skipped() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.skipped...)
}

// Run starts the informers and keeps the store current until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	start := time.Now()
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	for typ, ok := range s.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("kube: informer for %v did not sync", typ)
		}
	}
	s.rebuild()
	s.synced = time.Since(start)
	s.readyOnce.Do(func() { close(s.ready) })
	s.log.Info("kubernetes source synced", zap.Duration("took", s.synced),
		zap.Int("workloads", len(s.o.Store.Load().Workloads())), zap.Int("services", len(s.o.Store.Load().Services())))
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		// Let a burst of events land, then rebuild once.
		t.Reset(s.o.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		s.rebuild()
	}
}

// View lists what the informers hold now.
func (s *Source) View() View {
	return View{
		Pods:       listAs[*Pod](s.pods),
		Namespaces: listAs[*corev1.Namespace](s.nss),
		Services:   listAs[*corev1.Service](s.svcs),
		Slices:     listAs[*discoveryv1.EndpointSlice](s.slices),
	}
}

func listAs[T any](inf cache.SharedIndexInformer) []T {
	objs := inf.GetStore().List()
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func (s *Source) rebuild() {
	start := time.Now()
	m := s.o.Translate(s.View())
	st := Stats{Workloads: len(m.Workloads), Services: len(m.Services), Skipped: len(m.Skipped)}
	snap, err := store.NewSnapshot(m.Workloads, m.Services, s.o.Store.Load().AuthorizationPolicies(), s.o.Store.Load().PeerAuthentications())
	if err != nil {
		st.Err = fmt.Errorf("kube: snapshot refused, keeping the previous one: %w", err)
		s.log.Warn("kubernetes snapshot refused", zap.Error(err))
	} else {
		s.o.Store.Replace(snap)
	}
	s.mu.Lock()
	changed := len(m.Skipped) != len(s.skipped)
	s.skipped = m.Skipped
	s.mu.Unlock()
	if changed {
		for _, line := range m.Skipped {
			s.log.Info("kubernetes object left out", zap.String("why", line))
		}
	}
	st.Took = time.Since(start)
	if s.o.OnRebuild != nil {
		s.o.OnRebuild(st)
	}
}
