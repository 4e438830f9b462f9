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
	// DefaultStreamCheckInterval is how often an open, silent stream
	// checks that its session is still live (see [WithStreamCheckInterval]).
	DefaultStreamCheckInterval = time.Second
)

// NeverRenew, as [Policy].RenewBefore, turns renewal off: the server never
// sends a renewed token, so a session lasts one TTL from its login or last
// refresh. Any negative RenewBefore means the same. A server whose key set
// cannot sign renews nothing whatever its policy.
const NeverRenew time.Duration = -1

// maxLeeway bounds the leeway: a leeway this large is a configuration
// error, not clock skew.
const maxLeeway = 5 * time.Minute

// Policy is the one authority on session time: every expiry, end and
// retention time of this package is one of its methods, each a pure
// function of its arguments.
//
// A zero field takes its default, as net.Dialer's fields do, so the zero
// Policy is the default policy and a Policy literal means the same thing
// wherever it is used. A negative RenewBefore, Leeway or RefreshGrace
// turns the feature off:
//
//   - TTL: [DefaultTTL]. The idle window: an access token expires this
//     long after it was minted, unless a renewal replaces it.
//   - MaxLifetime: [DefaultMaxLifetime]. The absolute session lifetime,
//     counted from login (auth_time). No token outlives it.
//   - RenewBefore: TTL/2. A token is renewed when its remaining lifetime
//     (exp − now) is below it: TTL renews on every call, a small value
//     only near expiry (fewer tokens minted); [NeverRenew] (or any
//     negative value) never renews.
//   - RefreshTTL: [DefaultRefreshTTL]. The idle lifetime of a refresh
//     token; it never outlives the session either.
//   - RefreshGrace: [DefaultRefreshGrace], or RefreshTTL if shorter. How
//     long a retired refresh token still gets its successor; negative
//     treats any reuse as theft.
//   - Leeway: [DefaultLeeway], at most 5 minutes. The clock-skew allowance
//     on exp, iat and the session's end; negative allows none.
type Policy struct {
	TTL          time.Duration
	MaxLifetime  time.Duration
	RenewBefore  time.Duration
	RefreshTTL   time.Duration
	RefreshGrace time.Duration
	Leeway       time.Duration
}

// norm returns p with its zero fields set to their defaults. Negative
// switches stay negative, so norm is idempotent; the methods read them
// through leeway and grace, which treat them as zero.
func (p Policy) norm() Policy {
	if p.TTL == 0 {
		p.TTL = DefaultTTL
	}
	if p.MaxLifetime == 0 {
		p.MaxLifetime = DefaultMaxLifetime
	}
	if p.RenewBefore == 0 {
		p.RenewBefore = p.TTL / 2
	}
	if p.RefreshTTL == 0 {
		p.RefreshTTL = DefaultRefreshTTL
	}
	if p.RefreshGrace == 0 {
		p.RefreshGrace = min(DefaultRefreshGrace, p.RefreshTTL)
	}
	if p.Leeway == 0 {
		p.Leeway = DefaultLeeway
	}
	return p
}

// leeway is the clock-skew allowance of a normalized policy.
func (p Policy) leeway() time.Duration { return max(0, p.Leeway) }

// grace is the refresh grace period of a normalized policy.
func (p Policy) grace() time.Duration { return max(0, p.RefreshGrace) }

// Validate reports whether p, with its defaults, is a policy a server can
// run: it fails with [ErrInvalidPolicy] for a TTL or refresh TTL below the
// one-second resolution of JWT times, a MaxLifetime shorter than the TTL,
// a RenewBefore longer than the TTL, a RefreshGrace longer than the
// refresh TTL, or a Leeway over 5 minutes.
func (p Policy) Validate() error {
	if p.TTL < 0 || p.MaxLifetime < 0 || p.RefreshTTL < 0 {
		return fmt.Errorf("%w: TTL, MaxLifetime and RefreshTTL must not be negative", ErrInvalidPolicy)
	}
	n := p.norm()
	switch {
	case n.TTL < time.Second:
		return fmt.Errorf("%w: TTL %v is below the one-second resolution of JWT times", ErrInvalidPolicy, n.TTL)
	case n.MaxLifetime < n.TTL:
		return fmt.Errorf("%w: MaxLifetime %v is shorter than TTL %v", ErrInvalidPolicy, n.MaxLifetime, n.TTL)
	case n.RenewBefore > n.TTL:
		return fmt.Errorf("%w: RenewBefore %v is longer than TTL %v", ErrInvalidPolicy, n.RenewBefore, n.TTL)
	case n.RefreshTTL < time.Second:
		return fmt.Errorf("%w: RefreshTTL %v is below one second", ErrInvalidPolicy, n.RefreshTTL)
	case n.grace() > n.RefreshTTL:
		return fmt.Errorf("%w: RefreshGrace %v is longer than RefreshTTL %v", ErrInvalidPolicy, n.RefreshGrace, n.RefreshTTL)
	case n.leeway() > maxLeeway:
		return fmt.Errorf("%w: Leeway %v is over %v", ErrInvalidPolicy, n.Leeway, maxLeeway)
	}
	return nil
}

