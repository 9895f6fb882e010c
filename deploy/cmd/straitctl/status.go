package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const (
	systemNS      = "strait-system"
	labelMode     = "strait.dev/dataplane-mode"
	bundleMap     = "strait-ca-bundle"
	metricsPort   = "15020"
	expiryMetric  = "strait_cert_expiry_timestamp_seconds"
	ztunnelSelect = "app.kubernetes.io/name=ztunnel"
)

// status prints what is enrolled, the components, and certificates.
func status(ctx context.Context, cs kubernetes.Interface, w io.Writer) error {
	now := time.Now()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()

	// Enrolled namespaces and pods.
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: labelMode + "=ambient"})
	if err != nil {
		return fmt.Errorf("namespaces: %w", err)
	}
	fmt.Fprintln(tw, "ENROLLED NAMESPACE\tPODS IN MESH\tOPTED OUT")
	if len(nss.Items) == 0 {
		fmt.Fprintln(tw, "(none: kubectl label namespace <ns> strait.dev/dataplane-mode=ambient)\t\t")
	}
	for _, ns := range nss.Items {
		pods, err := cs.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("pods in %s: %w", ns.Name, err)
		}
		in, out := 0, 0
		for _, p := range pods.Items {
			if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			if p.Labels[labelMode] == "none" {
				out++
			} else {
				in++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\n", ns.Name, in, out)
	}
	fmt.Fprintln(tw)

	// Components.
	fmt.Fprintln(tw, "COMPONENT\tSTATUS")
	if d, err := cs.AppsV1().Deployments(systemNS).Get(ctx, "strait-ca", metav1.GetOptions{}); err == nil {
		fmt.Fprintf(tw, "strait-ca (Deployment)\t%d/%d ready\n", d.Status.ReadyReplicas, replicas(d.Spec.Replicas))
	} else {
		fmt.Fprintf(tw, "strait-ca (Deployment)\t%s\n", notFound(err))
	}
	for _, name := range []string{"ztunnel", "strait-cni-agent"} {
		if ds, err := cs.AppsV1().DaemonSets(systemNS).Get(ctx, name, metav1.GetOptions{}); err == nil {
			fmt.Fprintf(tw, "%s (DaemonSet)\t%d/%d nodes ready, %d updated\n", name, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled)
		} else {
			fmt.Fprintf(tw, "%s (DaemonSet)\t%s\n", name, notFound(err))
		}
	}
	fmt.Fprintln(tw)

	// Trust bundle.
	fmt.Fprintln(tw, "TRUST ROOT\tEXPIRES")
	if cm, err := cs.CoreV1().ConfigMaps(systemNS).Get(ctx, bundleMap, metav1.GetOptions{}); err == nil {
		roots := parseRoots([]byte(cm.Data["roots.pem"]))
		if len(roots) == 0 {
			fmt.Fprintln(tw, "(the bundle holds no certificate)\t")
		}
		for _, c := range roots {
			fmt.Fprintf(tw, "%s\t%s\n", c.Subject, until(now, c.NotAfter))
		}
	} else {
		fmt.Fprintf(tw, "ConfigMap %s/%s\t%s\n", systemNS, bundleMap, notFound(err))
	}
	fmt.Fprintln(tw)

	// Certificates each ztunnel holds, from its metrics port.
	pods, err := cs.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{LabelSelector: ztunnelSelect})
	if err != nil {
		return fmt.Errorf("ztunnel pods: %w", err)
	}
	fmt.Fprintln(tw, "NODE\tZTUNNEL\tIDENTITY\tCERTIFICATE EXPIRES")
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Spec.NodeName < pods.Items[j].Spec.NodeName })
	for _, p := range pods.Items {
		body, err := cs.CoreV1().Pods(systemNS).ProxyGet("http", p.Name, metricsPort, "/metrics", nil).DoRaw(ctx)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t(metrics unreachable: %v)\t\n", p.Spec.NodeName, p.Name, firstLine(err.Error()))
			continue
		}
		exp := parseExpiry(body)
		if len(exp) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t(no local identity yet)\t\n", p.Spec.NodeName, p.Name)
		}
		for _, e := range exp {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Spec.NodeName, p.Name, e.identity, until(now, e.at))
		}
	}
	return nil
}

func replicas(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

func notFound(err error) string {
	if apierrors.IsNotFound(err) {
		return "not installed"
	}
	return "error: " + firstLine(err.Error())
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func until(now, t time.Time) string {
	d := t.Sub(now).Round(time.Minute)
	if d < 0 {
		return fmt.Sprintf("%s (EXPIRED %v ago)", t.UTC().Format(time.RFC3339), -d)
	}
	return fmt.Sprintf("%s (in %v)", t.UTC().Format(time.RFC3339), d)
}

func parseRoots(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && blk.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
}

type expiry struct {
	identity string
	at       time.Time
}

// parseExpiry reads strait_cert_expiry_timestamp_seconds{identity="..."} v
// lines from a Prometheus text exposition.
func parseExpiry(body []byte) []expiry {
	var out []expiry
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, expiryMetric+"{") {
			continue
		}
		labels, val, ok := strings.Cut(strings.TrimPrefix(line, expiryMetric+"{"), "} ")
		if !ok {
			continue
		}
		id := ""
		for _, kv := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok && k == "identity" {
				id, _ = strconv.Unquote(v)
			}
		}
		f, err := strconv.ParseFloat(strings.Fields(val)[0], 64)
		if err != nil || id == "" {
			continue
		}
		out = append(out, expiry{id, time.Unix(int64(f), 0)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].identity < out[j].identity })
	return out
}
