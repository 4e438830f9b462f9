package interceptor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are the claims of a session access token.
//
// The registered claims iss, sub, aud, exp, iat and jti come from the
// embedded [jwt.RegisteredClaims]; jti is new for every token. SessionID
// (sid) and AuthTime (auth_time, the OIDC login time) are set at login and
// stay the same across renewals, as does SessionExpiry (session_exp), the
// session's own end when it was started shorter than the server's
// [Policy].MaxLifetime (see [WithMaxLifetime]), and Confirmation (cnf),
// the TLS client certificate a bound session's tokens must come with (see
// [BindToPeerCertificate]). Fresh is true only on the token minted at
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
	// SessionExpiry is the session's own absolute end (session_exp), or
	// nil when the session ends at auth_time + the server's MaxLifetime.
	// A server ends the session at the earlier of the two: the claim can
	// shorten a session, never lengthen it.
	SessionExpiry *jwt.NumericDate `json:"session_exp,omitempty"`
	// Confirmation is the cnf claim of a session bound to its holder's TLS
	// client certificate (RFC 8705 §3.1), or nil for a session that is
	// not bound. Every server refuses a bound token on a call without that
	// certificate; renewals and refreshes copy it.
	Confirmation *Confirmation `json:"cnf,omitempty"`
	Fresh        bool          `json:"fresh,omitempty"`
	// Custom holds the application's claims, keyed by claim name. It never
	// holds a name from the session model; see [Server.StartSession].
	Custom map[string]json.RawMessage `json:"-"`
}

// reservedClaims are the names the session model owns. A custom claim may
// not use them, and they are never copied into Claims.Custom.
var reservedClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "nbf": true, "iat": true,
	"jti": true, "sid": true, "auth_time": true, "fresh": true, "session_exp": true,
	"cnf": true,
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
	case c.SessionExpiry != nil && (!c.SessionExpiry.After(c.AuthTime.Time) || c.ExpiresAt.After(c.SessionExpiry.Time)):
		// A session that ends before it began, or a token that outlives
		// its own session, was not minted by this package.
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
// may modify; the interceptor keeps its own compact form of the claims,
// from which it mints renewals and which its verified-token cache hands to
// later calls. Building the Claims on read, rather than once per call,
// costs the calls whose handler never asks nothing; a handler that does
// pays one allocation for the usual claims (one audience, no custom
// claims) and two or three more with custom claims. Call it once per call
// and keep the result.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c := sharedClaims(ctx)
	if c == nil {
		return nil, false
	}
	return c.claims(), true
}

// sharedClaims returns the interceptor's own claims from ctx, or nil. The
// caller must not modify them, nor hand them out.
func sharedClaims(ctx context.Context) *verifiedClaims {
	c, _ := ctx.Value(claimsKey{}).(*verifiedClaims)
	return c
}

// claimsCopy is a Claims together with the storage its pointers and a
// one-element audience point into, so that building one allocates once
// for the usual claims.
type claimsCopy struct {
	c     Claims
	dates [numDates]jwt.NumericDate
	aud   [1]string
	cnf   Confirmation
}

// The dates of verifiedClaims, in the order of its arrays.
const (
	dateExp = iota
	dateNbf
	dateIat
	dateAuthTime
	dateSessionExp
	numDates
)

// The shapes of an audience in verifiedClaims.
const (
	audNone = iota // nil
	audOne         // one string, s[ends[3]:ends[4]]
	audList        // any other, aud
)

