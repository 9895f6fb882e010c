package zds

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"go.uber.org/zap/zaptest"
)

// TestRequests sends every request kind through the public API on a real
// socket with a real, freshly created network namespace, and checks what
// ztunnel's side decodes and what the agent gets back (ack or nack).
func TestRequests(t *testing.T) {
	ns := newNetns(t)
	nsIno := inode(t, ns)
	info := WorkloadInfo{Name: "reviews-v1-6d8f", Namespace: "bookinfo", ServiceAccount: "bookinfo-reviews"}
	tests := []struct {
		name     string
		send     func(context.Context, *AgentConn) error
		want     Request
		wantFD   bool
		answer   error
		wantNack string
	}{
		{
			name: "add",
			send: func(ctx context.Context, c *AgentConn) error { return c.Add(ctx, "uid-1", info, ns) },
			want: Request{Kind: KindAdd, UID: "uid-1", Info: info}, wantFD: true,
		},
		{
			name: "add without workload info",
			send: func(ctx context.Context, c *AgentConn) error { return c.Add(ctx, "uid-2", WorkloadInfo{}, ns) },
			want: Request{Kind: KindAdd, UID: "uid-2"}, wantFD: true,
		},
		{
			name: "add nacked by the handler",
			send: func(ctx context.Context, c *AgentConn) error { return c.Add(ctx, "uid-3", info, ns) },
			want: Request{Kind: KindAdd, UID: "uid-3", Info: info}, wantFD: true,
			answer: errors.New("failure to start proxy: no iptables"), wantNack: "failure to start proxy: no iptables",
		},
		{
			name: "keep with netns",
			send: func(ctx context.Context, c *AgentConn) error { return c.Keep(ctx, "uid-4", ns) },
			want: Request{Kind: KindKeep, UID: "uid-4"}, wantFD: true,
		},
		{
			name: "keep without netns",
			send: func(ctx context.Context, c *AgentConn) error { return c.Keep(ctx, "uid-5", nil) },
			want: Request{Kind: KindKeep, UID: "uid-5"},
		},
		{
			name: "del",
			send: func(ctx context.Context, c *AgentConn) error { return c.Del(ctx, "uid-1") },
			want: Request{Kind: KindDel, UID: "uid-1"},
		},
		{
			name: "del of an unknown uid nacked by the handler",
			send: func(ctx context.Context, c *AgentConn) error { return c.Del(ctx, "nobody") },
			want: Request{Kind: KindDel, UID: "nobody"}, answer: errors.New("unknown uid"), wantNack: "unknown uid",
		},
		{
			name: "snapshot sent",
			send: func(ctx context.Context, c *AgentConn) error { return c.SnapshotSent(ctx) },
			want: Request{Kind: KindSnapshotSent},
		},
	}
	_, ac, pc := connect(t, ServerConfig{Logger: zaptest.NewLogger(t)}, ClientConfig{Logger: zaptest.NewLogger(t)})
	checkNoFDLeak(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			got := answer(ctx, pc, func(Request) error { return tt.answer })
			err := tt.send(ctx, ac)
			a := <-got
			if a.err != nil {
				t.Fatalf("proxy side: %v", a.err)
			}
			r := a.req
			if r.Kind != tt.want.Kind || r.UID != tt.want.UID || r.Info != tt.want.Info {
				t.Errorf("proxy got %s %q %+v, want %s %q %+v", r.Kind, r.UID, r.Info, tt.want.Kind, tt.want.UID, tt.want.Info)
			}
			switch {
			case tt.wantFD && a.ino != nsIno:
				t.Errorf("proxy got netns inode %d, want %d (the namespace sent)", a.ino, nsIno)
			case !tt.wantFD && a.ino != 0:
				t.Errorf("proxy got an fd (inode %d), want none", a.ino)
			}
			if tt.wantNack == "" {
				if err != nil {
					t.Fatalf("agent: %v", err)
				}
				return
			}
			if !isNack(err, tt.wantNack) {
				t.Fatalf("agent got %v, want nack %q", err, tt.wantNack)
			}
			if !strings.HasPrefix(err.Error(), "zds: nack: ") {
				t.Errorf("nack error text %q lacks the zds: prefix", err)
			}
		})
	}
}

