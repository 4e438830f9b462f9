package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/internal/redistest"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

// The Redis cases of the sessions sweep: steady (a cache of verified
// tokens sized for n) with the Redis session store attached, so that every
// call asks the store whether its session is live, with the store's cache
// TTL ([redisstore.WithCacheTTL]) at the default or longer. Every case of
// one alg and n shares one redis-server (internal/redistest), where the
// sweep's sessions are registered as StartSession would register them;
// each case has a rueidis client of its own, so a client-side cache of its
// own. Without redis-server on PATH they are skipped (with CI set they
// fail), and the other cases run.
//
// Each reports, besides hit%:
//
//   - redis-rt/op: round trips to Redis per call during the timed loop,
//     counted by Redis (INFO commandstats; see commandStats.roundTrips).
//     Every call that the client-side cache cannot answer is one.
//   - interval-ms: the interval between two calls of one session, n × the
//     time per call. The benchmark calls as fast as it can, so this is what
//     n sets: a session whose interval exceeds the TTL finds its cached
//     answer expired on every call.
//   - ttl-s: the cache TTL of the case.
//   - csc-B/session: the Go heap that rueidis's client-side cache holds per
//     session once every session was asked once, measured at the case's
//     setup (live heap after a GC, before and after asking half of the
//     sessions). It does not depend on the TTL: rueidis drops an expired
//     entry only when it is asked again, on an invalidation, or when the
//     cache of a connection outgrows ClientOption.CacheSizeEachConn
//     (128 MiB by default).
//   - prime-interval-ms: the interval that settle assumed (see below).
//
// They run in the rand loads only. A cache entry lives one TTL from the
// call that fetched it, so the share of calls that find it expired is a
// time average over the TTL. Round-robin is a clock: every session's
// entry expires in step with its neighbours', and a timed loop shorter
// than a TTL (20,000 calls are 1 to 3 s) sees a phase of that cycle,
// all hits or all misses, not its average. Under rand each session's calls
// come at random, independent times (as independent users' do), and the
// steady state is known: an entry is live a share T/(T+I) of the time (T
// the TTL, I the session's mean interval) with its remaining life uniform
// over [0, T), and a share I/(T+I) of the calls make a round trip. settle
// puts the cache into that state before the timed loop, so that a timed
// loop of any length measures the steady state rather than the warm-up.
var sessionRedisCases = []struct {
	name string
	ttl  time.Duration // 0: the store's default
}{
	{"steady-redis-ttl1s", time.Second},
	{caseSteadyRedis, 0},
	{"steady-redis-ttl30s", 30 * time.Second},
}

// settleCalls is the number of untimed calls by which settle measures a
// Redis case's rate.
const settleCalls = 10_000

func sessionRedisCaseNames() []string {
	names := make([]string, len(sessionRedisCases))
	for i, c := range sessionRedisCases {
		names[i] = c.name
	}
	return names
}

// sessionRedisTTL returns case c's cache TTL, and whether c is a Redis case
// of the sweep.
func sessionRedisTTL(c string) (time.Duration, bool) {
	for _, rc := range sessionRedisCases {
		if rc.name == c {
			if rc.ttl == 0 {
				return redisstore.DefaultCacheTTL, true
			}
			return rc.ttl, true
		}
	}
	return 0, false
}

// redisCase is one Redis case of a sweep: its store, on a client that
// settle can replace.
type redisCase struct {
	name   string
	ttl    time.Duration
	addr   string
	client *swapClient
	store  *redisstore.Store
	// cacheBytes is csc-B/session, measured once.
	cacheBytes float64
	// settled holds the loads that settle ran for, and primeInterval the
	// interval it assumed last.
	settled       map[string]bool
	primeInterval time.Duration
	// primeNs is the time per lookup of the last prime, to plan the next.
	primeNs float64
}

// redisCaseOf returns c's redisCase, setting up the sweep's redis-server
// on first use, or nil when c is not a Redis case. Without redis-server
// on PATH it skips tb (fails it with CI set).
func (sw *sweep) redisCaseOf(tb testing.TB, c string) *redisCase {
	if _, ok := sessionRedisTTL(c); !ok {
		return nil
	}
	redistest.Binary(tb, "redis-server", "Debian: apt-get install -y redis-server")
	return sw.redisCase(c)
}

