package redisstore

import (
	"strings"
	"time"
)

// DefaultCacheTTL is how long IsRevoked may answer from the client-side
// cache without asking Redis again, unless [WithCacheTTL] says otherwise.
// It bounds the staleness of a revocation whose invalidation was lost
// (normally a revocation is seen within milliseconds, by Redis's
// invalidation), and it sets how often a session asks Redis: a session
// that calls every I makes a round trip on a share of about I/(I+T) of its
// calls (measured by the sessions sweep, bench/RESULTS.md). At 1 s, a
// session calling every second asked Redis on half its calls; 5 s cuts
// that share 2-4 times for sessions calling every 0.5-2 s and keeps the
// bound on a lost invalidation in single-digit seconds.
const DefaultCacheTTL = 5 * time.Second

// DefaultTimeout bounds every store operation, unless [WithTimeout] says
// otherwise. A healthy Redis answers each of the store's one-key scripts in
// well under a millisecond, and a reconnect or a Cluster redirect adds a
// few; one second leaves three orders of magnitude for a loaded server,
// yet turns a Redis that is down or hung into codes.Unavailable within a
// second. Without a bound, a call waits out rueidis's read retries (about
// four seconds) with Redis down, and with Redis hung as long as it hangs
// (each new connection's handshake waits for the client's write timeout,
// ten seconds, and reads are retried). A replica stops answering from a
// hung Redis's cache within [DefaultCacheTTL] plus this timeout at worst.
const DefaultTimeout = time.Second

// DefaultRevokeSettle is how long a revocation waits after Redis applied
// it, unless [WithRevokeSettle] says otherwise. Redis sends the other
// replicas' invalidations at the instant it applies a revocation, but
// each replica applies its own when its connection's reader next runs:
// measured on loopback under load (TestRevocationPropagation), 0.1 to
// 0.3 ms at the median and up to about 10 ms at the 99th percentile.
// Waiting 20 ms makes "a call that starts after Revoke returned is
// refused, on every replica" hold but for a replica that is slower than
// that to read its connection; a logout is rare, and 20 ms is invisible
// in it.
const DefaultRevokeSettle = 20 * time.Millisecond

// DefaultKeyPrefix starts the name of every key the store writes, unless
// [WithKeyPrefix] says otherwise.
const DefaultKeyPrefix = "slidejwt"

// An Option configures a [Store].
type Option func(*options)

type options struct {
	cacheTTL    time.Duration
	timeout     time.Duration
	keyPrefix   string
	replicaAcks int
	settle      time.Duration
}

func defaultOptions() options {
	return options{cacheTTL: DefaultCacheTTL, timeout: DefaultTimeout, keyPrefix: DefaultKeyPrefix, settle: DefaultRevokeSettle}
}

// WithCacheTTL sets how long IsRevoked may answer a session's liveness from
// the client-side cache (default [DefaultCacheTTL]). Redis invalidates an
// entry as soon as the session changes; the TTL bounds the staleness when
// an invalidation is lost. A TTL of zero or less keeps the default.
func WithCacheTTL(ttl time.Duration) Option {
	return func(o *options) {
		if ttl > 0 {
			o.cacheTTL = ttl
		}
	}
}

// WithTimeout bounds each call of a store method (default
// [DefaultTimeout]): when Redis does not answer within d, the call returns
// an error (IsRevoked with revoked = true), and the server fails the RPC
// with codes.Unavailable. The call's own context still applies when it
// ends sooner. A call that timed out may still take effect if Redis
// answers later (see the package doc). A timeout of zero or less keeps the
// default: there is no unbounded mode, since a call stuck on a hung Redis
// holds its RPC until the client gives up.
func WithTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	}
}

// WithKeyPrefix sets the first part of every key the store writes
// (default [DefaultKeyPrefix]), for two deployments that share one Redis.
// The prefix must not contain '{' or '}', which would move the Cluster
// hash tag; such a prefix keeps the default.
func WithKeyPrefix(prefix string) Option {
	return func(o *options) {
		if prefix != "" && !strings.ContainsAny(prefix, "{}") {
			o.keyPrefix = prefix
		}
	}
}

// WithReplicaAcks makes revocations survive a failover: Revoke, and a
// Rotate whose outcome is Reused (which revokes the session), return
// success only once at least n replicas of the master that took the write
// acknowledged it (Redis WAIT, sent after the script in the same round
// trip, on the same connection). When fewer acknowledge within the store's
// timeout ([WithTimeout]) they return an error wrapping [ErrNotReplicated],
// and the server answers codes.Unavailable: the master holds the
// revocation, and the revocation should be retried. Create and the other
// outcomes of Rotate do not wait: losing them logs a session out and
// revives none.
//
// The default, 0, waits for no replica, which a standalone Redis (it has
// none) needs: a revocation then survives only a failover to a replica
// that had received it. Set n to the number of replicas of each master,
// so that whichever a failover promotes holds every acknowledged
// revocation; 1 is enough under Sentinel when the replicas have equal
// replica-priority. A master with fewer than n replicas connected fails
// every revocation. The package doc's Replication section says exactly
// what is guaranteed. n of zero or less keeps the default.
func WithReplicaAcks(n int) Option {
	return func(o *options) {
		o.replicaAcks = max(n, 0)
	}
}

// WithRevokeSettle sets how long Revoke, and a Rotate that found reuse,
// wait after Redis applied the revocation before they return (default
// [DefaultRevokeSettle]), so that the other replicas have applied Redis's
// invalidation of their cached answer by then. Zero returns at once: the
// other replicas then refuse the session within the invalidation's
// delivery time instead (see the package doc). A negative d keeps the
// default. The wait ends early, without an error, when the call's context
// ends: the revocation stands either way.
func WithRevokeSettle(d time.Duration) Option {
	return func(o *options) {
		if d >= 0 {
			o.settle = d
		}
	}
}
