package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/strait-mesh/strait/cni/zds"
)

// errNoProxy means no ztunnel is connected to the agent's ZDS socket.
var errNoProxy = errors.New("no ztunnel is connected to the node agent")

// proxies are the ztunnel processes connected over ZDS: usually one, two
// while a new ztunnel takes over from an old one (both get every pod).
type proxies struct {
	mu     sync.Mutex
	conns  []*zds.AgentConn
	joined chan struct{} // closed (and replaced) when one joins
}

func newProxies() *proxies { return &proxies{joined: make(chan struct{})} }

func (p *proxies) add(c *zds.AgentConn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	close(p.joined)
	p.joined = make(chan struct{})
	p.mu.Unlock()
}

// count is the number of connected proxies (a dead one is noticed on the
// next message it is sent).
func (p *proxies) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// wait returns when a proxy joins or ctx ends.
func (p *proxies) wait(ctx context.Context) error {
	p.mu.Lock()
	ch := p.joined
	p.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send runs op on every proxy. A proxy whose connection broke is dropped
// (it reconnects and gets a replay). It returns how many acked, and the
// nacks joined; with none connected it returns errNoProxy.
func (p *proxies) send(ctx context.Context, op func(context.Context, *zds.AgentConn) error) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var (
		acked int
		nacks []error
		live  = p.conns[:0]
	)
	for _, c := range p.conns {
		err := op(ctx, c)
		var nack *zds.NackError
		switch {
		case err == nil:
			acked++
		case errors.As(err, &nack):
			nacks = append(nacks, err)
		default:
			c.Close()
			continue // broken: forget it
		}
		live = append(live, c)
	}
	clear(p.conns[len(live):])
	p.conns = live
	if len(nacks) > 0 {
		return acked, fmt.Errorf("agent: ztunnel refused: %w", errors.Join(nacks...))
	}
	if acked == 0 {
		return 0, errNoProxy
	}
	return acked, nil
}

func (p *proxies) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
