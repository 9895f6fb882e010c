package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/strait-mesh/strait/ztunnel/store"
)

// No test sleeps: they wait for OnReload events, store signals or polls
// (a test hook), each with a deadline.

const deadline = 5 * time.Second

// cfg is a valid configuration whose one workload carries marker in a
// label.
func cfg(marker string) string {
	return fmt.Sprintf("workloads:\n- uid: u\n  name: w\n  namespace: ns\n  ips: [10.0.0.1]\n  protocol: HBONE\n  labels: {v: %q}\n", marker)
}

const invalid = "workloads:\n- uid: u\n  name: w\n  namespace: ns\n  ips: [10.0.0.300]\n  protocol: HBONE\n"

func marker(st *store.Store) string {
	if w := st.Load().WorkloadByUID("u"); w != nil {
		return w.Labels["v"]
	}
	return ""
}

func writeInPlace(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic replaces path by renaming a complete file over it, as most
// editors and config management tools do.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

type event struct {
	ok  bool
	err error
}

// harness runs a Watcher on a temporary file.
type harness struct {
	t       *testing.T
	path    string
	st      *store.Store
	w       *Watcher
	events  chan event
	logs    *observer.ObservedLogs
	done    chan error
	cancel  context.CancelFunc
	polled  chan struct{} // with stepping: a poll finished
	step    chan struct{} // with stepping: let the next poll run
	stepped bool
}

func newHarness(t *testing.T, initial string, opts ...Option) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "config.yaml"), st: store.New(), events: make(chan event, 1000), done: make(chan error, 1)}
	if initial != "" {
		writeAtomic(t, h.path, initial)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h.logs = logs
	opts = append([]Option{PollInterval(10 * time.Millisecond), OnReload(func(ok bool, err error) { h.events <- event{ok, err} })}, opts...)
	h.w = NewWatcher(h.path, h.st, zap.New(core), opts...)
	return h
}

// start runs the watcher; with stepping, every poll waits for h.poll.
func (h *harness) start(stepping bool) {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	if stepping {
		h.stepped = true
		h.polled, h.step = make(chan struct{}), make(chan struct{})
		h.w.afterPoll = func() {
			select {
			case h.polled <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case <-h.step:
			case <-ctx.Done():
			}
		}
	}
	go func() { h.done <- h.w.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(deadline):
			h.t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-h.w.Ready():
	case err := <-h.done:
		h.t.Fatalf("Run: %v", err)
	case <-time.After(deadline):
		h.t.Fatal("initial load not applied")
	}
	if ev := h.event(); !ev.ok {
		h.t.Fatalf("initial load: %v", ev.err)
	}
	if stepping {
		<-h.polled // the first poll, with the file as it was
	}
}

// poll lets one more poll run and waits for it (stepping mode).
func (h *harness) poll() {
	h.t.Helper()
	select {
	case h.step <- struct{}{}:
	case <-time.After(deadline):
		h.t.Fatal("watcher not waiting to poll")
	}
	select {
	case <-h.polled:
	case <-time.After(deadline):
		h.t.Fatal("poll did not finish")
	}
}

func (h *harness) event() event {
	h.t.Helper()
	select {
	case ev := <-h.events:
		return ev
	case <-time.After(deadline):
		h.t.Fatal("no reload event")
		return event{}
	}
}

func (h *harness) noEvent() {
	h.t.Helper()
	select {
	case ev := <-h.events:
		h.t.Fatalf("unexpected reload event %+v", ev)
	default:
	}
}

// waitMarker waits for reload events until the store holds want.
func (h *harness) waitMarker(want string) {
	h.t.Helper()
	timeout := time.After(deadline)
	for marker(h.st) != want {
		select {
		case <-h.events:
		case <-timeout:
			h.t.Fatalf("store holds %q, want %q", marker(h.st), want)
		}
	}
}

func (h *harness) warnings() []observer.LoggedEntry {
	return h.logs.FilterLevelExact(zapcore.WarnLevel).All()
}