// TestHostNetnsAdd needs no root: the host namespace of this process is a
// real netns fd too.
func TestHostNetnsAdd(t *testing.T) {
	ns := openNS(t, "net")
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	checkNoFDLeak(t)
	ctx := testCtx(t)
	for i := range 50 { // many adds: no fd accumulates on either side
		got := answer(ctx, pc, func(Request) error { return nil })
		if err := ac.Add(ctx, fmt.Sprintf("uid-%d", i), WorkloadInfo{Name: "p"}, ns); err != nil {
			t.Fatal(err)
		}
		if a := <-got; a.err != nil || a.ino != inode(t, ns) {
			t.Fatalf("proxy: %+v", a)
		}
	}
}

// TestProxyRefuses feeds ztunnel's side requests that must be nacked by
// the package itself, never reaching the caller, with every fd closed and
// the connection still in step afterwards.
func TestProxyRefuses(t *testing.T) {
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	uc := ac.pc.uc
	netNS := openNS(t, "net")
	mntNS := openNS(t, "mnt")
	regular, err := os.CreateTemp(t.TempDir(), "regular")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { regular.Close() })
	pipeR, _ := pipeFiles(t)
	many := make([]*os.File, fdRoom+4)
	for i := range many {
		many[i] = netNS
	}
	big := make([]byte, MaxMessageSize+1024)
	for i := range big {
		big[i] = 0xff
	}
	tests := []struct {
		name     string
		data     []byte
		files    []*os.File
		sentinel error
		reason   string // the nack must contain it
	}{
		{"garbage bytes", []byte{0xff, 0xff, 0xff, 0xff}, nil, ErrMalformed, "malformed message: "},
		{"garbage with an fd", []byte{0x0a, 0x7f, 0x01}, []*os.File{netNS}, ErrMalformed, "malformed message: "},
		{"unknown oneof field", []byte{0xca, 0x06, 0x00}, nil, ErrMalformed, "unknown request payload (field 105)"}, // field 105, empty message
		{"Istio's retired NoSnapshotPresent", []byte{0x22, 0x00}, nil, ErrMalformed, "unknown request payload (field 4)"},
		{"a lone zero byte with an fd (Go's way of sending no data with fds)", []byte{}, []*os.File{netNS}, ErrMalformed, "malformed message: "},
		{"a zero-length packet with an fd", nil, []*os.File{netNS}, ErrMalformed, "malformed message: empty request"},
		{"add with empty uid", mustMarshal(t, addMsg("")), []*os.File{netNS}, ErrMalformed, "add with empty uid"},
		{"add without fd", mustMarshal(t, addMsg("u")), nil, ErrNoNetns, "add without netns fd"},
		{"add with a pipe", mustMarshal(t, addMsg("u")), []*os.File{pipeR}, ErrNotNetns, "not a network namespace"},
		{"add with a regular file", mustMarshal(t, addMsg("u")), []*os.File{regular}, ErrNotNetns, "not a network namespace"},
		{"add with a mount namespace", mustMarshal(t, addMsg("u")), []*os.File{mntNS}, ErrNotNetns, "not a network namespace"},
		{"keep with a pipe", mustMarshal(t, keepMsg("u")), []*os.File{pipeR}, ErrNotNetns, "not a network namespace"},
		{"add with two fds", mustMarshal(t, addMsg("u")), []*os.File{netNS, netNS}, ErrTooManyFDs, "more than one fd in a message: got 2"},
		{"add with too many fds", mustMarshal(t, addMsg("u")), many, ErrControlTruncated, "truncated ancillary data"},
		{"del with an fd", mustMarshal(t, delMsg("u")), []*os.File{netNS}, ErrUnexpectedFD, "unexpected fd: on del"},
		{"snapshot with an fd", mustMarshal(t, snapMsg()), []*os.File{netNS}, ErrUnexpectedFD, "unexpected fd: on snapshot-sent"},
		{"oversized", big, nil, ErrMessageTooLarge, "message too large"},
		{"oversized with an fd", big, []*os.File{netNS}, ErrMessageTooLarge, "message too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			checkNoFDLeak(t)
			type next struct {
				req Request
				err error
			}
			ch := make(chan next, 1)
			go func() {
				req, err := pc.Next(ctx)
				ch <- next{req, err}
			}()
			if tt.data == nil {
				sendEmptyWithFD(t, uc, tt.files[0])
			} else {
				sendRaw(t, uc, tt.data, tt.files...)
			}
			reason := readAckRaw(t, uc)
			n := <-ch
			if n.err == nil {
				_ = n.req.Close()
				t.Fatalf("Next returned %s %q, want a refusal", n.req.Kind, n.req.UID)
			}
			var rerr *RequestError
			if !errors.As(n.err, &rerr) || !errors.Is(n.err, tt.sentinel) {
				t.Fatalf("Next: %v, want a *RequestError wrapping %v", n.err, tt.sentinel)
			}
			if !strings.Contains(reason, tt.reason) || reason != rerr.Reason {
				t.Errorf("nack %q (RequestError %q), want it to contain %q", reason, rerr.Reason, tt.reason)
			}
			if !strings.HasPrefix(n.err.Error(), "zds: ") {
				t.Errorf("error %q lacks the zds: prefix", n.err)
			}
			// Still in step: a valid request goes through.
			got := answer(ctx, pc, func(Request) error { return nil })
			if err := ac.Del(ctx, "after"); err != nil {
				t.Fatalf("request after refusal: %v", err)
			}
			if a := <-got; a.err != nil || a.req.UID != "after" {
				t.Fatalf("request after refusal: %+v", a)
			}
		})
	}
}

