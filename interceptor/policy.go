package interceptor

import (
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Defaults of the session model.
const (
	// DefaultTTL is the idle window: a token expires this long after it was
	// minted unless activity renews it.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxLifetime is the absolute session lifetime counted from
	// login (auth_time). No renewal extends a session past it.
	DefaultMaxLifetime = 7 * 24 * time.Hour
	// DefaultLeeway is the clock-skew allowance applied to exp, iat and the
	// session's absolute end.
	DefaultLeeway = 30 * time.Second
	// DefaultMaxTokenSize bounds the length of a presented token before it
	// is parsed, and of every token this package mints.
	DefaultMaxTokenSize = 8 << 10
	// DefaultCacheSize bounds the verified-token cache and the renewal
	// de-duplication (see [WithCacheSize]).
	DefaultCacheSize = 10000
	// DefaultRefreshTTL is the idle lifetime of a refresh token.
	DefaultRefreshTTL = 7 * 24 * time.Hour
	// DefaultRefreshGrace is how long a retired refresh token still gets
	// its successor (a client that lost the response retries).
	DefaultRefreshGrace = 30 * time.Second
	// DefaultRenewalHeader is the response metadata key that carries a
	// renewed token.
	DefaultRenewalHeader = "renewed-token"
)

// Policy is the renewal policy. A zero field takes its default: TTL
// [DefaultTTL], MaxLifetime [DefaultMaxLifetime], RenewBefore TTL/2.
//
// A token is renewed when its remaining lifetime (exp − now) is below
// RenewBefore. The renewed token expires at min(now + TTL, auth_time +
// MaxLifetime), and is sent only if that is later than the presented
// token's exp. RenewBefore = TTL renews on every request; a small
// RenewBefore renews only near expiry, which mints fewer tokens.
type Policy struct {
	TTL         time.Duration
	MaxLifetime time.Duration
	RenewBefore time.Duration
}

// withDefaults fills zero fields and checks the result.
func (p Policy) withDefaults() (Policy, error) {
	if p.TTL < 0 || p.MaxLifetime < 0 || p.RenewBefore < 0 {
		return p, fmt.Errorf("%w: durations must not be negative", ErrInvalidPolicy)
	}
	if p.TTL == 0 {
		p.TTL = DefaultTTL
	}
	if p.MaxLifetime == 0 {
		p.MaxLifetime = DefaultMaxLifetime
	}
	if p.RenewBefore == 0 {
		p.RenewBefore = p.TTL / 2
	}
	switch {
	case p.TTL < time.Second:
		return p, fmt.Errorf("%w: TTL %v is below the one-second resolution of JWT times", ErrInvalidPolicy, p.TTL)
	case p.MaxLifetime < p.TTL:
		return p, fmt.Errorf("%w: MaxLifetime %v is shorter than TTL %v", ErrInvalidPolicy, p.MaxLifetime, p.TTL)
	case p.RenewBefore > p.TTL:
		return p, fmt.Errorf("%w: RenewBefore %v is longer than TTL %v", ErrInvalidPolicy, p.RenewBefore, p.TTL)
	}
	return p, nil
}

// Decision is the outcome of [Policy.Decide].
type Decision struct {
	// Renew is true when a renewed token should be minted and sent.
	Renew bool
	// Expiry is the renewed token's exp; zero unless Renew.
	Expiry time.Time
}

// Decide is the renewal decision for a valid token with the given exp and
// auth_time, at time now. It is a pure function; the caller has already
// checked that the token is valid at now. p must have its defaults filled
// (as [Server] does); a zero RenewBefore never renews. No renewal is due
// when the new expiry would not be later than both exp and now, as happens
// at the cap within the leeway.
//
// Times are compared at the resolution of JWT NumericDate (one second):
// the new expiry is truncated to it before it is compared with exp.
func (p Policy) Decide(now, exp, authTime time.Time) Decision {
	if p.RenewBefore <= 0 || exp.Sub(now) >= p.RenewBefore {
		return Decision{}
	}
	next := now.Add(p.TTL)
	if end := p.SessionEnd(authTime); next.After(end) {
		next = end
	}
	next = next.Truncate(jwt.TimePrecision)
	if !next.After(exp) || !next.After(now) {
		return Decision{}
	}
	return Decision{Renew: true, Expiry: next}
}

// SessionEnd is the absolute end of a session that began at authTime.
func (p Policy) SessionEnd(authTime time.Time) time.Time {
	return authTime.Add(p.MaxLifetime)
}
