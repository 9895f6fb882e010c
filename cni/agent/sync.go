package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/strait-mesh/strait/cni/plugin"
	"github.com/strait-mesh/strait/cni/redirect"
	"github.com/strait-mesh/strait/cni/zds"
)

func newMember(p *corev1.Pod, ns *os.File, ips []netip.Addr) *member {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return &member{key: podKey(p.Namespace, p.Name), uid: p.UID, ns: ns, ips: ips,
		info: zds.WorkloadInfo{Name: p.Name, Namespace: p.Namespace, ServiceAccount: sa}}
}

// syncPod brings one pod (namespace/name) to what the API says: a
// running pod that should be in the mesh is enrolled (its namespace found
// by its IP), one that should not is taken out.
func (a *Agent) syncPod(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	p, err := a.kube.podList.Pods(ns).Get(name)
	if err != nil {
		p = nil // gone
	}
	want := false
	if p != nil {
		nsl, err := a.kube.nsLabels(ctx, ns)
		if err != nil {
			a.m.errors.WithLabelValues("kube").Inc()
			return err
		}
		want = a.wantEnrolled(p, nsl)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.members[key]
	if m != nil && (!want || m.uid != p.UID) {
		why := "no longer in the mesh (labels)"
		switch {
		case p == nil:
			why = "pod deleted"
		case m.uid != p.UID:
			why = "replaced by a pod of the same name"
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
			why = "pod finished"
		}
		a.unenrollLocked(ctx, m, why)
		m = nil
	}
	if !want || m != nil {
		return nil
	}
	ips := podIPs(p)
	if len(ips) == 0 || p.DeletionTimestamp != nil {
		// No sandbox yet (the CNI ADD enrolls it), or going away (its
		// CNI DEL may already have been served).
		return nil
	}
	f, err := a.find.byIP(ips)
	if err != nil {
		a.m.errors.WithLabelValues("netns").Inc()
		a.log.Warn("cannot find a running pod's network namespace; will retry", zap.String("pod", key), zap.Error(err))
		return err
	}
	return a.enrollLocked(ctx, newMember(p, f, ips), false)
}

// reconcile runs once the caches are synced, before any ztunnel is
// accepted: the rules in the pods' namespaces are the state a previous
// agent left. Pods that should be in the mesh get their rules again
// (idempotent) and are remembered for the replay; pods that should not
// (un-labelled while the agent was away) lose the rules they still have.
func (a *Agent) reconcile(ctx context.Context) {
	pods, err := a.kube.podList.List(labels.Everything())
	if err != nil {
		a.log.Error("listing pods from the cache failed", zap.Error(err))
		return
	}
	index, err := a.find.index()
	if err != nil {
		a.m.errors.WithLabelValues("netns").Inc()
		a.log.Error("scanning the node's network namespaces failed", zap.Error(err))
		return
	}
	var enrolled, cleaned int
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range pods {
		if p.Spec.HostNetwork {
			continue
		}
		ips := podIPs(p)
		path := ""
		for _, ip := range ips {
			if path = index[ip]; path != "" {
				break
			}
		}
		if path == "" {
			continue // not running here (yet), or ambiguous: syncPod logs it
		}
		nsl, err := a.kube.nsLabels(ctx, p.Namespace)
		if err != nil {
			continue
		}
		f, err := openNS(path)
		if err != nil {
			continue
		}
		if a.wantEnrolled(p, nsl) {
			if err := a.enrollLocked(ctx, newMember(p, f, ips), false); err != nil {
				a.log.Warn("re-enrolling a pod failed", zap.String("pod", podKey(p.Namespace, p.Name)), zap.Error(err))
				continue
			}
			enrolled++
			continue
		}
		installed := false
		_ = redirect.InNetNS(f, func() error {
			installed, _ = a.rdr.Installed(ctx)
			return nil
		})
		if installed {
			if err := a.removeRules(ctx, f); err != nil {
				a.log.Warn("removing a left-over ruleset failed", zap.String("pod", podKey(p.Namespace, p.Name)), zap.Error(err))
			} else {
				cleaned++
			}
		}
		f.Close()
	}
	a.log.Info("reconciled the node's pods", zap.Int("enrolled", enrolled), zap.Int("rules removed", cleaned))
}

// cni answers one plugin request.
func (a *Agent) cni(ctx context.Context, req *plugin.Request) error {
	select {
	case <-a.ready:
	case <-ctx.Done():
		return fmt.Errorf("the node agent is still starting (syncing with the API server): %w", ctx.Err())
	}
	switch req.Command {
	case "ADD":
		return a.cniAdd(ctx, req)
	case "DEL":
		a.mu.Lock()
		defer a.mu.Unlock()
		if m := a.members[podKey(req.PodNamespace, req.PodName)]; m != nil && (req.PodUID == "" || string(m.uid) == req.PodUID) {
			a.unenrollLocked(ctx, m, "CNI DEL")
		}
		return nil
	case "CHECK":
		return a.cniCheck(ctx, req)
	}
	return fmt.Errorf("unknown command %q", req.Command)
}

func (a *Agent) cniAdd(ctx context.Context, req *plugin.Request) error {
	p, err := a.kube.pod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("pod %s/%s is not in the API server", req.PodNamespace, req.PodName)
	}
	if req.PodUID != "" && string(p.UID) != req.PodUID {
		return fmt.Errorf("pod %s/%s has uid %s in the API server, the runtime asked for %s", req.PodNamespace, req.PodName, p.UID, req.PodUID)
	}
	nsl, err := a.kube.nsLabels(ctx, p.Namespace)
	if err != nil {
		return err
	}
	if !a.wantEnrolled(p, nsl) {
		return nil
	}
	var ips []netip.Addr
	for _, s := range req.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("bad pod IP %q from the primary CNI: %w", s, err)
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		return errors.New("the primary CNI plugin gave the pod no IP")
	}
	// A new pod must find a ztunnel: without one its traffic would be
	// redirected to nothing. Wait a little for one (it may be starting,
	// or the one we knew may have gone, which we learn on sending).
	wctx, cancel := context.WithTimeout(ctx, a.cfg.ProxyWait)
	defer cancel()
	for {
		if a.prox.count() == 0 {
			if err := a.prox.wait(wctx); err != nil {
				return fmt.Errorf("%w (socket %s): is the ztunnel pod running on this node? the kubelet retries", errNoProxy, a.cfg.ZDSSocket)
			}
		}
		err := a.addNew(ctx, p, req.Netns, ips)
		if !errors.Is(err, errNoProxy) {
			return err
		}
	}
}

