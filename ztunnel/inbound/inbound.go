// Package inbound accepts traffic for the node's enrolled pods: HBONE
// tunnels (15008, through hbone.Server with this package as its Handler)
// and plaintext redirected to 15006. It finds the destination workload,
// enforces peer authentication (STRICT refuses plaintext) and L4
// authorization, and dials the pod from inside its network namespace.
package inbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/internal/netaddr"
	"github.com/strait-mesh/strait/ztunnel/hbone"
	"github.com/strait-mesh/strait/ztunnel/metrics"
	"github.com/strait-mesh/strait/ztunnel/rbac"
	"github.com/strait-mesh/strait/ztunnel/relay"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// PodDialer opens a connection to a local pod from inside its network
// namespace, with src as the source address when valid (transparent).
type PodDialer func(ctx context.Context, w *store.Workload, src netip.Addr, dst netip.AddrPort) (net.Conn, error)

// OriginalDst reads the pre-redirect destination of an accepted socket.
type OriginalDst func(c net.Conn) (netip.AddrPort, error)

// Config wires an Inbound.
type Config struct {
	Store   *store.Store
	Dial    PodDialer
	OrigDst OriginalDst
	// Node is this proxy's node; only workloads on it are served.
	Node string
	// PreserveSourceIP dials the pod from the original client address.
	PreserveSourceIP bool
	// MaxConns bounds inbound connections in total and per workload.
	MaxConns, MaxConnsPerWorkload int
	Metrics                       *metrics.Metrics
	Logger                        *zap.Logger
}

// Inbound implements hbone.Handler and the plaintext listener.
type Inbound struct {
	cfg    Config
	log    *zap.Logger
	total  atomic.Int64
	mu     sync.Mutex
	perPod map[string]int
}

var _ hbone.Handler = (*Inbound)(nil)

// Reasons refused connections are counted and logged under.
const (
	ReasonUnknownDest = "unknown_destination"
	ReasonNotLocal    = "not_local"
	ReasonDenied      = "denied"
	ReasonStrict      = "plaintext_strict"
	ReasonLimit       = "connection_limit"
	ReasonDial        = "dial_failed"
	ReasonOrigDst     = "no_original_destination"
)

// New checks cfg and returns an Inbound.
func New(cfg Config) (*Inbound, error) {
	if cfg.Store == nil || cfg.Dial == nil {
		return nil, errors.New("inbound: Store and Dial are required")
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 1 << 16
	}
	if cfg.MaxConnsPerWorkload == 0 {
		cfg.MaxConnsPerWorkload = 1 << 14
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Inbound{cfg: cfg, log: cfg.Logger, perPod: make(map[string]int)}, nil
}

// admission is what Connect leaves on the request for Done.
type admission struct {
	w    *store.Workload
	rec  *metrics.ConnRecorder
	slot bool
}

func (in *Inbound) fail(reason string, err error, fields ...zap.Field) error {
	if in.cfg.Metrics != nil {
		in.cfg.Metrics.Failure("inbound", reason)
	}
	in.log.Info("inbound: refused", append(fields, zap.String("reason", reason), zap.Error(err))...)
	return err
}

// acquire takes a connection slot for w.
func (in *Inbound) acquire(w *store.Workload) bool {
	if in.total.Add(1) > int64(in.cfg.MaxConns) {
		in.total.Add(-1)
		return false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.perPod[w.UID] >= in.cfg.MaxConnsPerWorkload {
		in.total.Add(-1)
		return false
	}
	in.perPod[w.UID]++
	return true
}

func (in *Inbound) release(w *store.Workload) {
	in.total.Add(-1)
	in.mu.Lock()
	if in.perPod[w.UID]--; in.perPod[w.UID] <= 0 {
		delete(in.perPod, w.UID)
	}
	in.mu.Unlock()
}

// local finds the enrolled local workload owning dst.
func (in *Inbound) local(snap *store.Snapshot, dst netip.Addr) (*store.Workload, string, error) {
	w := snap.WorkloadByIP(dst)
	if w == nil {
		return nil, ReasonUnknownDest, fmt.Errorf("%w: no workload has %s", hbone.ErrUnknownDestination, dst)
	}
	if in.cfg.Node != "" && w.Node != in.cfg.Node {
		return nil, ReasonNotLocal, fmt.Errorf("%w: %s/%s runs on node %q, not here", hbone.ErrUnknownDestination, w.Namespace, w.Name, w.Node)
	}
	return w, "", nil
}

// Connect decides on one HBONE tunnel and dials the pod.
func (in *Inbound) Connect(ctx context.Context, r *hbone.InboundRequest) (net.Conn, error) {
	peer := zap.String("peer", r.Peer.String())
	if !r.Authority.IsIP() {
		return nil, in.fail(ReasonUnknownDest, fmt.Errorf("%w: authority %q is not an IP", hbone.ErrBadRequest, r.Authority.Host), peer)
	}
	snap := in.cfg.Store.Load()
	w, reason, err := in.local(snap, r.Authority.Addr.Addr())
	if err != nil {
		return nil, in.fail(reason, err, peer)
	}
	src := r.Forwarded
	if !src.IsValid() {
		src = r.Source.Addr()
	}
	dec := rbac.Evaluate(snap.Policies(w), rbac.Connection{Identity: r.Peer, SrcIP: src, DstPort: r.Authority.Port})
	if !dec.Allow {
		return nil, in.fail(ReasonDenied, fmt.Errorf("%w: %s", hbone.ErrDenied, dec.Reason), peer,
			zap.String("destination", w.Namespace+"/"+w.Name), zap.String("policy", dec.Policy))
	}
	if !in.acquire(w) {
		return nil, in.fail(ReasonLimit, fmt.Errorf("%w: connection limit for %s/%s", hbone.ErrOverloaded, w.Namespace, w.Name), peer)
	}
	var dialSrc netip.Addr
	if in.cfg.PreserveSourceIP {
		dialSrc = src
	}
	up, err := in.cfg.Dial(ctx, w, dialSrc, r.Authority.Addr)
	if err != nil {
		in.release(w)
		return nil, in.fail(ReasonDial, err, peer)
	}
	a := &admission{w: w, slot: true}
	if in.cfg.Metrics != nil {
		a.rec = in.cfg.Metrics.ConnOpened(labels(snap, r.Peer.String(), src, w, "mutual_tls"))
		in.cfg.Metrics.ActiveConn("inbound", 1)
	}
	r.Value = a
	return up, nil
}

// Done is the hbone.Server's OnStreamDone hook: it records byte counts
// and releases the connection slot.
func (in *Inbound) Done(res hbone.StreamResult) {
	if res.Request == nil {
		return
	}
	a, ok := res.Request.Value.(*admission)
	if !ok {
		return
	}
	if a.rec != nil {
		a.rec.AddReceived(res.Received)
		a.rec.AddSent(res.Sent)
		a.rec.Close()
		in.cfg.Metrics.ActiveConn("inbound", -1)
	}
	if a.slot {
		in.release(a.w)
	}
}

// ServePlaintext accepts plaintext redirected to 15006 inside workload
// w's netns until ln closes.
func (in *Inbound) ServePlaintext(ctx context.Context, ln net.Listener, w *store.Workload) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("inbound: accept plaintext: %w", err)
		}
		go in.plaintext(ctx, c, w)
	}
}