// Effective returns p with every default filled in; a switched-off
// duration stays negative.
func (p Policy) Effective() Policy { return p.norm() }

// Decision is the outcome of [Policy.Decide].
type Decision struct {
	// Renew is true when a renewed token should be minted and sent.
	Renew bool
	// Expiry is the renewed token's exp; zero unless Renew.
	Expiry time.Time
}

// Decide is the renewal decision for a valid token with the given exp and
// auth_time, at time now. The caller has already checked that the token is
// valid at now. No renewal is due when RenewBefore is switched off, or when
// the new expiry would not be later than both exp and now, as happens at
// the session's end within the leeway.
//
// Times are compared at the resolution of JWT NumericDate (one second):
// the new expiry is truncated to it before it is compared with exp.
func (p Policy) Decide(now, exp, authTime time.Time) Decision {
	p = p.norm()
	if p.RenewBefore <= 0 || exp.Sub(now) >= p.RenewBefore {
		return Decision{}
	}
	next := p.AccessExpiry(now, authTime)
	if !next.After(exp) || !next.After(now) {
		return Decision{}
	}
	return Decision{Renew: true, Expiry: next}
}

// SessionEnd is the absolute end of a session that began at authTime:
// no token of the session expires after it.
func (p Policy) SessionEnd(authTime time.Time) time.Time {
	return authTime.Add(p.norm().MaxLifetime)
}

// AcceptUntil is the first instant at which no token of a session that
// began at authTime is accepted any more: its end plus the leeway. An open
// stream of the session ends then too.
func (p Policy) AcceptUntil(authTime time.Time) time.Time {
	p = p.norm()
	return authTime.Add(p.MaxLifetime).Add(p.leeway())
}

// SessionEnded reports whether a session that began at authTime is past
// its end at now, allowing the leeway: true from [Policy.AcceptUntil] on.
func (p Policy) SessionEnded(now, authTime time.Time) bool {
	return !now.Before(p.AcceptUntil(authTime))
}

// KeepUntil is how long a store must keep state about a session that
// began at authTime (its refresh chain, its revocation): as long as any of
// its tokens can be accepted, which is [Policy.AcceptUntil].
func (p Policy) KeepUntil(authTime time.Time) time.Time { return p.AcceptUntil(authTime) }

// AccessExpiry is the exp of an access token minted at now for a session
// that began at authTime: now + TTL, never past the session's end, at JWT
// time resolution.
func (p Policy) AccessExpiry(now, authTime time.Time) time.Time {
	p = p.norm()
	return capAt(now.Add(p.TTL), authTime.Add(p.MaxLifetime))
}

// RefreshExpiry is the exp of a refresh token minted at now for a session
// that began at authTime: now + RefreshTTL, never past the session's end,
// at JWT time resolution.
func (p Policy) RefreshExpiry(now, authTime time.Time) time.Time {
	p = p.norm()
	return capAt(now.Add(p.RefreshTTL), authTime.Add(p.MaxLifetime))
}

// CanRefresh reports whether a refresh at now can extend a session that
// began at authTime: only before its end, with no leeway, since any token
// minted from the end on would expire no later than it was issued.
func (p Policy) CanRefresh(now, authTime time.Time) bool {
	return now.Before(p.SessionEnd(authTime))
}

// GraceUntil is the end of the grace period of a refresh token retired at
// now.
func (p Policy) GraceUntil(now time.Time) time.Time { return now.Add(p.norm().grace()) }

// AcceptExpiryUntil is the first instant at which a token with expiry exp
// is no longer accepted: exp plus the leeway. The verifier applies the same
// rule through golang-jwt; the caches drop an entry then.
func (p Policy) AcceptExpiryUntil(exp time.Time) time.Time { return exp.Add(p.norm().leeway()) }

// ForSession returns p for one session that began at authTime and carries
// its own end (the session_exp claim; zero for none): p with MaxLifetime
// shortened so that the session ends at end, when that is earlier than
// authTime + MaxLifetime. It never lengthens a session: an end at or after
// the policy's is ignored, and an end at or before authTime leaves a
// session that is already over. Every method of the result then applies
// the session's own end. The result is not meant to pass [Policy.Validate]:
// a session may be shorter than the TTL.
func (p Policy) ForSession(authTime, end time.Time) Policy {
	if end.IsZero() {
		return p
	}
	p = p.norm()
	if d := end.Sub(authTime); d < p.MaxLifetime {
		// A zero MaxLifetime would read as the default: a session whose end
		// is not after its start keeps the shortest lifetime there is.
		p.MaxLifetime = max(d, time.Nanosecond)
	}
	return p
}

// capAt returns t, but no later than end, at JWT time resolution.
func capAt(t, end time.Time) time.Time {
	if t.After(end) {
		t = end
	}
	return t.Truncate(jwt.TimePrecision)
}
