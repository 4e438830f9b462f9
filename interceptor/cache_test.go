package interceptor

import (
	"context"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
)

// cacheMillion is the number of distinct keys the bound tests push through
// a cache: a million, far more than any capacity under test. Under the race
// detector, which makes each key ten times dearer, 200,000 (still twenty
// times the default capacity); .ci/run's date-guard runs, without it, push
// the full million.
var cacheMillion = map[bool]int{false: 1_000_000, true: 200_000}[raceBuild]

// ck is the cache key of the string s.
func ck(s string) tokenKey { return keyOf(s) }

// cacheEach runs f once per tokenCache implementation, with a constructor
// of that implementation.
func cacheEach[V any](t *testing.T, f func(t *testing.T, mk func(capacity int) tokenCache[V])) {
	now := func() time.Time { return t0 }
	for _, kind := range []string{"otter"} {
		t.Run(kind, func(t *testing.T) {
			f(t, func(n int) tokenCache[V] { return newOtterCache[V](n, now) })
		})
	}
}

func TestTokenCache_ExpiryBoundary(t *testing.T) {
	until := t0.Add(time.Hour)
	tests := []struct {
		name string
		at   time.Time
		want bool
	}{
		{"long before", t0, true},
		{"1ns before until", until.Add(-time.Nanosecond), true},
		{"exactly until", until, false},
		{"1ns after until", until.Add(time.Nanosecond), false},
	}
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c := newCache(1000)
				c.put(ck("a"), 7, until)
				v, ok := c.get(ck("a"), tt.at)
				if ok != tt.want || (ok && v != 7) {
					t.Fatalf("get at until%+v = %d, %v; want 7, %v", tt.at.Sub(until), v, ok, tt.want)
				}
				// A dead entry is dropped by the lookup that finds it dead.
				if got, want := c.len(), map[bool]int{true: 1, false: 0}[tt.want]; got != want {
					t.Errorf("len() after get = %d, want %d", got, want)
				}
				// getOrPut, on a cache that still holds the entry, sees the
				// same boundary.
				c = newCache(1000)
				c.put(ck("a"), 7, until)
				made := false
				v = c.getOrPut(ck("a"), tt.at, func() (int, time.Time) { made = true; return 8, until.Add(time.Hour) })
				if made == tt.want {
					t.Errorf("getOrPut at until%+v ran mk = %v, want %v", tt.at.Sub(until), made, !tt.want)
				}
				if want := map[bool]int{true: 7, false: 8}[tt.want]; v != want {
					t.Errorf("getOrPut = %d, want %d", v, want)
				}
			})
		}
	})
}

func TestTokenCache_PutReplaces(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		c := newCache(1000)
		c.put(ck("a"), 1, t0.Add(time.Second))
		c.put(ck("a"), 2, t0.Add(time.Hour))
		if v, ok := c.get(ck("a"), t0.Add(time.Minute)); !ok || v != 2 {
			t.Fatalf("get = %d, %v; want 2, true", v, ok)
		}
		if got := c.len(); got != 1 {
			t.Fatalf("len() = %d, want 1", got)
		}
		if _, ok := c.get(ck("b"), t0); ok {
			t.Fatal("get of a key never put: hit, want miss")
		}
	})
}

func TestTokenCache_GetOrPutRunsMkOncePerKey(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[*int]) {
		c := newCache(1000)
		runs := map[string]int{}
		mk := func(key string, until time.Time) func() (*int, time.Time) {
			return func() (*int, time.Time) {
				runs[key]++
				return new(int), until
			}
		}
		until := t0.Add(time.Minute)
		a1 := c.getOrPut(ck("a"), t0, mk("a", until))
		a2 := c.getOrPut(ck("a"), t0.Add(time.Second), mk("a", until))
		b := c.getOrPut(ck("b"), t0, mk("b", until))
		if a1 != a2 {
			t.Error("second getOrPut of a live key returned a new value")
		}
		if a1 == b {
			t.Error("two keys share one value")
		}
		if runs["a"] != 1 || runs["b"] != 1 {
			t.Fatalf("mk runs = %v, want one per key", runs)
		}
		// The value put by getOrPut is what get finds.
		if v, ok := c.get(ck("a"), t0); !ok || v != a1 {
			t.Errorf("get after getOrPut = %p, %v; want %p, true", v, ok, a1)
		}
		// Once dead, the key gets a new value.
		a3 := c.getOrPut(ck("a"), until, mk("a", until.Add(time.Minute)))
		if a3 == a1 || runs["a"] != 2 {
			t.Errorf("getOrPut at the entry's end: same value = %v, mk runs = %d; want a new value, 2 runs", a3 == a1, runs["a"])
		}
	})
}

// TestTokenCache_ManySessionsInTurn is the case that defeated the
// two-generation cache: more sessions than the capacity, presented in
// turn. The cache must keep a good share of them: at 1.2 times its
// capacity at least half the lookups hit (the old cache hit none), and at
// 10 times its capacity some still do.
func TestTokenCache_ManySessionsInTurn(t *testing.T) {
	const capacity = 1000
	for _, tt := range []struct {
		sessions int
		minHit   float64
	}{{capacity / 2, 0.99}, {capacity * 6 / 5, 0.5}, {capacity * 10, 0.02}} {
		t.Run(strconv.Itoa(tt.sessions), func(t *testing.T) {
			cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
				c := newCache(capacity)
				keys := make([]tokenKey, tt.sessions)
				for i := range keys {
					keys[i] = ck(strconv.Itoa(i))
				}
				until := t0.Add(time.Hour)
				const rounds = 20
				hits, lookups := 0, 0
				for r := range rounds {
					for i, k := range keys {
						_, ok := c.get(k, t0)
						if !ok {
							c.put(k, i, until)
						}
						if r >= rounds/2 { // steady state
							lookups++
							if ok {
								hits++
							}
						}
					}
				}
				if got := float64(hits) / float64(lookups); got < tt.minHit {
					t.Errorf("hit rate %.3f with %d sessions in turn, capacity %d; want ≥ %.2f", got, tt.sessions, capacity, tt.minHit)
				}
				if n := c.len(); n > capacity {
					t.Errorf("len() = %d, want ≤ %d", n, capacity)
				}
			})
		})
	}
}

