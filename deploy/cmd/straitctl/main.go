// Command straitctl installs, removes and inspects Strait on a cluster.
//
//	straitctl install [--dry-run=client|server] [--wait 5m]
//	straitctl uninstall [--crds] [--wait 5m]
//	straitctl status
//
// install server-side applies the manifests embedded from deploy/ (CRDs
// first, waiting until they are established), then waits for the CA
// Deployment and both DaemonSets (ztunnel and the CNI node agent) to roll
// out. --dry-run=client prints the YAML instead; --dry-run=server has the
// API server validate and admit everything without persisting it.
//
// uninstall first deletes the DaemonSets and the CA in the foreground and
// waits until their pods are gone (--wait): the node agent unchains the
// CNI plugin on SIGTERM only when it can still read its DaemonSet being
// deleted, so its RBAC goes afterwards.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/strait-mesh/strait/deploy"
	"github.com/strait-mesh/strait/deploy/manifest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "straitctl:", err)
		os.Exit(1)
	}
}

const usage = `usage: straitctl <command> [flags]

commands:
  install     apply Strait's manifests (CRDs, RBAC, CA, ztunnel, node agent) and wait for the rollout
  uninstall   delete them again (CRDs and your policies only with --crds)
  status      what is enrolled, the mesh components, certificates and their expiry

Run 'straitctl <command> -h' for the flags of a command.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errors.New("no command")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("straitctl "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", defaultKubeconfig(), "kubeconfig file (default $KUBECONFIG or ~/.kube/config; empty: in-cluster)")
	switch cmd {
	case "install":
		dry := fs.String("dry-run", "none", "none, client (print the YAML, touch nothing) or server (the API server validates, persists nothing)")
		wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the CA, ztunnel and the CNI node agent to roll out (0: do not wait)")
		grace := fs.Duration("controller-grace", 30*time.Second, "give up waiting early when no controller has acted on a workload after this long")
		if err := fs.Parse(args); err != nil {
			return err
		}
		objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
		if err != nil {
			return err
		}
		switch *dry {
		case "client":
			return printYAML(stdout, objs)
		case "server", "none":
		default:
			return fmt.Errorf("--dry-run=%q: want none, client or server", *dry)
		}
		a, err := applier(*kubeconfig, stdout)
		if err != nil {
			return err
		}
		if err := a.Apply(ctx, objs, *dry == "server"); err != nil {
			return err
		}
		if *dry == "server" {
			fmt.Fprintf(stdout, "server dry run: %d objects admitted, nothing persisted\n", len(objs))
			return nil
		}
		if *wait > 0 {
			if err := a.WaitRollout(ctx, objs, *wait, *grace); err != nil {
				return err
			}
		}
		fmt.Fprintln(stdout, "installed; enroll a namespace with: kubectl label namespace <ns> strait.dev/dataplane-mode=ambient")
		return nil
	case "uninstall":
		crds := fs.Bool("crds", false, "also delete the CRDs, and with them every AuthorizationPolicy and PeerAuthentication")
		wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the DaemonSets' and the CA's pods to be gone before deleting the rest (0: delete everything at once; node agents may then leave the CNI plugin chained)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		objs, err := manifest.Load(deploy.Files, deploy.Dirs...)
		if err != nil {
			return err
		}
		a, err := applier(*kubeconfig, stdout)
		if err != nil {
			return err
		}
		if *wait > 0 {
			if err := a.DeleteWorkloads(ctx, objs, *wait); err != nil {
				return fmt.Errorf("%w\nnothing else was deleted, so the node agents can still read their DaemonSet and unchain the CNI plugin; run uninstall again (or with --wait=0 to delete everything now)", err)
			}
		}
		return a.Delete(ctx, objs, *crds)
	case "status":
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := restConfig(*kubeconfig)
		if err != nil {
			return err
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		return status(ctx, cs, stdout)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func defaultKubeconfig() string {
	if k := os.Getenv("KUBECONFIG"); k != "" {
		return k
	}
	if h, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(h, ".kube", "config"); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func applier(kubeconfig string, out io.Writer) (*manifest.Applier, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	a, err := manifest.NewApplier(cfg)
	if err != nil {
		return nil, err
	}
	a.Log = func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	return a, nil
}

func printYAML(w io.Writer, objs []manifest.Object) error {
	for i, o := range objs {
		b, err := sigsyaml.Marshal(o.Object)
		if err != nil {
			return fmt.Errorf("%s: %w", o, err)
		}
		if i > 0 {
			fmt.Fprintln(w, "---")
		}
		fmt.Fprintf(w, "# %s\n%s", o.File, b)
	}
	return nil
}

// restConfig loads a kubeconfig, or the in-cluster config when empty.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
