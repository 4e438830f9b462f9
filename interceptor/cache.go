package interceptor

import (
	"crypto/sha256"
	"encoding/binary"
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/maypok86/otter/v2"
)

// tokenKey is the SHA-256 digest of a token as presented, byte for byte.
// The caches key on it rather than on the token: it is a tenth of the
// size, and a tampered or re-encoded copy of a token has another digest,
// so it misses and is verified on its own.
type tokenKey [sha256.Size]byte

// keyOf returns the cache key of the token raw.
//
// The token is hashed in place: Sum256 only reads its input, so the string's
// bytes need no copy (a copy costs an allocation per call for a token of a
// few hundred bytes).
func keyOf(raw string) tokenKey {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
}

// tokenCache is a concurrent map from token digests to values that
// expire, holding at most about its capacity of entries. It is only ever a
// cache: a miss costs the caller the work it saves, so dropping any entry
// at any time is safe. All methods are safe for concurrent use.
type tokenCache[V any] interface {
	// get returns the value for k if it is there and alive at now; an
	// entry is alive until the instant it was put with, excluded.
	get(k tokenKey, now time.Time) (V, bool)
	// put stores v under k until the instant until.
	put(k tokenKey, v V, until time.Time)
	// getOrPut returns the live value for k, or stores and returns the
	// one made by mk. mk may run under a lock: it must be cheap.
	getOrPut(k tokenKey, now time.Time, mk func() (V, time.Time)) V
	// admit reports whether a getOrPut of k should store it: always while
	// the cache has room; once it is full, only if k was offered to admit
	// before, recently. Callers that cache for speed alone ask it first;
	// callers that need getOrPut to de-duplicate work do not.
	admit(k tokenKey) bool
	// len returns the number of entries held, dead or alive, for tests.
	len() int
}

// newTokenCache returns an empty cache of about capacity entries on the
// clock now.
func newTokenCache[V any](capacity int, now func() time.Time) tokenCache[V] {
	return newOtterCache[V](capacity, now)
}

// cacheEntry is one cached value with its key and the instant it dies, in
// Unix nanoseconds. It is immutable once made, so that the front array
// and otter share it.
type cacheEntry[V any] struct {
	key   tokenKey
	val   V
	until int64
}

// otterCache is a tokenCache on otter's adaptive W-TinyLFU cache: past its
// capacity, it admits a new key only if the key is used more often than the
// entry it would evict, so that many sessions in turn keep a stable part of
// them cached instead of evicting each other.
//
// In front of otter sits a small direct-mapped array of the entries found
// or stored last, one per slot chosen by the key's first bits. A hit there
// reads one slot and one entry; otter's own hit path also records the
// access for its policy, which in a busy server (whose caches are cold
// between calls) cost a microsecond per call. A session calling again
// finds its entry in its slot until another key takes the slot, and then
// in otter. The array holds at most an eighth of the capacity more
// entries, and none for a capacity under 64. An entry found there is
// counted by otter's policy only when it is next found in otter, which
// at worst lets otter evict a key that is in the array: that key is
// verified again if it loses its slot too.
//
// Once the cache is full, a key goes into otter only on its second offer
// (see admit), the doorkeeper of TinyLFU: a token verified once and not
// again soon, such as one of more sessions in turn than the cache holds,
// costs no insertion and evicts nothing. Otter's insertion into a full
// cache is its costliest path (its policy's maintenance runs on the
// inserting goroutine), a few microseconds per miss in a busy server. A
// key is seen again soon if fewer than about capacity other keys were
// offered in between: a session calling at least that often is cached on
// its second call. (The verifier does not ask admit for a token whose
// renewal is due: requests presenting it share the renewal through its
// cached claims.)
//
// Expiry is decided here, on the server's clock, from the instant stored
// with each entry, and a lookup that finds an entry dead drops it. Otter
// is given no expiry of its own: its timer wheel, scheduled on every
// insertion and advanced by its maintenance, made an insertion cost
// several microseconds in a busy server, and each entry larger. A dead
// entry that nobody looks up stays until otter evicts it for room: the
// cache still holds at most about its capacity.
type otterCache[V any] struct {
	c        *otter.Cache[tokenKey, *cacheEntry[V]]
	capacity int
	front    []atomic.Pointer[cacheEntry[V]] // len a power of two, or 0
	// seen is the doorkeeper: a fingerprint of the key last offered to
	// admit in each slot, chosen by other bits of the key than the front
	// array's. Its len is seenSlots(capacity).
	seen []atomic.Uint32
}

// frontSlots returns the size of the front array for a cache of capacity
// entries: the largest power of two at most capacity/8 and 1024, or 0
// below 8.
func frontSlots(capacity int) int {
	n := min(capacity/8, 1024)
	if n < 8 {
		return 0
	}
	return 1 << (bits.Len(uint(n)) - 1)
}

func newOtterCache[V any](capacity int, now func() time.Time) *otterCache[V] {
	return &otterCache[V]{
		c: otter.Must(&otter.Options[tokenKey, *cacheEntry[V]]{
			MaximumSize: capacity,
			// No periodic clean-up, hence no goroutine per cache: a cache is
			// dropped with its key set. Maintenance runs on the goroutine
			// that triggers it.
			Clock:    noTicks{now},
			Executor: func(fn func()) { fn() },
		}),
		capacity: capacity,
		front:    make([]atomic.Pointer[cacheEntry[V]], frontSlots(capacity)),
		seen:     make([]atomic.Uint32, seenSlots(capacity)),
	}
}

