package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/internal/redistest"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

// The cases with the Redis session store (providers/redisstore). They run
// in BenchmarkUnary only, each against a redis-server of its own that the
// case starts on a free loopback port (internal/redistest). Without
// redis-server on PATH they are skipped, and the other cases run; with the
// CI environment variable set they fail instead.
//
//   - steady-redis: steady with the Redis store attached, so that every
//     call also asks the store whether the session is live. The answer
//     comes from rueidis's client-side cache, not from Redis.
//   - refresh-rpc-redis: refresh-rpc with the Redis store: the refresh
//     rotates the refresh token in one script on Redis, and the call after
//     it asks for the session's liveness again (the rotation invalidated
//     the cached answer).
//
// Both report redis-rt/op: the round trips to Redis per call during the
// timed loop, counted by Redis itself (INFO commandstats; see
// commandStats.roundTrips).
//
// steady-redis presents one session, as steady and floor do, so that
// steady-redis ÷ steady is the store's cost alone: that session is called
// far more often than once per cache TTL, the best case for the cache.
// Many sessions, each called less often, are the sessions sweep's Redis
// cases (sessions_redis_test.go), against floor and steady with the same
// n tokens.
const (
	caseSteadyRedis     = "steady-redis"
	caseRefreshRPCRedis = "refresh-rpc-redis"
)

var redisCases = []string{caseSteadyRedis, caseRefreshRPCRedis}

// casesOf returns the cases of family: the Redis cases are unary only.
func casesOf(family string) []string {
	if family == familyUnary {
		return append(cases[:len(cases):len(cases)], redisCases...)
	}
	return cases
}

// fixtureOption changes the rueidis client of a Redis case's store.
type fixtureOption func(*rueidis.ClientOption)

// benchRedis is a Redis case's redis-server and the client that reads its
// statistics.
type benchRedis struct {
	server *redistest.Server
	admin  rueidis.Client // without client-side cache; for INFO (and the sweep's setup)
}

// newRedisStore starts a redis-server for tb and returns it with a store
// on a client of its own (rueidis's defaults, client-side cache on,
// unless an option says otherwise). Everything stops at tb's cleanup.
func newRedisStore(tb testing.TB, opts ...fixtureOption) (*benchRedis, *redisstore.Store) {
	tb.Helper()
	srv := redistest.Start(tb)
	newClient := func(o rueidis.ClientOption) rueidis.Client {
		c, err := rueidis.NewClient(o)
		if err != nil {
			tb.Fatalf("rueidis.NewClient(%s): %v", srv.Addr(), err)
		}
		tb.Cleanup(c.Close)
		return c
	}
	o := rueidis.ClientOption{InitAddress: []string{srv.Addr()}}
	for _, opt := range opts {
		opt(&o)
	}
	client := newClient(o)
	admin := newClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	return &benchRedis{server: srv, admin: admin}, redisstore.New(client)
}

// commandStats is the number of calls of every command Redis has run, by
// lower-case name, INFO left out.
type commandStats map[string]int64

// roundTrips is the number of round trips the store made: with the
// client-side cache on, rueidis sends each cache miss as CLIENT CACHING
// YES, MULTI, PTTL, the lookup and EXEC in one write, and every other
// store operation is one script (EVALSHA, or EVAL after a NOSCRIPT). The
// other commands Redis counts ride in one of those round trips or run
// inside a script. (Without the cache, each lookup is a plain HMGET that
// this does not count.)
func (s commandStats) roundTrips() int64 {
	return s["client|caching"] + s["evalsha"] + s["eval"]
}

// commands reads INFO commandstats.
func (r *benchRedis) commands(ctx context.Context) (commandStats, error) {
	info, err := r.admin.Do(ctx, r.admin.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	stats := commandStats{}
	for line := range strings.Lines(info) {
		// cmdstat_hmget:calls=3,usec=12,usec_per_call=4.00,...
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, rest, ok := strings.Cut(rest, ":calls=")
		if !ok {
			return nil, fmt.Errorf("INFO commandstats: unexpected line %q", line)
		}
		calls, _, _ := strings.Cut(rest, ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("INFO commandstats: unexpected line %q", line)
		}
		if name != "info" {
			stats[name] = n
		}
	}
	return stats, nil
}

// mustCommands is commands, failing tb on an error.
func (r *benchRedis) mustCommands(tb testing.TB) commandStats {
	tb.Helper()
	s, err := r.commands(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestSteadyRedis_LookupsFromCache checks what steady-redis measures: the
// store is asked on every call, and in steady state Redis answers at most
// about once per cache TTL (redisstore.DefaultCacheTTL, which bounds how
// long a cached answer lives); the other answers come from the client's
// memory. Without the client-side cache, the same count shows a lookup on
// Redis for every call, so the first check can fail.
func TestSteadyRedis_LookupsFromCache(t *testing.T) {
	const calls = 300
	keys := mustKeys(t)
	for _, tt := range []struct {
		name  string
		opts  []fixtureOption
		cache bool
	}{
		{"cache", nil, true},
		{"no-cache", []fixtureOption{func(o *rueidis.ClientOption) { o.DisableCache = true }}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			f := newFixture(t, ctx, keys["HS256"], caseSteadyRedis, tt.opts...)
			if err := f.check(familyUnary); err != nil {
				t.Fatal(err)
			}
			before := f.redis.mustCommands(t)
			start := time.Now()
			for range calls {
				if err := f.unary(); err != nil {
					t.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			after := f.redis.mustCommands(t)
			lookups := after["hmget"] - before["hmget"]
			trips := after.roundTrips() - before.roundTrips()
			t.Logf("%d calls in %v: %d lookups on Redis, %d round trips counted", calls, elapsed.Round(time.Millisecond), lookups, trips)
			if !tt.cache {
				if lookups < calls {
					t.Errorf("without the cache: %d lookups on Redis for %d calls, want at least one a call", lookups, calls)
				}
				return
			}
			// One lookup when an entry expires, plus the one in flight at
			// the end, within the elapsed time.
			limit := int64(elapsed/redisstore.DefaultCacheTTL) + 2
			if lookups > limit {
				t.Errorf("%d lookups on Redis for %d calls in %v, want at most %d (one per cache TTL of %v)",
					lookups, calls, elapsed, limit, redisstore.DefaultCacheTTL)
			}
			// Each lookup is a cache miss, one round trip; no script runs.
			if trips != lookups {
				t.Errorf("%d round trips counted for %d lookups, want as many", trips, lookups)
			}
			if limit >= calls/2 {
				t.Errorf("the %d calls took %v: too slow for the count to tell the cache from none", calls, elapsed)
			}
		})
	}
}
