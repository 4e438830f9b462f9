package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// The sessions sweep: BenchmarkSessions/<alg>/<n>/<load>/<case>, n
// distinct live sessions each presenting its own token on unary Echo
// calls. load is the order of the sessions, rr (round-robin) or rand
// (uniformly at random), on one goroutine or, with -par32, on 32
// goroutines sharing one connection. case is floor, middleware-verify,
// steady (a cache of n entries) or steady-default (the default size),
// and, for HS256 in the rand loads only, the Redis cases
// (sessions_redis_test.go).
var (
	sessionCounts = []int{1_000, 10_000, 100_000}
	sessionLoads  = []string{"rr", "rand", "rr-par32", "rand-par32"}
	sessionCases  = []string{caseFloor, caseMiddleware, caseSteady, caseSteadyDefault}
)

// sessionCasesOf returns the cases of alg and load: the Redis cases run in
// the rand loads only (see sessionRedisCases for why), and only for HS256:
// their cache of verified tokens holds every session, so no call verifies
// a signature and the alg changes nothing that the store does; running
// them for every alg would triple the sweep's longest part.
func sessionCasesOf(alg, load string) []string {
	if alg == sessionRedisAlg && isRandLoad(load) {
		return append(sessionCases[:len(sessionCases):len(sessionCases)], sessionRedisCaseNames()...)
	}
	return sessionCases
}

func isRandLoad(load string) bool { return load == "rand" || load == "rand-par32" }

const (
	caseSteadyDefault = "steady-default"
	// sessionGoroutines is the number of goroutines of the -par32 loads.
	sessionGoroutines = 32
	// sessionRedisAlg is the one alg the Redis cases run for.
	sessionRedisAlg = "HS256"
)

// verifications counts the signature verifications of the whole test
// binary: sessionsCountVerify puts a counting wrapper in golang-jwt's
// registry in place of each algorithm's method, which is what the
// parsers of both slidejwt and middleware-verify look up. A case's hit
// rate is 1 − verifications per call during its timed loop.
var verifications atomic.Int64

type countingMethod struct{ jwt.SigningMethod }

func (m countingMethod) Verify(signingString string, sig []byte, key any) error {
	verifications.Add(1)
	return m.SigningMethod.Verify(signingString, sig, key)
}

// sessionsCountVerify installs the counting methods, once, after the keys
// exist (interceptor.NewKey accepts only golang-jwt's own method values).
var sessionsCountVerify = sync.OnceFunc(func() {
	for _, alg := range algs {
		m := jwt.GetSigningMethod(alg)
		jwt.RegisterSigningMethod(alg, func() jwt.SigningMethod { return countingMethod{m} })
	}
})

func BenchmarkSessions(b *testing.B) {
	eachSweepLoad(b, func(b *testing.B, sw *sweep, alg, load string) {
		for _, c := range sessionCasesOf(alg, load) {
			b.Run(c, func(b *testing.B) { sw.run(b, c, load) })
		}
	})
}

// eachSweepLoad runs f as the sub-benchmark alg/n/load for every alg,
// session count n and load of the sweep, with the sweep of alg and n,
// made once for its loads.
func eachSweepLoad(b *testing.B, f func(b *testing.B, sw *sweep, alg, load string)) {
	keys := mustKeys(b)
	sessionsCountVerify()
	for _, alg := range algs {
		b.Run(alg, func(b *testing.B) {
			for _, n := range sessionCounts {
				b.Run(strconv.Itoa(n), func(b *testing.B) {
					sw := newSweep(b, keys[alg], n)
					for _, load := range sessionLoads {
						b.Run(load, func(b *testing.B) { f(b, sw, alg, load) })
					}
				})
			}
		})
	}
}

// sweep is one alg and session count: the sessions' call contexts and
// one server per case, each set up on first use and kept for every load,
// the caches warm.
type sweep struct {
	tb    testing.TB
	k     *algKeys
	ctxs  []context.Context // one per session, carrying its token
	sids  []string          // the sessions' ids, in the order of ctxs
	demos map[string]demov1.DemoServiceClient
	// pos is each case's round-robin position, kept across loads so that
	// round-robin goes on where the last load left off.
	pos map[string]*atomic.Int64
	// lastNs is, by load, the time per call of the case that ran last in
	// it (a first guess of a Redis case's rate; see redisCase.settle).
	lastNs map[string]float64
	// redis is the sweep's redis-server with the sessions registered, and
	// redisCases the Redis cases' stores, both set up on first use.
	redis      *benchRedis
	redisCases map[string]*redisCase
}

