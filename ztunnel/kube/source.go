package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// clientConfig tunes the source's client configuration: protobuf on the
// wire (several times cheaper to decode than JSON, which matters for the
// initial list of every pod in the cluster) and a rate limit that does not
// throttle the informers' few requests.
func clientConfig(c *rest.Config) *rest.Config {
	c = rest.CopyConfig(c)
	c.ContentType = "application/vnd.kubernetes.protobuf"
	c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	if c.QPS == 0 {
		c.QPS, c.Burst = 50, 100
	}
	return c
}

// Options configure a Source.
type Options struct {
	// Config reaches the API server.
	Config *rest.Config
	// Policies reads the policy CRDs (AuthorizationPolicy,
	// PeerAuthentication); without it, or when the CRDs are not
	// installed, the mesh has no policies.
	Policies bool
	// RootNamespace holds mesh-wide policies (strait-system).
	RootNamespace string
	// WriteStatus sets each policy's Accepted condition (server-side
	// apply of the status subresource, only when it differs).
	WriteStatus bool
	Store       *store.Store
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
	o      Options
	log    *zap.Logger
	c      *clients
	pods   cache.SharedIndexInformer
	nss    cache.SharedIndexInformer
	svcs   cache.SharedIndexInformer
	slices cache.SharedIndexInformer
	aps    cache.SharedIndexInformer // nil without policies
	pas    cache.SharedIndexInformer

	kick      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once
	synced    time.Duration // start → first snapshot

	mu       sync.Mutex
	skipped  []string // of the last rebuild
	verdicts []Verdict
}

// New prepares the informers; nothing runs until Run.
func New(o Options) (*Source, error) {
	if o.Config == nil || o.Store == nil {
		return nil, errors.New("kube: a client configuration and a store are required")
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
	if o.RootNamespace == "" {
		o.RootNamespace = v1alpha1.RootNamespace
	}
	s := &Source{o: o, log: o.Logger, kick: make(chan struct{}, 1), ready: make(chan struct{})}
	c, err := newClients(clientConfig(o.Config))
	if err != nil {
		return nil, err
	}
	s.c = c
	s.pods = informer(c.core, "pods", &corev1.Pod{})
	s.nss = informer(c.core, "namespaces", &corev1.Namespace{})
	s.svcs = informer(c.core, "services", &corev1.Service{})
	s.slices = informer(c.discovery, "endpointslices", &discoveryv1.EndpointSlice{})
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.dirty() },
		UpdateFunc: func(any, any) { s.dirty() },
		DeleteFunc: func(any) { s.dirty() },
	}
	infs := []cache.SharedIndexInformer{s.pods, s.nss, s.svcs, s.slices}
	for _, inf := range infs {
		if err := inf.SetTransform(Slim); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	if o.Policies {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ok, err := c.policiesInstalled(ctx)
		cancel()
		if err != nil {
			return nil, err
		} else if !ok {
			s.log.Warn("the policy CRDs (security.strait.dev/v1alpha1) are not installed: no authorization policies or peer authentications until ztunnel restarts after they are")
		} else {
			s.aps = dynInformer(c.dyn, AuthorizationPolicies)
			s.pas = dynInformer(c.dyn, PeerAuthentications)
			for _, inf := range []cache.SharedIndexInformer{s.aps, s.pas} {
				if err := inf.SetTransform(typedTransform); err != nil {
					return nil, fmt.Errorf("kube: %w", err)
				}
				infs = append(infs, inf)
			}
		}
	}
	for _, inf := range infs {
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
	ictx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	var synced []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{s.pods, s.nss, s.svcs, s.slices, s.aps, s.pas} {
		if inf == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); inf.RunWithContext(ictx) }()
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errors.New("kube: informers did not sync")
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

// Verdicts are what the last rebuild made of each policy object.
func (s *Source) Verdicts() []Verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Verdict(nil), s.verdicts...)
}

// policies lists and translates the policy objects (none without CRDs).
func (s *Source) policies() Policies {
	if s.aps == nil {
		return Policies{}
	}
	return TranslatePolicies(listAs[*v1alpha1.AuthorizationPolicy](s.aps), listAs[*v1alpha1.PeerAuthentication](s.pas), s.o.RootNamespace)
}

// writeStatus sets the Accepted condition of every object whose cached
// status differs from its verdict.
func (s *Source) writeStatus(ctx context.Context, vs []Verdict) {
	now := metav1.Now()
	for _, v := range vs {
		var conds []metav1.Condition
		inf := s.aps
		if v.Resource == PeerAuthentications {
			inf = s.pas
		}
		obj, ok, _ := inf.GetStore().GetByKey(v.Namespace + "/" + v.Name)
		if !ok {
			continue
		}
		switch o := obj.(type) {
		case *v1alpha1.AuthorizationPolicy:
			conds = o.Status.Conditions
		case *v1alpha1.PeerAuthentication:
			conds = o.Status.Conditions
		}
		if !needsStatus(conds, v) {
			continue
		}
		patch, err := statusPatch(v, now)
		if err == nil {
			_, err = s.c.dyn.Resource(v.Resource).Namespace(v.Namespace).Patch(ctx, v.Name, types.ApplyPatchType, patch,
				metav1.PatchOptions{FieldManager: "strait-ztunnel", Force: ptr(true)}, "status")
		}
		if err != nil && !apierrors.IsNotFound(err) {
			s.log.Info("cannot write policy status", zap.String("policy", v.Namespace+"/"+v.Name), zap.Error(err))
		}
	}
}

func ptr[T any](v T) *T { return &v }

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
	pol := s.policies()
	for _, v := range pol.Verdicts {
		if !v.Accepted {
			m.Skipped = append(m.Skipped, fmt.Sprintf("%s %s/%s: %s", v.Resource.Resource, v.Namespace, v.Name, v.Message))
		}
	}
	st := Stats{Workloads: len(m.Workloads), Services: len(m.Services), Skipped: len(m.Skipped)}
	snap, err := store.NewSnapshot(m.Workloads, m.Services, pol.Authz, pol.PeerAuth)
	if err != nil {
		st.Err = fmt.Errorf("kube: snapshot refused, keeping the previous one: %w", err)
		s.log.Warn("kubernetes snapshot refused", zap.Error(err))
	} else {
		s.o.Store.Replace(snap)
	}
	s.mu.Lock()
	changed := !slices.Equal(m.Skipped, s.skipped)
	s.skipped = m.Skipped
	s.verdicts = pol.Verdicts
	s.mu.Unlock()
	if s.o.WriteStatus && s.aps != nil && err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.writeStatus(ctx, pol.Verdicts)
		cancel()
	}
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
