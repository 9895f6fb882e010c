package caserver

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/strait-mesh/strait/identity"
	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/caapi"
)

// user.extra keys the API server sets on a TokenReview of a token bound to
// a pod.
const (
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	ExtraPodName  = "authentication.kubernetes.io/pod-name"
	ExtraPodUID   = "authentication.kubernetes.io/pod-uid"
)

const (
	saUserPrefix = "system:serviceaccount:"

	// DefaultTokenCacheTTL bounds how long a positive review is reused.
	DefaultTokenCacheTTL = 10 * time.Second
	// DefaultTokenCacheSize bounds the number of cached reviews.
	DefaultTokenCacheSize = 4096
)

// ErrUnauthenticated: the token is missing, invalid, expired, for another
// audience, or not a service account's. Answered with 401.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator turns a bearer token into a caller. Errors that wrap
// ErrUnauthenticated are the caller's fault (401); others are the
// server's (500).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (ca.Caller, error)
}

// TokenReviewConfig configures a TokenReviewer.
type TokenReviewConfig struct {
	// Client talks to the API server. Required.
	Client kubernetes.Interface
	// TrustDomain of the identities. Required.
	TrustDomain spiffeid.TrustDomain
	// Audience tokens must carry (default caapi.Audience, "strait-ca").
	Audience string
	// CacheTTL (default 10 s) and CacheSize (default 4096) bound the cache
	// of positive reviews; CacheTTL < 0 disables it.
	CacheTTL  time.Duration
	CacheSize int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// TokenReviewer is an Authenticator backed by the TokenReview API.
type TokenReviewer struct {
	client   kubernetes.Interface
	td       spiffeid.TrustDomain
	audience string
	ttl      time.Duration
	size     int
	now      func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cachedReview
}

type cachedReview struct {
	caller  ca.Caller
	expires time.Time
}

// NewTokenReviewer validates cfg and returns a TokenReviewer.
func NewTokenReviewer(cfg TokenReviewConfig) (*TokenReviewer, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("caserver: token reviewer: Client is nil: %w", ca.ErrInvalidConfig)
	}
	if cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("caserver: token reviewer: trust domain is empty: %w", ca.ErrInvalidConfig)
	}
	r := &TokenReviewer{
		client: cfg.Client, td: cfg.TrustDomain, audience: cfg.Audience,
		ttl: cfg.CacheTTL, size: cfg.CacheSize, now: cfg.Now,
		cache: make(map[[sha256.Size]byte]cachedReview),
	}
	if r.audience == "" {
		r.audience = caapi.Audience
	}
	if r.ttl == 0 {
		r.ttl = DefaultTokenCacheTTL
	}
	if r.size <= 0 {
		r.size = DefaultTokenCacheSize
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

// Authenticate implements Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (ca.Caller, error) {
	if token == "" {
		return ca.Caller{}, fmt.Errorf("caserver: empty bearer token: %w", ErrUnauthenticated)
	}
	key := sha256.Sum256([]byte(token))
	now := r.now()
	if c, ok := r.cached(key, now); ok {
		return c, nil
	}
	caller, err := r.review(ctx, token)
	if err != nil {
		return ca.Caller{}, err
	}
	r.store(key, caller, token, now)
	return caller, nil
}

func (r *TokenReviewer) review(ctx context.Context, token string) (ca.Caller, error) {
	tr, err := r.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return ca.Caller{}, fmt.Errorf("caserver: token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return ca.Caller{}, fmt.Errorf("caserver: token rejected by the API server (audience %s): %s: %w", r.audience, msg, ErrUnauthenticated)
	}
	// An audience-aware API server returns the audiences it checked; one
	// that ignored spec.audiences would return none.
	if !slices.Contains(st.Audiences, r.audience) {
		return ca.Caller{}, fmt.Errorf("caserver: token review did not confirm audience %s (got %q): %w", r.audience, st.Audiences, ErrUnauthenticated)
	}
	rest, ok := strings.CutPrefix(st.User.Username, saUserPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return ca.Caller{}, fmt.Errorf("caserver: user %q is not a service account: %w", st.User.Username, ErrUnauthenticated)
	}
	id, err := identity.New(r.td.Name(), ns, sa)
	if err != nil {
		return ca.Caller{}, fmt.Errorf("caserver: service account %s/%s: %w: %w", ns, sa, err, ErrUnauthenticated)
	}
	caller := ca.Caller{Identity: id.SPIFFEID(), Node: extra(st.User.Extra, ExtraNodeName)}
	if caller.Node == "" {
		if pod := extra(st.User.Extra, ExtraPodName); pod != "" {
			caller.Node, err = r.boundPodNode(ctx, ns, pod, extra(st.User.Extra, ExtraPodUID))
			if err != nil {
				return ca.Caller{}, err
			}
		}
	}
	return caller, nil
}

// boundPodNode reads the node of the pod a token is bound to, for API
// servers that report the pod but not its node.
func (r *TokenReviewer) boundPodNode(ctx context.Context, ns, name, uid string) (string, error) {
	pod, err := r.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("caserver: the token is bound to pod %s/%s, which no longer exists: %w", ns, name, ErrUnauthenticated)
	}
	if err != nil {
		return "", fmt.Errorf("caserver: get the token's pod %s/%s: %w", ns, name, err)
	}
	if uid != "" && string(pod.UID) != uid {
		return "", fmt.Errorf("caserver: the token is bound to pod %s/%s uid %s, which was replaced (uid %s): %w", ns, name, uid, pod.UID, ErrUnauthenticated)
	}
	return pod.Spec.NodeName, nil
}

func extra(m map[string]authenticationv1.ExtraValue, key string) string {
	if v := m[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

func (r *TokenReviewer) cached(key [sha256.Size]byte, now time.Time) (ca.Caller, bool) {
	if r.ttl < 0 {
		return ca.Caller{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[key]
	if !ok {
		return ca.Caller{}, false
	}
	if !now.Before(e.expires) {
		delete(r.cache, key)
		return ca.Caller{}, false
	}
	return e.caller, true
}

// store caches a positive review until min(now+ttl, the token's exp). A
// token whose expiry cannot be read is not cached.
func (r *TokenReviewer) store(key [sha256.Size]byte, caller ca.Caller, token string, now time.Time) {
	if r.ttl < 0 {
		return
	}
	exp, ok := tokenExpiry(token)
	if !ok {
		return
	}
	expires := now.Add(r.ttl)
	if exp.Before(expires) {
		expires = exp
	}
	if !now.Before(expires) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.size {
		for k, e := range r.cache {
			if !now.Before(e.expires) {
				delete(r.cache, k)
			}
		}
		// Still full: drop arbitrary entries (map order is random); they
		// only cost one more review.
		for k := range r.cache {
			if len(r.cache) < r.size {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[key] = cachedReview{caller: caller, expires: expires}
}

// CacheLen is the number of cached reviews (for tests and debugging).
func (r *TokenReviewer) CacheLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}

// tokenExpiry reads the exp claim of a JWT without verifying it: it is
// called only after the API server has accepted the token.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	sec, err := claims.Exp.Int64()
	if err != nil || sec <= 0 {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}