func TestAgentNilNetnsIsNacked(t *testing.T) {
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	ch := make(chan error, 1)
	go func() { _, err := pc.Next(ctx); ch <- err }()
	err := ac.Add(ctx, "u", WorkloadInfo{}, nil)
	if !isNack(err, "add without netns fd") {
		t.Fatalf("Add(nil netns) = %v, want nack \"add without netns fd\"", err)
	}
	if perr := <-ch; !errors.Is(perr, ErrNoNetns) {
		t.Fatalf("Next = %v, want ErrNoNetns", perr)
	}
}

// TestAgentFailures: what the agent side does when the request cannot be
// sent, the ack does not come, or the peer misbehaves.
func TestAgentFailures(t *testing.T) {
	t.Run("empty uid is refused locally", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		for _, err := range []error{ac.Add(ctx, "", WorkloadInfo{}, nil), ac.Keep(ctx, "", nil), ac.Del(ctx, "")} {
			if err == nil || !strings.HasPrefix(err.Error(), "zds: ") {
				t.Errorf("empty uid: %v", err)
			}
		}
		usable(t, ac, pc)
	})
	t.Run("oversized request is refused locally", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		err := ac.Del(ctx, strings.Repeat("u", MaxMessageSize))
		if !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("got %v, want ErrMessageTooLarge", err)
		}
		usable(t, ac, pc)
	})
	t.Run("invalid UTF-8 is refused locally", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		if err := ac.Del(testCtx(t), "\xff"); err == nil || !strings.HasPrefix(err.Error(), "zds: encode") {
			t.Fatalf("got %v, want an encode error", err)
		}
		usable(t, ac, pc)
	})
	t.Run("closed netns file", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		f, err := os.Open("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := ac.Add(testCtx(t), "u", WorkloadInfo{}, f); err == nil || !strings.Contains(err.Error(), "netns file") {
			t.Fatalf("got %v, want a netns file error", err)
		}
		usable(t, ac, pc)
	})
	t.Run("context already done: nothing sent, still usable", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		if err := ac.Del(ctx, "u"); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		usable(t, ac, pc)
	})
	t.Run("context cancelled while awaiting the ack breaks the connection", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		base := testCtx(t)
		ctx, cancel := context.WithCancel(base)
		received := make(chan Request, 1)
		go func() {
			req, err := pc.Next(base)
			if err == nil {
				received <- req
			}
			close(received)
		}()
		go func() {
			<-received // the request is at ztunnel: give up waiting
			cancel()
		}()
		if err := ac.Del(ctx, "u"); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		assertBroken(t, ac)
		if _, err := pc.Next(base); err == nil { // (Ack pending) or closed
			t.Fatal("proxy side still usable")
		}
	})
	t.Run("ack timeout breaks the connection", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{AckTimeout: 50e6}, ClientConfig{})
		ctx := testCtx(t)
		go func() { _, _ = pc.Next(ctx) }() // read, never ack
		err := ac.Del(ctx, "u")
		if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("got %v, want a timeout", err)
		}
		assertBroken(t, ac)
	})
	t.Run("peer disconnects mid-request", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		go func() {
			if req, err := pc.Next(ctx); err == nil {
				_ = req.Close()
				pc.Close()
			}
		}()
		err := ac.Add(ctx, "u", WorkloadInfo{}, openNS(t, "net"))
		if !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("got %v, want ErrPeerClosed", err)
		}
		assertBroken(t, ac)
	})
	t.Run("peer sends an fd with its ack", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		f := openNS(t, "net")
		before := countFDs(t)
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			if _, err := pc.Next(ctx); err == nil {
				_, _, _ = pc.pc.uc.WriteMsgUnix([]byte{0x0a, 0x00}, unixRights(f), nil)
			}
		}()
		if err := ac.Del(ctx, "u"); !errors.Is(err, ErrUnexpectedFD) {
			t.Fatalf("got %v, want ErrUnexpectedFD", err)
		}
		<-sent
		assertBroken(t, ac)
		// The fd that came with the ack was closed, and so was the
		// agent's broken socket.
		if after := countFDs(t); after != before-1 {
			t.Errorf("fds: %d before, %d after; want one fewer (the agent's socket)", before, after)
		}
	})
	t.Run("peer sends garbage for an ack", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			if _, err := pc.Next(ctx); err == nil {
				_, _, _ = pc.pc.uc.WriteMsgUnix([]byte{0x12, 0x00}, nil, nil) // field 2: no ack
			}
		}()
		if err := ac.Del(ctx, "u"); !errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v, want ErrMalformed", err)
		}
		<-sent
		assertBroken(t, ac)
	})
}

