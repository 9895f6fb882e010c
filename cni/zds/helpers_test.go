package zds

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/strait-mesh/strait/cni/zds/zdspb"
	"github.com/strait-mesh/strait/internal/netnstest"
)

// testTimeout bounds every test's context: a hang fails instead of
// stalling the suite.
const testTimeout = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func sockPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "z.sock")
}

// requireRoot is the one reason a test of this package may skip.
func requireRoot(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
}

// newNetns creates a fresh network namespace and returns an fd for it. The
// creating thread is switched back to its original namespace; if that
// failed the thread stays locked and dies with its goroutine.
func newNetns(t *testing.T) *os.File {
	t.Helper()
	requireRoot(t)
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New()
		if err != nil {
			ch <- result{err: err}
			return
		}
		if err := netns.Set(orig); err != nil {
			h.Close()
			ch <- result{err: err}
			return // thread stays locked: the runtime discards it
		}
		runtime.UnlockOSThread()
		ch <- result{h: h}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("create netns: %v", r.err)
	}
	f := os.NewFile(uintptr(r.h), "test-netns")
	t.Cleanup(func() { f.Close() })
	return f
}

// openNS opens one of this process's namespace files (/proc/self/ns/KIND);
// no privilege needed.
func openNS(t *testing.T, kind string) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func inode(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// countFDs is how many fds this process has open.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkNoFDLeak records the fd count now and, at cleanup, fails if it
// changed. Call it after the connections of the test are set up.
func checkNoFDLeak(t *testing.T) {
	t.Helper()
	before := countFDs(t)
	t.Cleanup(func() {
		if after := countFDs(t); after != before {
			t.Errorf("fd leak: %d open before, %d after", before, after)
		}
	})
}

// connect returns both ends of a fresh connection on a real socket.
func connect(t *testing.T, scfg ServerConfig, ccfg ClientConfig) (*Server, *AgentConn, *ProxyConn) {
	t.Helper()
	ctx := testCtx(t)
	srv, err := Listen(sockPath(t), scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	pc, err := NewClient(ccfg).Dial(ctx, srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	ac, err := srv.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	return srv, ac, pc
}

// pipeFiles returns the two ends of a pipe, closed at cleanup.
func pipeFiles(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// sendRaw writes one packet with the given fds straight onto uc.
func sendRaw(t *testing.T, uc *net.UnixConn, data []byte, files ...*os.File) {
	t.Helper()
	if _, _, err := uc.WriteMsgUnix(data, unixRights(files...), nil); err != nil {
		t.Fatalf("send raw: %v", err)
	}
}

// unixRights is SCM_RIGHTS for the files' fds (nil for none).
func unixRights(files ...*os.File) []byte {
	if len(files) == 0 {
		return nil
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	return unix.UnixRights(fds...)
}

// sendEmptyWithFD sends a zero-length packet carrying f's fd, with a raw
// sendmsg: Go's WriteMsgUnix would add a dummy byte.
func sendEmptyWithFD(t *testing.T, uc *net.UnixConn, f *os.File) {
	t.Helper()
	oob := unixRights(f)
	var msg unix.Msghdr
	msg.Control = &oob[0]
	msg.SetControllen(len(oob))
	rc, err := uc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var errno syscall.Errno
	if err := rc.Write(func(fd uintptr) bool {
		_, _, errno = unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
		return errno != unix.EAGAIN
	}); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(oob)
	if errno != 0 {
		t.Fatalf("sendmsg: %v", errno)
	}
}

// readAckRaw reads one WorkloadResponse straight off uc and returns its
// Ack.error.
func readAckRaw(t *testing.T, uc *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, MaxMessageSize)
	_ = uc.SetReadDeadline(time.Now().Add(testTimeout))
	n, _, _, _, err := uc.ReadMsgUnix(buf, nil)
	if err != nil {
		t.Fatalf("read ack: %v", err)
	}
	var resp zdspb.WorkloadResponse
	if err := proto.Unmarshal(buf[:n], &resp); err != nil {
		t.Fatalf("decode ack: %v", err)
	}
	if resp.GetAck() == nil {
		t.Fatalf("response without ack: %v", &resp)
	}
	return resp.GetAck().GetError()
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func addMsg(uid string) *zdspb.WorkloadRequest {
	return &zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Add{Add: &zdspb.AddWorkload{
		Uid:          uid,
		WorkloadInfo: &zdspb.WorkloadInfo{Name: "pod", Namespace: "ns", ServiceAccount: "sa"},
	}}}
}

func keepMsg(uid string) *zdspb.WorkloadRequest {
	return &zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Keep{Keep: &zdspb.KeepWorkload{Uid: uid}}}
}

func delMsg(uid string) *zdspb.WorkloadRequest {
	return &zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_Del{Del: &zdspb.DelWorkload{Uid: uid}}}
}

func snapMsg() *zdspb.WorkloadRequest {
	return &zdspb.WorkloadRequest{Payload: &zdspb.WorkloadRequest_SnapshotSent{SnapshotSent: &zdspb.SnapshotSent{}}}
}

// answer runs one Next/Ack on pc in a goroutine: it acks with ack(req) and
// delivers what Next returned (Netns already closed, its inode kept).
type answered struct {
	req Request
	ino uint64 // inode of Netns, 0 if none
	err error
}

func answer(ctx context.Context, pc *ProxyConn, ack func(Request) error) <-chan answered {
	ch := make(chan answered, 1)
	go func() {
		req, err := pc.Next(ctx)
		a := answered{req: req, err: err}
		if err == nil {
			if req.Netns != nil {
				var st unix.Stat_t
				if serr := unix.Fstat(int(req.Netns.Fd()), &st); serr == nil {
					a.ino = st.Ino
				}
				_ = req.Close()
			}
			if aerr := pc.Ack(ctx, ack(req)); aerr != nil {
				a.err = aerr
			}
		}
		ch <- a
	}()
	return ch
}

func isNack(err error, reason string) bool {
	var n *NackError
	return errors.As(err, &n) && n.Reason == reason
}
