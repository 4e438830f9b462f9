package interceptor

import (
	"errors"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Header-rule failures returned by KeySet.keyFor. parseJWS wraps them in
// jwt.ErrTokenUnverifiable.
var (
	errCritHeader  = errors.New("crit header not supported")
	errWrongType   = errors.New("typ header is not the expected token type")
	errUnknownKey  = errors.New("kid names no trusted key")
	errAlgMismatch = errors.New("alg does not match the key")
)

// The JOSE "typ" values of session tokens. An access token (RFC 9068) is
// never accepted where a refresh token is expected, nor the reverse.
const (
	accessTokenType  = "at+jwt"
	refreshTokenType = "rt+jwt"
)

// isType reports whether the typ header got names want, allowing the full
// media type ("application/at+jwt") and any case (RFC 7515 §4.1.9).
func isType(got, want string) bool {
	got, _ = strings.CutPrefix(strings.ToLower(got), "application/")
	return got == want
}

// isCompactJWS reports whether raw holds only base64url characters and
// dots. Go's base64 decoders skip CR and LF even in strict mode, so without
// this check a token with line breaks inserted would be a second spelling
// of a valid token.
func isCompactJWS(raw string) bool {
	for i := 0; i < len(raw); i++ {
		if !jwsChar[raw[i]] {
			return false
		}
	}
	return true
}

// jwsChar holds the bytes of a compact JWS: base64url's alphabet and the
// dot. A table: this runs over every token of every call.
var jwsChar = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
	}
	return t
}()

// verifier checks a presented token against one key set. Its caches
// belong to that key set: rotating keys starts new ones.
type verifier struct {
	keys      *KeySet
	validator *jwt.Validator // golang-jwt's claims checks, with the server's options
	policy    Policy         // the server's, normalized

	// verified maps a token's digest to its verified claims. Keyed on a
	// digest of the exact bytes, a re-encoded or malleated copy is a miss
	// and is verified on its own. Failures are never stored. nil when
	// disabled.
	verified tokenCache[*verifiedClaims]

	// remote is the key set's RemoteKeySet, if it has one, and gen its
	// generation when the caches were made: they are the keys' only as
	// long as it is current (see Server.syncRemote).
	remote *RemoteKeySet
	gen    uint64
}

func newVerifier(ks *KeySet, cfg *serverConfig) *verifier {
	opts := []jwt.ParserOption{
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.policy.leeway()),
		jwt.WithTimeFunc(cfg.now),
	}
	if cfg.issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.issuer))
	}
	if len(cfg.audience) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.audience...))
	}
	v := &verifier{
		keys:      ks,
		validator: jwt.NewValidator(opts...),
		policy:    cfg.policy,
		remote:    ks.remote,
	}
	if v.remote != nil {
		v.gen = v.remote.gen()
	}
	if cfg.cacheSize > 0 {
		v.verified = newTokenCache[*verifiedClaims](cfg.cacheSize, cfg.now)
	}
	return v
}

// verify parses raw and returns its claims, or a rejection. A token whose
// only fault is a lapsed exp comes back with its (signature-verified)
// claims and ReasonTokenExpired, so that the caller can tell a lapsed
// token from a lapsed session.
func (v *verifier) verify(raw string) (*Claims, *authError) {
	return v.parse(raw, accessTokenType)
}

// verifyCached is verify with the verified-token cache. A hit is accepted
// exactly when verify would accept the token at now: the cached claims
// already passed every rule that does not depend on time, and the two that
// do (exp, and iat not in the future) are checked again here. The caller
// still applies the session end and the revocation list on every request.
//
// It returns the claims in the compact form that the cache holds, also
// without a cache, and for an expired token as verify does.
//
// It also returns the token's cache key, computed once for the call (a
// delegated renewal is cached under it too), zero when the caches are off, and
// whether the cache held the token (CacheNone when the caches are off).
func (v *verifier) verifyCached(raw string, now time.Time) (*verifiedClaims, tokenKey, CacheResult, *authError) {
	var k tokenKey
	cache := CacheNone
	if v.verified != nil {
		k = keyOf(raw)
		// A remote key set past its maximum staleness serves no hit: the
		// token is verified again, which fails closed.
		if c, ok := v.verified.get(k, now); ok && !now.Before(c.iat().Add(-v.policy.leeway())) &&
			(v.remote == nil || v.remote.hitOK(now)) {
			return c, k, CacheHit, nil
		}
		cache = CacheMiss
	}
	// Checked only here, on a miss: a hit is the same bytes as a token
	// that passed it, and the scan would cost every call.
	if !isCompactJWS(raw) {
		return nil, k, CacheNone, reject(ReasonTokenInvalid, "malformed token")
	}
	full, err := v.verify(raw)
	if full == nil {
		return nil, k, cache, err
	}
	c := compactClaims(full)
	if err == nil && v.verified != nil && (v.renewalDue(c, now) || v.verified.admit(k)) {
		// jwt accepts while now < exp + leeway; the entry dies then.
		// Requests racing to verify the same token all get the claims
		// that went in first, so that they share one renewal (see
		// Server.renew). A token whose renewal is not due is cached in a
		// full cache only from its second presentation on (see
		// otterCache).
		until := v.policy.AcceptExpiryUntil(c.exp())
		c = v.verified.getOrPut(k, now, func() (*verifiedClaims, time.Time) { return c, until })
	}
	return c, k, cache, err
}

