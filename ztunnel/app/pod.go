package app

import (
	"context"
	"errors"
	"net"
	"sync"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/ztunnel/hbone"
)

// podRun is one enrolled pod's listeners and the connections they took.
type podRun struct {
	out, plain, hbone net.Listener
	srv               *hbone.Server
	conns             connSet
	cancel            context.CancelFunc
	wg                sync.WaitGroup
	// stopped runs after the pod is gone (forget its identity if unused).
	stopped func()
	log     *zap.Logger
}

func (p *podRun) closeListeners() {
	for _, ln := range []net.Listener{p.out, p.plain, p.hbone} {
		if ln != nil {
			ln.Close()
		}
	}
}

// Stop closes the listeners at once, lets open connections finish until
// ctx is done (HBONE peers get GOAWAY), then closes what is left.
//
// On a restart the new proxy is already bound beside these listeners
// (SO_REUSEPORT): once they close, new connections go to it, and those
// queued here but not yet accepted move to it too (tcp_migrate_req, set
// by the node agent in the pod netns). What this process accepted stays
// here until it ends or ctx is done, when it is closed (FIN; an HBONE
// stream is reset).
func (p *podRun) Stop(ctx context.Context) error {
	p.closeListeners()
	// The accept loops return once their listener is closed; after that
	// every connection they accepted is in p.conns, so the wait below
	// cannot miss one accepted at the last moment.
	p.wg.Wait()
	err := p.srv.Shutdown(ctx)
	if errors.Is(err, hbone.ErrServerClosed) {
		err = nil
	}
	p.conns.wait(ctx)
	if n := p.conns.closeAll(); n > 0 && p.log != nil {
		p.log.Warn("drain grace over: open connections closed", zap.Int("connections", n))
	}
	p.cancel()
	if p.stopped != nil {
		p.stopped()
	}
	return err
}

// connSet tracks a pod's accepted connections so removal can drain them.
type connSet struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	empty chan struct{} // closed when the set becomes empty; nil while empty
}

func (s *connSet) add(c net.Conn) {
	s.mu.Lock()
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	if len(s.conns) == 0 {
		s.empty = make(chan struct{})
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		if len(s.conns) == 0 && s.empty != nil {
			close(s.empty)
			s.empty = nil
		}
	}
	s.mu.Unlock()
}

func (s *connSet) wait(ctx context.Context) {
	s.mu.Lock()
	ch := s.empty
	s.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// closeAll closes every connection left and says how many there were.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	conns := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns)
}

// tracking wraps a listener so accepted connections join a connSet until
// closed.
type tracking struct {
	net.Listener
	set *connSet
}

func newTracking(ln net.Listener, set *connSet) net.Listener {
	return &tracking{Listener: ln, set: set}
}

func (t *tracking) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{TCPConn: c.(*net.TCPConn), set: t.set}
	t.set.add(tc)
	return tc, nil
}

// trackedConn removes itself from the set on Close. It embeds
// *net.TCPConn so SO_ORIGINAL_DST, splice and half-close keep working.
type trackedConn struct {
	*net.TCPConn
	set  *connSet
	once sync.Once
}

// TCP exposes the socket so TCP-to-TCP relays can splice.
func (c *trackedConn) TCP() *net.TCPConn { return c.TCPConn }

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.set.remove(c) })
	return c.TCPConn.Close()
}
