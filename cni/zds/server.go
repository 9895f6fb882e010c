package zds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
)

// ServerConfig configures the node agent side. Zero values give the
// defaults.
type ServerConfig struct {
	// HelloTimeout bounds the wait for ztunnel's hello in Accept
	// (DefaultTimeout).
	HelloTimeout time.Duration
	// AckTimeout bounds one request: sending it and receiving its ack
	// (DefaultTimeout).
	AckTimeout time.Duration
	Logger     *zap.Logger
}

func (c ServerConfig) populate() ServerConfig {
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = DefaultTimeout
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Server is the node agent's listening socket. ztunnel connects to it.
type Server struct {
	cfg  ServerConfig
	log  *zap.Logger
	path string
	ln   *net.UnixListener
	// dev and ino identify the socket file Listen put at path, so Close
	// removes it only if no newer agent has replaced it since.
	dev, ino uint64

	accept    chan struct{} // one Accept at a time (they share the listener deadline)
	closeOnce sync.Once
	closeErr  error
}

// Listen creates a SOCK_SEQPACKET unix socket at path (DefaultSocketPath if
// empty), mode 0600, creating the parent directory (0755) if needed. A
// socket file already at path (left by an agent that died) is replaced;
// any other kind of file there is refused with ErrNotSocket. The socket is
// bound under a private temporary name, chmod-ed, then renamed onto path, so
// it is never reachable with looser permissions and never missing once it
// has existed.
func Listen(path string, cfg ServerConfig) (*Server, error) {
	cfg = cfg.populate()
	if path == "" {
		path = DefaultSocketPath
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%w: %s is %s", ErrNotSocket, path, describeMode(fi.Mode()))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	tmpDir, err := os.MkdirTemp(dir, ".z")
	if err != nil {
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("zds: listen %s (bound first as %s): %w", path, tmp, err)
	}
	ln.SetUnlinkOnClose(false) // the name it knows is the temporary one
	fail := func(err error) (*Server, error) {
		_ = ln.Close()
		return nil, fmt.Errorf("zds: listen %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, path: path, ln: ln, accept: make(chan struct{}, 1)}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
	}
	s.log.Info("zds: listening", zap.String("path", path))
	return s, nil
}

func describeMode(m os.FileMode) string {
	switch t := m.Type(); {
	case t == 0:
		return "a regular file"
	case t&os.ModeDir != 0:
		return "a directory"
	case t&os.ModeSymlink != 0:
		return "a symlink"
	default:
		return "a " + strings.TrimLeft(t.String(), "-") + " file"
	}
}

// Path is the socket path.
func (s *Server) Path() string { return s.path }

// Close stops listening and removes the socket file, unless another agent
// has already replaced it. Connections already accepted stay open.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.ln.Close()
		if fi, err := os.Lstat(s.path); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && uint64(st.Dev) == s.dev && uint64(st.Ino) == s.ino {
				_ = os.Remove(s.path)
			}
		}
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("zds: close listener: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// Accept waits for ztunnel to connect, then reads and checks its hello
// (within HelloTimeout). An error wrapping net.ErrClosed means the Server
// was closed; one wrapping ErrHandshake or ErrVersionMismatch concerns
// that one connection only (it has been closed) and the Server stays
// usable. Calls are serialised.
func (s *Server) Accept(ctx context.Context) (*AgentConn, error) {
	select {
	case s.accept <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("zds: accept: %w", ctx.Err())
	}
	defer func() { <-s.accept }()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("zds: accept: %w", err)
	}
	disarm := deadline(ctx, 0, s.ln.SetDeadline)
	uc, err := s.ln.AcceptUnix()
	disarm()
	_ = s.ln.SetDeadline(time.Time{})
	if err != nil {
		return nil, ioError(ctx, "accept", err)
	}
	c := &AgentConn{
		pc:         newPconn(uc),
		log:        s.log,
		ackTimeout: s.cfg.AckTimeout,
		sem:        make(chan struct{}, 1),
	}
	v, err := c.readHello(ctx, s.cfg.HelloTimeout)
	if err != nil {
		_ = uc.Close()
		s.log.Warn("zds: refused a ztunnel connection", zap.Error(err))
		return nil, err
	}
	s.log.Info("zds: ztunnel connected", zap.Stringer("version", v))
	return c, nil
}

// AgentConn is the node agent's end of one ztunnel connection. Its methods
// send one request each and wait for its ack; they may be called from
// several goroutines and are serialised (the protocol has one request in
// flight). Each is bounded by its ctx and by ServerConfig.AckTimeout.
//
// A nack comes back as *NackError and leaves the connection usable. Any
// other failure after a request may have been sent (I/O error, timeout,
// ctx ending while waiting for the ack, a malformed response) closes the
// connection, since a late ack could no longer be matched to its request:
// later calls fail with ErrConnBroken, and ztunnel reconnects and is sent a
// fresh snapshot.
type AgentConn struct {
	pc         *pconn
	log        *zap.Logger
	ackTimeout time.Duration

	sem    chan struct{} // held for the whole request/ack exchange
	broken error         // guarded by sem
}

func (c *AgentConn) readHello(ctx context.Context, timeout time.Duration) (zdspb.Version, error) {
	p, err := c.pc.read(ctx, timeout, "read hello")
	defer p.discard()
	if err != nil {
		return 0, wrap(ErrHandshake, err)
	}
	if len(p.fds) > 0 {
		return 0, wrap(ErrHandshake, fmt.Errorf("%w: %d with the hello", ErrUnexpectedFD, len(p.fds)))
	}
	if rerr := p.check(); rerr != nil {
		return 0, wrap(ErrHandshake, rerr)
	}
	var h zdspb.ZdsHello
	if err := proto.Unmarshal(p.data, &h); err != nil {
		return 0, wrap(ErrHandshake, err)
	}
	if h.GetVersion() != Version {
		return 0, fmt.Errorf("%w: ztunnel announced %d (%s), this agent speaks %d (%s)",
			ErrVersionMismatch, int32(h.GetVersion()), h.GetVersion(), int32(Version), Version)
	}
	return h.GetVersion(), nil
}

// Add hands a pod to ztunnel: uid, its names, and its network namespace,
// which travels as SCM_RIGHTS. netns stays the caller's (the kernel passes
// ztunnel a duplicate) and may be closed once Add returns. A nil netns is
// sent without an fd, and ztunnel nacks it ("add without netns fd").
func (c *AgentConn) Add(ctx context.Context, uid string, info WorkloadInfo, netns *os.File) error {
	return c.do(ctx, Request{Kind: KindAdd, UID: uid, Info: info}, netns)
}

// Keep tells ztunnel, during the snapshot that follows a (re)connection, to
// keep the pod uid it may already run. netns may be nil (the agent no longer
// has it, as in Istio); when set it is checked by ztunnel like Add's.
// Istio's own ztunnel refuses a KeepWorkload that carries an fd: pass nil
// when the peer may be one.
func (c *AgentConn) Keep(ctx context.Context, uid string, netns *os.File) error {
	return c.do(ctx, Request{Kind: KindKeep, UID: uid}, netns)
}

// Del tells ztunnel the pod uid is gone. Whether an unknown uid is an ack
// or a nack is ztunnel's choice (Strait's handlers ack: delete is
// idempotent).
func (c *AgentConn) Del(ctx context.Context, uid string) error {
	return c.do(ctx, Request{Kind: KindDel, UID: uid}, nil)
}

// SnapshotSent ends the replay that follows each new connection: ztunnel
// then drops every workload not added or kept since the connection began.
func (c *AgentConn) SnapshotSent(ctx context.Context) error {
	return c.do(ctx, Request{Kind: KindSnapshotSent}, nil)
}

// Close closes the connection. Safe to call more than once and
// concurrently with requests, which then fail.
func (c *AgentConn) Close() error {
	if err := c.pc.uc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("zds: close: %w", err)
	}
	return nil
}

func (c *AgentConn) do(ctx context.Context, r Request, netns *os.File) error {
	op := r.Kind.String()
	if r.UID != "" {
		op += " " + r.UID
	}
	if r.Kind != KindSnapshotSent && r.UID == "" {
		return fmt.Errorf("zds: %s: empty uid", op)
	}
	b, err := encodeRequest(r)
	if err != nil {
		return err
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("zds: %s: %w", op, ctx.Err())
	}
	defer func() { <-c.sem }()
	if c.broken != nil {
		return wrap(ErrConnBroken, c.broken)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("zds: %s: %w", op, err) // nothing sent: still in step
	}
	start := time.Now()
	if sent, err := c.pc.write(ctx, c.ackTimeout, op, b, netns); err != nil {
		if sent {
			c.breakConn(op, err)
		}
		return err
	}
	p, err := c.pc.read(ctx, max(c.ackTimeout-time.Since(start), time.Nanosecond), op+": await ack")
	defer p.discard()
	if err != nil {
		c.breakConn(op, err)
		return err
	}
	var resp zdspb.WorkloadResponse
	switch {
	case len(p.fds) > 0:
		err = fmt.Errorf("%w: %d with the response to %s", ErrUnexpectedFD, len(p.fds), op)
	case p.check() != nil:
		err = fmt.Errorf("zds: response to %s: %w", op, p.check())
	default:
		if uerr := proto.Unmarshal(p.data, &resp); uerr != nil {
			err = fmt.Errorf("%w: response to %s: %v", ErrMalformed, op, uerr)
		} else if resp.GetAck() == nil {
			err = fmt.Errorf("%w: response to %s has no ack", ErrMalformed, op)
		}
	}
	if err != nil {
		c.breakConn(op, err)
		return err
	}
	if reason := resp.GetAck().GetError(); reason != "" {
		c.log.Warn("zds: ztunnel nacked", zap.String("request", op), zap.String("reason", reason))
		return &NackError{Reason: reason}
	}
	c.log.Debug("zds: ztunnel acked", zap.String("request", op), zap.Duration("took", time.Since(start)))
	return nil
}

// breakConn records why the connection can no longer be trusted to be in
// step and closes it. Called with sem held.
func (c *AgentConn) breakConn(op string, err error) {
	c.broken = err
	_ = c.pc.uc.Close()
	c.log.Warn("zds: connection to ztunnel closed", zap.String("request", op), zap.Error(err))
}

// chain is an error with its own text that wraps several errors.
type chain struct {
	msg  string
	errs []error
}

func (c *chain) Error() string   { return c.msg }
func (c *chain) Unwrap() []error { return c.errs }

// wrap returns an error reading "<sentinel>: <cause without its zds:
// prefix>" that matches both with errors.Is/As.
func wrap(sentinel, cause error) error {
	return &chain{
		msg:  sentinel.Error() + ": " + strings.TrimPrefix(cause.Error(), "zds: "),
		errs: []error{sentinel, cause},
	}
}
