package zds

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
)

// ClientConfig configures the ztunnel side. Zero values give the defaults.
type ClientConfig struct {
	// Timeout bounds sending the hello and each ack (DefaultTimeout).
	// Waiting for the next request (Next) is bounded only by its ctx.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound Serve's delay before reconnecting
	// (10 ms and 5 s): it doubles after each connection that ended before
	// the agent sent anything, is jittered over its upper half, and starts
	// again from MinBackoff once a connection has carried a request.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *zap.Logger
}

func (c ClientConfig) populate() ClientConfig {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 10 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Client is the ztunnel side: it dials the node agent.
type Client struct {
	cfg ClientConfig
	log *zap.Logger
}

// NewClient returns a Client; it holds no resources until Dial or Serve.
func NewClient(cfg ClientConfig) *Client {
	cfg = cfg.populate()
	return &Client{cfg: cfg, log: cfg.Logger}
}

// Dial connects to the agent's socket at path (DefaultSocketPath if empty)
// and sends the hello. It does not wait for the agent to accept: a hello
// the agent refuses shows up as ErrPeerClosed from the first Next.
func (c *Client) Dial(ctx context.Context, path string) (*ProxyConn, error) {
	if path == "" {
		path = DefaultSocketPath
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("zds: dial %s: %w", path, err)
	}
	uc := nc.(*net.UnixConn)
	hello, err := proto.Marshal(&zdspb.ZdsHello{Version: Version})
	if err != nil {
		_ = uc.Close()
		return nil, fmt.Errorf("zds: encode hello: %w", err)
	}
	pc := newPconn(uc)
	if _, err := pc.write(ctx, c.cfg.Timeout, "send hello", hello, nil); err != nil {
		_ = uc.Close()
		return nil, err
	}
	return &ProxyConn{pc: pc, log: c.log, timeout: c.cfg.Timeout, sem: make(chan struct{}, 1)}, nil
}

// ProxyConn is ztunnel's end of a connection to the agent. Next returns
// each request; Ack answers it. Exactly one Ack must follow each Request
// that Next returns without error, before Next is called again.
// Calls are serialised; Close may be called at any time.
type ProxyConn struct {
	pc      *pconn
	log     *zap.Logger
	timeout time.Duration

	sem     chan struct{}
	pending bool  // a request was returned and not yet acked; guarded by sem
	broken  error // guarded by sem
}

// Next waits (bounded by ctx only) for the agent's next request, and
// returns it decoded and checked: its kind and uid are known, and Netns, if
// set, is a network namespace that the caller now owns and must close.
//
// A request that fails the checks (garbage bytes, an unknown payload, an
// empty uid, an add without an fd, an fd that is not a network namespace,
// more than one fd, an fd where none belongs, an oversized packet,
// truncated ancillary data) is nacked here with a clear reason, its fds are
// closed, and Next returns a *RequestError: the connection is still in
// step, so just call Next again.
//
// ErrPeerClosed means the agent went away. A ctx that ends while waiting
// leaves the connection usable. Any other error means the connection is
// unusable; close it and dial again.
func (c *ProxyConn) Next(ctx context.Context) (Request, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return Request{}, fmt.Errorf("zds: next: %w", ctx.Err())
	}
	defer func() { <-c.sem }()
	if c.broken != nil {
		return Request{}, wrap(ErrConnBroken, c.broken)
	}
	if c.pending {
		return Request{}, ErrAckPending
	}
	p, err := c.pc.read(ctx, 0, "read request")
	if err != nil {
		p.discard()
		if ctxErr(ctx) == nil {
			c.broken = err
		}
		return Request{}, err
	}
	rerr := p.check()
	var req Request
	if rerr == nil {
		req, rerr = decodeRequest(p.data)
	}
	if rerr != nil {
		p.discard()
	} else {
		rerr = checkFDs(&req, p.fds) // takes or closes the fds
		p.fds = nil
	}
	if rerr != nil {
		c.log.Warn("zds: refused a request", zap.String("reason", rerr.Reason))
		// The nack is owed whatever ctx says: without it the agent would
		// wait out its ack timeout and drop the connection.
		if err := c.respond(context.WithoutCancel(ctx), rerr.Reason); err != nil {
			return Request{}, err
		}
		return Request{}, rerr
	}
	c.pending = true
	c.log.Debug("zds: request", zap.Stringer("kind", req.Kind), zap.String("uid", req.UID))
	return req, nil
}

// Ack answers the request Next returned: a nil err acks it, a non-nil err
// nacks it with err.Error() as the reason (cut to MaxReasonLen, made valid
// UTF-8, "error" if empty). It is bounded by ctx and ClientConfig.Timeout.
// If ctx is already done nothing is sent and Ack may be called again.
func (c *ProxyConn) Ack(ctx context.Context, err error) error {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("zds: ack: %w", ctx.Err())
	}
	defer func() { <-c.sem }()
	if c.broken != nil {
		return wrap(ErrConnBroken, c.broken)
	}
	if !c.pending {
		return ErrNoPending
	}
	reason := ""
	if err != nil {
		if reason = cleanReason(err.Error()); reason == "" {
			reason = "error"
		}
	}
	if err := c.respond(ctx, reason); err != nil {
		if c.broken == nil {
			return err // nothing was sent: still pending
		}
		c.pending = false
		return err
	}
	c.pending = false
	return nil
}

