// Package inpod runs the proxy inside enrolled pods' network namespaces.
// The node agent hands over each pod's netns (ZDS, cni/zds); for each pod
// the proxy binds its listeners (15001 outbound, 15006 inbound plaintext,
// 15008 HBONE) inside that netns on a locked OS thread, with SO_MARK 1337
// and SO_REUSEPORT so a new proxy process can bind beside an old one. A
// deleted pod's listeners close and its connections drain.
package inpod

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/cni/zds"
)

var (
	_ zds.Handler         = (*Manager)(nil)
	_ zds.SnapshotStarter = (*Manager)(nil)
)

// Handle is a running pod: Stop closes its listeners and drains its
// connections until ctx is done.
type Handle interface {
	Stop(ctx context.Context) error
}

// Starter starts the proxy for one pod in its netns (the app wires
// outbound, inbound and HBONE listeners).
type Starter interface {
	// info is what the agent said of the pod (name, namespace, service
	// account): a pod new to the cluster may not be in the proxy's
	// configuration yet (its IP is published after the CNI ADD that
	// waits for this start). It is empty for a KeepWorkload.
	StartPod(ctx context.Context, uid string, info zds.WorkloadInfo, ns *NetNS) (Handle, error)
}

// ErrUnknownWorkload is returned (and sent as a nack) for a uid the
// proxy has no workload for.
var ErrUnknownWorkload = errors.New("inpod: unknown workload uid")

// Manager tracks the pods this proxy serves.
type Manager struct {
	starter Starter
	log     *zap.Logger
	grace   time.Duration

	mu   sync.Mutex
	pods map[string]*pod
	// draining holds pods being stopped (deleted, stale or shutdown):
	// their connections still dial from their netns (NetNS) until drained.
	draining map[*pod]string
	// seen holds the uids added or kept since the agent (re)connected;
	// SnapshotSent stops every pod not in it.
	seen map[string]bool
	// synced: a snapshot was received (SnapshotSent) at least once, so
	// every pod the agent knows of is running; stopped: StopAll began.
	synced, stopped bool
}

type pod struct {
	ns     *NetNS
	handle Handle
}

// NewManager returns a manager; grace bounds draining a deleted pod.
func NewManager(s Starter, grace time.Duration, log *zap.Logger) *Manager {
	if log == nil {
		log = zap.NewNop()
	}
	if grace <= 0 {
		grace = 10 * time.Second
	}
	return &Manager{starter: s, log: log, grace: grace, pods: make(map[string]*pod), draining: make(map[*pod]string), seen: make(map[string]bool)}
}

// SnapshotStarted resets the replay bookkeeping when the agent
// (re)connects: the pods it replays next are the ones that exist.
func (m *Manager) SnapshotStarted(context.Context) {
	m.mu.Lock()
	m.seen = make(map[string]bool)
	m.mu.Unlock()
}

// AddWorkload takes ownership of netns and starts the pod. Adding a pod
// that already runs replaces its netns handle only if it is new.
func (m *Manager) AddWorkload(ctx context.Context, uid string, info zds.WorkloadInfo, netns *os.File) error {
	if netns == nil {
		return errors.New("inpod: add without a netns fd")
	}
	ns, err := NetNSFromFile(netns)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		ns.Close()
		return ErrStopping
	}
	if _, ok := m.pods[uid]; ok {
		m.seen[uid] = true
		m.mu.Unlock()
		ns.Close()
		return nil
	}
	m.mu.Unlock()
	h, err := m.starter.StartPod(ctx, uid, info, ns)
	if err != nil {
		ns.Close()
		return fmt.Errorf("inpod: start pod %s: %w", uid, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pods[uid]; ok || m.stopped { // raced with another add, or with StopAll
		go func() { h.Stop(context.Background()); ns.Close() }()
		if m.stopped {
			return ErrStopping
		}
		return nil
	}
	m.pods[uid] = &pod{ns: ns, handle: h}
	m.seen[uid] = true
	m.log.Info("inpod: pod enrolled", zap.String("uid", uid), zap.String("pod", info.Namespace+"/"+info.Name))
	return nil
}

// KeepWorkload is AddWorkload for a pod the agent replays after a
// reconnect: a pod already running keeps running untouched.
func (m *Manager) KeepWorkload(ctx context.Context, uid string, netns *os.File) error {
	return m.AddWorkload(ctx, uid, zds.WorkloadInfo{}, netns)
}

// DelWorkload stops a pod: listeners close at once, connections drain up
// to the grace period. Deleting an unknown uid is not an error (the agent
// may retry a delete).
func (m *Manager) DelWorkload(ctx context.Context, uid string) error {
	m.mu.Lock()
	p, ok := m.pods[uid]
	delete(m.pods, uid)
	delete(m.seen, uid)
	if ok {
		m.draining[p] = uid
	}
	m.mu.Unlock()
	if !ok {
		return nil
	}
	m.log.Info("inpod: pod removed", zap.String("uid", uid))
	return m.stop(ctx, p)
}

// stop drains p (moved to draining by the caller) within the grace.
func (m *Manager) stop(ctx context.Context, p *pod) error {
	ctx, cancel := context.WithTimeout(ctx, m.grace)
	defer cancel()
	return m.finish(p, p.handle.Stop(ctx))
}

// finish forgets a drained pod and releases its namespace handle.
func (m *Manager) finish(p *pod, err error) error {
	m.mu.Lock()
	delete(m.draining, p)
	m.mu.Unlock()
	p.ns.Close()
	return err
}

// SnapshotSent stops every pod the agent did not replay since it
// connected: they no longer exist.
func (m *Manager) SnapshotSent(ctx context.Context) error {
	m.mu.Lock()
	var stale []*pod
	for uid, p := range m.pods {
		if !m.seen[uid] {
			stale = append(stale, p)
			delete(m.pods, uid)
			m.draining[p] = uid
			m.log.Info("inpod: pod not in the agent's snapshot; removing", zap.String("uid", uid))
		}
	}
	m.synced = true
	m.mu.Unlock()
	var errs []error
	for _, p := range stale {
		errs = append(errs, m.stop(ctx, p))
	}
	return errors.Join(errs...)
}

// Synced reports whether the agent's snapshot has been received: every
// pod it replayed was started (its listeners bound) or refused before
// SnapshotSent, so the proxy serves what the agent knows of. It stays
// true across agent reconnections.
func (m *Manager) Synced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.synced
}

// ErrStopping refuses pods added once StopAll has begun.
var ErrStopping = errors.New("inpod: the proxy is shutting down")

// NetNS returns the namespace of a running pod, or of one still draining
// (its open connections may need to dial, e.g. a tunnel accepted just
// before the listeners closed), or nil.
func (m *Manager) NetNS(uid string) *NetNS {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pods[uid]; ok {
		return p.ns
	}
	for p, u := range m.draining {
		if u == uid {
			return p.ns
		}
	}
	return nil
}

// UIDs lists the running pods, sorted.
func (m *Manager) UIDs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.pods))
	for uid := range m.pods {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out
}

// StopAll drains every pod (proxy shutdown) until ctx is done: each
// pod's listeners close at once (with SO_REUSEPORT and tcp_migrate_req a
// new proxy bound beside them takes the connections not yet accepted),
// its open connections finish, and until they do its netns stays
// reachable through NetNS. Pods added afterwards are refused.
func (m *Manager) StopAll(ctx context.Context) error {
	m.mu.Lock()
	m.stopped = true
	pods := m.pods
	m.pods = make(map[string]*pod)
	for uid, p := range pods {
		m.draining[p] = uid
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(pods))
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- m.finish(p, p.handle.Stop(ctx))
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}
