package certs_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap/zaptest"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/certs"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	idA   = spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-a/sa/sa-a")
	idB   = spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-b/sa/sa-b")
	errCA = errors.New("CA unreachable")
)

// fakeCA is a Fetcher backed by a real ca.CA that records every call and
// can be made to fail or to block.
type fakeCA struct {
	signer certs.Fetcher

	mu    sync.Mutex
	calls []call
	fail  error
	gate  chan struct{} // if set, Fetch blocks until it is closed or ctx ends
}

type call struct {
	at  time.Time
	id  spiffeid.ID
	ctx context.Context
}

// newFakeCA must run inside the synctest bubble so that the root's validity
// follows the bubble's clock.
func newFakeCA(t *testing.T) *fakeCA {
	t.Helper()
	root, err := ca.NewSelfSignedRoot(td, 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Config{TrustDomain: td, Root: root, Authorizer: ca.AllowAll()})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeCA{signer: certs.FromCA(c, ca.Caller{Node: "test-node"})}
}

func (f *fakeCA) Fetch(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
	f.mu.Lock()
	f.calls = append(f.calls, call{at: time.Now(), id: id, ctx: ctx})
	gate, fail := f.gate, f.fail
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	return f.signer.Fetch(ctx, id, csr)
}

func (f *fakeCA) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeCA) setGate(ch chan struct{}) {
	f.mu.Lock()
	f.gate = ch
	f.mu.Unlock()
}

func (f *fakeCA) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeCA) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Time, len(f.calls))
	for i, c := range f.calls {
		out[i] = c.at
	}
	return out
}

func newManager(t *testing.T, f certs.Fetcher, mutate func(*certs.Config)) *certs.Manager {
	t.Helper()
	cfg := certs.Config{Fetcher: f, Logger: zaptest.NewLogger(t)}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := certs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestSharedFirstFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		gate := make(chan struct{})
		f.setGate(gate)
		m := newManager(t, f, nil)
		defer m.Close()

		const callers = 50
		got := make([]*x509svid.SVID, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() { got[i], errs[i] = m.Get(context.Background(), idA) })
		}
		synctest.Wait() // every caller is blocked on the one fetch
		if n := f.count(); n != 1 {
			t.Fatalf("%d fetches while %d callers wait, want 1", n, callers)
		}
		close(gate)
		wg.Wait()
		for i := range callers {
			if errs[i] != nil {
				t.Fatalf("caller %d: %v", i, errs[i])
			}
			if got[i] != got[0] {
				t.Fatalf("caller %d got a different SVID", i)
			}
		}
		if got[0].ID != idA || got[0].Certificates[0].URIs[0].String() != idA.String() {
			t.Errorf("SVID for %v", got[0].ID)
		}
		if n := f.count(); n != 1 {
			t.Errorf("%d fetches, want 1", n)
		}
		// Cached: more Gets do not fetch.
		if s, err := m.Get(context.Background(), idA); err != nil || s != got[0] {
			t.Errorf("cached Get = %v, %v", s, err)
		}
		if n := f.count(); n != 1 {
			t.Errorf("%d fetches after a cached Get, want 1", n)
		}
	})
}

func TestCallerCancelDoesNotCancelSharedFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		gate := make(chan struct{})
		f.setGate(gate)
		m := newManager(t, f, nil)
		defer m.Close()

		ctx, cancel := context.WithCancel(context.Background())
		impatient := make(chan error, 1)
		go func() {
			_, err := m.Get(ctx, idA)
			impatient <- err
		}()
		patient := make(chan error, 1)
		go func() {
			_, err := m.Get(context.Background(), idA)
			patient <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-impatient; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "gave up waiting") {
			t.Fatalf("cancelled caller: %v", err)
		}
		synctest.Wait()
		f.mu.Lock()
		fetchCtxErr := f.calls[0].ctx.Err()
		f.mu.Unlock()
		if fetchCtxErr != nil {
			t.Fatalf("shared fetch context was cancelled with the caller: %v", fetchCtxErr)
		}
		close(gate)
		if err := <-patient; err != nil {
			t.Fatalf("patient caller: %v", err)
		}
		if n := f.count(); n != 1 {
			t.Errorf("%d fetches, want 1", n)
		}
	})
}

func TestRenewAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		m := newManager(t, f, nil)
		defer m.Close()

		first, err := m.Get(context.Background(), idA)
		if err != nil {
			t.Fatal(err)
		}
		leaf := first.Certificates[0]
		renewAt := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if want := 24*time.Hour + 5*time.Minute; leaf.NotAfter.Sub(leaf.NotBefore) != want {
			t.Fatalf("lifetime %v, want %v", leaf.NotAfter.Sub(leaf.NotBefore), want)
		}
		if exp := m.Expiries(); !exp[idA].Equal(leaf.NotAfter) || len(exp) != 1 {
			t.Errorf("Expiries = %v", exp)
		}

		time.Sleep(time.Until(renewAt) - time.Second)
		synctest.Wait()
		if n := f.count(); n != 1 {
			t.Fatalf("%d fetches before half-life, want 1", n)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := f.count(); n != 2 {
			t.Fatalf("%d fetches after half-life, want 2", n)
		}
		if at := f.times()[1]; !at.Equal(renewAt) {
			t.Errorf("renewed at %v, want half-life %v", at, renewAt)
		}
		second, err := m.Get(context.Background(), idA)
		if err != nil {
			t.Fatal(err)
		}
		if second.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			t.Error("Get still returns the old certificate after renewal")
		}
		if first.PrivateKey.Public().(*ecdsa.PublicKey).Equal(second.PrivateKey.Public()) {
			t.Error("renewal reused the private key")
		}
		if exp := m.Expiries(); !exp[idA].Equal(second.Certificates[0].NotAfter) {
			t.Errorf("Expiries not updated: %v", exp)
		}
		// And again at the new certificate's half-life.
		leaf2 := second.Certificates[0]
		time.Sleep(time.Until(leaf2.NotBefore.Add(leaf2.NotAfter.Sub(leaf2.NotBefore)/2)) + time.Millisecond)
		synctest.Wait()
		if n := f.count(); n != 3 {
			t.Errorf("%d fetches after the second half-life, want 3", n)
		}
	})
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		f.setFail(errCA)
		m := newManager(t, f, func(c *certs.Config) {
			c.Jitter = func(max time.Duration) time.Duration { return max } // observe the ceilings
		})
		defer m.Close()

		if _, err := m.Get(context.Background(), idA); !errors.Is(err, errCA) || !errors.Is(err, certs.ErrNoCertificate) {
			t.Fatalf("first Get = %v, want ErrNoCertificate wrapping the fetch error", err)
		}
		// During backoff Get answers at once, wrapping the last fetch error.
		start := time.Now()
		_, err := m.Get(context.Background(), idA)
		if !errors.Is(err, certs.ErrNoCertificate) || !errors.Is(err, errCA) || time.Since(start) != 0 {
			t.Fatalf("Get during backoff = %v after %v", err, time.Since(start))
		}

		time.Sleep(20 * time.Minute)
		synctest.Wait()
		at := f.times()
		want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 150, 150, 150}
		if len(at) < len(want)+1 {
			t.Fatalf("only %d fetches", len(at))
		}
		for i, w := range want {
			if got := at[i+1].Sub(at[i]); got != w*time.Second {
				t.Errorf("wait before attempt %d = %v, want %v", i+2, got, w*time.Second)
			}
		}
		for i := len(want); i+1 < len(at); i++ {
			if got := at[i+1].Sub(at[i]); got != 150*time.Second {
				t.Errorf("wait before attempt %d = %v, want the 150s cap", i+2, got)
			}
		}
	})
}

func TestBackoffFullJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		f.setFail(errCA)
		m := newManager(t, f, nil) // default jitter
		defer m.Close()
		_, _ = m.Get(context.Background(), idA)
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		at := f.times()
		if len(at) < 40 {
			t.Fatalf("only %d attempts in 2h", len(at))
		}
		below := 0
		for i := 0; i+1 < len(at); i++ {
			ceiling := 150 * time.Second
			if i < 8 {
				ceiling = min(time.Second<<i, ceiling)
			}
			got := at[i+1].Sub(at[i])
			if got < 0 || got > ceiling {
				t.Errorf("wait before attempt %d = %v, outside [0, %v]", i+2, got, ceiling)
			}
			if got < ceiling {
				below++
			}
		}
		if below == 0 {
			t.Error("every wait equals its ceiling: no jitter")
		}
	})
}

