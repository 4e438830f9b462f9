package interceptor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are the claims of a session access token.
//
// The registered claims iss, sub, aud, exp, iat and jti come from the
// embedded [jwt.RegisteredClaims]; jti is new for every token. SessionID
// (sid) and AuthTime (auth_time, the OIDC login time) are set at login and
// stay the same across renewals. Fresh is true only on the token minted at
// login. Custom holds the application's own claims as raw JSON; renewals
// copy them byte for byte.
//
// [ClaimsFromContext] hands each caller its own deep copy, so a handler
// may modify the Claims it gets: nothing it does reaches the server's
// verified-token cache, a renewal, or another call.
type Claims struct {
	jwt.RegisteredClaims
	SessionID string           `json:"sid,omitempty"`
	AuthTime  *jwt.NumericDate `json:"auth_time,omitempty"`
	Fresh     bool             `json:"fresh,omitempty"`
	// Custom holds the application's claims, keyed by claim name. It never
	// holds a name from the session model; see [Server.StartSession].
	Custom map[string]json.RawMessage `json:"-"`
}

// reservedClaims are the names the session model owns. A custom claim may
// not use them, and they are never copied into Claims.Custom.
var reservedClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true,
	"jti": true, "sid": true, "auth_time": true, "fresh": true,
}

// isReservedClaim reports whether name is, in any case, a name of the
// session model. encoding/json matches member names case-insensitively
// (with Unicode folding) when it decodes, so a custom "SID" or "ſid" would
// overwrite sid.
func isReservedClaim(name string) bool {
	for r := range reservedClaims {
		// EqualFold uses Unicode simple folding, like encoding/json does
		// ("ſub" matches "sub"), not just ASCII case.
		if strings.EqualFold(name, r) {
			return true
		}
	}
	return false
}

// Validate implements [jwt.ClaimsValidator]: it enforces the claims every
// session token carries. golang-jwt calls it after the signature verified.
func (c *Claims) Validate() error {
	switch {
	case c.Subject == "":
		return errClaimMissing
	case c.ID == "":
		return errClaimMissing
	case c.SessionID == "":
		return errClaimMissing
	case c.IssuedAt == nil || c.AuthTime == nil || c.ExpiresAt == nil:
		return errClaimMissing
	case c.ExpiresAt.Unix() <= 0 || c.AuthTime.Unix() <= 0:
		return errClaimRange
	case c.AuthTime.After(c.IssuedAt.Time):
		return errClaimRange
	case !c.ExpiresAt.After(c.IssuedAt.Time):
		return errClaimRange
	}
	return nil
}

var (
	errDateNotNumber = errors.New("a date claim is not a JSON number")
	errShadowClaim   = errors.New("a claim name differs from a session claim only in case")
	errClaimMissing  = errors.New("a session claim is missing")
	errClaimRange    = errors.New("a session claim is out of range")
	errNotObject     = errors.New("the claims are not a JSON object")
	errClaimType     = errors.New("a session claim has the wrong JSON type")
)

// Lookup decodes the custom claim name into v. It reports false, with a
// nil error, when the token has no such claim.
//
// Lookup on a nil *Claims reports false, so that it is safe on the result
// of [ClaimsFromContext] in an exempt method. The error names the claim
// and the target type, never the claim's value.
func (c *Claims) Lookup(name string, v any) (bool, error) {
	if c == nil {
		return false, nil
	}
	raw, ok := c.Custom[name]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("slidejwt: custom claim %q does not decode into %T", name, v)
	}
	return true, nil
}

type claimsKey struct{}

// ClaimsFromContext returns the verified claims that the server interceptor
// put into the handler's context. It reports false in an exempt method or
// outside an authenticated call.
//
// The result is a deep copy, new on every call, which the caller owns and
// may modify; the interceptor keeps its own claims, from which it mints
// renewals and which its verified-token cache hands to later calls.
// Copying on read, rather than once per call, costs the calls whose
// handler never asks nothing; a handler that does pays one allocation for
// the usual claims (one audience, no custom claims) and two or three more
// with custom claims. Call it once per call and keep the result.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c := sharedClaims(ctx)
	if c == nil {
		return nil, false
	}
	return c.clone(), true
}

// sharedClaims returns the interceptor's own claims from ctx, or nil. The
// caller must not modify them, nor hand them out.
func sharedClaims(ctx context.Context) *Claims {
	c, _ := ctx.Value(claimsKey{}).(*Claims)
	return c
}

// claimsCopy is a Claims together with the storage its pointers and a
// one-element audience point into, so that clone allocates once for the
// usual claims.
type claimsCopy struct {
	c     Claims
	dates [4]jwt.NumericDate
	aud   [1]string
}

// clone returns a deep copy of c: no pointer, slice, map or byte of a
// custom claim is shared with c.
func (c *Claims) clone() *Claims {
	cc := &claimsCopy{c: *c}
	out := &cc.c
	for i, d := range [...]**jwt.NumericDate{&out.ExpiresAt, &out.NotBefore, &out.IssuedAt, &out.AuthTime} {
		if *d != nil {
			cc.dates[i] = **d
			*d = &cc.dates[i]
		}
	}
	switch {
	case c.Audience == nil:
	case len(c.Audience) <= len(cc.aud):
		n := copy(cc.aud[:], c.Audience)
		out.Audience = cc.aud[:n:n]
	default:
		out.Audience = slices.Clone(c.Audience)
	}
	if c.Custom != nil {
		size := 0
		for _, raw := range c.Custom {
			size += len(raw)
		}
		buf := make([]byte, 0, size)
		out.Custom = make(map[string]json.RawMessage, len(c.Custom))
		for name, raw := range c.Custom {
			start := len(buf)
			buf = append(buf, raw...)
			// Capped, so that appending to one claim cannot write into the
			// next one's bytes.
			out.Custom[name] = buf[start:len(buf):len(buf)]
		}
	}
	return out
}

// RequireFresh returns nil when the caller's token was minted at login
// (and has not been renewed since), and otherwise a codes.PermissionDenied
// error with reason [ReasonFreshTokenRequired]. Call it first in a handler
// that must not run on a long-lived session alone, such as a password
// change. Without claims in ctx it returns a codes.Unauthenticated error.
func RequireFresh(ctx context.Context) error {
	c := sharedClaims(ctx) // read only: no copy
	if c == nil {
		return reject(ReasonTokenMissing, "no verified claims in context")
	}
	if !c.Fresh {
		return reject(ReasonFreshTokenRequired, "token was renewed since login")
	}
	return nil
}