// verifiedClaims is the server's own compact form of a verified token's
// claims: what its verified-token cache holds and a call's context
// carries, for every call presenting the token. It is never modified once
// built, and never handed out: [ClaimsFromContext] builds a [Claims] from
// it, and so does a renewal.
//
// It holds the same information as the Claims it is made from, in one
// string and a small struct: a cached session costs a few hundred bytes
// rather than the Claims' pointers, dates, payload copy and custom map.
type verifiedClaims struct {
	// s holds sub, sid, jti, iss and the audience back to back, each
	// ending at ends[i], then the custom claims, each as the uvarint
	// length of its name, the name, the uvarint length of its raw JSON
	// value and the value, then, if bound, the cnf claim's thumbprint.
	s    string
	ends [5]uint32
	// Bit i of dates tells whether date i is present; sec and nsec hold
	// their Unix seconds and nanoseconds.
	dates   uint8
	audKind uint8
	fresh   bool
	// bound tells whether the token has a cnf claim, whose thumbprint
	// ends s. A flag in the struct's padding: a token that is not bound
	// costs no byte more, and its calls one test of it.
	bound bool
	// aud is the audience when audKind is audList; its strings are in s.
	aud  []string
	sec  [numDates]int64
	nsec [numDates]int32
	// renewal is the renewal minted for the token these claims came from,
	// shared by the requests that present it while it is due (see
	// Server.renew); the claims are otherwise immutable.
	renewal atomic.Pointer[renewal]
}