// TestTokenCache_UsedEntrySurvives: an entry that is used survives a
// stream of keys used once; the cache is bounded by evicting those.
func TestTokenCache_UsedEntrySurvives(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		c := newCache(64)
		far := t0.Add(time.Hour)
		c.put(ck("used"), 1, far)
		kept := 0
		const rounds = 200
		for i := range rounds {
			for j := range 8 {
				k := ck(fmt.Sprintf("once-%d-%d", i, j))
				if _, ok := c.get(k, t0); !ok {
					c.put(k, 0, far)
				}
			}
			if v, ok := c.get(ck("used"), t0); ok && v == 1 {
				kept++
			} else {
				c.put(ck("used"), 1, far)
			}
		}
		// An admission policy keeps it: the keys used once are not worth
		// its room.
		if kept < rounds/2 {
			t.Errorf("the used entry was there in %d of %d rounds, want most", kept, rounds)
		}
		if n := c.len(); n > 64 {
			t.Errorf("len() = %d, want ≤ 64", n)
		}
	})
}

// TestTokenCache_DeadEntryDropped: a dead entry is dropped by the lookup
// that finds it dead, and a dead entry is no obstacle to a new one.
func TestTokenCache_DeadEntryDropped(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		c := newCache(64)
		c.put(ck("dead"), 1, t0.Add(time.Second))
		c.put(ck("live"), 0, t0.Add(time.Hour))
		if _, ok := c.get(ck("dead"), t0.Add(time.Second)); ok {
			t.Fatal("dead entry: hit, want miss")
		}
		if got := c.len(); got != 1 {
			t.Fatalf("len() = %d after the dead entry's lookup, want 1", got)
		}
		if _, ok := c.get(ck("live"), t0.Add(time.Second)); !ok {
			t.Fatal("live entry: miss, want hit")
		}
	})
}

// TestTokenCache_MillionKeysStayBounded pushes one million distinct keys
// through put and through getOrPut, checking the bound all along, and that
// the cache still holds keys (it is bounded by evicting, not by forgetting
// everything).
func TestTokenCache_MillionKeysStayBounded(t *testing.T) {
	for _, capacity := range []int{DefaultCacheSize, 100} {
		for _, via := range []string{"put", "getOrPut"} {
			t.Run(fmt.Sprintf("%d/%s", capacity, via), func(t *testing.T) {
				cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
					c := newCache(capacity)
					until := t0.Add(time.Hour)
					peak := 0
					for i := range cacheMillion {
						k := ck(strconv.Itoa(i))
						if via == "put" {
							c.put(k, i, until)
						} else {
							c.getOrPut(k, t0, func() (int, time.Time) { return i, until })
						}
						if i%4096 == 0 {
							peak = max(peak, c.len())
						}
					}
					n := c.len()
					peak = max(peak, n)
					if peak > capacity {
						t.Fatalf("len() reached %d after %d distinct keys, want ≤ %d", peak, cacheMillion, capacity)
					}
					if n < capacity/3 {
						t.Errorf("len() = %d after %d keys, want it to use its capacity %d (≥ %d)", n, cacheMillion, capacity, capacity/3)
					}
				})
			})
		}
	}
}

// TestTokenCache_AdmitDoorkeeper: while the cache has room every key is
// admitted; once it is full, a key only on its second offer, and only if
// no other key took its doorkeeper slot in between.
func TestTokenCache_AdmitDoorkeeper(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		const capacity = 64
		c := newCache(capacity)
		for i := range capacity {
			k := ck("fill-" + strconv.Itoa(i))
			if !c.admit(k) {
				t.Fatalf("key %d refused with %d of %d entries", i, c.len(), capacity)
			}
			c.put(k, i, t0.Add(time.Hour))
		}
		if c.len() != capacity {
			t.Fatalf("len() = %d after %d puts, want %d", c.len(), capacity, capacity)
		}
		k1 := ck("new")
		if c.admit(k1) {
			t.Fatal("full cache: a key admitted on its first offer")
		}
		if !c.admit(k1) {
			t.Fatal("full cache: a key refused on its second offer")
		}
		// k2 takes k1's slot with another fingerprint: k1 starts over.
		oc := c.(*otterCache[int])
		slot := func(k tokenKey) uint64 { return binary.LittleEndian.Uint64(k[8:16]) & uint64(len(oc.seen)-1) }
		var k2 tokenKey
		for i := 0; ; i++ {
			if k2 = ck("rival-" + strconv.Itoa(i)); slot(k2) == slot(k1) && [4]byte(k2[16:20]) != [4]byte(k1[16:20]) {
				break
			}
		}
		k3 := ck("third")
		if c.admit(k3) || c.admit(k2) || c.admit(k1) {
			t.Fatal("first offers admitted")
		}
		if c.admit(k2) {
			t.Fatal("k1's offer took its slot back; k2 admitted")
		}
		if !c.admit(k3) {
			t.Fatal("a key in another slot lost its offer")
		}
	})
}

