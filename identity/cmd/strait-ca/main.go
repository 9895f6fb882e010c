// Command strait-ca is Strait's in-cluster certificate authority (a
// Deployment in strait-system). It signs X.509 SVIDs for ztunnels and
// pods authenticated by their projected service-account tokens, only for
// identities of pods scheduled on the caller's node (see
// identity/caserver). The root lives in a Secret, created on first start;
// the trust bundle is published in a ConfigMap. SIGTERM stops it
// gracefully.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/strait-mesh/strait/identity/caapi"
	"github.com/strait-mesh/strait/identity/caroot"
	"github.com/strait-mesh/strait/identity/caserver"
	"github.com/strait-mesh/strait/internal/logging"
)

func main() {
	var cfg caserver.Config
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file (env KUBECONFIG); empty: in-cluster configuration")
	flag.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", caserver.DefaultNamespace), "namespace of the CA, its root Secret, bundle ConfigMap and Service (env POD_NAMESPACE)")
	flag.StringVar(&cfg.Addr, "listen", fmt.Sprintf(":%d", caapi.DefaultPort), "HTTPS listener for "+caapi.Path)
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", fmt.Sprintf(":%d", caserver.DefaultMetricsPort), "plain HTTP listener for /metrics and "+caapi.ReadyPath)
	flag.StringVar(&cfg.TrustDomain, "trust-domain", caserver.DefaultTrustDomain, "mesh trust domain")
	flag.StringVar(&cfg.ZtunnelServiceAccount, "ztunnel-sa", caserver.DefaultZtunnelSA, "namespace/name of the ztunnel service account, the only caller that may ask for identities other than its own")
	flag.DurationVar(&cfg.MaxTTL, "max-ttl", 24*time.Hour, "longest lifetime of an issued certificate (also the default when shorter than 24h)")
	flag.StringVar(&cfg.ServiceName, "service-name", caserver.DefaultServiceName, "the CA's Service: the serving certificate is for <service>.<namespace>.svc and <service>.<namespace>.svc.<cluster-domain>")
	flag.StringVar(&cfg.ClusterDomain, "cluster-domain", caserver.DefaultClusterDomain, "cluster DNS domain")
	flag.StringVar(&cfg.RootSecret, "root-secret", caroot.DefaultSecretName, "Secret holding ca.crt, ca.key and optionally bundle.pem")
	flag.StringVar(&cfg.BundleConfigMap, "bundle-configmap", caroot.DefaultBundleName, "ConfigMap the trust bundle is published in (key roots.pem)")
	flag.DurationVar(&cfg.ShutdownTimeout, "shutdown-grace", caserver.DefaultShutdownTimeout, "how long in-flight requests may take to finish on SIGTERM")
	level := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	log, _, err := logging.New(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "strait-ca: -log-level: %v\n", err)
		os.Exit(2)
	}
	defer log.Sync()
	cfg.Logger = log

	rc, err := restConfig(*kubeconfig)
	if err != nil {
		log.Error("strait-ca: kubernetes client configuration", zap.Error(err))
		os.Exit(1)
	}
	rc.UserAgent = "strait-ca"
	if cfg.Client, err = kubernetes.NewForConfig(rc); err != nil {
		log.Error("strait-ca: kubernetes client", zap.Error(err))
		os.Exit(1)
	}
	s, err := caserver.New(cfg)
	if err != nil {
		log.Error("strait-ca: cannot start", zap.Error(err))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := s.Run(ctx); err != nil {
		log.Error("strait-ca: stopped with an error", zap.Error(err))
		os.Exit(1)
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
