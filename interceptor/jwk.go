package interceptor

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// maxJWKRSABits bounds the modulus of an RSA key read from a JWKS: a
// larger one costs more to verify with than any deployment needs.
const maxJWKRSABits = 8192

// Public returns a copy of k that only verifies: the same id and
// algorithm, the public key only. A key that cannot sign is returned as it
// is. An HMAC secret has no public half: Public refuses it with
// [ErrNoPublicKey], since publishing it would let anyone sign.
func (k *Key) Public() (*Key, error) {
	if !k.usable() {
		return nil, fmt.Errorf("%w: key was not made by NewKey", ErrInvalidKeySet)
	}
	if k.symmetric() {
		return nil, fmt.Errorf("%w: %s is a shared secret", ErrNoPublicKey, k.method.Alg())
	}
	return k.verifyOnly(), nil
}

// verifyOnly returns k without its private half, or k itself if it has
// none or is an HMAC secret (which cannot be split).
func (k *Key) verifyOnly() *Key {
	if k.signKey == nil || k.symmetric() {
		return k
	}
	return &Key{id: k.id, method: k.method, verifyKey: k.verifyKey}
}

// symmetric reports whether k is an HMAC secret.
func (k *Key) symmetric() bool {
	_, ok := k.verifyKey.([]byte)
	return ok
}

// JWK returns the public half of k as a JSON Web Key (RFC 7517): kty,
// use "sig", kid, alg, and crv, x, y (EC), crv, x (OKP, Ed25519) or n, e
// (RSA). It never holds private material. An HMAC secret has no public
// half: JWK refuses it with [ErrNoPublicKey].
func (k *Key) JWK() ([]byte, error) {
	if !k.usable() {
		return nil, fmt.Errorf("%w: key was not made by NewKey", ErrInvalidKeySet)
	}
	j, err := k.jwk()
	if err != nil {
		return nil, err
	}
	return json.Marshal(j)
}

// JWKS returns the public halves of the set's keys as a JWK Set document
// ({"keys": [...]}, RFC 7517 §5): the active key first, then the others in
// the order given. HMAC secrets have no public half and are left out, so a
// set of HMAC keys publishes no key at all. For a [RemoteKeySet]'s set it
// is the keys last fetched. [Server.JWKSHandler] serves it over HTTP.
func (ks *KeySet) JWKS() ([]byte, error) {
	if err := checkKeySet(ks); err != nil {
		return nil, err
	}
	return marshalJWKS(ks.publicKeys())
}

// publicKeys returns the set's keys, active first; a remote set's are the
// ones it last fetched.
func (ks *KeySet) publicKeys() []*Key {
	if ks.remote != nil {
		if s := ks.remote.cur.Load(); s != nil {
			return s.list
		}
		return nil
	}
	return ks.list
}