// addNew enrolls a pod from its CNI ADD (requiring a ztunnel).
func (a *Agent) addNew(ctx context.Context, p *corev1.Pod, netns string, ips []netip.Addr) error {
	key := podKey(p.Namespace, p.Name)
	a.mu.Lock()
	defer a.mu.Unlock()
	if m := a.members[key]; m != nil {
		if m.uid == p.UID {
			return nil // enrolled meanwhile (the watch saw it running)
		}
		a.unenrollLocked(ctx, m, "replaced by a pod of the same name")
	}
	f, err := openNS(netns)
	if err != nil {
		return err
	}
	if err := a.enrollLocked(ctx, newMember(p, f, ips), true); err != nil {
		return fmt.Errorf("enrolling %s: %w", key, err)
	}
	return nil
}

func (a *Agent) cniCheck(ctx context.Context, req *plugin.Request) error {
	a.mu.Lock()
	m := a.members[podKey(req.PodNamespace, req.PodName)]
	a.mu.Unlock()
	p, err := a.kube.pod(ctx, req.PodNamespace, req.PodName)
	if err != nil || p == nil {
		return err
	}
	nsl, err := a.kube.nsLabels(ctx, p.Namespace)
	if err != nil {
		return err
	}
	if !a.wantEnrolled(p, nsl) {
		return nil
	}
	if m == nil {
		return fmt.Errorf("pod %s/%s should be in the mesh but is not enrolled", p.Namespace, p.Name)
	}
	ok := false
	err = redirect.InNetNS(req.Netns, func() error {
		var ierr error
		ok, ierr = a.rdr.Installed(ctx)
		return ierr
	})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("pod %s/%s: the redirection rules are missing from its network namespace", p.Namespace, p.Name)
	}
	return nil
}
