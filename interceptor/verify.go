package interceptor

import (
	"errors"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Header-rule failures returned by KeySet.keyFor. golang-jwt wraps them in
// jwt.ErrTokenUnverifiable.
var (
	errCritHeader  = errors.New("crit header not supported")
	errWrongType   = errors.New("typ header is not at+jwt")
	errUnknownKey  = errors.New("kid names no trusted key")
	errAlgMismatch = errors.New("alg does not match the key")
)

// accessTokenType is the JOSE "typ" of an access token (RFC 9068).
const accessTokenType = "at+jwt"

// isAccessTokenType accepts "at+jwt" and its full media type
// "application/at+jwt", case-insensitively (RFC 7515 §4.1.9).
func isAccessTokenType(typ string) bool {
	typ, _ = strings.CutPrefix(strings.ToLower(typ), "application/")
	return typ == accessTokenType
}

// verifier checks a presented token against one key set. It is immutable.
type verifier struct {
	keys   *KeySet
	parser *jwt.Parser
}

func newVerifier(ks *KeySet, cfg *serverConfig) *verifier {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(ks.algs),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.leeway),
		jwt.WithTimeFunc(cfg.now),
		jwt.WithStrictDecoding(),
	}
	if cfg.issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.issuer))
	}
	if len(cfg.audience) > 0 {
		opts = append(opts, jwt.WithAudience(cfg.audience...))
	}
	return &verifier{keys: ks, parser: jwt.NewParser(opts...)}
}

// verify parses raw and returns its claims, or a rejection. A token whose
// only fault is a lapsed exp comes back with its (signature-verified)
// claims and ReasonTokenExpired, so that the caller can tell a lapsed
// token from a lapsed session.
func (v *verifier) verify(raw string) (*Claims, *authError) {
	c := new(Claims)
	_, err := v.parser.ParseWithClaims(raw, c, v.keys.keyFor)
	if err == nil {
		return c, nil
	}
	if onlyExpired(err) {
		return c, reject(ReasonTokenExpired, "")
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
		{errCritHeader, "crit header not supported"},
		{errWrongType, "typ header must be at+jwt"},
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

// sessionEnded reports whether a session that began at authTime is past
// its absolute end at now, allowing leeway.
func sessionEnded(p Policy, now, authTime time.Time, leeway time.Duration) bool {
	return !now.Before(p.SessionEnd(authTime).Add(leeway))
}