func newSweep(tb testing.TB, k *algKeys, n int) *sweep {
	minter, err := interceptor.NewServer(k.set)
	if err != nil {
		tb.Fatal(err)
	}
	sw := &sweep{
		tb: tb, k: k, ctxs: make([]context.Context, n), sids: make([]string, n),
		demos: map[string]demov1.DemoServiceClient{}, pos: map[string]*atomic.Int64{},
		lastNs: map[string]float64{}, redisCases: map[string]*redisCase{},
	}
	for i := range sw.ctxs {
		s, err := minter.StartSession(context.Background(), benchSubject, nil)
		if err != nil {
			tb.Fatal(err)
		}
		sw.ctxs[i] = metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+s.AccessToken))
		sw.sids[i] = s.SessionID
	}
	return sw
}

// client returns case c's client, starting its server and presenting
// every session once (concurrently) on first use.
func (sw *sweep) client(c string) demov1.DemoServiceClient {
	if d, ok := sw.demos[c]; ok {
		return d
	}
	var (
		svc     demoService
		srvOpts []grpc.ServerOption
	)
	ours := func(opts ...interceptor.ServerOption) {
		s, err := interceptor.NewServer(sw.k.set, opts...)
		if err != nil {
			sw.tb.Fatal(err)
		}
		srvOpts = []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor())}
	}
	switch c {
	case caseFloor:
		svc.anonymous = benchSubject
	case caseMiddleware:
		srvOpts = []grpc.ServerOption{grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(middlewareAuth(sw.k)))}
	case caseSteady:
		ours(interceptor.WithCacheSize(len(sw.ctxs)))
	case caseSteadyDefault:
		ours()
	default:
		rc := sw.redisCase(c)
		ours(interceptor.WithCacheSize(len(sw.ctxs)), interceptor.WithSessionStore(rc.store))
	}
	addr := serve(sw.tb, srvOpts, svc, func(*grpc.Server) {})
	d := demov1.NewDemoServiceClient(dial(sw.tb, addr))
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, sessionGoroutines)
	for range sessionGoroutines {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(sw.ctxs); i = int(next.Add(1) - 1) {
				if err := sw.call(d, i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		sw.tb.Fatalf("%s: warming up: %v", c, err)
	}
	sw.demos[c] = d
	sw.pos[c] = new(atomic.Int64)
	return d
}

func (sw *sweep) call(d demov1.DemoServiceClient, i int) error {
	resp, err := d.Echo(sw.ctxs[i], &demov1.EchoRequest{Message: echoMessage})
	if err == nil && resp.GetSubject() != benchSubject {
		err = fmt.Errorf("subject %q, want %q", resp.GetSubject(), benchSubject)
	}
	return err
}

// run is one timed case: Echo calls presenting the sessions in load's
// order. It reports the share of calls that verified no signature.
func (sw *sweep) run(b *testing.B, c, load string) {
	rc := sw.redisCaseOf(b, c) // nil but for a Redis case; skips b without redis-server
	d := sw.client(c)
	if rc != nil {
		rc.settle(b, sw, load)
	}
	b.ReportAllocs()
	before := verifications.Load()
	var trips commandStats
	if rc != nil {
		trips = sw.redis.mustCommands(b)
	}
	b.ResetTimer()
	if load == "rr" || load == "rand" {
		pick := sw.picker(c, load)
		r := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			if err := sw.call(d, pick(r)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.SetParallelism(max(1, sessionGoroutines/runtime.GOMAXPROCS(0)))
		pick := sw.picker(c, load)
		var seed atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(seed.Add(1), 2))
			for pb.Next() {
				if err := sw.call(d, pick(r)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	if b.N > 0 {
		sw.lastNs[load] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	}
	if c != caseFloor && c != caseMiddleware {
		v := verifications.Load() - before
		b.ReportMetric(100*(1-float64(v)/float64(b.N)), "hit%")
	}
	if rc != nil {
		rc.report(b, sw, trips)
	}
}

// picker returns the function that picks the next session of case c in
// load, from a goroutine's own random source. Round-robin goes on from
// the case's position, which the goroutines share.
func (sw *sweep) picker(c, load string) func(*rand.Rand) int {
	n := len(sw.ctxs)
	if isRandLoad(load) {
		return func(r *rand.Rand) int { return r.IntN(n) }
	}
	calls := sw.pos[c]
	return func(*rand.Rand) int { return int((calls.Add(1) - 1) % int64(n)) }
}