// renewalDue reports whether this server would renew c's token at now:
// Server.renew's decision, made again here so that such a token is cached
// on its first presentation even in a full cache, where requests
// presenting it share their renewal through the cached claims.
func (v *verifier) renewalDue(c *verifiedClaims, now time.Time) bool {
	return v.keys.active != nil &&
		sessionPolicy(v.policy, c).Decide(now, c.exp(), c.authTime()).Renew
}

// verifyRefresh is verify for a refresh token.
func (v *verifier) verifyRefresh(raw string) (*Claims, *authError) {
	return v.parse(raw, refreshTokenType)
}

func (v *verifier) parse(raw, typ string) (*Claims, *authError) {
	c := new(Claims)
	err := parseJWS(raw, c, v.keys, typ, v.validator)
	if err == nil {
		return c, nil
	}
	if onlyExpired(err) {
		return c, reject(ReasonTokenExpired, "")
	}
	if errors.Is(err, errKeysUnavailable) {
		return nil, &authError{reason: ReasonTokenInvalid, detail: "signing keys unavailable", keysDown: true}
	}
	return nil, reject(ReasonTokenInvalid, invalidDetail(err))
}

// onlyExpired reports whether err is golang-jwt's claims-validation error
// and every cause under it is jwt.ErrTokenExpired. An expired token with any
// other fault is invalid, not expired: refreshing it must not be suggested.
func onlyExpired(err error) bool {
	if !errors.Is(err, jwt.ErrTokenInvalidClaims) || !errors.Is(err, jwt.ErrTokenExpired) {
		return false
	}
	var walk func(error) bool
	walk = func(e error) bool {
		switch x := e.(type) {
		case interface{ Unwrap() []error }:
			for _, c := range x.Unwrap() {
				if c != jwt.ErrTokenInvalidClaims && !walk(c) {
					return false
				}
			}
			return true
		case interface{ Unwrap() error }:
			return walk(x.Unwrap())
		default:
			return e == jwt.ErrTokenExpired
		}
	}
	return walk(err)
}

// invalidDetail maps a golang-jwt error to a fixed phrase. golang-jwt's own
// messages can quote header values (the alg name), which are attacker
// input, so they are never passed on.
func invalidDetail(err error) string {
	for _, d := range []struct {
		err    error
		detail string
	}{
		{errDuplicateName, "duplicate member name"},
		{errCritHeader, "crit header not supported"},
		{errWrongType, "wrong token type"},
		{errUnknownKey, "unknown key id"},
		{errAlgMismatch, "algorithm not allowed for this key"},
		{errClaimMissing, "a session claim is missing"},
		{errClaimRange, "a session claim is out of range"},
		{jwt.ErrTokenMalformed, "malformed token"},
		{jwt.ErrTokenSignatureInvalid, "signature or algorithm rejected"},
		{jwt.ErrTokenUnverifiable, "token cannot be verified"},
		{jwt.ErrTokenRequiredClaimMissing, "a required claim is missing"},
		{jwt.ErrTokenInvalidIssuer, "issuer not accepted"},
		{jwt.ErrTokenInvalidAudience, "audience not accepted"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future"},
		{jwt.ErrTokenNotValidYet, "not valid yet"},
		{jwt.ErrInvalidType, "a claim has the wrong type"},
	} {
		if errors.Is(err, d.err) {
			return d.detail
		}
	}
	return "token rejected"
}
