// Package store holds what the node proxy knows about the mesh: workloads,
// services, authorization policies and peer authentications.
//
// A [Snapshot] is built once by [NewSnapshot], which validates its input,
// deep-copies it and builds every index (by IP, by UID, by VIP, by
// hostname, service endpoints, per-workload policies and mTLS mode), so
// that lookups on the data path neither lock nor allocate. A snapshot is
// never modified afterwards; the objects its methods return belong to it
// and must not be modified either.
//
// A [Store] publishes the current snapshot through an atomic pointer:
// [Store.Load] is lock-free and never returns nil, [Store.Replace] swaps in
// a new snapshot (stamped with the store's next version) and signals
// subscribers ([Store.Subscribe]) with a coalescing channel. A connection
// handler loads one snapshot and uses it for the whole decision, so it never
// mixes two configurations.
//
// IP addresses are kept unmapped (an IPv4-mapped IPv6 address is stored
// and looked up as IPv4) and without zone.
package store