func TestWatcherInitialLoad(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(false)
	if marker(h.st) != "v1" || h.st.Load().Version() != 1 || h.w.Applied() != 1 || h.w.Rejected() != 0 {
		t.Fatalf("marker %q version %d applied %d rejected %d", marker(h.st), h.st.Load().Version(), h.w.Applied(), h.w.Rejected())
	}
	info := h.logs.FilterMessage("configuration applied").All()
	if len(info) != 1 || info[0].ContextMap()["workloads"] != int64(1) {
		t.Errorf("applied log: %+v", info)
	}
}

func TestWatcherInitialLoadFails(t *testing.T) {
	for _, c := range []struct {
		name    string
		content string // "" means no file
		check   func(error) bool
	}{
		{"invalid", invalid, func(err error) bool {
			return strings.Contains(err.Error(), `config.yaml:5: workloads[0].ips[0]: "10.0.0.300" is not an IP address`)
		}},
		{"missing", "", func(err error) bool { return errors.Is(err, fs.ErrNotExist) }},
		{"empty", " ", func(err error) bool { return errors.Is(err, ErrSyntax) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.content)
			err := h.w.Run(context.Background())
			if err == nil || !c.check(err) || !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("Run = %v", err)
			}
			if ev := h.event(); ev.ok || ev.err == nil {
				t.Errorf("event %+v", ev)
			}
			if h.w.Rejected() != 1 || h.w.Applied() != 0 || h.st.Load().Version() != 0 {
				t.Errorf("rejected %d applied %d version %d", h.w.Rejected(), h.w.Applied(), h.st.Load().Version())
			}
			select {
			case <-h.w.Ready():
				t.Error("Ready closed")
			default:
			}
		})
	}
}

// TestWatcherAppliesWithinOneSecond uses the default poll interval.
func TestWatcherAppliesWithinOneSecond(t *testing.T) {
	h := newHarness(t, cfg("v1"), PollInterval(DefaultPollInterval))
	h.start(false)
	sig, cancel := h.st.Subscribe()
	defer cancel()
	for i, write := range []func(*testing.T, string, string){writeAtomic, writeInPlace} {
		want := fmt.Sprintf("v%d", i+2)
		start := time.Now()
		write(t, h.path, cfg(want))
		select {
		case <-sig:
		case <-time.After(time.Second):
			t.Fatalf("change %s not applied within 1s", want)
		}
		if got := marker(h.st); got != want {
			t.Fatalf("store holds %q, want %q", got, want)
		}
		t.Logf("%s applied after %v", want, time.Since(start))
		if ev := h.event(); !ev.ok {
			t.Fatalf("event %+v", ev)
		}
	}
	if h.w.Applied() != 3 || h.st.Load().Version() != 3 {
		t.Errorf("applied %d version %d", h.w.Applied(), h.st.Load().Version())
	}
}

func TestWatcherRejectsInvalidKeepsOld(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(false)
	writeAtomic(t, h.path, invalid)
	ev := h.event()
	if ev.ok || !errors.Is(ev.err, ErrInvalidValue) {
		t.Fatalf("event %+v", ev)
	}
	if marker(h.st) != "v1" || h.st.Load().Version() != 1 || h.w.Rejected() != 1 || h.w.Applied() != 1 {
		t.Fatalf("after invalid change: marker %q version %d rejected %d applied %d", marker(h.st), h.st.Load().Version(), h.w.Rejected(), h.w.Applied())
	}
	warns := h.warnings()
	if len(warns) != 1 {
		t.Fatalf("%d warnings, want 1: %+v", len(warns), warns)
	}
	fields := warns[0].ContextMap()
	if e, _ := fields["error"].(string); !strings.Contains(e, `config.yaml:5: workloads[0].ips[0]: "10.0.0.300" is not an IP address`) || strings.Contains(e, "\n") {
		t.Errorf("warning error field %q", e)
	}
	if fields["keptVersion"] != uint64(1) {
		t.Errorf("keptVersion %v", fields["keptVersion"])
	}

	// The same invalid content again (rewritten, new inode) is not news:
	// no second warning. A valid change then applies.
	writeAtomic(t, h.path, invalid)
	writeAtomic(t, h.path, cfg("v3"))
	h.waitMarker("v3")
	if n := len(h.warnings()); n != 1 {
		t.Errorf("%d warnings, want 1", n)
	}
	if h.w.Rejected() != 1 || h.w.Applied() != 2 || h.st.Load().Version() != 2 {
		t.Errorf("rejected %d applied %d version %d", h.w.Rejected(), h.w.Applied(), h.st.Load().Version())
	}

	// Breaking it again is reported again.
	writeAtomic(t, h.path, invalid)
	if ev := h.event(); ev.ok {
		t.Fatalf("event %+v", ev)
	}
	if h.w.Rejected() != 2 || marker(h.st) != "v3" {
		t.Errorf("rejected %d marker %q", h.w.Rejected(), marker(h.st))
	}
}

