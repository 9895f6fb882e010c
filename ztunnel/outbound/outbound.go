// Package outbound handles connections a pod opens, redirected to 15001
// inside its network namespace. It finds the original destination; a
// service VIP is resolved to a healthy endpoint; an enrolled (HBONE)
// destination is reached through an HBONE tunnel to the pod's 15008 with
// the pod's identity as the expected SAN; anything else passes through as
// plain TCP from the pod's namespace.
package outbound

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/internal/netaddr"
	"github.com/strait-mesh/strait/ztunnel/hbone"
	"github.com/strait-mesh/strait/ztunnel/metrics"
	"github.com/strait-mesh/strait/ztunnel/relay"
	"github.com/strait-mesh/strait/ztunnel/store"
)

// LoadBalancing picks a service endpoint.
type LoadBalancing string

// Endpoint selection modes.
const (
	Random     LoadBalancing = "random"
	RoundRobin LoadBalancing = "round-robin"
)

// Tunneler opens HBONE tunnels (hbone.Client).
type Tunneler interface {
	Dial(ctx context.Context, req hbone.Request) (*hbone.Conn, error)
}

// PassthroughDialer dials dst as plain TCP from the source pod's netns.
type PassthroughDialer func(ctx context.Context, src *store.Workload, dst netip.AddrPort) (net.Conn, error)

// Config wires an Outbound.
type Config struct {
	Store       *store.Store
	HBONE       Tunneler
	Passthrough PassthroughDialer
	OrigDst     func(net.Conn) (netip.AddrPort, error)
	LB          LoadBalancing
	// HBONEPort is where peers listen (15008).
	HBONEPort   uint16
	DialTimeout time.Duration
	// MaxConns bounds outbound connections in total.
	MaxConns int
	Metrics  *metrics.Metrics
	Logger   *zap.Logger
}

// Outbound serves the outbound capture listeners.
type Outbound struct {
	cfg    Config
	log    *zap.Logger
	rr     atomic.Uint64
	active atomic.Int64
}

// Reasons outbound failures are counted under.
const (
	ReasonOrigDst    = "no_original_destination"
	ReasonNoEndpoint = "no_healthy_endpoint"
	ReasonNoPort     = "service_port_unknown"
	ReasonTunnel     = "tunnel_failed"
	ReasonDenied     = "denied"
	ReasonDial       = "dial_failed"
	ReasonLimit      = "connection_limit"
)

// New checks cfg and returns an Outbound.
func New(cfg Config) (*Outbound, error) {
	if cfg.Store == nil || cfg.HBONE == nil || cfg.Passthrough == nil || cfg.OrigDst == nil {
		return nil, errors.New("outbound: Store, HBONE, Passthrough and OrigDst are required")
	}
	if cfg.LB == "" {
		cfg.LB = Random
	}
	if cfg.LB != Random && cfg.LB != RoundRobin {
		return nil, fmt.Errorf("outbound: unknown load balancing %q (random|round-robin)", cfg.LB)
	}
	if cfg.HBONEPort == 0 {
		cfg.HBONEPort = hbone.Port
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 1 << 16
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Outbound{cfg: cfg, log: cfg.Logger}, nil
}

// Serve accepts connections of source workload src until ln closes.
func (o *Outbound) Serve(ctx context.Context, ln net.Listener, src *store.Workload) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("outbound: accept: %w", err)
		}
		go o.handle(ctx, c, src)
	}
}

// Target is where a connection goes, as decided by Resolve.
type Target struct {
	Addr     netip.AddrPort  // the real destination (endpoint IP:targetPort)
	Workload *store.Workload // nil for destinations outside the mesh
	Service  *store.Service  // set when the client dialed a VIP
}

// Resolve maps an original destination to a target.
func (o *Outbound) Resolve(snap *store.Snapshot, dst netip.AddrPort) (Target, string, error) {
	if svc := snap.ServiceByVIP(dst.Addr()); svc != nil {
		var target uint16
		for _, p := range svc.Ports {
			if p.Port == dst.Port() {
				target = p.TargetPort
				if target == 0 {
					target = p.Port
				}
			}
		}
		if target == 0 {
			return Target{}, ReasonNoPort, fmt.Errorf("outbound: service %s/%s has no port %d", svc.Namespace, svc.Name, dst.Port())
		}
		eps := snap.Endpoints(svc)
		if len(eps) == 0 {
			return Target{}, ReasonNoEndpoint, fmt.Errorf("outbound: service %s/%s has no healthy endpoint", svc.Namespace, svc.Name)
		}
		var ep *store.Workload
		if o.cfg.LB == RoundRobin {
			ep = eps[(o.rr.Add(1)-1)%uint64(len(eps))]
		} else {
			ep = eps[rand.IntN(len(eps))]
		}
		if len(ep.IPs) == 0 {
			return Target{}, ReasonNoEndpoint, fmt.Errorf("outbound: endpoint %s/%s has no IP", ep.Namespace, ep.Name)
		}
		return Target{Addr: netip.AddrPortFrom(ep.IPs[0], target), Workload: ep, Service: svc}, "", nil
	}
	return Target{Addr: dst, Workload: snap.WorkloadByIP(dst.Addr())}, "", nil
}

