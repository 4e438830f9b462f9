package redisstore

import (
	"strings"
	"time"
)

// DefaultCacheTTL is how long IsRevoked may answer from the client-side
// cache without asking Redis again, unless [WithCacheTTL] says otherwise.
// It bounds the staleness of a revocation whose invalidation was lost.
const DefaultCacheTTL = time.Second

// DefaultKeyPrefix starts the name of every key the store writes, unless
// [WithKeyPrefix] says otherwise.
const DefaultKeyPrefix = "slidejwt"

// An Option configures a [Store].
type Option func(*options)

type options struct {
	cacheTTL  time.Duration
	keyPrefix string
}

func defaultOptions() options {
	return options{cacheTTL: DefaultCacheTTL, keyPrefix: DefaultKeyPrefix}
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