// TestSeenSlots: the doorkeeper has a slot per entry of the capacity,
// rounded up to a power of two, and no more than maxSeenSlots.
func TestSeenSlots(t *testing.T) {
	for _, tc := range []struct{ capacity, want int }{
		{1, 2}, {2, 2}, {3, 4}, {64, 64}, {65, 128}, {DefaultCacheSize, 16384},
		{maxSeenSlots, maxSeenSlots}, {maxSeenSlots + 1, maxSeenSlots}, {50_000_000, maxSeenSlots},
	} {
		if got := seenSlots(tc.capacity); got != tc.want {
			t.Errorf("seenSlots(%d) = %d, want %d", tc.capacity, got, tc.want)
		}
	}
}

// TestTokenCache_FrontNeverGoesBack: a lookup that read an entry from
// otter while a put replaced it must not leave the older entry in the
// front array, where it would be served for the life the put took away
// (the delegation cache shortens an entry's life with put). The
// interleaving is played step by step: the lookup's read of its slot, its
// read from otter, the put, then the lookup's promotion.
func TestTokenCache_FrontNeverGoesBack(t *testing.T) {
	c := newOtterCache[int](64, func() time.Time { return t0 })
	k := ck("k")
	c.put(k, 1, t0.Add(time.Hour))
	s := c.slot(k)
	if s == nil {
		t.Fatal("no front slot at capacity 64")
	}
	s.Store(nil) // the entry is in otter only, as after the slot went to another key
	_, seen, _ := inFront(s, k, t0.UnixNano())
	old, ok := c.c.GetIfPresent(k)
	if !ok {
		t.Fatal("entry not in otter")
	}
	c.put(k, 2, t0.Add(time.Minute))
	promote(s, seen, old)
	if e := s.Load(); e == nil || e.val != 2 {
		t.Fatalf("front slot holds %v after the put, want the put's entry", e)
	}
	if v, ok := c.get(k, t0.Add(30*time.Minute)); ok {
		t.Fatalf("get after the put's entry died = %d, want a miss", v)
	}

	// getOrPut's promotion of a live entry it found in otter, likewise.
	c.put(k, 3, t0.Add(time.Hour))
	s.Store(nil)
	_, seen, _ = inFront(s, k, t0.UnixNano())
	old, _ = c.c.GetIfPresent(k)
	c.put(k, 4, t0.Add(time.Minute))
	promote(s, seen, old)
	if v := c.getOrPut(k, t0.Add(30*time.Minute), func() (int, time.Time) { return 5, t0.Add(time.Hour) }); v != 5 {
		t.Fatalf("getOrPut after the put's entry died = %d, want a new value", v)
	}
}

// TestTokenCache_TinyCapacity documents the floor of the bound: a
// capacity of 1 holds about one entry.
func TestTokenCache_TinyCapacity(t *testing.T) {
	cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
		for _, capacity := range []int{1, 31} {
			c := newCache(capacity)
			for i := range 10_000 {
				c.put(ck(strconv.Itoa(i)), i, t0.Add(time.Hour))
			}
			bound := capacity
			if got := c.len(); got > bound {
				t.Errorf("capacity %d: len() = %d; want ≤ %d", capacity, got, bound)
			}
		}
	})
}

// TestTokenCache_Concurrent runs get, put and getOrPut from many
// goroutines (run with -race). With room for every key, concurrent
// getOrPut calls on a key all get the value of the one mk that ran.
func TestTokenCache_Concurrent(t *testing.T) {
	const workers, ops, keys = 8, 4000, 300
	until := t0.Add(time.Hour)

	t.Run("no eviction", func(t *testing.T) {
		cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[*int]) {
			c := newCache(100_000)
			var mkRuns atomic.Int64
			var first sync.Map // key → the value the first getOrPut saw
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for i := range ops {
						n := (i*7 + w*13) % keys
						gk, pk := ck("g"+strconv.Itoa(n)), ck("p"+strconv.Itoa(n))
						v := c.getOrPut(gk, t0, func() (*int, time.Time) { mkRuns.Add(1); return new(int), until })
						if prev, loaded := first.LoadOrStore(gk, v); loaded && prev != v {
							errs <- fmt.Errorf("getOrPut(g%d) returned two different values", n)
							return
						}
						c.put(pk, new(int), until)
						if _, ok := c.get(pk, t0); !ok {
							errs <- fmt.Errorf("get(p%d) right after put: miss", n)
							return
						}
						c.get(gk, t0)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if got := mkRuns.Load(); got != keys {
				t.Errorf("mk ran %d times for %d keys, want once per key", got, keys)
			}
		})
	})

	t.Run("evicting", func(t *testing.T) {
		cacheEach(t, func(t *testing.T, newCache func(int) tokenCache[int]) {
			const capacity = 64
			c := newCache(capacity)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range ops {
						k := strconv.Itoa(w*ops + i)
						c.put(ck(k), i, until)
						c.getOrPut(ck(k+"x"), t0, func() (int, time.Time) { return i, until })
						c.get(ck(strconv.Itoa(w*ops+i/2)), t0)
						if i%512 == 0 {
							c.len()
						}
					}
				})
			}
			wg.Wait()
			if got := c.len(); got > capacity {
				t.Errorf("len() = %d, want ≤ %d", got, capacity)
			}
		})
	})
}

// cacheStream opens a server stream presenting tok and reads it to the end.
func cacheStream(client testpb.TestServiceClient, tok string) error {
	ctx := bearerCtx(tok)
	st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}},
	})
	if err != nil {
		return err
	}
	return drain(st)
}

