package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/strait-mesh/strait/ztunnel/store"
)

// DefaultPollInterval is how often a Watcher looks at its file.
const DefaultPollInterval = 250 * time.Millisecond

// racyWindow: a file modified this recently is re-read on every poll even
// if its stat looks unchanged, because a second write within the
// filesystem's timestamp granularity that keeps the size would otherwise go
// unnoticed (git's "racy clean" problem).
const racyWindow = 2 * time.Second

// Option configures a Watcher.
type Option func(*Watcher)

// PollInterval sets how often the file is checked (default 250 ms).
func PollInterval(d time.Duration) Option {
	return func(w *Watcher) {
		if d > 0 {
			w.interval = d
		}
	}
}

// OnReload registers fn, called after every load attempt, the initial one
// included: ok with a nil error when a configuration was applied, !ok with
// the reason when one was rejected (including the file going missing).
// It runs on the watcher's goroutine and should return quickly; use it to
// count reloads in Prometheus.
func OnReload(fn func(ok bool, err error)) Option {
	return func(w *Watcher) { w.onReload = fn }
}

// Watcher keeps a store in sync with a configuration file. See Run.
type Watcher struct {
	path     string
	st       *store.Store
	log      *zap.Logger
	interval time.Duration
	onReload func(ok bool, err error)

	applied, rejected atomic.Uint64
	running           atomic.Bool
	ready             chan struct{}
	readyOnce         sync.Once

	// Poll state, owned by Run's goroutine.
	stat        os.FileInfo // of the file last read; nil to force a read
	appliedSum  [sha256.Size]byte
	rejectedSum [sha256.Size]byte
	hasRejected bool
	pendingSum  [sha256.Size]byte
	hasPending  bool
	missing     bool   // the file is gone; reported once
	readErr     string // last read error reported, to report it once

	afterPoll func() // test hook
}

// NewWatcher returns a watcher of the file at path that publishes to st.
// A nil logger logs nothing.
func NewWatcher(path string, st *store.Store, logger *zap.Logger, opts ...Option) *Watcher {
	if logger == nil {
		logger = zap.NewNop()
	}
	w := &Watcher{path: path, st: st, log: logger, interval: DefaultPollInterval, ready: make(chan struct{})}
	for _, o := range opts {
		o(w)
	}
	return w
}

// Applied returns how many configurations were applied (the initial one
// included).
func (w *Watcher) Applied() uint64 { return w.applied.Load() }

// Rejected returns how many load attempts were rejected: invalid content,
// or the file missing or unreadable (counted once until it comes back).
func (w *Watcher) Rejected() uint64 { return w.rejected.Load() }

// Ready is closed once the initial configuration has been applied.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Run loads the file and replaces the store's snapshot with it, returning
// the error if the file is missing or invalid. It then polls the file
// until ctx is done (and returns nil). A poll compares the file's stat
// (following symlinks, so a Kubernetes ConfigMap's ..data swap is seen:
// inode, size, modification time) and, when that changed, its SHA-256. A new
// content is applied once two consecutive polls read it identical, so a
// file caught half-written is never applied; with the default interval a
// change is live within about half a second. A valid change replaces the
// store's snapshot atomically; an invalid one is logged once at warn level
// and counted, and the previous configuration stays. Run must not be called
// twice at once.
func (w *Watcher) Run(ctx context.Context) error {
	if w.st == nil {
		return errors.New("config: watcher has no store")
	}
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("config: watcher is already running")
	}
	defer w.running.Store(false)
	if err := w.initial(); err != nil {
		return err
	}
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.poll()
			if w.afterPoll != nil {
				w.afterPoll()
			}
		}
	}
}

func (w *Watcher) initial() error {
	fi, err := os.Stat(w.path)
	if err != nil {
		err = fmt.Errorf("config: %w", err)
		w.reject(err)
		return err
	}
	data, err := readFile(w.path)
	if err != nil {
		w.reject(err)
		return err
	}
	sum := sha256.Sum256(data)
	if err := w.apply(data, sum); err != nil {
		return err
	}
	w.stat = fi
	w.readyOnce.Do(func() { close(w.ready) })
	return nil
}

func (w *Watcher) poll() {
	fi, err := os.Stat(w.path)
	if err != nil {
		w.stat, w.hasPending = nil, false
		if !w.missing {
			w.missing = true
			w.reject(fmt.Errorf("config: %w", err))
		}
		return
	}
	w.missing = false
	if w.stat != nil && sameFile(w.stat, fi) && !w.hasPending && time.Since(fi.ModTime()) > racyWindow {
		return
	}
	data, err := readFile(w.path)
	if err != nil {
		w.stat, w.hasPending = nil, false
		if msg := err.Error(); msg != w.readErr {
			w.readErr = msg
			w.reject(err)
		}
		return
	}
	w.readErr = ""
	w.stat = fi
	sum := sha256.Sum256(data)
	if w.hasRejected && sum != w.rejectedSum {
		w.hasRejected = false // new content: a rejection of it is news again
	}
	if sum == w.appliedSum || w.hasRejected {
		w.hasPending = false
		return
	}
	if !w.hasPending || sum != w.pendingSum {
		// First sighting: wait for one more identical read.
		w.pendingSum, w.hasPending = sum, true
		return
	}
	w.hasPending = false
	_ = w.apply(data, sum)
}

// apply parses data and publishes it, or records the rejection.
func (w *Watcher) apply(data []byte, sum [sha256.Size]byte) error {
	f, err := Parse(data, w.path)
	var snap *store.Snapshot
	if err == nil {
		snap, err = f.Snapshot()
	}
	if err != nil {
		w.rejectedSum, w.hasRejected = sum, true
		w.reject(err)
		return err
	}
	w.st.Replace(snap)
	w.appliedSum = sum
	w.applied.Add(1)
	w.log.Info("configuration applied",
		zap.String("path", w.path),
		zap.Uint64("version", w.st.Load().Version()),
		zap.String("sha256", fmt.Sprintf("%x", sum[:8])),
		zap.Int("workloads", len(f.Workloads)),
		zap.Int("services", len(f.Services)),
		zap.Int("authorizationPolicies", len(f.AuthorizationPolicies)),
		zap.Int("peerAuthentications", len(f.PeerAuthentications)))
	if w.onReload != nil {
		w.onReload(true, nil)
	}
	return nil
}

func (w *Watcher) reject(err error) {
	w.rejected.Add(1)
	// One log line whatever the encoder: the joined errors become "; ".
	w.log.Warn("configuration rejected, keeping the previous one",
		zap.String("path", w.path),
		zap.Uint64("keptVersion", w.st.Load().Version()),
		zap.String("error", strings.ReplaceAll(err.Error(), "\n", "; ")))
	if w.onReload != nil {
		w.onReload(false, err)
	}
}

// sameFile: same inode and device, size and modification time.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
