package interceptor

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// parseJWS is golang-jwt's Parser.ParseWithClaims for a session token of
// JOSE type typ, keyed by ks, with each segment decoded once. It keeps
// golang-jwt's order of checks and the shape of its errors (each wraps one
// of golang-jwt's Err* values, so that invalidDetail and onlyExpired read
// them as before) and uses golang-jwt's own signing methods and claims
// validator. What it does not do is what cost a miss most: golang-jwt
// decodes the header into a map with encoding/json (and the key function
// then had to decode it again to find duplicate names), and runs the
// payload through encoding/json's validity scan and skip before
// Claims.UnmarshalJSON read it a third time.
//
// c receives the claims; on a validation error (an expired token, say)
// they are set and signature-verified, as with golang-jwt.
func parseJWS(raw string, c *Claims, ks *KeySet, typ string, validator *jwt.Validator) error {
	hdr, rest, ok1 := strings.Cut(raw, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 {
		return fmt.Errorf("%w: token contains an invalid number of segments", jwt.ErrTokenMalformed)
	}
	// One buffer for the three decoded segments.
	enc := base64.RawURLEncoding.Strict()
	buf := make([]byte, enc.DecodedLen(len(hdr))+enc.DecodedLen(len(payload))+enc.DecodedLen(len(sig)))
	n, err := enc.Decode(buf, []byte(hdr))
	if err != nil {
		return fmt.Errorf("%w: could not base64 decode header: %w", jwt.ErrTokenMalformed, err)
	}
	h, err := readHeader(buf[:n])
	if err != nil {
		return fmt.Errorf("%w: could not JSON decode header: %w", jwt.ErrTokenMalformed, err)
	}
	buf = buf[n:]
	if n, err = enc.Decode(buf, []byte(payload)); err != nil {
		return fmt.Errorf("%w: could not base64 decode claim: %w", jwt.ErrTokenMalformed, err)
	}
	if err := c.unmarshal(buf[:n], nil); err != nil {
		return fmt.Errorf("%w: could not JSON decode claim: %w", jwt.ErrTokenMalformed, err)
	}
	buf = buf[n:]
	if !h.hasAlg {
		return fmt.Errorf("%w: signing method (alg) is unspecified", jwt.ErrTokenUnverifiable)
	}
	method := jwt.GetSigningMethod(h.alg)
	if method == nil {
		return fmt.Errorf("%w: signing method (alg) is unavailable", jwt.ErrTokenUnverifiable)
	}
	if n, err = enc.Decode(buf, []byte(sig)); err != nil {
		return fmt.Errorf("%w: could not base64 decode signature: %w", jwt.ErrTokenMalformed, err)
	}
	signature := buf[:n]
	if !slices.Contains(ks.algs, h.alg) {
		return fmt.Errorf("%w: signing method is invalid", jwt.ErrTokenSignatureInvalid)
	}
	key, err := ks.keyFor(h, typ)
	if err != nil {
		return fmt.Errorf("%w: error while executing keyfunc: %w", jwt.ErrTokenUnverifiable, err)
	}
	// The signing input is the token up to its last dot: no copy.
	if err := method.Verify(raw[:len(hdr)+1+len(payload)], signature, key); err != nil {
		return fmt.Errorf("%w: %w", jwt.ErrTokenSignatureInvalid, err)
	}
	if err := validator.Validate(c); err != nil {
		return fmt.Errorf("%w: %w", jwt.ErrTokenInvalidClaims, err)
	}
	return nil
}

// joseHeader is what the holder and the verifier read of a JOSE header.
type joseHeader struct {
	alg, typ, kid string
	hasAlg        bool // alg is a string (golang-jwt's test for "specified")
	crit          bool // crit is present, with any value
}

// readHeader reads a JOSE header in one pass. It refuses anything but one
// JSON object, and a member named twice at any depth (two parsers could
// read such a header differently: golang-jwt's map keeps the last value).
// Names are matched exactly, as in golang-jwt's header map. alg, typ and
// kid must be strings or null (absent, as encoding/json takes it): a
// number where golang-jwt expects a string made the token unverifiable
// there, and is refused here.
func readHeader(data []byte) (joseHeader, error) {
	var h joseHeader
	if len(data) >= maxJSONLen {
		return joseHeader{}, errJSONTooLarge
	}
	var (
		nameBuf [8]dupName
		names   = nameBuf[:0]
		arena   []byte // unescaped names
		frame   = dupFrame{object: true}
		str     string // data, once a member is wanted
	)
	i, more, err := objectStart(data)
	if err != nil {
		return joseHeader{}, err
	}
	for more {
		var m claimsMember
		if m, arena, names, err = objectMember(data, i, arena, names, &frame); err != nil {
			return joseHeader{}, err
		}
		var dst *string
		switch string(names[len(names)-1].bytes(data, arena)) {
		case "alg":
			dst = &h.alg
			h.hasAlg = data[m.start] == '"'
		case "typ":
			dst = &h.typ
		case "kid":
			dst = &h.kid
		case "crit":
			h.crit = true
		}
		if dst != nil {
			if str == "" {
				str = string(data)
			}
			if err := decodeClaimString(dst, data[m.start:m.end], m, str); err != nil {
				return joseHeader{}, err
			}
		}
		if i, more, err = objectNext(data, int(m.end)); err != nil {
			return joseHeader{}, err
		}
	}
	return h, nil
}