// cacheVerifiedLen returns the number of entries in the server's
// verified-token cache.
func cacheVerifiedLen(e *testEnv) int { return e.server.ver.Load().verified.len() }

// cacheClient is a TestService client on a plain connection to e.
func cacheClient(t testing.TB, e *testEnv) testpb.TestServiceClient {
	t.Helper()
	return testpb.NewTestServiceClient(e.dial(t))
}

// TestServerCache_HitIsNotReverified: with the cache, the second call with
// a token gets the very claims the first verification produced, so the
// token was not parsed again; without it, each call parses anew.
func TestServerCache_HitIsNotReverified(t *testing.T) {
	calls := map[string]func(testpb.TestServiceClient, string) error{
		"unary":  func(c testpb.TestServiceClient, tok string) error { _, err := unaryCall(t, c, tok); return err },
		"stream": cacheStream,
	}
	for kind, call := range calls {
		for _, tt := range []struct {
			size     int
			wantSame bool
		}{{DefaultCacheSize, true}, {0, false}} {
			t.Run(fmt.Sprintf("%s/size=%d", kind, tt.size), func(t *testing.T) {
				e := newEnv(t, withServerOptions(WithCacheSize(tt.size)))
				client := cacheClient(t, e)
				tok := e.startSession(t, nil).AccessToken
				if err := call(client, tok); err != nil {
					t.Fatalf("first call: %v", err)
				}
				first := e.svc.lastShared.Load()
				e.clock.Advance(time.Minute)
				if err := call(client, tok); err != nil {
					t.Fatalf("second call: %v", err)
				}
				if same := e.svc.lastShared.Load() == first; same != tt.wantSame {
					t.Errorf("second call got the first call's claims = %v, want %v", same, tt.wantSame)
				}
				if tt.size > 0 {
					if got := cacheVerifiedLen(e); got != 1 {
						t.Errorf("verified cache len() = %d, want 1", got)
					}
				}
			})
		}
	}
}

// TestServerCache_FailuresNotCached: a rejected token leaves the cache as
// it was, whatever the reason, and a later success is cached.
func TestServerCache_FailuresNotCached(t *testing.T) {
	e := newEnv(t)
	client := cacheClient(t, e)
	good := e.startSession(t, nil)

	other := newEnv(t) // another key set
	foreign := other.startSession(t, nil).AccessToken

	parts := strings.Split(good.AccessToken, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory"}`)) + "." + parts[2]

	e.clock.Set(t0.Add(time.Hour))
	future := e.startSession(t, nil).AccessToken // iat = t0+1h
	e.clock.Set(t0)

	tests := []struct {
		name string
		tok  string
		at   time.Time
		want Reason
	}{
		{"garbage", "not-a-token", t0, ReasonTokenInvalid},
		{"foreign key", foreign, t0, ReasonTokenInvalid},
		{"tampered payload", tampered, t0, ReasonTokenInvalid},
		{"issued in the future", future, t0, ReasonTokenInvalid},
		{"expired", good.AccessToken, good.Expiry.Add(DefaultLeeway), ReasonTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.clock.Set(tt.at)
			for i := range 2 {
				_, err := unaryCall(t, client, tt.tok)
				wantReason(t, err, tt.want)
				if got := cacheVerifiedLen(e); got != 0 {
					t.Fatalf("after rejected call %d: verified cache len() = %d, want 0", i+1, got)
				}
			}
		})
	}
	// The control: the same cache does store a success.
	e.clock.Set(t0.Add(time.Hour))
	if _, err := unaryCall(t, client, future); err != nil {
		t.Fatalf("once its iat has come: %v", err)
	}
	if got := cacheVerifiedLen(e); got != 1 {
		t.Fatalf("after an accepted call: verified cache len() = %d, want 1", got)
	}
}

// TestServerCache_RevocationStillApplies: revoking a session rejects its
// cached token on the next call.
func TestServerCache_RevocationStillApplies(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			rl := &memstore.RevocationList{}
			e := newEnv(t, withServerOptions(WithRevocationList(rl)))
			client := cacheClient(t, e)
			s := e.startSession(t, nil)
			call := func() error { _, err := unaryCall(t, client, s.AccessToken); return err }
			if kind == "stream" {
				call = func() error { return cacheStream(client, s.AccessToken) }
			}
			if err := call(); err != nil {
				t.Fatalf("before revocation: %v", err)
			}
			if got := cacheVerifiedLen(e); got != 1 {
				t.Fatalf("verified cache len() = %d, want 1", got)
			}
			_ = rl.Revoke(context.Background(), s.SessionID, e.clock.Now(), s.End.Add(DefaultLeeway))
			before := e.svc.calls.Load()
			wantReason(t, call(), ReasonSessionRevoked)
			if e.svc.calls.Load() != before {
				t.Error("the handler ran for a revoked session")
			}
			if got := cacheVerifiedLen(e); got != 1 {
				t.Errorf("verified cache len() = %d after the revoked call, want 1 (it was a hit)", got)
			}
		})
	}
}

// TestServerCache_ExpiryBoundary: a cached token is accepted from the
// cache 1 ns before exp + leeway and rejected as TOKEN_EXPIRED exactly then.
func TestServerCache_ExpiryBoundary(t *testing.T) {
	e := newEnv(t)
	client := cacheClient(t, e)
	s := e.startSession(t, nil)
	if _, err := unaryCall(t, client, s.AccessToken); err != nil {
		t.Fatal(err)
	}
	cached := e.svc.lastShared.Load()
	dead := s.Expiry.Add(DefaultLeeway)

	e.clock.Set(dead.Add(-time.Nanosecond))
	if _, err := unaryCall(t, client, s.AccessToken); err != nil {
		t.Fatalf("1ns before exp+leeway: %v, want accepted", err)
	}
	if e.svc.lastShared.Load() != cached {
		t.Error("1ns before exp+leeway: the token was verified again, want a cache hit")
	}
	e.clock.Set(dead)
	_, err := unaryCall(t, client, s.AccessToken)
	wantReason(t, err, ReasonTokenExpired)
	if got := cacheVerifiedLen(e); got != 0 {
		t.Errorf("verified cache len() = %d after the entry died, want 0", got)
	}
}

