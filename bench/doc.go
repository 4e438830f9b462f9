// Package bench measures what authentication and renewal cost per gRPC
// call, side by side with the alternatives. It holds only
// benchmarks and the test that keeps them honest; run them all with
//
//	bash scripts/bench
//
// which prints a benchstat table, the ratio of every case to the floor, and
// BenchmarkPaired's ratios, on which the targets are judged.
//
// BenchmarkPaired (paired_test.go) times each case with a target (steady,
// steady-otel, steady-redis, steady-jwks, renew; renew-every) against its
// baseline (floor; middleware-verify) call by call in one loop, in
// alternating order, and reports the ratio as x-floor or
// x-middleware-verify: a case and its baseline share every moment of the
// machine's drift, which cases run a second apart do not. floor against
// floor is its control. BenchmarkSessionsPaired does the same for the
// sessions sweep (sessions_paired_test.go): steady against floor, and
// steady-default against middleware-verify.
//
// Every case is a real gRPC call over TCP loopback, with plaintext
// credentials, to demo.v1.DemoService: BenchmarkUnary makes one Echo call,
// and BenchmarkStreamOpen opens Watch(count 1), reads its message and
// reads on to the end of the stream. Both run as
// Benchmark<family>/<alg>/<case>, with alg HS256, ES256 or EdDSA, and case:
//
//   - floor: no auth interceptor; the client still sends the same
//     "authorization: Bearer" header, and the handler answers with the same
//     subject, so that requests and responses are the same size as in the
//     other cases.
//   - middleware-verify: go-grpc-middleware's auth interceptor with a
//     golang-jwt verify on every call, which is what users write today.
//   - steady: slidejwt's interceptors on both sides; the token is valid and
//     no renewal is due.
//   - renew: slidejwt's server interceptors; renewal is due, and the client
//     presents the same token on every call.
//   - renew-every: slidejwt's interceptors on both sides, on one fake clock
//     a second later at every call; renewal is due on every call, and the
//     client presents the token renewed by the call before, so every call
//     verifies a new token and signs its renewal.
//   - refresh-rpc: a TokenService.Refresh round trip before every call,
//     rotating the refresh token, then the call with the new access token.
//     The session store is the in-memory one (memstore).
//
// Two cases put the server in a mesh, behind a signing server that holds
// the private key, publishes its JWKS (Server.JWKSHandler, over TLS from
// httptest) and serves TokenService on a loopback TCP port of its own;
// the server under test only verifies, with a RemoteKeySet that fetched
// the JWKS once at set-up. HMAC has no JWKS, so both are ES256 and EdDSA
// only (HS256 skips them):
//
//   - steady-jwks: steady on the verify-only server. Its target is
//     steady's, 1.10× floor.
//   - renew-delegated: renew-every on the verify-only server, which asks
//     the signing server for every renewal (WithDelegatedRenewal): one
//     TokenService/Renew call per call, the worst case, to compare with
//     renew-every's local renewal. Its delegated-renewal timeout is 10 s
//     rather than 1 s, so that a stall of a loaded machine slows a call
//     rather than failing the loop.
//
// Both fail unless the JWKS was fetched once and the signing server got
// one Renew call per call (renew-delegated) or none (steady-jwks);
// TestMesh_Cases checks the same over more calls.
//
// BenchmarkUnary also runs two cases with the Redis session store
// (providers/redisstore), each against a redis-server of its own started on
// a loopback port (internal/redistest); without redis-server on PATH they
// are skipped and the other cases run (with CI set, they fail):
//
//   - steady-redis: steady with the Redis store attached, so that every
//     call asks whether the session is live; the answer comes from the
//     client-side cache. Its target is the same as steady's, 1.10× floor.
//   - refresh-rpc-redis: refresh-rpc with the Redis store, to compare with
//     refresh-rpc.
//
// Both report redis-rt/op, the round trips to Redis per call, counted by
// Redis (INFO commandstats); TestSteadyRedis_LookupsFromCache checks that
// steady-redis's lookups come from the cache. Like every case of
// BenchmarkUnary, steady-redis presents one session, called some 15,000
// times a second: the best case for the client-side cache, which fetches
// its answer once per cache TTL. What many sessions cost is the sweep's
// Redis cases, below.
//
// BenchmarkSessions/<alg>/<n>/<load>/<case> sweeps n = 1,000, 10,000 and
// 100,000 live sessions, each presenting its own token on Echo calls,
// round-robin (rr) or uniformly at random (rand), on one goroutine or on
// 32 sharing one connection (-par32). Its cases are floor and
// middleware-verify as above, rotating the same tokens, steady (a cache of
// n entries) and steady-default (the default size); the steady cases
// report hit%, the share of calls that verified no signature. For HS256,
// in the rand loads, three more cases attach the Redis store to steady,
// on a redis-server where the n sessions are registered: steady-redis
// (the store's default cache TTL, 5 s), steady-redis-ttl1s and
// steady-redis-ttl30s (redisstore.WithCacheTTL). They report redis-rt/op,
// the per-session call interval (interval-ms: n × the time per call, since
// the sweep calls as fast as it can), the TTL, and the memory the
// client-side cache holds per session (csc-B/session); before the timed
// loop, the cache is put into the steady state of sessions called at
// random with that interval (sessions_redis_test.go says how and why). It
// runs only when asked for: BENCH=Sessions bash scripts/bench.
//
// The keys are generated once per test binary run.
package bench
