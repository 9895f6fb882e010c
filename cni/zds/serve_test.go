package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

type event struct {
	kind string // start, add, keep, del, snapshot
	uid  string
	info WorkloadInfo
	ino  uint64 // netns inode; 0 if none
}

// recorder is a Handler (and SnapshotStarter) that reports each call and
// nacks the uids in nack.
type recorder struct {
	events chan event
	nack   map[string]string
	// block, if set, makes AddWorkload of that uid wait for ctx to end.
	block string
}

func newRecorder() *recorder {
	return &recorder{events: make(chan event, 64), nack: map[string]string{}}
}

func (r *recorder) result(uid string) error {
	if reason, ok := r.nack[uid]; ok {
		return errors.New(reason)
	}
	return nil
}

func fileIno(f *os.File) uint64 {
	if f == nil {
		return 0
	}
	var st unix.Stat_t
	_ = unix.Fstat(int(f.Fd()), &st)
	_ = f.Close()
	return st.Ino
}

func (r *recorder) AddWorkload(ctx context.Context, uid string, info WorkloadInfo, netns *os.File) error {
	r.events <- event{kind: "add", uid: uid, info: info, ino: fileIno(netns)}
	if uid == r.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return r.result(uid)
}

func (r *recorder) KeepWorkload(_ context.Context, uid string, netns *os.File) error {
	r.events <- event{kind: "keep", uid: uid, ino: fileIno(netns)}
	return r.result(uid)
}

func (r *recorder) DelWorkload(_ context.Context, uid string) error {
	r.events <- event{kind: "del", uid: uid}
	return r.result(uid) // unknown uids: acked, delete is idempotent
}

func (r *recorder) SnapshotSent(context.Context) error {
	r.events <- event{kind: "snapshot"}
	return nil
}

func (r *recorder) SnapshotStarted(context.Context) { r.events <- event{kind: "start"} }

func (r *recorder) expect(t *testing.T, want ...event) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-r.events:
			if got != w {
				t.Fatalf("handler got %+v, want %+v", got, w)
			}
		case <-time.After(testTimeout):
			t.Fatalf("handler: no event, want %+v", w)
		}
	}
}

func (r *recorder) expectNone(t *testing.T) {
	t.Helper()
	select {
	case got := <-r.events:
		t.Fatalf("unexpected handler call %+v", got)
	default:
	}
}

func fastClient(t *testing.T) *Client {
	return NewClient(ClientConfig{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: zaptest.NewLogger(t)})
}