// startRedis starts the sweep's redis-server and registers every session
// in it through a store, as StartSession with that store would have: the
// Redis store refuses a session it does not know. Everything stops at the
// sweep's cleanup.
func (sw *sweep) startRedis() *benchRedis {
	if sw.redis != nil {
		return sw.redis
	}
	srv := redistest.Start(sw.tb)
	admin, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		sw.tb.Fatalf("rueidis.NewClient(%s): %v", srv.Addr(), err)
	}
	sw.tb.Cleanup(admin.Close)
	setup := redisstore.New(admin)
	now := time.Now()
	keep := interceptor.Policy{}.KeepUntil(now) // the sweep's servers run the default policy
	err = forEach(len(sw.sids), func(i int) error {
		// A refresh digest nobody presents: the sweep never refreshes.
		return retrySetup(func() error {
			return setup.Create(context.Background(), sw.sids[i], store.Digest(sha256.Sum256([]byte(sw.sids[i]))), now, keep)
		})
	})
	if err != nil {
		sw.tb.Fatalf("registering the sessions in Redis: %v", err)
	}
	sw.redis = &benchRedis{server: srv, admin: admin}
	return sw.redis
}

// redisCase returns case c's store, setting it up on first use: a client
// of its own, and csc-B/session measured by asking the store about every
// session once.
func (sw *sweep) redisCase(c string) *redisCase {
	if rc, ok := sw.redisCases[c]; ok {
		return rc
	}
	ttl, ok := sessionRedisTTL(c)
	if !ok {
		sw.tb.Fatalf("unknown case %q", c)
	}
	r := sw.startRedis()
	rc := &redisCase{name: c, ttl: ttl, addr: r.server.Addr(), client: &swapClient{}, settled: map[string]bool{}}
	rc.client.swap(rc.newClient(sw.tb))
	sw.tb.Cleanup(rc.client.Close)
	var opts []redisstore.Option
	if ttl != redisstore.DefaultCacheTTL {
		opts = append(opts, redisstore.WithCacheTTL(ttl))
	}
	rc.store = redisstore.New(rc.client, opts...)
	b, err := rc.measureCache(sw.sids)
	if err != nil {
		sw.tb.Fatalf("%s: %v", c, err)
	}
	rc.cacheBytes = b
	sw.redisCases[c] = rc
	return rc
}

func (rc *redisCase) newClient(tb testing.TB) rueidis.Client {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rc.addr}}) // rueidis's defaults: cache on
	if err != nil {
		tb.Fatalf("rueidis.NewClient(%s): %v", rc.addr, err)
	}
	return c
}

// measureCache asks the store about every session once, with the case's
// TTL, and returns the growth of the live heap per session over the second
// half (the first half pays for connections and buffers once).
func (rc *redisCase) measureCache(sids []string) (float64, error) {
	half := len(sids) / 2
	ask := func(sids []string) error {
		return forEach(len(sids), func(i int) error {
			return retrySetup(func() error { return rc.ask(context.Background(), sids[i]) })
		})
	}
	if err := ask(sids[:half]); err != nil {
		return 0, err
	}
	before := liveHeap()
	if err := ask(sids[half:]); err != nil {
		return 0, err
	}
	return float64(liveHeap()-before) / float64(len(sids)-half), nil
}

// liveHeap returns the bytes of the heap's live objects just after a GC.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// ask asks the store whether session sid is live, which must be true.
func (rc *redisCase) ask(ctx context.Context, sid string) error {
	revoked, err := rc.store.IsRevoked(ctx, sid, time.Now())
	if err == nil && revoked {
		err = fmt.Errorf("the store says a registered session is not live")
	}
	return err
}

// settle puts the case's client-side cache, the first time the case runs
// in load, into the steady state of n sessions each called at random with
// the mean interval I that the case runs at in load. I is not known before
// the case runs; settle primes for a first guess (the previous case's rate
// in load), measures the case's rate over settleCalls untimed calls, and
// primes again for the interval that rate gives (prime-interval-ms).
func (rc *redisCase) settle(tb testing.TB, sw *sweep, load string) {
	if rc.settled[load] {
		return // RunParallel calls the function again right after its probe
	}
	rc.settled[load] = true
	n := len(sw.sids)
	guess := sw.lastNs[load]
	if guess <= 0 {
		guess = 50_000
	}
	if err := rc.prime(tb, sw.sids, time.Duration(guess*float64(n))); err != nil {
		tb.Fatalf("%s: prime: %v", rc.name, err)
	}
	took, err := sw.drive(sw.client(rc.name), load, settleCalls)
	if err != nil {
		tb.Fatalf("%s: settle: %v", rc.name, err)
	}
	interval := time.Duration(float64(took) / settleCalls * float64(n))
	if err := rc.prime(tb, sw.sids, interval); err != nil {
		tb.Fatalf("%s: prime: %v", rc.name, err)
	}
}