// jwkDoc is a public JWK as this package writes it: the members RFC 7517
// and RFC 7518 §6 give a verifier, in a fixed order.
type jwkDoc struct {
	Kty string `json:"kty"`
	Use string `json:"use"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
}

func (k *Key) jwk() (jwkDoc, error) {
	enc := base64.RawURLEncoding.EncodeToString
	j := jwkDoc{Use: "sig", Kid: k.id, Alg: k.method.Alg()}
	switch pub := k.verifyKey.(type) {
	case *ecdsa.PublicKey:
		b, err := pub.Bytes() // 0x04 || x || y, each the curve's full size
		if err != nil {
			return jwkDoc{}, fmt.Errorf("%w: %v", ErrKeyType, err)
		}
		n := (len(b) - 1) / 2
		j.Kty, j.Crv, j.X, j.Y = "EC", pub.Curve.Params().Name, enc(b[1:1+n]), enc(b[1+n:])
	case ed25519.PublicKey:
		j.Kty, j.Crv, j.X = "OKP", "Ed25519", enc(pub)
	case *rsa.PublicKey:
		j.Kty, j.N, j.E = "RSA", enc(pub.N.Bytes()), enc(big.NewInt(int64(pub.E)).Bytes())
	default:
		return jwkDoc{}, fmt.Errorf("%w: %s is a shared secret", ErrNoPublicKey, k.method.Alg())
	}
	return j, nil
}

// marshalJWKS returns the JWK Set document of the public halves of keys,
// leaving out HMAC secrets.
func marshalJWKS(keys []*Key) ([]byte, error) {
	doc := struct {
		Keys []jwkDoc `json:"keys"`
	}{Keys: make([]jwkDoc, 0, len(keys))}
	for _, k := range keys {
		if k.symmetric() {
			continue
		}
		j, err := k.jwk()
		if err != nil {
			return nil, err
		}
		doc.Keys = append(doc.Keys, j)
	}
	return json.Marshal(doc)
}

// jwksKeys is the outcome of reading a JWK Set document: the keys it
// trusts, in document order and by kid, and why each other entry was
// refused.
type jwksKeys struct {
	list    []*Key
	byID    map[string]*Key
	refused []error
}

// parseJWKS reads a JWK Set document. The document fails as a whole
// ([ErrInvalidJWKS]) if it is not a JSON object with a "keys" array, or if
// any of its objects names a member twice (two parsers could read two
// different keys from it). Within a valid document, each entry is trusted
// or refused on its own (see parseJWK), and a kid that more than one
// entry carries is refused in all of them: which key it names would be a
// guess.
func parseJWKS(data []byte) (*jwksKeys, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil || doc == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidJWKS)
	}
	if err := checkUniqueNames(data); err != nil {
		return nil, fmt.Errorf("%w: a member name appears twice in one object", ErrInvalidJWKS)
	}
	raw, ok := doc["keys"]
	var entries []json.RawMessage
	if !ok || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("[")) || json.Unmarshal(raw, &entries) != nil {
		return nil, fmt.Errorf(`%w: no "keys" array`, ErrInvalidJWKS)
	}
	out := &jwksKeys{byID: make(map[string]*Key, len(entries))}
	kids := make(map[string]int, len(entries))
	keys := make([]*Key, len(entries))
	for i, e := range entries {
		var err error
		var kid string
		keys[i], kid, err = parseJWK(e)
		if kid != "" {
			kids[kid]++
		}
		if err != nil {
			out.refused = append(out.refused, fmt.Errorf("%w: key %d: %w", ErrInvalidJWKS, i, err))
		}
	}
	for i, k := range keys {
		switch {
		case k == nil:
		case kids[k.id] > 1:
			out.refused = append(out.refused, fmt.Errorf("%w: key %d: kid %q appears %d times", ErrInvalidJWKS, i, k.id, kids[k.id]))
		default:
			out.list = append(out.list, k)
			out.byID[k.id] = k
		}
	}
	return out, nil
}

// Why parseJWK refuses an entry. The messages name members and values of
// the JWKS, which is configuration, never a token.
var (
	errJWKNotObject = errors.New("not a JSON object")
	errJWKNoKid     = errors.New(`no "kid"`)
	errJWKPrivate   = errors.New("carries private key material; a published private key signs for anyone")
	errJWKSymmetric = errors.New(`kty "oct" is a shared secret; a published secret signs for anyone`)
	errJWKUse       = errors.New(`"use" is not "sig"`)
	errJWKOps       = errors.New(`"key_ops" does not include "verify"`)
	errJWKAlg       = errors.New(`"alg" does not fit the key type, or is not ES256, ES384, EdDSA, RS256 or PS256`)
	errJWKNoAlg     = errors.New(`an RSA key without "alg" fits RS256 and PS256 alike`)
	errJWKKty       = errors.New(`"kty" is not EC, OKP or RSA`)
	errJWKCurve     = errors.New(`"crv" is not P-256, P-384 (EC) or Ed25519 (OKP)`)
	errJWKMember    = errors.New("a key member is missing, not a string, or not base64url of the right size")
)

// jwkPrivateMembers are the members that carry private material (RFC 7518
// §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
var jwkPrivateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// parseJWK reads one entry of a JWK Set. It returns the key, bound to one
// algorithm, or why it refuses the entry, and in both cases the entry's
// kid when it has one. Member names are matched exactly (encoding/json
// would also match "KID" to a field tagged "kid"). An entry is refused
// unless:
//
//   - it has a non-empty string "kid";
//   - it has no private member (d, p, q, dp, dq, qi, oth, k): a key whose
//     private half is published is no proof of anything;
//   - its "use", if present, is "sig", and its "key_ops", if present,
//     include "verify";
//   - its kty is EC with crv P-256 (ES256) or P-384 (ES384), OKP with crv
//     Ed25519 (EdDSA), or RSA with alg RS256 or PS256 and a modulus of 2048
//     to 8192 bits; an "alg" must fit the kty and crv. kty "oct" (an HMAC
//     secret) is refused, and so is "alg" none or HS256: a public JWKS
//     holding a shared secret lets anyone sign;
//   - its coordinates are base64url of the curve's size and the point is
//     on the curve.
func parseJWK(data json.RawMessage) (key *Key, kid string, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, "", errJWKNotObject
	}
	str := func(name string) (string, bool) {
		var s string
		raw, ok := m[name]
		if !ok || json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	}
	kid, _ = str("kid")
	if kid == "" {
		return nil, "", errJWKNoKid
	}
	for _, p := range jwkPrivateMembers {
		if _, ok := m[p]; ok {
			if p == "k" {
				return nil, kid, errJWKSymmetric
			}
			return nil, kid, errJWKPrivate
		}
	}
	if _, ok := m["use"]; ok {
		if use, _ := str("use"); use != "sig" {
			return nil, kid, errJWKUse
		}
	}
	if raw, ok := m["key_ops"]; ok {
		var ops []string
		if json.Unmarshal(raw, &ops) != nil || !slices.Contains(ops, "verify") {
			return nil, kid, errJWKOps
		}
	}
	alg, hasAlg := str("alg")
	if _, ok := m["alg"]; ok && !hasAlg {
		return nil, kid, errJWKAlg
	}
	kty, _ := str("kty")
	crv, _ := str("crv")
	var pub any
	switch kty {
	case "EC":
		var curve elliptic.Curve
		var want string
		switch crv {
		case "P-256":
			curve, want = elliptic.P256(), "ES256"
		case "P-384":
			curve, want = elliptic.P384(), "ES384"
		default:
			return nil, kid, errJWKCurve
		}
		if hasAlg && alg != want {
			return nil, kid, errJWKAlg
		}
		alg = want
		size := (curve.Params().BitSize + 7) / 8
		x, okX := b64Member(m, "x", size)
		y, okY := b64Member(m, "y", size)
		if !okX || !okY {
			return nil, kid, errJWKMember
		}
		k, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, kid, fmt.Errorf("%w: %v", errJWKMember, err)
		}
		pub = k
	case "OKP":
		if crv != "Ed25519" {
			return nil, kid, errJWKCurve
		}
		if hasAlg && alg != "EdDSA" {
			return nil, kid, errJWKAlg
		}
		alg = "EdDSA"
		x, ok := b64Member(m, "x", ed25519.PublicKeySize)
		if !ok {
			return nil, kid, errJWKMember
		}
		pub = ed25519.PublicKey(x)
	case "RSA":
		switch {
		case !hasAlg:
			return nil, kid, errJWKNoAlg
		case alg != "RS256" && alg != "PS256":
			return nil, kid, errJWKAlg
		}
		n, okN := b64Member(m, "n", -1)
		e, okE := b64Member(m, "e", -1)
		if !okN || !okE || len(e) == 0 || len(e) > 4 || len(n) == 0 || len(n) > maxJWKRSABits/8 {
			return nil, kid, errJWKMember
		}
		exp := new(big.Int).SetBytes(e).Int64()
		if exp < 3 || exp%2 == 0 || exp > 1<<31-1 {
			return nil, kid, errJWKMember
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp)}
	case "oct":
		return nil, kid, errJWKSymmetric
	default:
		return nil, kid, errJWKKty
	}
	k, err := NewKey(kid, jwt.GetSigningMethod(alg), pub)
	if err != nil {
		return nil, kid, err
	}
	return k, kid, nil
}

// b64Member decodes the string member name of m as unpadded base64url. It
// reports false if the member is missing, not a string, not strict
// base64url, or, for size ≥ 0, not size bytes long.
func b64Member(m map[string]json.RawMessage, name string, size int) ([]byte, bool) {
	var s string
	if raw, ok := m[name]; !ok || json.Unmarshal(raw, &s) != nil || s == "" {
		return nil, false
	}
	// Go's base64 decoders skip CR and LF even in strict mode.
	for i := 0; i < len(s); i++ {
		if s[i] == '.' || !jwsChar[s[i]] {
			return nil, false
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || size >= 0 && len(b) != size {
		return nil, false
	}
	return b, true
}

// sameKey reports whether a and b are the same public key under the same
// algorithm.
func sameKey(a, b *Key) bool {
	if a.method != b.method {
		return false
	}
	pa, ok := a.verifyKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pa.Equal(b.verifyKey)
}