// cacheAuth authenticates tok directly, without gRPC, and returns the
// renewed token.
func cacheAuth(s *Server, tok string) (string, error) {
	ctx := metadata.NewIncomingContext(context.Background(), bearerMD(tok))
	_, _, rn, err := s.authenticate(ctx, srvUnaryMethod)
	return rn.token(), err
}

func cacheReason(err error) Reason {
	r, _ := ReasonOf(err)
	return r
}

// TestServerCache_SameVerdictAsUncached: the cache only saves work. A
// server whose cache holds the token gives the verdict of a server without
// a cache at each boundary of the token's life and one tick either side.
func TestServerCache_SameVerdictAsUncached(t *testing.T) {
	ks := testKeySet(t)
	p := Policy{TTL: time.Hour, MaxLifetime: 2 * time.Hour}
	mk := func(size int) (*Server, *fakeClock) {
		clk := newFakeClock(t0)
		s, err := NewServer(ks, WithPolicy(p), WithClock(clk.Now), WithCacheSize(size))
		if err != nil {
			t.Fatal(err)
		}
		return s, clk
	}
	minter, _ := mk(0)
	sess, err := minter.StartSession(context.Background(), "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	iat, exp := t0, sess.Expiry
	tests := []struct {
		name string
		at   time.Time
		want Reason
	}{
		{"iat-leeway-1ns", iat.Add(-DefaultLeeway - time.Nanosecond), ReasonTokenInvalid},
		{"iat-leeway", iat.Add(-DefaultLeeway), noReason},
		{"iat", iat, noReason},
		{"exp-1ns", exp.Add(-time.Nanosecond), noReason},
		{"exp", exp, noReason},
		{"exp+leeway-1ns", exp.Add(DefaultLeeway - time.Nanosecond), noReason},
		{"exp+leeway", exp.Add(DefaultLeeway), ReasonTokenExpired},
		{"exp+leeway+1ns", exp.Add(DefaultLeeway + time.Nanosecond), ReasonTokenExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cached, cclk := mk(DefaultCacheSize)
			plain, pclk := mk(0)
			if _, err := cacheAuth(cached, sess.AccessToken); err != nil { // warm at t0
				t.Fatalf("warming the cache: %v", err)
			}
			cclk.Set(tt.at)
			pclk.Set(tt.at)
			_, cerr := cacheAuth(cached, sess.AccessToken)
			_, perr := cacheAuth(plain, sess.AccessToken)
			if got, want := cacheReason(cerr), cacheReason(perr); got != want || want != tt.want || (cerr == nil) != (perr == nil) {
				t.Fatalf("cached server: %v (%v); uncached: %v (%v); want both %v", got, cerr, want, perr, tt.want)
			}
		})
	}
}

// cacheFlipPadBit returns seg, a base64url segment whose last character
// carries unused bits, with the lowest of them flipped: a second spelling
// of the same bytes that only a lenient decoder accepts.
func cacheFlipPadBit(t *testing.T, seg string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 == 0 {
		t.Fatalf("segment of length %d has no unused bits", len(seg))
	}
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	out := seg[:len(seg)-1] + string(alphabet[i^1])
	a, err1 := base64.RawURLEncoding.DecodeString(seg)
	b, err2 := base64.RawURLEncoding.DecodeString(out)
	if err1 != nil || err2 != nil || string(a) != string(b) {
		t.Fatalf("flipped segment does not decode to the same bytes: %v, %v", err1, err2)
	}
	if _, err := base64.RawURLEncoding.Strict().DecodeString(out); err == nil {
		t.Fatal("flipped segment decodes strictly; want a non-canonical spelling")
	}
	return out
}

// TestServerCache_ReencodedCopyIsNotAHit: once the canonical token is
// cached, other spellings of the same bytes are rejected, as they are
// without a cache, and do not enter the cache.
func TestServerCache_ReencodedCopyIsNotAHit(t *testing.T) {
	e := newEnv(t)
	client := cacheClient(t, e)
	tok := e.startSession(t, nil).AccessToken
	if _, err := unaryCall(t, client, tok); err != nil {
		t.Fatal(err)
	}
	p := strings.Split(tok, ".")
	type variant struct {
		name   string
		tok    string
		direct bool // gRPC clients refuse to send it: call authenticate directly
	}
	tests := []variant{
		{"non-canonical signature", p[0] + "." + p[1] + "." + cacheFlipPadBit(t, p[2]), false},
		{"padded signature", tok + "=", false},
		{"line break in signature", p[0] + "." + p[1] + "." + p[2][:10] + "\n" + p[2][10:], true},
	}
	if len(p[1])%4 != 0 {
		tests = append(tests, variant{"non-canonical payload", p[0] + "." + cacheFlipPadBit(t, p[1]) + "." + p[2], false})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.tok == tok {
				t.Fatal("variant equals the token")
			}
			var err error
			if tt.direct {
				_, err = cacheAuth(e.server, tt.tok)
			} else {
				_, err = unaryCall(t, client, tt.tok)
			}
			wantReason(t, err, ReasonTokenInvalid)
			if got := cacheVerifiedLen(e); got != 1 {
				t.Errorf("verified cache len() = %d, want 1", got)
			}
		})
	}
	if _, err := unaryCall(t, client, tok); err != nil {
		t.Errorf("the canonical token after its variants: %v", err)
	}
}