// prime replaces the case's client by a new one, with an empty cache, and
// fills that cache as n sessions called at random with mean interval I
// would have it in the steady state: each session's answer is cached with
// probability T/(T+I), with a remaining life drawn uniformly from [0, T).
// It asks the store itself (the same command on the same key as a call's
// lookup), the client giving each lookup the remaining life as its TTL,
// all counted from one instant, when prime returns.
func (rc *redisCase) prime(tb testing.TB, sids []string, interval time.Duration) error {
	rc.primeInterval = interval
	rc.client.swap(rc.newClient(tb)).Close()
	live := float64(rc.ttl) / float64(rc.ttl+interval)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	type entry struct {
		sid  string
		life time.Duration
	}
	var entries []entry
	for _, sid := range sids {
		if r.Float64() < live {
			entries = append(entries, entry{sid, time.Duration(r.Float64() * float64(rc.ttl))})
		}
	}
	per := rc.primeNs
	if per <= 0 {
		per = 50_000 // ns per lookup; measured after the first prime
	}
	start := time.Now()
	ready := start.Add(20*time.Millisecond + time.Duration(per*float64(len(entries))))
	rc.client.priming.Store(true)
	defer rc.client.priming.Store(false)
	err := forEach(len(entries), func(i int) error {
		e := entries[i]
		return retrySetup(func() error {
			ttl := time.Until(ready) + e.life
			if ttl < time.Millisecond {
				return nil // the prime ran late: this one has expired already
			}
			return rc.ask(context.WithValue(context.Background(), primeTTLKey{}, ttl), e.sid)
		})
	})
	if len(entries) > 0 {
		rc.primeNs = 1.5 * float64(time.Since(start)) / float64(len(entries))
	}
	time.Sleep(time.Until(ready))
	return err
}

// report reports the case's metrics after its timed loop; before is the
// command count before it.
func (rc *redisCase) report(b *testing.B, sw *sweep, before commandStats) {
	trips := sw.redis.mustCommands(b).roundTrips() - before.roundTrips()
	b.ReportMetric(float64(trips)/float64(b.N), "redis-rt/op")
	interval := float64(len(sw.sids)) * float64(b.Elapsed()) / float64(b.N)
	b.ReportMetric(interval/float64(time.Millisecond), "interval-ms")
	b.ReportMetric(rc.ttl.Seconds(), "ttl-s")
	b.ReportMetric(rc.cacheBytes, "csc-B/session")
	b.ReportMetric(float64(rc.primeInterval)/float64(time.Millisecond), "prime-interval-ms")
}

// drive makes calls untimed calls of d in load's pattern (random sessions;
// on 32 goroutines for the -par32 loads) and returns the time they took.
func (sw *sweep) drive(d demov1.DemoServiceClient, load string, calls int) (time.Duration, error) {
	goroutines := 1
	if load == "rr-par32" || load == "rand-par32" {
		goroutines = sessionGoroutines
	}
	n := len(sw.ctxs)
	var left atomic.Int64
	left.Store(int64(calls))
	start := time.Now()
	err := forN(goroutines, func(g int) error {
		r := rand.New(rand.NewPCG(uint64(g), 4))
		for left.Add(-1) >= 0 {
			if err := sw.call(d, r.IntN(n)); err != nil {
				return err
			}
		}
		return nil
	})
	return time.Since(start), err
}

// retrySetup calls f, again up to twice when it timed out: on this
// 2-core machine shared with other builds, one of the set-up's tens of
// thousands of lookups sometimes waits out the store's timeout (1 s). The
// timed loops never retry.
func retrySetup(f func() error) error {
	err := f()
	for range 2 {
		if !errors.Is(err, context.DeadlineExceeded) {
			break
		}
		err = f()
	}
	return err
}

// forEach calls f(i) for every i < n on sessionGoroutines goroutines and
// returns the first error.
func forEach(n int, f func(i int) error) error {
	var next atomic.Int64
	return forN(sessionGoroutines, func(int) error {
		for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
			if err := f(i); err != nil {
				return err
			}
		}
		return nil
	})
}

