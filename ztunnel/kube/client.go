package kube

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/strait-mesh/strait/deploy/api/security/v1alpha1"
)

// The source talks to the API server with plain REST clients for the two
// API groups it reads, not client-go's clientset: the clientset's scheme
// registers every built-in API group when the binary starts, which alone
// costs ztunnel about 10 MiB of RSS whether or not it runs with -kube.

// scheme knows only the types the source reads.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := discoveryv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// clients are the source's API clients.
type clients struct {
	core, discovery rest.Interface
	dyn             dynamic.Interface
}

func newClients(c *rest.Config) (*clients, error) {
	codecs := serializer.NewCodecFactory(scheme)
	mk := func(gv schema.GroupVersion, apiPath string) (rest.Interface, error) {
		cfg := rest.CopyConfig(c)
		cfg.GroupVersion, cfg.APIPath = &gv, apiPath
		cfg.NegotiatedSerializer = codecs.WithoutConversion()
		if cfg.UserAgent == "" {
			cfg.UserAgent = "strait-ztunnel"
		}
		return rest.RESTClientFor(cfg)
	}
	core, err := mk(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	disc, err := mk(discoveryv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	dc := rest.CopyConfig(c)
	dc.ContentType, dc.AcceptContentTypes = "", "" // custom resources are JSON only
	dyn, err := dynamic.NewForConfig(dc)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return &clients{core: core, discovery: disc, dyn: dyn}, nil
}

// informer watches one typed resource in every namespace.
func informer(c rest.Interface, resource string, obj runtime.Object) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(c, resource, metav1.NamespaceAll, fields.Everything())
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
}

// dynInformer watches one custom resource in every namespace.
func dynInformer(d dynamic.Interface, gvr schema.GroupVersionResource) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			return d.Resource(gvr).List(context.Background(), o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			return d.Resource(gvr).Watch(context.Background(), o)
		},
	}
	return cache.NewSharedIndexInformer(lw, &unstructured.Unstructured{}, 0, cache.Indexers{})
}

// policiesInstalled asks discovery whether the policy CRDs are served.
func (c *clients) policiesInstalled(ctx context.Context) (bool, error) {
	raw, err := c.core.Get().AbsPath("/apis", v1alpha1.SchemeGroupVersion.Group, v1alpha1.SchemeGroupVersion.Version).SetHeader("Accept", "application/json").DoRaw(ctx)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("kube: discovery of %s: %w", v1alpha1.SchemeGroupVersion, err)
	}
	var rl metav1.APIResourceList
	if err := json.Unmarshal(raw, &rl); err != nil {
		return false, fmt.Errorf("kube: discovery of %s: %w", v1alpha1.SchemeGroupVersion, err)
	}
	n := 0
	for _, r := range rl.APIResources {
		if r.Name == AuthorizationPolicies.Resource || r.Name == PeerAuthentications.Resource {
			n++
		}
	}
	return n == 2, nil
}