// cacheMalleate returns the ES256 token tok with its signature (r, s)
// replaced by (r, f(s) mod n).
func cacheMalleate(t *testing.T, tok string, f func(s, n *big.Int) *big.Int) string {
	t.Helper()
	p := strings.Split(tok, ".")
	sig, err := base64.RawURLEncoding.DecodeString(p[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature: %d bytes, %v", len(sig), err)
	}
	n := elliptic.P256().Params().N
	s := new(big.Int).SetBytes(sig[32:])
	s2 := new(big.Int).Mod(f(s, n), n)
	out := append([]byte(nil), sig[:32]...)
	out = append(out, s2.FillBytes(make([]byte, 32))...)
	return p[0] + "." + p[1] + "." + base64.RawURLEncoding.EncodeToString(out)
}

// TestServerCache_ES256MalleatedCopy: (r, n−s) is a second valid ECDSA
// signature. It is accepted because it verifies on its own — it takes a
// cache entry of its own — while (r, s+1) is rejected although the
// original is cached.
func TestServerCache_ES256MalleatedCopy(t *testing.T) {
	ecKey := keysEC(t, elliptic.P256())
	ks := keysSet(t, keysMust(t, "ec", jwt.SigningMethodES256, ecKey))
	e := newEnv(t, withKeys(ks))
	client := cacheClient(t, e)
	tok := e.startSession(t, nil).AccessToken
	if _, err := unaryCall(t, client, tok); err != nil {
		t.Fatal(err)
	}
	orig := e.svc.lastShared.Load()
	if got := cacheVerifiedLen(e); got != 1 {
		t.Fatalf("verified cache len() = %d, want 1", got)
	}

	broken := cacheMalleate(t, tok, func(s, _ *big.Int) *big.Int { return new(big.Int).Add(s, big.NewInt(1)) })
	_, err := unaryCall(t, client, broken)
	wantReason(t, err, ReasonTokenInvalid)
	if got := cacheVerifiedLen(e); got != 1 {
		t.Fatalf("after (r, s+1): verified cache len() = %d, want 1", got)
	}

	mall := cacheMalleate(t, tok, func(s, n *big.Int) *big.Int { return new(big.Int).Sub(n, s) })
	if mall == tok {
		t.Fatal("malleated token equals the original")
	}
	if _, err := unaryCall(t, client, mall); err != nil {
		t.Fatalf("(r, n−s): %v, want accepted (it is a valid signature)", err)
	}
	if got := cacheVerifiedLen(e); got != 2 {
		t.Errorf("after (r, n−s): verified cache len() = %d, want 2 (verified on its own)", got)
	}
	if e.svc.lastShared.Load() == orig {
		t.Error("(r, n−s) got the original's cached claims, want its own verification")
	}

	// And it verifies on its own without any cache.
	plain, err := NewServer(ks, WithClock(e.clock.Now), WithCacheSize(0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cacheAuth(plain, mall); err != nil {
		t.Errorf("(r, n−s) on a server without cache: %v, want accepted", err)
	}
}

// TestServerCache_RotateKeysEmptiesCaches: after RotateKeys both caches
// are empty, a renewal is signed by the new key although the old one was
// cached, and a cached token of a dropped key is rejected.
func TestServerCache_RotateKeysEmptiesCaches(t *testing.T) {
	e := newEnv(t)
	client := cacheClient(t, e)
	tok := e.startSession(t, nil).AccessToken
	e.clock.Set(t0.Add(srvDueAfter))
	before, err := unaryCall(t, client, tok)
	if err != nil || before == "" {
		t.Fatalf("renewal before rotation: %d bytes, %v; want one", len(before), err)
	}
	v := e.server.ver.Load()
	if c, ok := v.verified.get(ck(tok), e.clock.Now()); v.verified.len() != 1 || !ok || c.renewal.Load() == nil {
		t.Fatalf("before rotation: verified %d, token cached %v; want 1, true, with its renewal", v.verified.len(), ok)
	}

	k1 := e.keys.Active()
	k2 := keysMust(t, "k2", jwt.SigningMethodHS256, keysSecret(t, 32))
	if err := e.server.RotateKeys(keysSet(t, k2, k1)); err != nil {
		t.Fatal(err)
	}
	v = e.server.ver.Load()
	if v.verified.len() != 0 {
		t.Fatalf("after rotation: verified %d (with their renewals); want 0", v.verified.len())
	}
	after, err := unaryCall(t, client, tok)
	if err != nil || after == "" {
		t.Fatalf("renewal after rotation: %d bytes, %v; want one", len(after), err)
	}
	if after == before {
		t.Error("after rotation the server handed out the renewal minted under the old key")
	}
	if kid := decodeToken(t, after).header["kid"]; kid != "k2" {
		t.Errorf("renewal after rotation has kid %v, want k2", kid)
	}

	// Dropping k1: its token, cached a moment ago, is no longer accepted.
	k3 := keysMust(t, "k3", jwt.SigningMethodHS256, keysSecret(t, 32))
	if err := e.server.RotateKeys(keysSet(t, k3)); err != nil {
		t.Fatal(err)
	}
	_, err = unaryCall(t, client, tok)
	wantReason(t, err, ReasonTokenInvalid)
}

// TestServerCache_RenewalDeduplicated: concurrent requests presenting the
// same due token all get one byte-identical renewal, minted once; another
// token gets its own. Without the cache each request mints its own.
func TestServerCache_RenewalDeduplicated(t *testing.T) {
	const n = 16
	for _, tt := range []struct {
		size     int
		wantDiff int // distinct renewals for one token
	}{{DefaultCacheSize, 1}, {0, n}} {
		t.Run(fmt.Sprintf("size=%d", tt.size), func(t *testing.T) {
			e := newEnv(t, withServerOptions(WithCacheSize(tt.size)))
			client := cacheClient(t, e)
			a := e.startSession(t, nil).AccessToken
			b := e.startSession(t, nil).AccessToken
			e.clock.Set(t0.Add(srvDueAfter))

			got := make([]string, n)
			errs := make([]error, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					<-start
					got[i], errs[i] = unaryCall(t, client, a)
				})
			}
			close(start)
			wg.Wait()
			distinct := map[string]bool{}
			for i := range n {
				if errs[i] != nil || got[i] == "" {
					t.Fatalf("request %d: renewed %d bytes, err %v; want a renewal", i, len(got[i]), errs[i])
				}
				distinct[got[i]] = true
			}
			if len(distinct) != tt.wantDiff {
				t.Errorf("%d requests got %d distinct renewals, want %d", n, len(distinct), tt.wantDiff)
			}
			if got := len(e.events.kinds(EventRenewed)); got != n {
				t.Errorf("EventRenewed count = %d, want %d (one per request)", got, n)
			}
			if tt.size > 0 {
				if got := e.server.ver.Load().verified.len(); got != 1 {
					t.Errorf("verified cache len() = %d, want 1 (the token, with its renewal)", got)
				}
			}
			rb, err := unaryCall(t, client, b)
			if err != nil || rb == "" || distinct[rb] {
				t.Errorf("another token: renewed %d bytes, err %v, shared = %v; want its own renewal", len(rb), err, distinct[rb])
			}
		})
	}
}

// TestServerCache_FullCacheSecondPresentation: in a full cache a token is
// cached from its second presentation on, unless its renewal is due: then
// from its first, so that requests presenting it share the renewal.
func TestServerCache_FullCacheSecondPresentation(t *testing.T) {
	const size = 64
	e := newEnv(t, withServerOptions(WithCacheSize(size)))
	client := cacheClient(t, e)
	for range size {
		if _, err := unaryCall(t, client, e.startSession(t, nil).AccessToken); err != nil {
			t.Fatal(err)
		}
	}
	if got := cacheVerifiedLen(e); got != size {
		t.Fatalf("verified cache len() = %d, want %d", got, size)
	}
	// claims presents tok and returns the claims its handler got.
	claims := func(tok string) *verifiedClaims {
		t.Helper()
		if _, err := unaryCall(t, client, tok); err != nil {
			t.Fatal(err)
		}
		return e.svc.lastShared.Load()
	}

	tok := e.startSession(t, nil).AccessToken
	first, second, third := claims(tok), claims(tok), claims(tok)
	if first == second {
		t.Error("a token not due for renewal: its first presentation was cached in a full cache")
	}
	if second != third {
		t.Error("a token not due for renewal: its second presentation was not cached")
	}

	due := e.startSession(t, nil).AccessToken
	e.clock.Set(t0.Add(srvDueAfter))
	r1, err := unaryCall(t, client, due)
	if err != nil || r1 == "" {
		t.Fatalf("due token: renewed %d bytes, err %v; want a renewal", len(r1), err)
	}
	first = e.svc.lastShared.Load()
	r2, err := unaryCall(t, client, due)
	if err != nil || r2 != r1 {
		t.Errorf("due token, second presentation: err %v, same renewal %v; want the first's", err, r2 == r1)
	}
	if e.svc.lastShared.Load() != first {
		t.Error("a token due for renewal: its first presentation was not cached in a full cache")
	}
}

// TestServerCache_RenewalNeverStale: a token presented again later, while
// its renewal is still due, must not be handed a renewed token that has
// already expired. Decide never renews to an expiry that is not later than
// now; a renewal taken from the de-duplication cache must not either.
func TestServerCache_RenewalNeverStale(t *testing.T) {
	p := Policy{TTL: 10 * time.Second, RenewBefore: 10 * time.Second, MaxLifetime: time.Hour}
	e := newEnv(t, withServerOptions(WithPolicy(p)))
	client := cacheClient(t, e)
	s := e.startSession(t, nil) // exp t0+10s

	e.clock.Set(t0.Add(time.Second))
	first, err := unaryCall(t, client, s.AccessToken)
	if err != nil || first == "" {
		t.Fatalf("first renewal: %d bytes, %v", len(first), err)
	}
	// The same token again, expired but within the leeway.
	now := t0.Add(20 * time.Second)
	e.clock.Set(now)
	again, err := unaryCall(t, client, s.AccessToken)
	if err != nil || again == "" {
		t.Fatalf("second renewal: %d bytes, %v", len(again), err)
	}
	c := decodeToken(t, again).claims
	if !c.ExpiresAt.After(now) {
		t.Errorf("renewal sent at now = login+20s expires at login+%v: already expired; want after now (a fresh mint gives login+30s)",
			c.ExpiresAt.Sub(t0))
	}
}

// TestServerCache_MillionDistinctStayBounded drives one million distinct
// tokens' keys through the server's own caches, and a few thousand real
// tokens through authentication and renewal with a small cache size.
func TestServerCache_MillionDistinctStayBounded(t *testing.T) {
	t.Run("direct", func(t *testing.T) {
		s, err := NewServer(testKeySet(t), WithClock(newFakeClock(t0).Now))
		if err != nil {
			t.Fatal(err)
		}
		v := s.ver.Load()
		until := t0.Add(time.Hour)
		claims := &verifiedClaims{}
		var peak int
		for i := range cacheMillion {
			jti := strconv.Itoa(i)
			v.verified.put(ck("token."+jti), claims, until)
			if i%8192 == 0 {
				peak = max(peak, v.verified.len())
			}
		}
		peak = max(peak, v.verified.len())
		if peak > DefaultCacheSize {
			t.Fatalf("after %d distinct tokens: verified peaked at %d; want ≤ %d", cacheMillion, peak, DefaultCacheSize)
		}
	})

	t.Run("through authenticate", func(t *testing.T) {
		const size, tokens = 100, 3000
		clk := newFakeClock(t0)
		s, err := NewServer(testKeySet(t), WithClock(clk.Now), WithCacheSize(size),
			WithPolicy(Policy{TTL: time.Hour, RenewBefore: time.Hour}))
		if err != nil {
			t.Fatal(err)
		}
		renewed := 0
		for i := range tokens {
			clk.Set(t0.Add(time.Duration(i) * time.Millisecond))
			sess, err := s.StartSession(context.Background(), "u"+strconv.Itoa(i), nil)
			if err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Second) // a renewal is due
			r, err := cacheAuth(s, sess.AccessToken)
			if err != nil {
				t.Fatalf("token %d: %v", i, err)
			}
			if r != "" {
				renewed++
			}
		}
		v := s.ver.Load()
		if v.verified.len() > size {
			t.Errorf("after %d tokens: verified %d entries (with their renewals); want ≤ %d", tokens, v.verified.len(), size)
		}
		if renewed != tokens {
			t.Errorf("%d of %d calls renewed, want all", renewed, tokens)
		}
	})
}