// forN runs f(0) … f(g-1) concurrently and returns the first error.
func forN(g int, f func(g int) error) error {
	errs := make(chan error, g)
	var wg sync.WaitGroup
	for i := range g {
		wg.Go(func() { errs <- f(i) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// primeTTLKey is the context key of the TTL that prime gives one lookup.
type primeTTLKey struct{}

// swapClient is the rueidis client of a Redis case's store. It passes every
// call to the client it holds, which prime replaces, and while priming it
// gives DoCache the TTL in the call's context in place of the store's.
// Outside prime it only adds an atomic load to a lookup.
type swapClient struct {
	cur     atomic.Pointer[heldClient]
	priming atomic.Bool
}

type heldClient struct{ rueidis.Client }

var _ rueidis.Client = (*swapClient)(nil)

// swap makes c pass calls to next and returns the client it held before
// (nil the first time).
func (c *swapClient) swap(next rueidis.Client) rueidis.Client {
	if old := c.cur.Swap(&heldClient{next}); old != nil {
		return old.Client
	}
	return nil
}

func (c *swapClient) held() rueidis.Client { return c.cur.Load().Client }

func (c *swapClient) DoCache(ctx context.Context, cmd rueidis.Cacheable, ttl time.Duration) rueidis.RedisResult {
	if c.priming.Load() {
		if d, ok := ctx.Value(primeTTLKey{}).(time.Duration); ok {
			ttl = d
		}
	}
	return c.held().DoCache(ctx, cmd, ttl)
}

func (c *swapClient) B() rueidis.Builder { return c.held().B() }
func (c *swapClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	return c.held().Do(ctx, cmd)
}
func (c *swapClient) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	return c.held().DoMulti(ctx, multi...)
}
func (c *swapClient) Receive(ctx context.Context, sub rueidis.Completed, fn func(rueidis.PubSubMessage)) error {
	return c.held().Receive(ctx, sub, fn)
}
func (c *swapClient) Close() { c.held().Close() }
func (c *swapClient) DoMultiCache(ctx context.Context, multi ...rueidis.CacheableTTL) []rueidis.RedisResult {
	return c.held().DoMultiCache(ctx, multi...)
}
func (c *swapClient) DoStream(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResultStream {
	return c.held().DoStream(ctx, cmd)
}
func (c *swapClient) DoMultiStream(ctx context.Context, multi ...rueidis.Completed) rueidis.MultiRedisResultStream {
	return c.held().DoMultiStream(ctx, multi...)
}
func (c *swapClient) Dedicated(fn func(rueidis.DedicatedClient) error) error {
	return c.held().Dedicated(fn)
}
func (c *swapClient) Dedicate() (rueidis.DedicatedClient, func()) { return c.held().Dedicate() }
func (c *swapClient) Nodes() map[string]rueidis.Client            { return c.held().Nodes() }
func (c *swapClient) Mode() rueidis.ClientMode                    { return c.held().Mode() }

// TestSessionsRedis_Prime checks what the sweep's Redis cases rest on, on
// 64 sessions: the sessions are registered (every call succeeds), a call
// whose answer prime cached makes no round trip, one whose answer it did
// not cache makes one, round trips are counted per call, and prime's
// remaining lives are what the store keeps (about half of the answers
// primed over a TTL of 1 s have expired half a second later; over the
// store's default of 5 s, only about a tenth would have).
func TestSessionsRedis_Prime(t *testing.T) {
	const n = 64
	const c = "steady-redis-ttl30s"
	sw := newSweep(t, mustKeys(t)["HS256"], n)
	rc := sw.redisCaseOf(t, c)
	d := sw.client(c)
	if rc.cacheBytes <= 0 {
		t.Logf("csc-B/session measured %v on %d sessions (noise at this size)", rc.cacheBytes, n)
	}
	callAll := func(d demov1.DemoServiceClient) int64 {
		t.Helper()
		before := sw.redis.mustCommands(t).roundTrips()
		for i := range n {
			if err := sw.call(d, i); err != nil {
				t.Fatal(err)
			}
		}
		return sw.redis.mustCommands(t).roundTrips() - before
	}
	// An interval of zero: every answer cached, with a remaining life
	// uniform over 30 s; the calls take well under a second, in which about
	// one in 30 expires.
	if err := rc.prime(t, sw.sids, 0); err != nil {
		t.Fatal(err)
	}
	if got := callAll(d); got > n/4 {
		t.Errorf("after priming every session: %d round trips for %d calls, want at most %d", got, n, n/4)
	}
	// An interval of ten years: nothing cached, a round trip per call.
	if err := rc.prime(t, sw.sids, 10*365*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := callAll(d); got != n {
		t.Errorf("after priming no session: %d round trips for %d calls, want %d", got, n, n)
	}
	// The same calls again: answered from the cache, fetched a moment ago.
	if got := callAll(d); got != 0 {
		t.Errorf("calling again: %d round trips for %d calls, want 0", got, n)
	}

	// A TTL of 1 s: every answer primed with a remaining life uniform
	// over [0, 1 s); half a second later about half have expired (fewer
	// than 8 or more than 56 of 64 has a chance below 1e-9).
	rc = sw.redisCaseOf(t, "steady-redis-ttl1s")
	d = sw.client("steady-redis-ttl1s")
	if err := rc.prime(t, sw.sids, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := callAll(d); got < n/8 || got > n-n/8 {
		t.Errorf("half a TTL after priming every session: %d round trips for %d calls, want about %d", got, n, n/2)
	}
}