func TestServesOldCertificateWhileCADown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		m := newManager(t, f, nil)
		defer m.Close()
		old, err := m.Get(context.Background(), idA)
		if err != nil {
			t.Fatal(err)
		}
		notAfter := old.Certificates[0].NotAfter
		f.setFail(errCA)

		// Past half-life renewals fail, but Get keeps serving the old certificate.
		for time.Until(notAfter) > 10*time.Minute {
			time.Sleep(10 * time.Minute)
			got, err := m.Get(context.Background(), idA)
			if err != nil || got != old {
				t.Fatalf("at %v before expiry: Get = %v, %v; want the old certificate", time.Until(notAfter), got, err)
			}
		}
		if f.count() < 10 {
			t.Fatalf("only %d fetches: renewal is not being retried", f.count())
		}

		time.Sleep(time.Until(notAfter))
		_, err = m.Get(context.Background(), idA)
		if !errors.Is(err, certs.ErrExpired) || !errors.Is(err, errCA) {
			t.Fatalf("Get after expiry = %v; want ErrExpired wrapping the fetch error", err)
		}
		if !strings.Contains(err.Error(), "certs: get spiffe://cluster.local/ns/ns-a/sa/sa-a: certificate expired and renewal is failing; last fetch error:") ||
			!strings.Contains(err.Error(), "CA unreachable") {
			t.Errorf("unclear error: %v", err)
		}
		if exp := m.Expiries(); !exp[idA].Equal(notAfter) {
			t.Errorf("Expiries = %v, want the expired NotAfter for alerting", exp)
		}

		// The CA comes back: the next retry (at most 150s away) recovers.
		f.setFail(nil)
		time.Sleep(150 * time.Second)
		synctest.Wait()
		got, err := m.Get(context.Background(), idA)
		if err != nil || got == old {
			t.Fatalf("after recovery: Get = %v, %v", got, err)
		}
	})
}

func TestFetchTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		f.setGate(make(chan struct{})) // never opens: Fetch returns when its ctx ends
		m := newManager(t, f, func(c *certs.Config) { c.FetchTimeout = 10 * time.Second })
		defer m.Close()
		start := time.Now()
		_, err := m.Get(context.Background(), idA)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d != 10*time.Second {
			t.Errorf("attempt lasted %v, want the 10s FetchTimeout", d)
		}
	})
}

func TestForget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		m := newManager(t, f, nil)
		defer m.Close()
		for _, id := range []spiffeid.ID{idA, idB} {
			if _, err := m.Get(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}
		m.Forget(idA)
		m.Forget(spiffeid.RequireFromString("spiffe://cluster.local/ns/x/sa/never-seen")) // no-op
		if exp := m.Expiries(); len(exp) != 1 || exp[idB].IsZero() {
			t.Errorf("Expiries after Forget = %v", exp)
		}
		time.Sleep(13 * time.Hour) // past both half-lives
		synctest.Wait()
		var renewedA, renewedB int
		f.mu.Lock()
		for _, c := range f.calls[2:] {
			switch c.id {
			case idA:
				renewedA++
			case idB:
				renewedB++
			}
		}
		f.mu.Unlock()
		if renewedA != 0 || renewedB != 1 {
			t.Errorf("renewals: forgotten %d (want 0), kept %d (want 1)", renewedA, renewedB)
		}
		// A later Get starts afresh.
		if _, err := m.Get(context.Background(), idA); err != nil {
			t.Fatal(err)
		}

		// Forgetting an identity while callers wait for its first fetch releases them.
		gate := make(chan struct{})
		f.setGate(gate)
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-c/sa/sa-c")
		errc := make(chan error, 1)
		go func() {
			_, err := m.Get(context.Background(), id)
			errc <- err
		}()
		synctest.Wait()
		m.Forget(id)
		if err := <-errc; !errors.Is(err, certs.ErrForgotten) {
			t.Errorf("waiting caller got %v, want ErrForgotten", err)
		}
		close(gate)
	})
}

func TestCloseStopsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCA(t)
		m, err := certs.New(certs.Config{Fetcher: f})
		if err != nil {
			t.Fatal(err)
		}
		// idA: holding a certificate, renewal timer pending.
		if _, err := m.Get(context.Background(), idA); err != nil {
			t.Fatal(err)
		}
		// idB: failing, backoff timer pending.
		f.setFail(errCA)
		_, _ = m.Get(context.Background(), idB)
		// idC: fetch in flight with a caller waiting.
		f.setGate(make(chan struct{}))
		idC := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns-c/sa/sa-c")
		errc := make(chan error, 1)
		go func() {
			_, err := m.Get(context.Background(), idC)
			errc <- err
		}()
		synctest.Wait()

		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, certs.ErrClosed) {
			t.Errorf("waiting caller got %v, want ErrClosed", err)
		}
		if _, err := m.Get(context.Background(), idA); !errors.Is(err, certs.ErrClosed) {
			t.Errorf("Get after Close = %v, want ErrClosed", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		n := f.count()
		time.Sleep(48 * time.Hour)
		if f.count() != n {
			t.Errorf("fetches continued after Close")
		}
		// synctest.Test fails the test if any goroutine started in the
		// bubble is still alive when this function returns.
	})
}

func TestBadResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		root, err := ca.NewSelfSignedRoot(td, 365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// issue signs a leaf for pub directly with the root, bypassing CA checks.
		issue := func(pub any, id spiffeid.ID, notAfter time.Time) []*x509.Certificate {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(time.Now().UnixNano()),
				NotBefore:    time.Now().Add(-time.Hour),
				NotAfter:     notAfter,
				KeyUsage:     x509.KeyUsageDigitalSignature,
				URIs:         []*url.URL{id.URL()},
			}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, pub, root.Key)
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			return []*x509.Certificate{leaf}
		}
		csrKey := func(der []byte) any {
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			return csr.PublicKey
		}
		otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tests := []struct {
			name  string
			fetch certs.FetcherFunc
			msg   string
		}{
			{"empty chain", func(context.Context, spiffeid.ID, []byte) ([]*x509.Certificate, error) { return nil, nil }, "empty chain"},
			{"other identity", func(_ context.Context, _ spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
				return issue(csrKey(csr), idB, time.Now().Add(time.Hour)), nil
			}, "certificate is for spiffe://cluster.local/ns/ns-b/sa/sa-b"},
			{"other key", func(_ context.Context, id spiffeid.ID, _ []byte) ([]*x509.Certificate, error) {
				return issue(otherKey.Public(), id, time.Now().Add(time.Hour)), nil
			}, "does not certify the requested key"},
			{"already expired", func(_ context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error) {
				return issue(csrKey(csr), id, time.Now().Add(-time.Second)), nil
			}, "certificate expired at"},
		}
		for _, tt := range tests {
			m := newManager(t, tt.fetch, nil)
			_, err := m.Get(context.Background(), idA)
			if !errors.Is(err, certs.ErrBadResponse) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("%s: Get = %v, want ErrBadResponse mentioning %q", tt.name, err, tt.msg)
			}
			_ = m.Close()
		}
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	f := certs.FetcherFunc(func(context.Context, spiffeid.ID, []byte) ([]*x509.Certificate, error) { return nil, nil })
	tests := []struct {
		name string
		cfg  certs.Config
		msg  string
	}{
		{"no fetcher", certs.Config{}, "Fetcher is nil"},
		{"fraction 1", certs.Config{Fetcher: f, RenewFraction: 1}, "RenewFraction"},
		{"negative fraction", certs.Config{Fetcher: f, RenewFraction: -0.5}, "RenewFraction"},
		{"base above max", certs.Config{Fetcher: f, BackoffBase: time.Minute, BackoffMax: time.Second}, "exceeds BackoffMax"},
		{"negative timeout", certs.Config{Fetcher: f, FetchTimeout: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := certs.New(tt.cfg)
			if m != nil || !errors.Is(err, certs.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("New = %v, %v", m, err)
			}
		})
	}
}
