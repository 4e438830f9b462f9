package interceptor

import (
	"crypto/sha256"
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
	// len returns the number of entries held, dead or alive, for tests.
	len() int
}

// newTokenCache returns an empty cache of about capacity entries on the
// clock now.
func newTokenCache[V any](capacity int, now func() time.Time) tokenCache[V] {
	return newOtterCache[V](capacity, now)
}

// timed is a value with the instant it dies, in Unix nanoseconds.
type timed[V any] struct {
	val   V
	until int64
}

// otterCache is a tokenCache on otter's adaptive W-TinyLFU cache: past its
// capacity, it admits a new key only if the key is used more often than the
// entry it would evict, so that many sessions in turn keep a stable part of
// them cached instead of evicting each other.
//
// Expiry is decided here, on the server's clock, from the instant stored
// with each value; otter only uses it to drop dead entries early.
type otterCache[V any] struct {
	c *otter.Cache[tokenKey, timed[V]]
}

func newOtterCache[V any](capacity int, now func() time.Time) *otterCache[V] {
	clock := noTicks{now}
	return &otterCache[V]{c: otter.Must(&otter.Options[tokenKey, timed[V]]{
		MaximumSize: capacity,
		ExpiryCalculator: otter.ExpiryCreatingFunc(func(e otter.Entry[tokenKey, timed[V]]) time.Duration {
			return time.Duration(e.Value.until - clock.NowNano())
		}),
		// No periodic clean-up, hence no goroutine per cache: a cache is
		// dropped with its key set, and a dead entry costs only its room.
		Clock:    clock,
		Executor: func(fn func()) { fn() },
	})}
}

// noTicks is the server's clock for otter, without the ticks that drive
// its clean-up goroutine.
type noTicks struct{ now func() time.Time }

func (c noTicks) NowNano() int64                    { return c.now().UnixNano() }
func (noTicks) Tick(time.Duration) <-chan time.Time { return nil }

func (c *otterCache[V]) get(k tokenKey, now time.Time) (V, bool) {
	e, ok := c.c.GetIfPresent(k)
	if !ok || now.UnixNano() >= e.until {
		if ok {
			c.c.Invalidate(k)
		}
		var zero V
		return zero, false
	}
	return e.val, true
}

func (c *otterCache[V]) put(k tokenKey, v V, until time.Time) {
	c.c.Set(k, timed[V]{val: v, until: until.UnixNano()})
}

func (c *otterCache[V]) getOrPut(k tokenKey, now time.Time, mk func() (V, time.Time)) V {
	n := now.UnixNano()
	e, _ := c.c.Compute(k, func(old timed[V], found bool) (timed[V], otter.ComputeOp) {
		if found && n < old.until {
			return old, otter.CancelOp
		}
		v, until := mk()
		return timed[V]{val: v, until: until.UnixNano()}, otter.WriteOp
	})
	return e.val
}

func (c *otterCache[V]) len() int { return c.c.EstimatedSize() }
