package certs_test

import (
	"context"
	"testing"

	"github.com/strait-mesh/strait/identity/ca"
	"github.com/strait-mesh/strait/identity/certs"
	"github.com/strait-mesh/strait/identity/identitytest"
)

// BenchmarkGetCached measures the per-handshake cost of obtaining the
// current certificate once it is cached.
func BenchmarkGetCached(b *testing.B) {
	authority := identitytest.New(b, "cluster.local")
	m, err := certs.New(certs.Config{Fetcher: certs.FromCA(authority.CA(), ca.Caller{})})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	id := authority.ID("ns", "sa")
	ctx := context.Background()
	if _, err := m.Get(ctx, id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Get(ctx, id); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkFetch measures a full fetch: key generation, CSR, signing by
// the in-process CA and response checks.
func BenchmarkFetch(b *testing.B) {
	authority := identitytest.New(b, "cluster.local")
	m, err := certs.New(certs.Config{Fetcher: certs.FromCA(authority.CA(), ca.Caller{})})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	id := authority.ID("ns", "sa")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Get(ctx, id); err != nil {
			b.Fatal(err)
		}
		m.Forget(id)
	}
}