// noTicks is the server's clock for otter, without the ticks that drive
// its clean-up goroutine.
type noTicks struct{ now func() time.Time }

func (c noTicks) NowNano() int64                    { return c.now().UnixNano() }
func (noTicks) Tick(time.Duration) <-chan time.Time { return nil }

// maxSeenSlots bounds the doorkeeper at 4 MiB. Past a capacity of about a
// million, a key must come back within that many other offers to be
// admitted, rather than within capacity.
const maxSeenSlots = 1 << 20

// seenSlots returns the size of the doorkeeper for a cache of capacity
// entries: the smallest power of two at least capacity (and 2), at most
// maxSeenSlots. It is made with the cache, 4 bytes a slot.
func seenSlots(capacity int) int {
	return 1 << bits.Len(uint(min(max(capacity, 2), maxSeenSlots)-1))
}

// slot returns k's slot of the front array, or nil without one. The key
// is a SHA-256 digest: its first bits are as good as any hash of it.
func (c *otterCache[V]) slot(k tokenKey) *atomic.Pointer[cacheEntry[V]] {
	if len(c.front) == 0 {
		return nil
	}
	return &c.front[binary.LittleEndian.Uint64(k[:8])&uint64(len(c.front)-1)]
}

// inFront looks k up in its slot s of the front array (s may be nil). It
// returns the entry if it is k's and alive at n (Unix nanoseconds), and
// drops it from the slot if it is k's and dead. It also returns what the
// slot held after that, for promote.
//
// Writes to a slot keep it from going back to an older entry of a key
// than otter holds: put and getOrPut store a new entry from inside otter's
// per-key Compute, in the order otter takes them; a lookup that found an
// entry in otter promotes it only if the slot still holds what the lookup
// saw before it asked otter (promote). Otherwise a lookup that read entry
// E1 from otter could write it over the E2 that a concurrent put had just
// stored, and serve E1 past the shorter life E2 gave the key.
func inFront[V any](s *atomic.Pointer[cacheEntry[V]], k tokenKey, n int64) (e, seen *cacheEntry[V], ok bool) {
	if s == nil {
		return nil, nil, false
	}
	seen = s.Load()
	if seen == nil || seen.key != k {
		return nil, seen, false
	}
	if n < seen.until {
		return seen, seen, true
	}
	if s.CompareAndSwap(seen, nil) {
		seen = nil
	}
	return nil, seen, false
}

// promote puts e, found in otter, into its slot s unless the slot changed
// since it held seen.
func promote[V any](s *atomic.Pointer[cacheEntry[V]], seen, e *cacheEntry[V]) {
	if s != nil && seen != e {
		s.CompareAndSwap(seen, e)
	}
}

// get looks in the front array, then in otter, and drops a dead entry.
func (c *otterCache[V]) get(k tokenKey, now time.Time) (V, bool) {
	var zero V
	n := now.UnixNano()
	s := c.slot(k)
	e, seen, ok := inFront(s, k, n)
	if ok {
		return e.val, true
	}
	if e, ok = c.c.GetIfPresent(k); !ok {
		return zero, false
	}
	if n >= e.until {
		// Only that entry: a put may have replaced it since.
		c.c.Compute(k, func(old *cacheEntry[V], found bool) (*cacheEntry[V], otter.ComputeOp) {
			if found && old == e {
				return nil, otter.InvalidateOp
			}
			return old, otter.CancelOp
		})
		return zero, false
	}
	promote(s, seen, e)
	return e.val, true
}

func (c *otterCache[V]) put(k tokenKey, v V, until time.Time) {
	e := &cacheEntry[V]{key: k, val: v, until: until.UnixNano()}
	s := c.slot(k)
	c.c.Compute(k, func(*cacheEntry[V], bool) (*cacheEntry[V], otter.ComputeOp) {
		if s != nil {
			s.Store(e)
		}
		return e, otter.WriteOp
	})
}

func (c *otterCache[V]) getOrPut(k tokenKey, now time.Time, mk func() (V, time.Time)) V {
	n := now.UnixNano()
	// The front array only: otter's Compute below finds a live entry as
	// well, and a lookup in otter first would cost a miss twice.
	s := c.slot(k)
	e, seen, ok := inFront(s, k, n)
	if ok {
		return e.val
	}
	e, _ = c.c.Compute(k, func(old *cacheEntry[V], found bool) (*cacheEntry[V], otter.ComputeOp) {
		if found && n < old.until {
			return old, otter.CancelOp
		}
		v, until := mk()
		e := &cacheEntry[V]{key: k, val: v, until: until.UnixNano()}
		if s != nil {
			s.Store(e)
		}
		return e, otter.WriteOp
	})
	promote(s, seen, e) // a live entry found in otter
	return e.val
}

func (c *otterCache[V]) admit(k tokenKey) bool {
	if c.c.EstimatedSize() < c.capacity {
		return true
	}
	// The key is a SHA-256 digest: any of its bits are as good as a hash.
	// A fingerprint is never 0, the empty slot's value; two keys sharing
	// a slot and a fingerprint only let one in a call early.
	s := &c.seen[binary.LittleEndian.Uint64(k[8:16])&uint64(len(c.seen)-1)]
	fp := binary.LittleEndian.Uint32(k[16:20]) | 1
	if s.Load() == fp {
		return true
	}
	s.Store(fp)
	return false
}

func (c *otterCache[V]) len() int { return c.c.EstimatedSize() }
