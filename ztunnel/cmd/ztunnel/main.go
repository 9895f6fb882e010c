// Command ztunnel is Strait's node proxy. It serves the enrolled pods of
// one node: their traffic arrives in their own network namespaces (in-pod
// mode, pods handed over by the node agent over ZDS) and travels between
// nodes in HBONE tunnels. SIGTERM drains (GOAWAY, open connections finish
// within -drain-grace) and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/strait-mesh/strait/identity/caclient"
	"github.com/strait-mesh/strait/internal/logging"
	"github.com/strait-mesh/strait/ztunnel/app"
)

// kubeRESTConfig loads a kubeconfig file, or the in-cluster configuration.
func kubeRESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", path)
}

func main() {
	var cfg app.Config
	flag.StringVar(&cfg.ConfigFile, "config", "/etc/strait/workloads.yaml", "workloads, services and policies (YAML, watched); unused with -kube")
	useKube := flag.Bool("kube", false, "learn workloads, services and policies from the Kubernetes API (in-cluster, or -kubeconfig) instead of -config")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file for -kube (empty: the in-cluster service account)")
	flag.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "Kubernetes cluster domain: services are <name>.<ns>.svc.<domain>")
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cluster.local", "mesh trust domain")
	flag.StringVar(&cfg.CADir, "ca-dir", "/var/lib/strait/ca", "file-backed root CA directory (created on first start, key mode 0600); unused with -ca-addr")
	flag.StringVar(&cfg.ZDSSocket, "zds-socket", "/var/run/strait/ztunnel.sock", "node agent socket (ZDS); empty disables in-pod mode")
	flag.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin listener (loopback only)")
	flag.StringVar(&cfg.ReadyAddr, "ready-addr", ":15021", "readiness listener")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics listener")
	flag.DurationVar(&cfg.DrainGrace, "drain-grace", 30*time.Second, "how long open connections may take to finish on shutdown")
	flag.BoolVar(&cfg.PreserveSourceIP, "preserve-source-ip", true, "dial pods from the original client address (IP_TRANSPARENT; needs the node agent's fwmark route in the pod)")
	flag.StringVar(&cfg.LB, "lb", "random", "service endpoint selection: random or round-robin")
	flag.IntVar(&cfg.MaxConns, "max-conns", 0, "connections in total per direction (0 = 65536)")
	flag.IntVar(&cfg.MaxConnsPerWorkload, "max-conns-per-workload", 0, "inbound connections per workload (0 = 16384)")
	caAddr := flag.String("ca-addr", "", "in-cluster CA (strait-ca), host:port, e.g. strait-ca.strait-system.svc:15012; empty: the embedded file-backed CA in -ca-dir")
	caToken := flag.String("ca-token-file", caclient.DefaultTokenFile, "projected service-account token (audience strait-ca) presented to -ca-addr; re-read on every request")
	caServerName := flag.String("ca-server-name", "", "name verified in the CA's certificate (default: the host of -ca-addr; set it when -ca-addr is an IP)")
	caRoots := flag.String("ca-roots-file", "/var/run/secrets/strait-ca/roots.pem", "trust bundle (roots.pem of the strait-ca-bundle ConfigMap): verifies -ca-addr and mesh peers")
	level := flag.String("log-level", "info", "debug, info, warn or error (changeable at runtime: /logging)")
	flag.Parse()

	log, lvl, err := logging.New(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ztunnel: -log-level: %v\n", err)
		os.Exit(2)
	}
	defer log.Sync()
	cfg.Logger, cfg.Level = log, lvl

	if *caAddr != "" {
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			log.Error("ztunnel: -trust-domain", zap.Error(err))
			os.Exit(2)
		}
		cc, err := caclient.New(caclient.Config{
			Addr: *caAddr, ServerName: *caServerName, TokenFile: *caToken, RootsFile: *caRoots, TrustDomain: td, Logger: log.Named("caclient"),
		})
		if err != nil {
			log.Error("ztunnel: cannot start", zap.Error(err))
			os.Exit(1)
		}
		defer cc.Close()
		cfg.RemoteCA = cc
	}
	if *useKube {
		rc, err := kubeRESTConfig(*kubeconfig)
		if err != nil {
			log.Error("ztunnel: -kube", zap.Error(err))
			os.Exit(2)
		}
		cfg.Kube = rc
	}
	a, err := app.New(cfg)
	if err != nil {
		log.Error("ztunnel: cannot start", zap.Error(err))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Error("ztunnel: stopped with an error", zap.Error(err))
		os.Exit(1)
	}
}