// respond sends one Ack (reason "" acks). Called with sem held. A write
// that was attempted and failed breaks the connection.
func (c *ProxyConn) respond(ctx context.Context, reason string) error {
	b, err := proto.Marshal(&zdspb.WorkloadResponse{Payload: &zdspb.WorkloadResponse_Ack{Ack: &zdspb.Ack{Error: reason}}})
	if err != nil {
		return fmt.Errorf("zds: encode ack: %w", err)
	}
	tried, err := c.pc.write(ctx, c.timeout, "send ack", b, nil)
	if err != nil && tried {
		c.broken = err
		_ = c.pc.uc.Close()
	}
	return err
}

// Close closes the connection. Safe to call more than once and concurrently
// with Next, which then fails.
func (c *ProxyConn) Close() error {
	if err := c.pc.uc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("zds: close: %w", err)
	}
	return nil
}

// Handler is what Serve drives: one method per request kind. A nil error
// acks the request, a non-nil one nacks it with err.Error().
//
// Fd ownership: AddWorkload and KeepWorkload own netns whatever they
// return, and must close it when done with it (KeepWorkload's netns may be
// nil: the agent sent none).
//
// DelWorkload for a uid the handler does not know: Serve passes it
// through and the handler decides; returning nil (delete is idempotent) is
// what Strait's agent expects, since it may resend deletes after a
// reconnection.
//
// Calls come from Serve's one goroutine, in the agent's order.
type Handler interface {
	AddWorkload(ctx context.Context, uid string, info WorkloadInfo, netns *os.File) error
	KeepWorkload(ctx context.Context, uid string, netns *os.File) error
	DelWorkload(ctx context.Context, uid string) error
	SnapshotSent(ctx context.Context) error
}

// SnapshotStarter may be implemented by a Handler. Serve calls
// SnapshotStarted on each new connection, before its first request: what
// the agent sends from then until SnapshotSent is its complete set of
// workloads, so the handler can mark what it has as unconfirmed and drop
// the unconfirmed at SnapshotSent.
type SnapshotStarter interface {
	SnapshotStarted(ctx context.Context)
}

// Serve connects to the agent at path, hands each request to h and answers
// it, and reconnects with jittered exponential backoff (see ClientConfig)
// whenever the connection fails or the agent restarts, until ctx is done.
// Requests the proxy side refuses (see Next) are nacked and never reach h.
// It returns only when ctx is done, with an error wrapping ctx.Err(), or
// at once if h is nil.
func (c *Client) Serve(ctx context.Context, path string, h Handler) error {
	if h == nil {
		return errors.New("zds: serve: nil handler")
	}
	bo := backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff}
	for {
		served, err := c.serveConn(ctx, path, h)
		if ctx.Err() != nil {
			return fmt.Errorf("zds: serve: %w", ctx.Err())
		}
		if served {
			bo.reset()
		}
		wait := bo.next()
		c.log.Warn("zds: no connection to the node agent; retrying",
			zap.String("path", path), zap.Error(err), zap.Duration("in", wait))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("zds: serve: %w", ctx.Err())
		}
	}
}

// serveConn runs one connection to its end. served reports whether the
// agent sent at least one request (so it accepted the hello).
func (c *Client) serveConn(ctx context.Context, path string, h Handler) (served bool, err error) {
	conn, err := c.Dial(ctx, path)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	c.log.Info("zds: connected to the node agent", zap.String("path", path))
	if s, ok := h.(SnapshotStarter); ok {
		s.SnapshotStarted(ctx)
	}
	for {
		req, err := conn.Next(ctx)
		if err != nil {
			var rerr *RequestError
			if errors.As(err, &rerr) {
				served = true // refused and nacked by Next; the connection goes on
				continue
			}
			return served, err
		}
		served = true
		herr := dispatch(ctx, h, req)
		if herr != nil {
			c.log.Warn("zds: handler refused a request", zap.Stringer("kind", req.Kind),
				zap.String("uid", req.UID), zap.Error(herr))
		}
		if err := conn.Ack(ctx, herr); err != nil {
			return served, err
		}
	}
}

func dispatch(ctx context.Context, h Handler, r Request) error {
	switch r.Kind {
	case KindAdd:
		return h.AddWorkload(ctx, r.UID, r.Info, r.Netns)
	case KindKeep:
		return h.KeepWorkload(ctx, r.UID, r.Netns)
	case KindDel:
		return h.DelWorkload(ctx, r.UID)
	case KindSnapshotSent:
		return h.SnapshotSent(ctx)
	}
	_ = r.Close()
	return fmt.Errorf("zds: unknown request kind %s", r.Kind)
}

// backoff is exponential with "equal jitter": the n-th delay is uniform in
// [d/2, d] where d = min(max, min·2ⁿ).
type backoff struct {
	min, max time.Duration
	n        uint
}

func (b *backoff) reset() { b.n = 0 }

func (b *backoff) next() time.Duration {
	d := b.max
	if b.n < 32 {
		if s := b.min << b.n; s > 0 && s < b.max {
			d = s
		}
	}
	b.n++
	half := d / 2
	return half + rand.N(d-half+1)
}
