// Package certs keeps workload X.509 SVIDs fresh.
//
// A [Manager] obtains a certificate for a SPIFFE ID on first use
// ([Manager.Get]) from a [Fetcher] (the CA, local via [FromCA] or remote),
// generating a fresh ECDSA P-256 key and CSR for every fetch, and then
// renews it in the background at half of its lifetime.
//
// Behaviour the data plane relies on:
//
//   - Concurrent first callers for one identity share a single fetch. A
//     caller whose context ends stops waiting, but the shared fetch goes on
//     for the others (it runs under the Manager's own context, bounded by
//     Config.FetchTimeout per attempt).
//   - A failed fetch is retried with full-jitter exponential backoff: the
//     n-th consecutive failure waits a uniformly random time in
//     [0, min(BackoffMax, BackoffBase*2^(n-1))], 1s base and 150s cap by
//     default.
//   - While renewals fail, Get keeps returning the current certificate
//     until its NotAfter. After that Get fails with [ErrExpired], wrapping
//     the last fetch error; it recovers as soon as a retry succeeds.
//   - [Manager.Forget] stops renewing one identity; [Manager.Close] stops
//     every goroutine and waits for them.
//
// Timers use the runtime clock, so tests drive them with testing/synctest.
package certs