func TestWatcherRapidWrites(t *testing.T) {
	for _, c := range []struct {
		name  string
		write func(*testing.T, string, string)
	}{{"atomic", writeAtomic}, {"in-place", writeInPlace}} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, cfg("v0"))
			h.start(false)
			const n = 50
			for i := 1; i <= n; i++ {
				c.write(t, h.path, cfg(fmt.Sprintf("v%d", i)))
			}
			h.waitMarker(fmt.Sprintf("v%d", n))
			// The last version stays: a few more reload events could only
			// come from a bug, and versions only move forward.
			if v := h.st.Load().Version(); v > n+1 || uint64(h.w.Applied()) != v {
				t.Errorf("version %d, applied %d", v, h.w.Applied())
			}
			if c.name == "atomic" && h.w.Rejected() != 0 {
				t.Errorf("atomic writes rejected %d times", h.w.Rejected())
			}
		})
	}
}

func TestWatcherFileRemovedThenRecreated(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(false)
	if err := os.Remove(h.path); err != nil {
		t.Fatal(err)
	}
	ev := h.event()
	if ev.ok || !errors.Is(ev.err, fs.ErrNotExist) {
		t.Fatalf("event %+v", ev)
	}
	if marker(h.st) != "v1" || h.w.Rejected() != 1 {
		t.Fatalf("marker %q rejected %d", marker(h.st), h.w.Rejected())
	}
	writeInPlace(t, h.path, cfg("v2"))
	h.waitMarker("v2")
	// The missing file was reported once, however many polls saw it gone.
	if h.w.Rejected() != 1 || len(h.warnings()) != 1 {
		t.Errorf("rejected %d, %d warnings", h.w.Rejected(), len(h.warnings()))
	}
	// Gone again, back with the very same content: nothing to apply.
	if err := os.Remove(h.path); err != nil {
		t.Fatal(err)
	}
	if ev := h.event(); ev.ok {
		t.Fatalf("event %+v", ev)
	}
	writeAtomic(t, h.path, cfg("v2"))
	writeAtomic(t, h.path, cfg("v4"))
	h.waitMarker("v4")
	if h.w.Applied() != 3 {
		t.Errorf("applied %d, want 3", h.w.Applied())
	}
}

// TestWatcherMissingReportedOnce steps the watcher while the file is gone.
func TestWatcherMissingReportedOnce(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(true)
	if err := os.Remove(h.path); err != nil {
		t.Fatal(err)
	}
	h.poll()
	if ev := h.event(); ev.ok || !errors.Is(ev.err, fs.ErrNotExist) {
		t.Fatalf("event %+v", ev)
	}
	for range 3 {
		h.poll()
	}
	h.noEvent()
	if h.w.Rejected() != 1 || len(h.warnings()) != 1 || marker(h.st) != "v1" {
		t.Errorf("rejected %d, %d warnings, marker %q", h.w.Rejected(), len(h.warnings()), marker(h.st))
	}
	writeInPlace(t, h.path, cfg("v2"))
	h.poll()
	h.poll()
	if marker(h.st) != "v2" {
		t.Errorf("marker %q after the file came back", marker(h.st))
	}
}