// TestServeReconnects: ztunnel's Serve loop takes a snapshot, survives an
// agent restart (reconnects with backoff and takes the new agent's fresh
// snapshot), nacks what the handler refuses and what the package refuses,
// and stops with ctx.
func TestServeReconnects(t *testing.T) {
	ns := openNS(t, "net")
	ino := inode(t, ns)
	info := WorkloadInfo{Name: "a-pod", Namespace: "default", ServiceAccount: "default"}
	path := sockPath(t)
	before := countFDs(t)

	srv1, err := Listen(path, ServerConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := newRecorder()
	h.nack["bad"] = "no room for bad"
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- fastClient(t).Serve(ctx, path, h) }()

	ac1, err := srv1.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, uid := range []string{"a", "b"} {
		if err := ac1.Add(ctx, uid, info, ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := ac1.Add(ctx, "bad", info, ns); !isNack(err, "no room for bad") {
		t.Fatalf("Add(bad): %v, want the handler's nack", err)
	}
	if err := ac1.SnapshotSent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ac1.Del(ctx, "never-added"); err != nil { // passed through; this handler acks
		t.Fatal(err)
	}
	h.expect(t,
		event{kind: "start"},
		event{kind: "add", uid: "a", info: info, ino: ino},
		event{kind: "add", uid: "b", info: info, ino: ino},
		event{kind: "add", uid: "bad", info: info, ino: ino},
		event{kind: "snapshot"},
		event{kind: "del", uid: "never-added"},
	)

	// The agent restarts: listener first, so ztunnel cannot redial the old
	// one, then the connection.
	if err := srv1.Close(); err != nil {
		t.Fatal(err)
	}
	ac1.Close()
	srv2, err := Listen(path, ServerConfig{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ac2, err := srv2.Accept(ctx) // Serve's reconnection
	if err != nil {
		t.Fatal(err)
	}
	if err := ac2.Keep(ctx, "a", ns); err != nil {
		t.Fatal(err)
	}
	if err := ac2.Keep(ctx, "b", nil); err != nil {
		t.Fatal(err)
	}
	if err := ac2.Add(ctx, "c", info, ns); err != nil {
		t.Fatal(err)
	}
	if err := ac2.SnapshotSent(ctx); err != nil {
		t.Fatal(err)
	}
	h.expect(t,
		event{kind: "start"},
		event{kind: "keep", uid: "a", ino: ino},
		event{kind: "keep", uid: "b"},
		event{kind: "add", uid: "c", info: info, ino: ino},
		event{kind: "snapshot"},
	)

	// A request the package refuses is nacked without reaching the handler,
	// and the loop goes on on the same connection.
	sendRaw(t, ac2.pc.uc, mustMarshal(t, addMsg("no-fd")))
	if reason := readAckRaw(t, ac2.pc.uc); reason != "add without netns fd" {
		t.Fatalf("nack %q", reason)
	}
	if err := ac2.Del(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	h.expect(t, event{kind: "del", uid: "c"})

	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
	h.expectNone(t)
	ac2.Close()
	srv2.Close()
	if after := countFDs(t); after != before {
		t.Errorf("fd leak: %d before, %d after", before, after)
	}
}

// TestServeRedialsARefusingAgent: an agent that drops the connection after
// the hello (as one of another version does) is redialled, with backoff,
// each time with a fresh hello.
func TestServeRedialsARefusingAgent(t *testing.T) {
	path := sockPath(t)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	h := newRecorder()
	served := make(chan error, 1)
	go func() { served <- fastClient(t).Serve(ctx, path, h) }()
	for i := range 3 {
		uc, err := ln.AcceptUnix()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		n, _, _, _, err := uc.ReadMsgUnix(buf, nil)
		if err != nil || string(buf[:n]) != "\x08\x01" {
			t.Fatalf("dial %d: hello %x %v", i, buf[:n], err)
		}
		uc.Close()
		h.expect(t, event{kind: "start"})
	}
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
}

func TestServeStops(t *testing.T) {
	t.Run("no agent at all", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
		defer cancel()
		err := fastClient(t).Serve(ctx, sockPath(t), newRecorder())
		if !errors.Is(err, context.DeadlineExceeded) || err.Error()[:5] != "zds: " {
			t.Fatalf("Serve: %v, want context.DeadlineExceeded", err)
		}
	})
	t.Run("waiting for a request", func(t *testing.T) {
		srv, err := Listen(sockPath(t), ServerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		h := newRecorder()
		served := make(chan error, 1)
		go func() { served <- fastClient(t).Serve(ctx, srv.Path(), h) }()
		ac, err := srv.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer ac.Close()
		h.expect(t, event{kind: "start"})
		cancel()
		if err := <-served; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v", err)
		}
		if err := ac.Del(testCtx(t), "x"); !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("agent after ztunnel stopped: %v, want ErrPeerClosed", err)
		}
	})
	t.Run("inside the handler", func(t *testing.T) {
		srv, err := Listen(sockPath(t), ServerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		h := newRecorder()
		h.block = "slow"
		served := make(chan error, 1)
		go func() { served <- fastClient(t).Serve(ctx, srv.Path(), h) }()
		ac, err := srv.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer ac.Close()
		agent := make(chan error, 1)
		ns, actx := openNS(t, "net"), testCtx(t)
		go func() { agent <- ac.Add(actx, "slow", WorkloadInfo{}, ns) }()
		h.expect(t, event{kind: "start"})
		<-h.events // the add is in the handler
		cancel()
		if err := <-served; !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v", err)
		}
		if err := <-agent; err == nil {
			t.Fatal("agent's Add succeeded though ztunnel stopped")
		}
	})
	t.Run("nil handler", func(t *testing.T) {
		if err := NewClient(ClientConfig{}).Serve(testCtx(t), sockPath(t), nil); err == nil {
			t.Fatal("Serve(nil handler) succeeded")
		}
	})
}

func TestBackoff(t *testing.T) {
	cfg := ClientConfig{}.populate()
	if cfg.MinBackoff != 10*time.Millisecond || cfg.MaxBackoff != 5*time.Second {
		t.Fatalf("defaults %v..%v, want 10ms..5s", cfg.MinBackoff, cfg.MaxBackoff)
	}
	b := backoff{min: cfg.MinBackoff, max: cfg.MaxBackoff}
	for round := range 2 {
		for i := range 70 {
			upper := cfg.MaxBackoff
			if i < 30 && cfg.MinBackoff<<i < upper {
				upper = cfg.MinBackoff << i
			}
			if d := b.next(); d < upper/2 || d > upper {
				t.Fatalf("round %d attempt %d: %v, want within [%v, %v]", round, i, d, upper/2, upper)
			}
		}
		b.reset()
	}
}
