// Command strait-cni-agent is Strait's node agent (cni/agent), run as a
// host-network DaemonSet: it installs the strait-cni plugin into the
// node's CNI chain, serves the plugin's socket, redirects enrolled pods'
// traffic and hands their network namespaces to ztunnel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/strait-mesh/strait/cni/agent"
	"github.com/strait-mesh/strait/cni/install"
	"github.com/strait-mesh/strait/cni/plugin"
	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/cni/zds"
	"github.com/strait-mesh/strait/internal/logging"
)

func main() {
	var cfg agent.Config
	flag.StringVar(&cfg.Node, "node", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file (empty: the in-cluster service account)")
	flag.StringVar(&cfg.ZDSSocket, "zds-socket", zds.DefaultSocketPath, "ZDS socket ztunnel connects to")
	flag.StringVar(&cfg.CNISocket, "cni-socket", plugin.DefaultSocket, "socket the strait-cni plugin calls")
	binDir := flag.String("cni-bin-dir", "/host/opt/cni/bin", "the host's CNI bin directory (mounted)")
	confDir := flag.String("cni-conf-dir", "/host/etc/cni/net.d", "the host's CNI configuration directory (mounted); empty: do not install the plugin")
	pluginBin := flag.String("cni-plugin", "/usr/local/bin/strait-cni", "the plugin binary copied into -cni-bin-dir")
	failOpen := flag.Bool("fail-open", false, "let pods start without the mesh when the agent is unreachable (written into the plugin's configuration)")
	flag.StringVar(&cfg.Proc, "proc", "/host/proc", "the host's /proc (to find running pods' network namespaces)")
	flag.StringVar(&cfg.NetnsDir, "netns-dir", "/var/run/netns", "bind-mounted pod network namespaces")
	backend := flag.String("redirect", "auto", "rule backend: auto, nftables or iptables")
	flag.BoolVar(&cfg.ProbeSNAT, "probe-snat", true, "SNAT the node's own connections to enrolled pods (kubelet probes) to 169.254.7.127 (host tables ip/ip6 "+redirect.HostProbeTable+")")
	healthAddr := flag.String("health-addr", ":15022", "/healthz, /ready and /metrics")
	level := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	log, _, err := logging.New(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "strait-cni-agent: -log-level: %v\n", err)
		os.Exit(2)
	}
	defer log.Sync()
	cfg.Logger = log
	if cfg.Redirect, err = redirect.ParseKind(*backend); err != nil {
		log.Error("strait-cni-agent: -redirect", zap.Error(err))
		os.Exit(2)
	}
	if *kubeconfig == "" {
		cfg.Kube, err = rest.InClusterConfig()
	} else {
		cfg.Kube, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	}
	if err != nil {
		log.Error("strait-cni-agent: API server configuration", zap.Error(err))
		os.Exit(2)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, err := agent.New(cfg, agent.NewMetrics(reg))
	if err != nil {
		log.Error("strait-cni-agent: cannot start", zap.Error(err))
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	inst := install.Config{BinDir: *binDir, ConfDir: *confDir, Binary: *pluginBin,
		Plugin: map[string]any{"socket": cfg.CNISocket, "failOpen": *failOpen}}
	installed := make(chan struct{})
	if *confDir == "" {
		close(installed)
	} else {
		go keepInstalled(ctx, log, inst, installed)
	}

	hln, err := net.Listen("tcp", *healthAddr)
	if err != nil {
		log.Error("strait-cni-agent: -health-addr", zap.Error(err))
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		for what, ch := range map[string]<-chan struct{}{"pods not reconciled yet": a.Ready(), "plugin not installed yet": installed} {
			select {
			case <-ch:
			default:
				http.Error(w, what, http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go hsrv.Serve(hln)

	runErr := a.Run(ctx)
	hsrv.Close()
	if *confDir != "" && uninstalling(cfg.Kube, log) {
		if err := install.Uninstall(inst); err != nil {
			log.Error("removing the plugin from the CNI chain failed", zap.Error(err))
		} else {
			log.Info("the DaemonSet is being deleted: removed the plugin from the CNI chain")
		}
		if cfg.ProbeSNAT {
			if err := redirect.RemoveHostProbes(); err != nil {
				log.Error("removing the host probe tables failed", zap.Error(err))
			}
		}
	}
	if runErr != nil {
		log.Error("strait-cni-agent: stopped with an error", zap.Error(runErr))
		os.Exit(1)
	}
}

// keepInstalled chains the plugin (waiting for the primary CNI to write
// its configuration) and keeps it chained.
func keepInstalled(ctx context.Context, log *zap.Logger, inst install.Config, installed chan struct{}) {
	for {
		_, err := install.Install(inst)
		if err == nil {
			break
		}
		if !errors.Is(err, install.ErrNoPrimary) {
			log.Error("installing the CNI plugin failed; retrying", zap.Error(err))
		} else {
			log.Info("waiting for the primary CNI to write its configuration", zap.String("dir", inst.ConfDir))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
	close(installed)
	log.Info("CNI plugin installed", zap.String("conf-dir", inst.ConfDir))
	install.Watch(ctx, inst, 2*time.Second, func(path string, err error) {
		if err != nil {
			log.Warn("checking the CNI configuration failed; retrying", zap.Error(err))
			return
		}
		log.Info("the primary CNI rewrote its configuration: plugin chained again", zap.String("file", path))
	})
}

// uninstalling reports whether the agent stops because Strait is being
// removed (its DaemonSet is gone or being deleted): only then does the
// plugin leave the chain. On a restart or an upgrade it stays, so pods of
// enrolled namespaces wait for the agent instead of starting unprotected.
// Without POD_NAME/POD_NAMESPACE (not in a pod) nothing is removed.
func uninstalling(rc *rest.Config, log *zap.Logger) bool {
	ns, name := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")
	if ns == "" || name == "" {
		return false
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pod, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		log.Warn("cannot tell an uninstall from a restart; keeping the plugin chained", zap.Error(err))
		return false
	}
	for _, o := range pod.OwnerReferences {
		if o.Kind != "DaemonSet" {
			continue
		}
		ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, o.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true
		}
		return err == nil && (ds.DeletionTimestamp != nil || ds.UID != o.UID)
	}
	return false
}