// TestServerCache_Disabled: WithCacheSize(0) has no cache (nor shared
// renewals) and every call still works; a negative size is refused.
func TestServerCache_Disabled(t *testing.T) {
	e := newEnv(t, withServerOptions(WithCacheSize(0)))
	v := e.server.ver.Load()
	if v.verified != nil {
		t.Fatal("WithCacheSize(0): a verified-token cache, want none")
	}
	client := cacheClient(t, e)
	tok := e.startSession(t, nil).AccessToken
	for i := range 3 {
		if r, err := unaryCall(t, client, tok); err != nil || r != "" {
			t.Fatalf("call %d: renewed %d bytes, %v; want accepted, no renewal", i, len(r), err)
		}
	}
	if err := cacheStream(client, tok); err != nil {
		t.Fatalf("stream: %v", err)
	}
	e.clock.Set(t0.Add(srvDueAfter))
	for i := range 2 {
		if r, err := unaryCall(t, client, tok); err != nil || r == "" {
			t.Fatalf("due call %d: renewed %d bytes, %v; want a renewal", i, len(r), err)
		}
	}
	// The server (keys, rotation) keeps working without caches.
	if err := e.server.RotateKeys(e.keys); err != nil {
		t.Fatal(err)
	}
	if _, err := unaryCall(t, client, tok); err != nil {
		t.Fatalf("after RotateKeys: %v", err)
	}

	if _, err := NewServer(testKeySet(t), WithCacheSize(-1)); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("WithCacheSize(-1): err = %v, want ErrInvalidOption", err)
	}
}