// usable checks that a request/ack round trip still works on the pair.
func usable(t *testing.T, ac *AgentConn, pc *ProxyConn) {
	t.Helper()
	ctx := testCtx(t)
	got := answer(ctx, pc, func(Request) error { return nil })
	if err := ac.Del(ctx, "still-usable"); err != nil {
		t.Fatalf("connection no longer usable: %v", err)
	}
	if a := <-got; a.err != nil || a.req.UID != "still-usable" {
		t.Fatalf("connection no longer usable: %+v", a)
	}
}

func assertBroken(t *testing.T, ac *AgentConn) {
	t.Helper()
	if err := ac.Del(testCtx(t), "again"); !errors.Is(err, ErrConnBroken) {
		t.Fatalf("after the failure: %v, want ErrConnBroken", err)
	}
}

// TestProxyConnMisuse: the proxy side enforces one Ack per request and
// survives a cancelled wait.
func TestProxyConnMisuse(t *testing.T) {
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	if err := pc.Ack(ctx, nil); !errors.Is(err, ErrNoPending) {
		t.Fatalf("Ack with nothing pending: %v", err)
	}
	// A Next cancelled while waiting leaves the connection usable.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := pc.Next(cctx); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Next: %v", err)
	}
	agentErr := make(chan error, 1)
	go func() { agentErr <- ac.Del(ctx, "u") }()
	req, err := pc.Next(ctx)
	if err != nil || req.UID != "u" {
		t.Fatalf("Next after a cancelled one: %+v %v", req, err)
	}
	if _, err := pc.Next(ctx); !errors.Is(err, ErrAckPending) {
		t.Fatalf("second Next without Ack: %v", err)
	}
	// Ack with a done context sends nothing and leaves the ack owed.
	if err := pc.Ack(cctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Ack with a done ctx: %v", err)
	}
	if err := pc.Ack(ctx, errors.New("")); err != nil {
		t.Fatal(err)
	}
	if err := <-agentErr; !isNack(err, "error") {
		t.Fatalf("nack with an empty error: agent got %v, want nack \"error\"", err)
	}
}

