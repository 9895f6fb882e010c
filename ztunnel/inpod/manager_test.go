package inpod

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/strait-mesh/strait/cni/zds"
)

// blockingStarter starts pods whose Stop waits until release is closed,
// reporting on stopping when it begins.
type blockingStarter struct {
	stopping chan string
	release  chan struct{}
}

type blockingHandle struct {
	uid string
	s   *blockingStarter
}

func (s *blockingStarter) StartPod(_ context.Context, uid string, _ zds.WorkloadInfo, _ *NetNS) (Handle, error) {
	return &blockingHandle{uid: uid, s: s}, nil
}

func (h *blockingHandle) Stop(ctx context.Context) error {
	h.s.stopping <- h.uid
	select {
	case <-h.s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func ownNetNS(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDrainingPodKeepsItsNetNS: while a pod drains (proxy shutdown or
// deletion), its connections may still dial from its namespace (a tunnel
// accepted just before the listeners closed dials the app, an outbound
// connection opens a pooled HBONE connection): NetNS keeps answering
// until the drain is over. Pods added once StopAll began are refused.
func TestDrainingPodKeepsItsNetNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &blockingStarter{stopping: make(chan string, 4), release: make(chan struct{})}
	m := NewManager(s, 5*time.Second, nil)
	for _, uid := range []string{"a", "b"} {
		if err := m.AddWorkload(ctx, uid, zds.WorkloadInfo{Name: uid}, ownNetNS(t)); err != nil {
			t.Fatal(err)
		}
	}
	if m.Synced() {
		t.Fatal("synced before the agent's snapshot")
	}
	if err := m.SnapshotSent(ctx); err != nil {
		t.Fatal(err)
	}
	if !m.Synced() {
		t.Fatal("not synced after the agent's snapshot")
	}

	// Deletion: b drains with its namespace reachable.
	delDone := make(chan error, 1)
	go func() { delDone <- m.DelWorkload(ctx, "b") }()
	if uid := <-s.stopping; uid != "b" {
		t.Fatalf("stopping %s, want b", uid)
	}
	if m.NetNS("b") == nil {
		t.Fatal("a pod being deleted lost its netns before its connections drained")
	}
	if got := m.UIDs(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("UIDs during b's drain: %v, want [a]", got)
	}

	// Shutdown: a drains with its namespace reachable; adds are refused.
	stopDone := make(chan error, 1)
	go func() { stopDone <- m.StopAll(ctx) }()
	if uid := <-s.stopping; uid != "a" {
		t.Fatalf("stopping %s, want a", uid)
	}
	if m.NetNS("a") == nil {
		t.Fatal("a draining pod lost its netns at shutdown")
	}
	if err := m.AddWorkload(ctx, "c", zds.WorkloadInfo{Name: "c"}, ownNetNS(t)); !errors.Is(err, ErrStopping) {
		t.Fatalf("add during shutdown: %v, want ErrStopping", err)
	}
	close(s.release)
	if err := <-delDone; err != nil {
		t.Fatal(err)
	}
	if err := <-stopDone; err != nil {
		t.Fatal(err)
	}
	for _, uid := range []string{"a", "b", "c"} {
		if m.NetNS(uid) != nil {
			t.Fatalf("%s still has a netns after its drain", uid)
		}
	}
}
