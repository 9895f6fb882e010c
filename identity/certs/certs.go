package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/strait-mesh/strait/identity/ca"
)

// Defaults for Config fields left zero.
const (
	DefaultRenewFraction = 0.5
	DefaultBackoffBase   = time.Second
	DefaultBackoffMax    = 150 * time.Second
	DefaultFetchTimeout  = 30 * time.Second
)

// Errors callers can branch on with errors.Is.
var (
	// ErrClosed: the Manager has been closed.
	ErrClosed = errors.New("certificate manager closed")
	// ErrForgotten: the identity was forgotten while a caller waited for it.
	ErrForgotten = errors.New("identity forgotten")
	// ErrExpired: the certificate expired and renewals keep failing; the
	// error also wraps the last fetch error.
	ErrExpired = errors.New("certificate expired and renewal is failing")
	// ErrNoCertificate: no certificate was ever obtained and the last fetch
	// failed; a retry is scheduled. The error also wraps the last fetch error.
	ErrNoCertificate = errors.New("no certificate yet")
	// ErrBadResponse: the Fetcher returned a chain that does not match the
	// request (no certificate, other key, other identity, already expired).
	ErrBadResponse = errors.New("fetcher returned an unusable certificate")
	// ErrInvalidConfig: New was given an unusable Config.
	ErrInvalidConfig = errors.New("invalid certificate manager configuration")
)

// Fetcher obtains a certificate chain (leaf first, root excluded) for id
// from a CSR. It must honour ctx.
type Fetcher interface {
	Fetch(ctx context.Context, id spiffeid.ID, csrDER []byte) (chain []*x509.Certificate, err error)
}

// FetcherFunc adapts a function to Fetcher.
type FetcherFunc func(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error)

// Fetch calls f.
func (f FetcherFunc) Fetch(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
	return f(ctx, id, csrDER)
}

// FromCA returns a Fetcher that signs with an in-process CA on behalf of caller.
func FromCA(c *ca.CA, caller ca.Caller) Fetcher {
	return FetcherFunc(func(ctx context.Context, id spiffeid.ID, csrDER []byte) ([]*x509.Certificate, error) {
		issued, err := c.Sign(ctx, caller, csrDER, 0)
		if err != nil {
			return nil, err
		}
		return issued.Certificates, nil
	})
}

// Config configures a Manager.
type Config struct {
	// Fetcher obtains certificates. Required.
	Fetcher Fetcher
	// Logger receives fetch, renewal and failure events. nil: no logging.
	Logger *zap.Logger
	// Now is the clock used to judge validity (default time.Now). Timers
	// always use the runtime clock; tests use testing/synctest.
	Now func() time.Time
	// RenewFraction of a certificate's lifetime after which it is renewed.
	// Default 0.5 (half-life); must be in (0, 1).
	RenewFraction float64
	// BackoffBase is the first retry's backoff ceiling (default 1s).
	BackoffBase time.Duration
	// BackoffMax caps the backoff ceiling (default 150s).
	BackoffMax time.Duration
	// FetchTimeout bounds one fetch attempt (default 30s).
	FetchTimeout time.Duration
	// Jitter picks the actual wait for a retry whose backoff ceiling is max.
	// Default: uniform in [0, max] ("full jitter").
	Jitter func(max time.Duration) time.Duration
}

// Manager fetches, caches and renews X.509 SVIDs per SPIFFE ID. It is safe
// for concurrent use.
type Manager struct {
	fetcher      Fetcher
	log          *zap.Logger
	now          func() time.Time
	fraction     float64
	base, max    time.Duration
	fetchTimeout time.Duration
	jitter       func(time.Duration) time.Duration

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	entries map[spiffeid.ID]*entry
}

// entry is one identity's state; its fields are guarded by Manager.mu.
type entry struct {
	id      spiffeid.ID
	ctx     context.Context
	cancel  context.CancelCauseFunc
	svid    *x509svid.SVID // current certificate, possibly expired; nil before the first success
	lastErr error          // last fetch error; nil after a success
	attempt *attempt       // in-flight fetch, nil while waiting for renewal or retry
}

// attempt is one fetch that any number of Get calls may wait for.
type attempt struct {
	done chan struct{} // closed when svid/err are set
	svid *x509svid.SVID
	err  error
}

