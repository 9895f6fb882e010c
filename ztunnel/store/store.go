package store

import (
	"sync"
	"sync/atomic"
)

// Store publishes the current [Snapshot]. The zero Store is ready to use
// and holds an empty snapshot, as does one from [New].
type Store struct {
	cur atomic.Pointer[Snapshot]

	mu      sync.Mutex // serializes Replace; guards version and subs
	version uint64
	subs    map[chan struct{}]struct{}
}

// New returns a store holding an empty snapshot (version 0).
func New() *Store {
	st := &Store{}
	st.cur.Store(empty)
	return st
}

// Load returns the current snapshot. It never returns nil, never blocks and
// does not allocate.
func (st *Store) Load() *Snapshot {
	if s := st.cur.Load(); s != nil {
		return s
	}
	return empty
}

// Replace publishes s as the current snapshot, stamped with the store's
// next version (1 for the first Replace), and signals every subscriber.
// s itself is not modified, so one snapshot may be published to several
// stores; what Load returns afterwards is a copy of s that shares all of its
// contents. Replace(nil) panics.
func (st *Store) Replace(s *Snapshot) {
	if s == nil {
		panic("store: Replace(nil)")
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.version++
	c := *s
	c.version = st.version
	st.cur.Store(&c)
	for ch := range st.subs {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending: changes coalesce
		}
	}
}

// Subscribe returns a channel that receives a value after every Replace;
// signals coalesce (the channel holds at most one), so a slow reader sees
// one signal for several replacements and should then Load the latest
// snapshot. cancel stops the signals and closes the channel; it may be
// called more than once.
func (st *Store) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	st.mu.Lock()
	if st.subs == nil {
		st.subs = map[chan struct{}]struct{}{}
	}
	st.subs[ch] = struct{}{}
	st.mu.Unlock()
	cancel := sync.OnceFunc(func() {
		st.mu.Lock()
		delete(st.subs, ch)
		close(ch)
		st.mu.Unlock()
	})
	return ch, cancel
}
