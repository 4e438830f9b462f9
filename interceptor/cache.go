package interceptor

import (
	"hash/maphash"
	"sync"
	"time"
)

// boundedCache is a concurrent map from string keys to values that expire,
// holding at most about capacity entries. It is split into shards, each
// locked on its own; a shard keeps two generations of entries and, when the
// young one is full, drops the old one and ages the young one, so both
// insertion and lookup cost O(1) and the entries held never exceed
// capacity (or 32, one per generation and shard, if that is more).
// Entries that are used survive an ageing by moving to the young
// generation.
//
// It is only ever a cache: a miss costs the caller the work it saves, so
// dropping any entry at any time is safe.
type boundedCache[V any] struct {
	seed   maphash.Seed
	shards []cacheShard[V]
}

type cacheShard[V any] struct {
	mu     sync.Mutex
	young  map[string]cacheEntry[V]
	old    map[string]cacheEntry[V]
	perGen int // capacity of one generation
}

type cacheEntry[V any] struct {
	val   V
	until time.Time // the entry is dead from this instant on
}

// cacheShards is the number of shards; a power of two.
const cacheShards = 16

func newBoundedCache[V any](capacity int) *boundedCache[V] {
	perGen := max(1, capacity/(2*cacheShards))
	c := &boundedCache[V]{seed: maphash.MakeSeed(), shards: make([]cacheShard[V], cacheShards)}
	for i := range c.shards {
		c.shards[i].perGen = perGen
		c.shards[i].young = make(map[string]cacheEntry[V])
	}
	return c
}

func (c *boundedCache[V]) shard(key string) *cacheShard[V] {
	return &c.shards[maphash.String(c.seed, key)&(cacheShards-1)]
}

// get returns the value for key if it is there and alive at now.
func (c *boundedCache[V]) get(key string, now time.Time) (V, bool) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.young[key]
	if !ok {
		if e, ok = s.old[key]; ok {
			delete(s.old, key)
			if now.Before(e.until) {
				s.putLocked(key, e)
			}
		}
	}
	if !ok || !now.Before(e.until) {
		if ok {
			delete(s.young, key)
		}
		var zero V
		return zero, false
	}
	return e.val, true
}

// put stores val under key until the instant until.
func (c *boundedCache[V]) put(key string, val V, until time.Time) {
	s := c.shard(key)
	s.mu.Lock()
	s.putLocked(key, cacheEntry[V]{val: val, until: until})
	s.mu.Unlock()
}

// getOrPut returns the live value for key, or stores and returns the one
// made by mk. mk runs under the shard's lock: it must be cheap.
func (c *boundedCache[V]) getOrPut(key string, now time.Time, mk func() (V, time.Time)) V {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.young[key]; ok && now.Before(e.until) {
		return e.val
	}
	if e, ok := s.old[key]; ok && now.Before(e.until) {
		delete(s.old, key)
		s.putLocked(key, e)
		return e.val
	}
	v, until := mk()
	s.putLocked(key, cacheEntry[V]{val: v, until: until})
	return v
}

func (s *cacheShard[V]) putLocked(key string, e cacheEntry[V]) {
	if _, ok := s.young[key]; !ok && len(s.young) >= s.perGen {
		s.old, s.young = s.young, make(map[string]cacheEntry[V], s.perGen)
	}
	s.young[key] = e
}

// len returns the number of entries held, dead or alive, for tests.
func (c *boundedCache[V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.young) + len(s.old)
		s.mu.Unlock()
	}
	return n
}