// New returns a Manager. Call Close to stop its goroutines.
func New(cfg Config) (*Manager, error) {
	if cfg.Fetcher == nil {
		return nil, fmt.Errorf("certs: new: Fetcher is nil: %w", ErrInvalidConfig)
	}
	m := &Manager{
		fetcher:      cfg.Fetcher,
		log:          cfg.Logger,
		now:          cfg.Now,
		fraction:     cfg.RenewFraction,
		base:         cfg.BackoffBase,
		max:          cfg.BackoffMax,
		fetchTimeout: cfg.FetchTimeout,
		jitter:       cfg.Jitter,
		entries:      make(map[spiffeid.ID]*entry),
	}
	if m.log == nil {
		m.log = zap.NewNop()
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.fraction == 0 {
		m.fraction = DefaultRenewFraction
	}
	if m.base == 0 {
		m.base = DefaultBackoffBase
	}
	if m.max == 0 {
		m.max = DefaultBackoffMax
	}
	if m.fetchTimeout == 0 {
		m.fetchTimeout = DefaultFetchTimeout
	}
	if m.jitter == nil {
		m.jitter = fullJitter
	}
	switch {
	case !(m.fraction > 0 && m.fraction < 1):
		return nil, fmt.Errorf("certs: new: RenewFraction %v must be in (0, 1): %w", m.fraction, ErrInvalidConfig)
	case m.base < 0 || m.max < 0 || m.fetchTimeout < 0:
		return nil, fmt.Errorf("certs: new: durations must not be negative: %w", ErrInvalidConfig)
	case m.base > m.max:
		return nil, fmt.Errorf("certs: new: BackoffBase %v exceeds BackoffMax %v: %w", m.base, m.max, ErrInvalidConfig)
	}
	m.ctx, m.cancel = context.WithCancelCause(context.Background())
	return m, nil
}

func fullJitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return mrand.N(max + 1)
}

// Get returns a currently valid X.509 SVID for id, fetching it on first
// use. Concurrent callers share one fetch; ctx only bounds this caller's
// wait. While the current certificate is valid Get returns it at once,
// even if renewals are failing. Otherwise it waits for a fetch only if one
// is in flight, and fails with ErrExpired (a certificate existed) or
// ErrNoCertificate (none yet), either wrapping the last fetch error; the
// background retry goes on.
func (m *Manager) Get(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	if id.IsZero() {
		return nil, fmt.Errorf("certs: get: empty SPIFFE ID: %w", ErrInvalidConfig)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("certs: get %s: %w", id, ErrClosed)
	}
	e := m.entries[id]
	if e == nil {
		e = m.startLocked(id)
	}
	now := m.now()
	if e.svid != nil && now.Before(e.svid.Certificates[0].NotAfter) {
		s := e.svid
		m.mu.Unlock()
		return s, nil
	}
	a, hadCert, lastErr := e.attempt, e.svid != nil, e.lastErr
	m.mu.Unlock()

	if a != nil {
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("certs: get %s: gave up waiting for the certificate fetch: %w", id, context.Cause(ctx))
		}
		if a.err == nil {
			return a.svid, nil
		}
		if errors.Is(a.err, ErrClosed) || errors.Is(a.err, ErrForgotten) {
			return nil, a.err
		}
		lastErr = a.err
	}
	if hadCert {
		return nil, fmt.Errorf("certs: get %s: %w; last fetch error: %w", id, ErrExpired, lastErr)
	}
	return nil, fmt.Errorf("certs: get %s: %w; last fetch error: %w", id, ErrNoCertificate, lastErr)
}

// SVIDFunc returns a function that gets id's SVID, for
// identity/tlsconfig.WithSVIDFunc: each handshake then uses the current
// certificate, and a first fetch is bounded by the handshake's context.
func (m *Manager) SVIDFunc(id spiffeid.ID) func(context.Context) (*x509svid.SVID, error) {
	return func(ctx context.Context) (*x509svid.SVID, error) { return m.Get(ctx, id) }
}

// Source returns an x509svid.Source for id. Its GetX509SVID has no context:
// a first fetch waits for at most one fetch attempt (FetchTimeout).
func (m *Manager) Source(id spiffeid.ID) x509svid.Source { return source{m: m, id: id} }

type source struct {
	m  *Manager
	id spiffeid.ID
}

func (s source) GetX509SVID() (*x509svid.SVID, error) { return s.m.Get(context.Background(), s.id) }

// Forget stops renewing id and drops its certificate. Callers waiting for
// its first fetch get ErrForgotten. A later Get starts afresh.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	e := m.entries[id]
	delete(m.entries, id)
	m.mu.Unlock()
	if e != nil {
		e.cancel(ErrForgotten)
		m.log.Debug("certificate forgotten", zap.Stringer("id", id))
	}
}