func (in *Inbound) plaintext(ctx context.Context, c net.Conn, w *store.Workload) {
	client := netaddr.AddrPort(c.RemoteAddr())
	from := zap.Stringer("client", client)
	if in.cfg.OrigDst == nil {
		c.Close()
		return
	}
	dst, err := in.cfg.OrigDst(c)
	if err != nil {
		in.fail(ReasonOrigDst, err, from)
		c.Close()
		return
	}
	snap := in.cfg.Store.Load()
	if cur := snap.WorkloadByUID(w.UID); cur != nil {
		w = cur // pick up the latest config for this pod
	}
	if snap.PeerAuthMode(w) == rbac.ModeStrict {
		in.fail(ReasonStrict, fmt.Errorf("inbound: plaintext to %s/%s refused: STRICT mTLS", w.Namespace, w.Name), from)
		netaddr.ResetClose(c)
		return
	}
	dec := rbac.Evaluate(snap.Policies(w), rbac.Connection{SrcIP: client.Addr(), DstPort: dst.Port()})
	if !dec.Allow {
		in.fail(ReasonDenied, fmt.Errorf("inbound: plaintext denied: %s", dec.Reason), from, zap.String("policy", dec.Policy))
		netaddr.ResetClose(c)
		return
	}
	if !in.acquire(w) {
		in.fail(ReasonLimit, fmt.Errorf("inbound: connection limit for %s/%s", w.Namespace, w.Name), from)
		netaddr.ResetClose(c)
		return
	}
	var src netip.Addr
	if in.cfg.PreserveSourceIP {
		src = client.Addr()
	}
	up, err := in.cfg.Dial(ctx, w, src, dst)
	if err != nil {
		in.release(w)
		in.fail(ReasonDial, err, from)
		netaddr.ResetClose(c)
		return
	}
	var rec *metrics.ConnRecorder
	if in.cfg.Metrics != nil {
		rec = in.cfg.Metrics.ConnOpened(labels(snap, "", client.Addr(), w, "none"))
		in.cfg.Metrics.ActiveConn("inbound", 1)
	}
	relay.Start(c, up, func(res relay.Result) {
		in.release(w)
		if rec != nil {
			rec.AddReceived(res.AToB)
			rec.AddSent(res.BToA)
			rec.Close()
			in.cfg.Metrics.ActiveConn("inbound", -1)
		}
	})
}

func labels(snap *store.Snapshot, principal string, src netip.Addr, dst *store.Workload, security string) metrics.Labels {
	l := metrics.Labels{
		Reporter:             "destination",
		SourcePrincipal:      principal,
		DestinationWorkload:  dst.Name,
		DestinationNamespace: dst.Namespace,
		DestinationPrincipal: dst.Identity().String(),
		SecurityPolicy:       security,
	}
	if sw := snap.WorkloadByIP(src); sw != nil {
		l.SourceWorkload, l.SourceNamespace = sw.Name, sw.Namespace
	}
	if l.SourcePrincipal == "" {
		l.SourcePrincipal = "unknown"
	}
	return l
}
