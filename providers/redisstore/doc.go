// Package redisstore is a [store.SessionStore] kept in Redis 7 or Valkey,
// shared by every replica of a slidejwt server.
//
// It lives in a module of its own, so that the core module's go.mod never
// requires a Redis client.
//
//	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
//	if err != nil { ... }
//	sessions := redisstore.New(client)
//	srv, err := interceptor.NewServer(keys, interceptor.WithSessionStore(sessions))
//
// # One round trip, atomically
//
// Create, Rotate and Revoke are each one Lua script (EVALSHA, falling back
// to EVAL once after a Redis restart), so the check and the write of a
// rotation cannot interleave with another replica's: two replicas that
// rotate the same refresh token at the same instant mint exactly one
// successor.
//
// # Keys
//
// A session is one hash, "slidejwt:{<session id>}:s" (the prefix is
// [WithKeyPrefix]). The braces are a Redis Cluster hash tag: every key of a
// session, now and in later versions, lives in one hash slot. The hash
// holds the digests of the current and previous refresh tokens, the sealed
// successor and the end of its grace period, the revoked mark and the
// keep-until time. It never holds a bearer token.
//
// # Time
//
// Redis's clock decides nothing. Every time compared comes from the server
// as Unix milliseconds: times are truncated to the millisecond, so the
// boundaries (grace end, keep-until) resolve to 1 ms, not 1 ns as in
// [github.com/slidejwt/slidejwt/interceptor/memstore]. Redis's clock only
// removes records: each hash expires by itself (PEXPIREAT) at the
// keep-until time the server gave, so the state is bounded without a
// sweeper. Keep Redis's clock within the leeway of the servers' (NTP).
//
// # Revocation from memory
//
// IsRevoked, asked on every call, reads the session's hash through the
// client's server-assisted client-side cache (RESP3 client tracking): in
// steady state it is answered from memory, and Redis itself tells the
// client to drop the entry when the session's hash changes (a revocation,
// a rotation, a flush). rueidis drops the whole cache of a connection when
// that connection is lost, so a missed invalidation cannot leave a stale
// answer behind. An entry also expires after the cache TTL
// ([WithCacheTTL], default [DefaultCacheTTL]): that is the documented
// bound on how long a replica may still let a revoked session through,
// should an invalidation be lost without the connection dropping, and on
// how long cached answers may still come after Redis became unreachable
// (a closed connection is seen at once; a silent network partition only
// when the client's next write or ping fails). Normally a revocation is seen within the time an invalidation message
// takes to arrive.
//
// # Failing closed
//
// Every method returns an error when Redis cannot answer, and the server
// then fails the call with codes.Unavailable: nothing is let through
// because a lookup failed. The store is an allow-list: a session Redis does
// not know (after a FLUSHALL, a restart without persistence, a failover to
// a replica that never received it) is refused, so lost data logs sessions
// out and never revives a revoked one. The one exception is a revocation
// lost on its own: Redis replicates asynchronously, so a failover right
// after a Revoke, to a replica that has the session but not yet the
// revocation, makes the session live again.
//
// Every call is bounded by the store's timeout ([WithTimeout], default
// [DefaultTimeout]: one second), or by the call's context when that ends
// sooner: with Redis killed, or hung (a stopped process, a silent
// partition) so that nothing answers, each method returns an error within
// the timeout, IsRevoked with revoked = true, and the RPC fails with
// codes.Unavailable. Without the bound a call would wait out rueidis's
// read retries (about four seconds) or, on a hung Redis, as long as it
// hangs. IsRevoked may still answer from the cache for up to the cache TTL
// after Redis stopped answering (see above): for a hung Redis that is
// still its last word, but across a silent partition that only this
// replica suffers, a revocation made meanwhile by another replica is seen
// when that TTL ends. When Redis answers again the same store works
// again, without a restart of the replicas.
//
// A call that timed out may still take effect, if Redis received it and
// answers late (a paused server that resumes): a Revoke then revokes, a
// Create records a session nobody holds (it expires at its keep-until),
// and a Rotate whose answer was lost makes the presented refresh token the
// previous one, which the client may present again within the grace period
// and get the same successor; after the grace period that is reuse, and
// revokes the session.
package redisstore
