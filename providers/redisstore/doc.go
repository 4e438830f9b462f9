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
// successor. With [WithReplicaAcks], a revocation's script is followed by
// WAIT in the same round trip (see Replication).
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
// # Memory
//
// As measured by TestMemoryPerSession on Redis 7.0.15 (64-bit, jemalloc):
// a session's hash takes 152 bytes (MEMORY USAGE) after login, and 1,296
// bytes once a refresh stored its sealed successor, 700 bytes with ES256
// tokens (more with RSA): a value over 64 bytes turns the hash from a
// listpack into a hash table. Over 10,000 sessions each refreshed once,
// used_memory grows by 1,392 bytes per session, key, expiry and
// dictionaries included, plus about 80 bytes per session for Redis's
// tracking table for each replica whose cache holds it. A million
// sessions with three replicas thus take about 1.6 GB.
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
// when the client's next write or ping fails). Normally a revocation is
// seen within the time an invalidation message takes to arrive.
//
// The TTL also sets how often a session asks Redis at all: an entry is
// fetched, lives the TTL, and the next call after that fetches it again.
// A session calling every I makes a round trip on about I/(I+TTL) of its
// calls, which the sessions sweep measures (bench/RESULTS.md): none while
// it calls often, at most one per TTL however it calls. The cached entry
// costs about 740 bytes per session in each replica's memory (rueidis
// drops an expired one only when the session is asked again).
//
// TestRevocationPropagation measures that time: from RevokeSession
// returning on one replica to the first rejection on another (two
// interceptor.Servers with a client each, one redis-server 7.0.15 on
// loopback, 1,000 sessions per figure, on a two-core machine shared with
// other builds, load 2 to 6). B's IsRevoked said true after p50 0.06 to
// 0.13 ms, p99 3 to 17 ms; a real call on B was rejected after p50 0.2 to
// 0.3 ms, p99 3 to 12 ms, the call included. The tail follows the
// machine's load (scheduling), not Redis. Those figures are without the
// settle (WithRevokeSettle(0)): the invalidation leaves Redis with A's
// reply, so B would still let calls through for that time after A's
// Revoke returned. Reproduce with
//
//	go test -run TestRevocationPropagation -count=1 -v ./providers/redisstore/
//
// So Revoke, and a Rotate that found reuse, wait [DefaultRevokeSettle]
// (20 ms; [WithRevokeSettle]) after Redis applied the revocation before
// they return: a call that starts after Revoke returned is then refused
// on every replica, unless that replica's reader was held up longer than
// the settle. TestRevokeSettle checks it: of 200 first calls, on the other
// replica and on the revoking one, right after Revoke returned, it allows
// 2 % to be let through on a loaded machine, and saw none in its runs.
//
// # Topologies
//
// The store works through any rueidis client: standalone, Sentinel
// (ClientOption.Sentinel) or Cluster (rueidis detects it from
// InitAddress). Its tests start real servers (internal/redistest) and run
// on Redis 7.0.15, Debian 12's:
//
//   - standalone: the whole contract suite (TestRedis);
//   - a Cluster of three masters: every key of a session hashes to its id's
//     slot, on the master that owns it; random session ids spread over all
//     three; rotation, concurrent rotation, replay, reuse, revocation and
//     invalidation work across the cluster (TestCluster);
//   - Sentinel with one replica: rotation, revocation and invalidation
//     through the Sentinel client, and a SENTINEL FAILOVER after which the
//     store follows the new master, the live session stays live and the
//     revoked one stays revoked, also while the failover runs
//     (TestSentinel).
//
// Valkey is tested only where it is installed: TestValkey runs the same
// contract suite on valkey-server when it is on PATH, and is skipped
// otherwise, also under CI, since Debian 12 has no Valkey package.
//
// A failover loses the writes its new master had not received; see
// Replication for which of them matter and how [WithReplicaAcks] keeps
// revocations. TestSentinel's failover is to a replica in sync;
// TestReplicaAcks_Failover fails over to a lagging one.
//
// # Replication
//
// Redis replicates asynchronously: the master answers a write before its
// replicas have it, and a failover to a replica that had not received it
// loses it. The store is an allow-list, so most lost writes only log
// sessions out:
//
//   - a lost Create: the session is unknown to the new master, and
//     refused;
//   - a lost rotation (outcome OK): the record is back in a state it
//     had. The refresh token the client just received is unknown to it,
//     so the client's next refresh is reuse, which revokes the session.
//     The token the rotation retired is current again, which helps only
//     whoever presents it first, as it could before the rotation; when the
//     other holder presents its token, that is reuse, and the session is
//     revoked.
//
// A lost revocation is different: the session is live again on the new
// master. Without [WithReplicaAcks] that can happen to a Revoke, and to a
// Rotate whose outcome is Reused, that a failover follows before the
// replica it promotes received them (TestReplicaAcks_Failover shows it,
// with the replica's link held back). With WithReplicaAcks(n), n >= 1:
//
//   - Revoke returns nil, and Rotate returns Reused, only once the
//     revocation is on the master that ran the script and at least n of
//     its replicas acknowledged receiving it. The store sends WAIT n after
//     the script on the same connection, pipelined: Revoke stays one round
//     trip, plus the time the replicas take to acknowledge. A Rotate that
//     finds reuse then writes the revocation again with a WAIT, a second
//     round trip (WAIT counts a connection's last write, and a reuse is
//     known only from the script's answer). A failover to one of those
//     replicas, or to any replica with a later replication offset, keeps
//     the revocation.
//   - When fewer replicas acknowledge within the store's timeout, the
//     method returns an error wrapping [ErrNotReplicated] after that
//     timeout, and the server answers codes.Unavailable. The master holds
//     the revocation, so the session is refused already, but a failover
//     before the replicas catch up would lose it: retry the revocation
//     until it succeeds (it is idempotent). Any other error leaves open
//     whether the master received the revocation: retry too. A client of
//     the TokenService's Revoke should therefore retry on UNAVAILABLE. A
//     reuse has nobody to retry it (whoever presented the retired token
//     may be the thief, and gets UNAVAILABLE instead of SESSION_REVOKED):
//     its revocation reaches the replicas only as they catch up.
//
// Create and the other outcomes of Rotate never wait, so logins and
// refreshes stay fast, and available while a replica is down. Checking a
// session (IsRevoked) is unchanged.
//
// Whether n is enough depends on which replica a failover promotes.
// Sentinel promotes, among the replicas it considers fit, the one with the
// best replica-priority, then the one with the largest replication offset
// it last saw. With equal priorities, n = 1 thus protects a Sentinel
// failover, unless the replica that acknowledged is one Sentinel rules out
// (disconnected for too long, priority 0). n equal to the number of
// replicas of each master protects against any choice: a manual
// REPLICAOF NO ONE, a Cluster replica's election, unequal priorities. Its
// price: while one replica is down, every revocation fails (fail closed)
// until it is back or n is lowered.
//
// The default is 0: no waiting, as before this option. The store cannot
// know how many replicas a deployment has. A standalone Redis has none,
// and any n >= 1 would fail every revocation there (the example server,
// a development setup). Waiting for the replicas connected at the time
// instead would wait for none exactly when one is cut off, which is when
// a failover is likeliest, and would cost an INFO per revocation. So the
// deployment that has replicas says how many to wait for.
//
// What the acknowledgment does not give (as Redis says, WAIT does not
// make Redis strongly consistent): it is of the replica's memory, not of
// its disk, so a replica that acknowledged and then restarts without
// persistence loses the revocation; a failover that promotes a replica
// that did not acknowledge and is behind loses it; a revocation that
// failed and is never retried may be lost.
//
// Each revocation that waits holds a connection of rueidis's blocking
// pool (ClientOption.BlockingPoolSize) for its round trip, never the
// shared pipelined connection, which a WAIT would stall. In a Cluster the
// script and WAIT go on a dedicated connection to the master of the
// session's slot, so that WAIT counts that master's replicas for that
// write (TestReplicaAcks_Cluster); a MOVED or ASK during a resharding is
// returned as an error to retry rather than followed, since following it
// would leave WAIT on the node that redirected (an ASK repeats until the
// slot's migration ends). WAIT must be allowed to
// the client's ACL user. WAIT's own timeout is the time left less a margin
// (a quarter, at least 200 ms), for getting a connection and for Redis to
// notice the timeout at its next tick (every 100 ms at the default hz 10),
// so that Redis answers with the count before the store gives up: with
// the default timeout, a revocation that too few replicas acknowledge
// fails after about 750 ms.
//
// On loopback, with one replica on a two-core machine under other load,
// BenchmarkRevoke measured a Revoke at about 50 to 100 µs without waiting
// and 130 to 180 µs with WithReplicaAcks(1); across a network, add one
// round trip between the master and the replica.
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
// after a revocation, to a replica that has the session but not yet the
// revocation, makes the session live again. [WithReplicaAcks] closes it
// for every revocation that returned success (see Replication).
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