// TestWatcherRacyStat: a rewrite that keeps the size and lands within the
// filesystem's timestamp granularity leaves the stat unchanged; the
// watcher still sees it because the file was modified recently.
func TestWatcherRacyStat(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(true)
	fi, err := os.Stat(h.path)
	if err != nil {
		t.Fatal(err)
	}
	writeInPlace(t, h.path, cfg("v2")) // same size
	if err := os.Chtimes(h.path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Stat(h.path); !sameFile(fi, fi2) {
		t.Fatal("test setup: stat changed")
	}
	h.poll()
	h.poll()
	if marker(h.st) != "v2" {
		t.Errorf("marker %q: a same-stat rewrite was missed", marker(h.st))
	}
}

// TestWatcherConfigMapSymlinkSwap lays the file out as the kubelet does for
// a ConfigMap volume and swaps the ..data symlink.
func TestWatcherConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeInPlace(t, filepath.Join(dir, name, "config.yaml"), content)
	}
	version("..2026_11_23_1", cfg("v1"))
	if err := os.Symlink("..2026_11_23_1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/config.yaml", filepath.Join(dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, "")
	h.path = filepath.Join(dir, "config.yaml")
	h.w.path = h.path
	h.start(false)
	if marker(h.st) != "v1" {
		t.Fatalf("marker %q", marker(h.st))
	}
	// Same size, same directory entry name: only the target changes.
	version("..2026_11_23_2", cfg("v2"))
	if err := os.Symlink("..2026_11_23_2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_11_23_1")); err != nil {
		t.Fatal(err)
	}
	h.waitMarker("v2")
	if h.w.Rejected() != 0 {
		t.Errorf("rejected %d", h.w.Rejected())
	}
}

// TestWatcherHalfWrittenFile steps the watcher poll by poll: content is
// applied only once two consecutive polls read it identical, so a file
// caught half-written (here: a valid but truncated prefix) never is.
func TestWatcherHalfWrittenFile(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(true)
	full := cfg("v2") + "- uid: u2\n  name: w2\n  namespace: ns\n  ips: [10.0.0.2]\n  protocol: TCP\n"
	writeInPlace(t, h.path, cfg("v2")) // the first half, valid on its own
	h.poll()
	if marker(h.st) != "v1" {
		t.Fatal("content applied after a single read")
	}
	writeInPlace(t, h.path, full)
	h.poll()
	if marker(h.st) != "v1" {
		t.Fatal("changed content applied after a single read")
	}
	h.poll()
	if marker(h.st) != "v2" || h.st.Load().WorkloadByUID("u2") == nil {
		t.Fatalf("full content not applied: marker %q", marker(h.st))
	}
	if ev := h.event(); !ev.ok {
		t.Fatalf("event %+v", ev)
	}
	h.noEvent() // the half-written file was never applied nor rejected
	if h.w.Applied() != 2 || h.w.Rejected() != 0 {
		t.Errorf("applied %d rejected %d", h.w.Applied(), h.w.Rejected())
	}
}

// TestWatcherSameContentNoReload: touching or rewriting the file with the
// same bytes changes its stat but not its hash: nothing is reloaded.
func TestWatcherSameContentNoReload(t *testing.T) {
	h := newHarness(t, cfg("v1"))
	h.start(true)
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(h.path, future, future); err != nil {
		t.Fatal(err)
	}
	h.poll()
	h.poll()
	writeAtomic(t, h.path, cfg("v1"))
	h.poll()
	h.poll()
	h.noEvent()
	if h.w.Applied() != 1 || h.st.Load().Version() != 1 {
		t.Errorf("applied %d version %d", h.w.Applied(), h.st.Load().Version())
	}
}

func TestWatcherRunErrors(t *testing.T) {
	w := NewWatcher("x", nil, nil)
	if err := w.Run(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "config: ") {
		t.Errorf("nil store: %v", err)
	}
	h := newHarness(t, cfg("v1"))
	h.start(false)
	if err := h.w.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run: %v", err)
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(deadline):
		t.Fatal("Run did not return after cancel")
	}
}