// cacheRenewed makes a call of kind presenting tok and returns the
// renewed token the server sent ("" for none).
func cacheRenewed(t testing.TB, c testpb.TestServiceClient, kind, tok string) string {
	t.Helper()
	ctx := metadata.NewOutgoingContext(crfCtx(t), bearerMD(tok))
	var md metadata.MD
	switch kind {
	case "unary":
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&md)); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
	case "server-stream":
		st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := drain(st); err != nil {
			t.Fatalf("stream: %v", err)
		}
		md = st.Trailer()
	}
	v := md.Get(DefaultRenewalHeader)
	if len(v) != 1 {
		t.Fatalf("%d renewed tokens, want 1", len(v))
	}
	return v[0]
}

// TestServerCache_RenewalPerTokenNotPerJTI: two trusted tokens that share a jti but
// belong to different sessions each get a renewal of their own session.
func TestServerCache_RenewalPerTokenNotPerJTI(t *testing.T) {
	for _, kind := range []string{"unary", "server-stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			c := testpb.NewTestServiceClient(e.dial(t))
			mint := func(sub, sid string) string {
				tok, err := e.server.sign(e.server.ver.Load(), &Claims{
					RegisteredClaims: jwt.RegisteredClaims{
						Subject:   sub,
						ID:        "the-same-jti",
						IssuedAt:  jwt.NewNumericDate(t0),
						ExpiresAt: jwt.NewNumericDate(t0.Add(DefaultTTL)),
					},
					SessionID: sid,
					AuthTime:  jwt.NewNumericDate(t0),
				}, accessTokenType)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			toks := []struct{ sub, sid, tok string }{
				{"alice", "sid-alice", mint("alice", "sid-alice")},
				{"bob", "sid-bob", mint("bob", "sid-bob")},
			}
			e.clock.Set(t0.Add(DefaultTTL/2 + time.Hour)) // renewal due for both
			for _, want := range toks {
				got := decodeToken(t, cacheRenewed(t, c, kind, want.tok)).claims
				if got.Subject != want.sub || got.SessionID != want.sid {
					t.Fatalf("renewal of %s's token: sub %q, sid %q; want %q, %q", want.sub, got.Subject, got.SessionID, want.sub, want.sid)
				}
			}
		})
	}
}
