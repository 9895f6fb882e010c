package caserver

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/strait-mesh/strait/identity/ca"
)

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"ES256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestTokenExpiry(t *testing.T) {
	tests := []struct {
		token string
		want  int64 // 0: unreadable
	}{
		{jwt(`{"exp":1900000000,"aud":["strait-ca"]}`), 1900000000},
		{jwt(`{"aud":["strait-ca"]}`), 0},
		{jwt(`{"exp":"soon"}`), 0},
		{jwt(`{"exp":1.5e9}`), 0},
		{jwt(`{"exp":-1}`), 0},
		{jwt(`not json`), 0},
		{"a.b", 0},
		{"a.!!!.c", 0},
	}
	for _, tt := range tests {
		got, ok := tokenExpiry(tt.token)
		if ok != (tt.want != 0) || (ok && got.Unix() != tt.want) {
			t.Errorf("tokenExpiry(%q) = %v, %v; want %d", tt.token, got, ok, tt.want)
		}
	}
}

func TestTokenCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := &TokenReviewer{ttl: 10 * time.Second, size: 3, now: func() time.Time { return now }, cache: map[[sha256.Size]byte]cachedReview{}}
	caller := ca.Caller{Identity: spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), Node: "n"}
	key := func(tok string) [sha256.Size]byte { return sha256.Sum256([]byte(tok)) }

	// Cached until now+ttl when the token lives longer.
	long := jwt(fmt.Sprintf(`{"exp":%d}`, now.Add(time.Hour).Unix()))
	r.store(key(long), caller, long, now)
	if c, ok := r.cached(key(long), now.Add(9*time.Second)); !ok || c != caller {
		t.Fatalf("cached before the TTL: %v %v", c, ok)
	}
	if _, ok := r.cached(key(long), now.Add(10*time.Second)); ok {
		t.Fatal("cached at the TTL")
	}
	if r.CacheLen() != 0 {
		t.Errorf("expired entry kept: %d", r.CacheLen())
	}

	// Never beyond the token's own expiry.
	short := jwt(fmt.Sprintf(`{"exp":%d}`, now.Add(3*time.Second).Unix()))
	r.store(key(short), caller, short, now)
	if _, ok := r.cached(key(short), now.Add(3*time.Second)); ok {
		t.Error("cached past the token's exp")
	}
	// Tokens without a readable exp, or already expired, are not cached.
	for _, tok := range []string{jwt(`{}`), jwt(fmt.Sprintf(`{"exp":%d}`, now.Unix()))} {
		r.store(key(tok), caller, tok, now)
		if _, ok := r.cached(key(tok), now); ok {
			t.Errorf("token %q cached", tok)
		}
	}

	// Bounded: never more than size entries.
	for i := range 20 {
		tok := jwt(fmt.Sprintf(`{"exp":%d,"i":%d}`, now.Add(time.Hour).Unix(), i))
		r.store(key(tok), caller, tok, now)
		if n := r.CacheLen(); n > 3 {
			t.Fatalf("%d entries, bound 3", n)
		}
	}
	last := jwt(fmt.Sprintf(`{"exp":%d,"i":%d}`, now.Add(time.Hour).Unix(), 19))
	if _, ok := r.cached(key(last), now); !ok {
		t.Error("the newest entry was evicted")
	}

	// A negative TTL disables caching.
	off := &TokenReviewer{ttl: -1, size: 3, now: time.Now, cache: map[[sha256.Size]byte]cachedReview{}}
	off.store(key(long), caller, long, now)
	if off.CacheLen() != 0 {
		t.Error("cache disabled but filled")
	}
}