// Expiries returns the NotAfter of every identity's current certificate
// (identities still waiting for their first certificate are absent), for
// metrics and health checks.
func (m *Manager) Expiries() map[spiffeid.ID]time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[spiffeid.ID]time.Time, len(m.entries))
	for id, e := range m.entries {
		if e.svid != nil {
			out[id] = e.svid.Certificates[0].NotAfter
		}
	}
	return out
}

// Close stops all renewals and waits for the Manager's goroutines to exit.
// Waiting callers get ErrClosed. Close is idempotent and always returns nil.
func (m *Manager) Close() error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		clear(m.entries)
	}
	m.mu.Unlock()
	m.cancel(ErrClosed)
	m.wg.Wait()
	return nil
}

// startLocked creates id's entry with its first attempt in flight and
// starts its goroutine. m.mu must be held.
func (m *Manager) startLocked(id spiffeid.ID) *entry {
	ctx, cancel := context.WithCancelCause(m.ctx)
	e := &entry{id: id, ctx: ctx, cancel: cancel, attempt: newAttempt()}
	m.entries[id] = e
	m.wg.Go(func() { m.run(e) })
	return e
}

func newAttempt() *attempt { return &attempt{done: make(chan struct{})} }

// run fetches, then sleeps until renewal (after success) or retry (after
// failure), until the entry's context ends.
func (m *Manager) run(e *entry) {
	defer e.cancel(nil) // release the context's resources
	failures := 0
	for {
		svid, err := m.fetch(e.ctx, e.id)
		if err != nil && e.ctx.Err() != nil {
			// Closed or forgotten, not a CA failure.
			err = fmt.Errorf("certs: fetch %s: %w", e.id, context.Cause(e.ctx))
		}

		m.mu.Lock()
		a := e.attempt
		e.attempt = nil
		if err == nil {
			e.svid, e.lastErr = svid, nil
		} else {
			e.lastErr = err
		}
		m.mu.Unlock()
		a.svid, a.err = svid, err
		close(a.done)

		if e.ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err == nil {
			failures = 0
			wait = m.renewDelay(svid.Certificates[0])
			m.log.Info("certificate issued",
				zap.Stringer("id", e.id),
				zap.Time("not_after", svid.Certificates[0].NotAfter),
				zap.Duration("renew_in", wait))
		} else {
			failures++
			wait = m.jitter(m.backoffCeiling(failures))
			m.log.Warn("certificate fetch failed",
				zap.Stringer("id", e.id),
				zap.Int("consecutive_failures", failures),
				zap.Duration("retry_in", wait),
				zap.Error(err))
		}

		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-e.ctx.Done():
			t.Stop()
			return
		}
		m.mu.Lock()
		e.attempt = newAttempt()
		m.mu.Unlock()
	}
}

// renewDelay is the time until leaf reaches RenewFraction of its lifetime.
// If that point has passed (a CA handing out short-lived or backdated
// certificates), it renews after RenewFraction of the remaining validity
// instead, which never spins.
func (m *Manager) renewDelay(leaf *x509.Certificate) time.Duration {
	now := m.now()
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	renewAt := leaf.NotBefore.Add(time.Duration(float64(lifetime) * m.fraction))
	if d := renewAt.Sub(now); d > 0 {
		return d
	}
	return time.Duration(float64(leaf.NotAfter.Sub(now)) * m.fraction)
}

// backoffCeiling is min(max, base*2^(failures-1)).
func (m *Manager) backoffCeiling(failures int) time.Duration {
	d := m.base
	for i := 1; i < failures && d < m.max; i++ {
		d *= 2
	}
	return min(d, m.max)
}

// fetch generates a fresh P-256 key and CSR for id, asks the Fetcher and
// checks the answer.
func (m *Manager) fetch(ctx context.Context, id spiffeid.ID) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("certs: create CSR: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, m.fetchTimeout)
	defer cancel()
	chain, err := m.fetcher.Fetch(ctx, id, csr)
	if err != nil {
		return nil, fmt.Errorf("certs: fetch %s: %w", id, err)
	}
	if err := m.check(id, key, chain); err != nil {
		return nil, fmt.Errorf("certs: fetch %s: %w: %s", id, ErrBadResponse, err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func (m *Manager) check(id spiffeid.ID, key crypto.Signer, chain []*x509.Certificate) error {
	if len(chain) == 0 || chain[0] == nil {
		return errors.New("empty chain")
	}
	leaf := chain[0]
	if got, err := x509svid.IDFromCert(leaf); err != nil {
		return err
	} else if got != id {
		return fmt.Errorf("certificate is for %s", got)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("certificate does not certify the requested key")
	}
	if now := m.now(); !now.Before(leaf.NotAfter) {
		return fmt.Errorf("certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}