func (o *Outbound) fail(reason string, err error, fields ...zap.Field) {
	if o.cfg.Metrics != nil {
		o.cfg.Metrics.Failure("outbound", reason)
	}
	o.log.Info("outbound: refused", append(fields, zap.String("reason", reason), zap.Error(err))...)
}

func (o *Outbound) handle(ctx context.Context, c net.Conn, src *store.Workload) {
	if o.active.Add(1) > int64(o.cfg.MaxConns) {
		o.active.Add(-1)
		o.fail(ReasonLimit, errors.New("outbound: connection limit reached"), zap.String("source", src.Name))
		netaddr.ResetClose(c)
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			o.active.Add(-1)
		}
	}()
	dst, err := o.cfg.OrigDst(c)
	if err != nil {
		o.fail(ReasonOrigDst, err)
		netaddr.ResetClose(c)
		return
	}
	snap := o.cfg.Store.Load()
	if cur := snap.WorkloadByUID(src.UID); cur != nil {
		src = cur // the latest config for this pod (its IPs may be new)
	}
	t, reason, err := o.Resolve(snap, dst)
	if err != nil {
		o.fail(reason, err, zap.Stringer("destination", dst))
		netaddr.ResetClose(c)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, o.cfg.DialTimeout)
	up, security, err := o.dial(dctx, c, src, t)
	cancel()
	if err != nil {
		reason := ReasonDial
		switch {
		case errors.Is(err, hbone.ErrDenied):
			reason = ReasonDenied
		case security == "mutual_tls":
			reason = ReasonTunnel
		}
		o.fail(reason, err, zap.Stringer("destination", t.Addr), zap.String("source", src.Namespace+"/"+src.Name))
		netaddr.ResetClose(c)
		return
	}
	var rec *metrics.ConnRecorder
	if o.cfg.Metrics != nil {
		rec = o.cfg.Metrics.ConnOpened(o.labels(src, t, security))
		o.cfg.Metrics.ActiveConn("outbound", 1)
	}
	// The connection lives on fresh goroutines; this one (deep stack from
	// resolving and dialing) exits now.
	handedOff = true
	relay.Start(c, up, func(res relay.Result) {
		o.active.Add(-1)
		if rec != nil {
			rec.AddSent(res.AToB)
			rec.AddReceived(res.BToA)
			rec.Close()
			o.cfg.Metrics.ActiveConn("outbound", -1)
		}
		if res.Err != nil {
			o.log.Debug("outbound: connection ended with error", zap.Stringer("destination", t.Addr), zap.Error(res.Err))
		}
	})
}

// dial opens the upstream leg: an HBONE tunnel for enrolled destinations,
// plain TCP otherwise.
func (o *Outbound) dial(ctx context.Context, c net.Conn, src *store.Workload, t Target) (net.Conn, string, error) {
	w := t.Workload
	if w == nil || w.Protocol != store.ProtocolHBONE {
		up, err := o.cfg.Passthrough(ctx, src, t.Addr)
		return up, "none", err
	}
	if len(w.IPs) == 0 {
		return nil, "mutual_tls", fmt.Errorf("outbound: workload %s/%s has no IP", w.Namespace, w.Name)
	}
	ids := []string{w.Identity().String()}
	if t.Service != nil {
		ids = append(ids, t.Service.SANs...)
	}
	expected, err := hbone.ParseIdentities(ids...)
	if err != nil {
		return nil, "mutual_tls", fmt.Errorf("outbound: expected identities of %s/%s: %w", w.Namespace, w.Name, err)
	}
	var srcIP netip.Addr
	if len(src.IPs) > 0 {
		srcIP = src.IPs[0]
	}
	req := hbone.Request{
		Key: hbone.Key{
			SrcIdentity:   src.Identity(),
			DstIdentities: expected,
			DstAddr:       netip.AddrPortFrom(t.Addr.Addr(), o.cfg.HBONEPort),
			SrcIP:         srcIP,
		},
		Authority: t.Addr.String(),
		Forwarded: netaddr.AddrPort(c.RemoteAddr()).Addr(),
	}
	up, err := o.cfg.HBONE.Dial(ctx, req)
	if err != nil {
		return nil, "mutual_tls", err
	}
	return up, "mutual_tls", nil
}

func (o *Outbound) labels(src *store.Workload, t Target, security string) metrics.Labels {
	l := metrics.Labels{
		Reporter:        "source",
		SourceWorkload:  src.Name,
		SourceNamespace: src.Namespace,
		SourcePrincipal: src.Identity().String(),
		SecurityPolicy:  security,
	}
	if t.Workload != nil {
		l.DestinationWorkload, l.DestinationNamespace = t.Workload.Name, t.Workload.Namespace
		l.DestinationPrincipal = t.Workload.Identity().String()
	}
	if t.Service != nil {
		l.DestinationService = t.Service.Hostname
	}
	return l
}