func TestNackReasonIsCleaned(t *testing.T) {
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	long := "\xff" + strings.Repeat("é", MaxReasonLen)
	got := answer(ctx, pc, func(Request) error { return errors.New(long) })
	err := ac.Del(ctx, "u")
	<-got
	var n *NackError
	if !errors.As(err, &n) {
		t.Fatalf("got %v, want a nack", err)
	}
	if !utf8.ValidString(n.Reason) || len(n.Reason) > MaxReasonLen || !strings.HasPrefix(n.Reason, "\uFFFDé") {
		t.Fatalf("reason not cleaned: valid=%v len=%d", utf8.ValidString(n.Reason), len(n.Reason))
	}
}

func TestPeerCloses(t *testing.T) {
	t.Run("agent closes while ztunnel waits", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		done := make(chan error, 1)
		go func() { _, err := pc.Next(ctx); done <- err }()
		ac.Close()
		err := <-done
		if !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("Next: %v, want ErrPeerClosed", err)
		}
		if _, err := pc.Next(ctx); !errors.Is(err, ErrConnBroken) {
			t.Fatalf("Next after EOF: %v, want ErrConnBroken", err)
		}
	})
	t.Run("agent closes before the ack", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		ctx := testCtx(t)
		go func() { _ = ac.SnapshotSent(ctx) }()
		if _, err := pc.Next(ctx); err != nil {
			t.Fatal(err)
		}
		ac.Close()
		err := pc.Ack(ctx, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "zds: ") {
			t.Fatalf("Ack to a closed agent: %v", err)
		}
	})
	t.Run("close twice", func(t *testing.T) {
		_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
		for range 2 {
			if err := ac.Close(); err != nil {
				t.Fatal(err)
			}
			if err := pc.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestConcurrentRequests: requests from many goroutines are serialised, one
// in flight, each matched to its own ack.
func TestConcurrentRequests(t *testing.T) {
	_, ac, pc := connect(t, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	const n = 32
	proxyDone := make(chan error, 1)
	go func() {
		for range n {
			req, err := pc.Next(ctx)
			if err != nil {
				proxyDone <- err
				return
			}
			var nack error
			if strings.HasSuffix(req.UID, "odd") {
				nack = errors.New("nack " + req.UID)
			}
			if err := pc.Ack(ctx, nack); err != nil {
				proxyDone <- err
				return
			}
		}
		proxyDone <- nil
	}()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			uid := fmt.Sprintf("u%d-even", i)
			if i%2 == 1 {
				uid = fmt.Sprintf("u%d-odd", i)
			}
			err := ac.Del(ctx, uid)
			if i%2 == 1 && !isNack(err, "nack "+uid) || i%2 == 0 && err != nil {
				errs[i] = fmt.Errorf("%s: %v", uid, err)
			}
		})
	}
	wg.Wait()
	if err := <-proxyDone; err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
