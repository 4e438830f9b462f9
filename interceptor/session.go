package interceptor

import (
	"context"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// A SessionOption configures one session at [Server.StartSession].
type SessionOption interface{ applySession(*sessionConfig) }

type sessionOptionFunc func(*sessionConfig)

func (f sessionOptionFunc) applySession(c *sessionConfig) { f(c) }

type sessionConfig struct {
	maxLifetime time.Duration // 0: the policy's
	// bind, if set, returns the session's cnf claim from the context of
	// StartSession (see binding.go); nil: not bound.
	bind func(ctx context.Context) (*Confirmation, error)
}

// WithMaxLifetime gives the session its own maximum lifetime d, shorter
// than the server's [Policy].MaxLifetime: no token of the session expires
// after auth_time + d, no renewal or refresh extends it, and its open
// streams end then (plus the leeway). The end travels in every token of
// the session as the session_exp claim, under the signature, so that
// every replica and every renewal honours it, and a client cannot extend
// it. A service identity ([NewServiceHolder]) that logs in again by
// itself needs no week-long session, for example.
//
// d must be at least one second (the resolution of JWT times) and not
// longer than the policy's MaxLifetime: [Server.StartSession] fails with
// [ErrInvalidOption] otherwise. A d equal to MaxLifetime changes nothing
// and adds no claim. Default: the policy's MaxLifetime.
func WithMaxLifetime(d time.Duration) SessionOption {
	return sessionOptionFunc(func(c *sessionConfig) { c.maxLifetime = d })
}

// sessionEnd returns the session_exp claim of a session that begins at
// authTime under policy p, or nil when the policy's end applies.
func (c *sessionConfig) sessionEnd(p Policy, authTime time.Time) (*jwt.NumericDate, error) {
	switch d := c.maxLifetime; {
	case d == 0:
		return nil, nil
	case d < time.Second:
		return nil, fmt.Errorf("%w: session max lifetime %v is below one second", ErrInvalidOption, d)
	case d > p.MaxLifetime:
		return nil, fmt.Errorf("%w: session max lifetime %v is longer than the policy's %v", ErrInvalidOption, d, p.MaxLifetime)
	case d == p.MaxLifetime:
		return nil, nil
	default:
		return jwt.NewNumericDate(authTime.Add(d).Truncate(jwt.TimePrecision)), nil
	}
}

// policyFor returns the server's policy for the session of c, whose own
// end (session_exp), if any, shortens it.
func (s *Server) policyFor(c *verifiedClaims) Policy { return sessionPolicy(s.cfg.policy, c) }

// sessionPolicy returns p for the session of c, as [Server.policyFor] does.
func sessionPolicy(p Policy, c *verifiedClaims) Policy {
	return p.ForSession(c.authTime(), c.sessionExp())
}

// claimsPolicy returns p for the session of c, as [Server.policyFor] does.
func claimsPolicy(p Policy, c *Claims) Policy {
	if c.SessionExpiry == nil || c.AuthTime == nil {
		return p
	}
	return p.ForSession(c.AuthTime.Time, c.SessionExpiry.Time)
}