// compactClaims returns the compact form of c, which it does not keep.
func compactClaims(c *Claims) *verifiedClaims {
	out := &verifiedClaims{fresh: c.Fresh, bound: c.Confirmation != nil}
	size := len(c.Subject) + len(c.SessionID) + len(c.ID) + len(c.Issuer)
	if out.bound {
		size += len(Thumbprint{})
	}
	switch {
	case c.Audience == nil:
	case len(c.Audience) == 1:
		out.audKind = audOne
		size += len(c.Audience[0])
	default:
		out.audKind = audList
		for _, a := range c.Audience {
			size += len(a)
		}
	}
	for name, raw := range c.Custom {
		size += uvarintLen(len(name)) + len(name) + uvarintLen(len(raw)) + len(raw)
	}
	var b strings.Builder
	b.Grow(size)
	for i, v := range [...]string{c.Subject, c.SessionID, c.ID, c.Issuer} {
		b.WriteString(v)
		out.ends[i] = uint32(b.Len())
	}
	var audEnds []int
	switch out.audKind {
	case audOne:
		b.WriteString(c.Audience[0])
	case audList:
		audEnds = make([]int, len(c.Audience))
		for i, a := range c.Audience {
			b.WriteString(a)
			audEnds[i] = b.Len()
		}
	}
	out.ends[4] = uint32(b.Len())
	var lenBuf [binary.MaxVarintLen64]byte
	for name, raw := range c.Custom {
		b.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(name))))
		b.WriteString(name)
		b.Write(binary.AppendUvarint(lenBuf[:0], uint64(len(raw))))
		b.Write(raw)
	}
	if out.bound {
		b.Write(c.Confirmation.X5tS256[:])
	}
	out.s = b.String()
	if out.audKind == audList {
		out.aud = make([]string, len(c.Audience))
		start := int(out.ends[3])
		for i, end := range audEnds {
			out.aud[i] = out.s[start:end]
			start = end
		}
	}
	for i, d := range [...]*jwt.NumericDate{c.ExpiresAt, c.NotBefore, c.IssuedAt, c.AuthTime, c.SessionExpiry} {
		if d != nil {
			out.dates |= 1 << i
			out.sec[i], out.nsec[i] = d.Unix(), int32(d.Nanosecond())
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
	if !c.fresh {
		return reject(ReasonFreshTokenRequired, "token was renewed since login")
	}
	return nil
}

func (c *verifiedClaims) sub() string { return c.s[:c.ends[0]] }
func (c *verifiedClaims) sid() string { return c.s[c.ends[0]:c.ends[1]] }
func (c *verifiedClaims) jti() string { return c.s[c.ends[1]:c.ends[2]] }
func (c *verifiedClaims) iss() string { return c.s[c.ends[2]:c.ends[3]] }

// date returns date i, which must be present.
func (c *verifiedClaims) date(i int) time.Time { return time.Unix(c.sec[i], int64(c.nsec[i])) }

func (c *verifiedClaims) exp() time.Time      { return c.date(dateExp) }
func (c *verifiedClaims) iat() time.Time      { return c.date(dateIat) }
func (c *verifiedClaims) authTime() time.Time { return c.date(dateAuthTime) }

// cnf returns the thumbprint of the cnf claim, and false when the token
// has none.
func (c *verifiedClaims) cnf() (Thumbprint, bool) {
	var t Thumbprint
	if !c.bound {
		return t, false
	}
	copy(t[:], c.s[len(c.s)-len(t):])
	return t, true
}

// sameCnf reports whether got, another token's cnf claim, binds to the
// certificate that c's does, or both have none.
func (c *verifiedClaims) sameCnf(got *Confirmation) bool {
	t, ok := c.cnf()
	if got == nil || !ok {
		return got == nil && !ok
	}
	return got.X5tS256 == t
}

// customs returns the part of s that holds the custom claims.
func (c *verifiedClaims) customs() string {
	end := len(c.s)
	if c.bound {
		end -= len(Thumbprint{})
	}
	return c.s[c.ends[4]:end]
}

// sessionExp returns the session_exp claim, or the zero time without one.
func (c *verifiedClaims) sessionExp() time.Time {
	if c.dates&(1<<dateSessionExp) == 0 {
		return time.Time{}
	}
	return c.date(dateSessionExp)
}

// claims returns a new Claims with c's claims: nothing but immutable
// strings is shared with c, so that the caller may modify it.
func (c *verifiedClaims) claims() *Claims {
	cc := new(claimsCopy)
	out := &cc.c
	out.Subject, out.SessionID, out.ID, out.Issuer = c.sub(), c.sid(), c.jti(), c.iss()
	out.Fresh = c.fresh
	if t, ok := c.cnf(); ok {
		cc.cnf.X5tS256 = t
		out.Confirmation = &cc.cnf
	}
	for i, d := range [...]**jwt.NumericDate{&out.ExpiresAt, &out.NotBefore, &out.IssuedAt, &out.AuthTime, &out.SessionExpiry} {
		if c.dates&(1<<i) != 0 {
			cc.dates[i] = jwt.NumericDate{Time: c.date(i)}
			*d = &cc.dates[i]
		}
	}
	switch c.audKind {
	case audOne:
		cc.aud[0] = c.s[c.ends[3]:c.ends[4]]
		out.Audience = cc.aud[:1:1]
	case audList:
		out.Audience = slices.Clone(c.aud)
	}
	custom := c.customs()
	if custom == "" {
		return out
	}
	n, size := 0, 0
	for rest := custom; rest != ""; n++ {
		var raw string
		_, raw, rest = nextCustom(rest)
		size += len(raw)
	}
	buf := make([]byte, 0, size)
	out.Custom = make(map[string]json.RawMessage, n)
	for rest := custom; rest != ""; {
		var name, raw string
		name, raw, rest = nextCustom(rest)
		start := len(buf)
		buf = append(buf, raw...)
		// Capped, so that appending to one claim cannot write into the
		// next one's bytes.
		out.Custom[name] = buf[start:len(buf):len(buf)]
	}
	return out
}

// nextCustom splits the first custom claim off custom, the tail of a
// verifiedClaims' s.
func nextCustom(custom string) (name, raw, rest string) {
	field := func(s string) (string, string) {
		n, k := uvarintString(s)
		return s[k : k+int(n)], s[k+int(n):]
	}
	name, rest = field(custom)
	raw, rest = field(rest)
	return name, raw, rest
}

// uvarintLen returns the length of n's uvarint encoding.
func uvarintLen(n int) int {
	k := 1
	for ; n >= 0x80; n >>= 7 {
		k++
	}
	return k
}

// uvarintString is binary.Uvarint on a string that holds a valid one.
func uvarintString(s string) (uint64, int) {
	var x uint64
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x80 {
			return x | uint64(b)<<(7*i), i + 1
		}
		x |= uint64(b&0x7f) << (7 * i)
	}
	panic("slidejwt: corrupt custom claims")
}
