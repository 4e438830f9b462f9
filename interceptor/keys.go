package interceptor

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"slices"

	"github.com/golang-jwt/jwt/v5"
)

// minRSABits is the smallest RSA modulus NewKey accepts.
const minRSABits = 2048

// A Key is one signing or verification key, bound to exactly one algorithm
// and named by a key id (the JOSE "kid" header). A token is verified only
// with the key its kid names and only if its "alg" header equals that key's
// algorithm, which rules out algorithm confusion (an HS256 token "signed"
// with an RSA public key, "none", ...).
//
// A Key is immutable and safe for concurrent use.
type Key struct {
	id        string
	method    jwt.SigningMethod
	signKey   any // nil for a verification-only key
	verifyKey any
}

// NewKey binds key to method under the key id id. The accepted pairs are:
//
//   - jwt.SigningMethodHS256/384/512 with a []byte secret at least as long
//     as the hash output (32, 48, 64 bytes; RFC 7518 §3.2);
//   - jwt.SigningMethodES256 with a P-256 and ES384 with a P-384
//     *ecdsa.PrivateKey or *ecdsa.PublicKey;
//   - jwt.SigningMethodEdDSA with an ed25519.PrivateKey or ed25519.PublicKey;
//   - jwt.SigningMethodRS256 and jwt.SigningMethodPS256 with an
//     *rsa.PrivateKey or *rsa.PublicKey of at least 2048 bits.
//
// A private key (or HMAC secret) signs and verifies; a public key only
// verifies. The HMAC secret is copied. Anything else is refused with
// [ErrUnsupportedAlgorithm], [ErrKeyType] or [ErrKeyTooShort], and an empty
// id with [ErrInvalidKeySet].
func NewKey(id string, method jwt.SigningMethod, key any) (*Key, error) {
	if id == "" {
		return nil, fmt.Errorf("%w: empty key id", ErrInvalidKeySet)
	}
	// Only golang-jwt's own method values: the verifier looks methods up by
	// name in golang-jwt's registry, so a foreign method that borrows a name
	// would sign one way and be verified another.
	if method == nil || jwt.GetSigningMethod(method.Alg()) != method {
		return nil, fmt.Errorf("%w: not one of golang-jwt's signing methods", ErrUnsupportedAlgorithm)
	}
	k := &Key{id: id, method: method}
	switch method.Alg() {
	case "HS256", "HS384", "HS512":
		secret, ok := key.([]byte)
		if !ok {
			return nil, fmt.Errorf("%w: %s needs a []byte secret", ErrKeyType, method.Alg())
		}
		if min := max(32, method.(*jwt.SigningMethodHMAC).Hash.Size()); len(secret) < min {
			return nil, fmt.Errorf("%w: %s secret has %d bytes, need at least %d", ErrKeyTooShort, method.Alg(), len(secret), min)
		}
		secret = slices.Clone(secret)
		k.signKey, k.verifyKey = secret, secret
	case "ES256", "ES384":
		curve := elliptic.P256()
		if method.Alg() == "ES384" {
			curve = elliptic.P384()
		}
		switch kk := key.(type) {
		case *ecdsa.PrivateKey:
			if kk == nil || kk.Curve != curve {
				return nil, fmt.Errorf("%w: %s needs a %s key", ErrKeyType, method.Alg(), curve.Params().Name)
			}
			k.signKey, k.verifyKey = kk, &kk.PublicKey
		case *ecdsa.PublicKey:
			if kk == nil || kk.Curve != curve {
				return nil, fmt.Errorf("%w: %s needs a %s key", ErrKeyType, method.Alg(), curve.Params().Name)
			}
			k.verifyKey = kk
		default:
			return nil, fmt.Errorf("%w: %s needs an ECDSA key", ErrKeyType, method.Alg())
		}
	case "EdDSA":
		switch kk := key.(type) {
		case ed25519.PrivateKey:
			if len(kk) != ed25519.PrivateKeySize {
				return nil, fmt.Errorf("%w: bad Ed25519 private key length", ErrKeyType)
			}
			k.signKey, k.verifyKey = kk, kk.Public()
		case ed25519.PublicKey:
			if len(kk) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("%w: bad Ed25519 public key length", ErrKeyType)
			}
			k.verifyKey = kk
		default:
			return nil, fmt.Errorf("%w: EdDSA needs an Ed25519 key", ErrKeyType)
		}
	case "RS256", "PS256":
		var pub *rsa.PublicKey
		switch kk := key.(type) {
		case *rsa.PrivateKey:
			if kk != nil {
				k.signKey, pub = kk, &kk.PublicKey
			}
		case *rsa.PublicKey:
			pub = kk
		}
		if pub == nil || pub.N == nil {
			return nil, fmt.Errorf("%w: %s needs an RSA key", ErrKeyType, method.Alg())
		}
		if pub.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("%w: RSA key has %d bits, need at least %d", ErrKeyTooShort, pub.N.BitLen(), minRSABits)
		}
		k.verifyKey = pub
	default:
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedAlgorithm, method.Alg())
	}
	return k, nil
}

// ID returns the key id; "" for a nil or zero Key.
func (k *Key) ID() string {
	if k == nil {
		return ""
	}
	return k.id
}

// Algorithm returns the JOSE algorithm name the key is bound to; "" for a
// nil or zero Key.
func (k *Key) Algorithm() string {
	if k == nil || k.method == nil {
		return ""
	}
	return k.method.Alg()
}

// CanSign reports whether the key holds private material; false for a nil
// or zero Key.
func (k *Key) CanSign() bool { return k != nil && k.signKey != nil }

// usable reports whether k is a Key as NewKey returns it (or a copy of
// one). A zero Key, new(Key) or &Key{}, has no id, algorithm or key.
func (k *Key) usable() bool {
	return k != nil && k.id != "" && k.method != nil && k.verifyKey != nil
}

// A KeySet is the keys a server trusts: tokens are signed with the active
// key and verified with whichever key their kid names.
//
// To rotate without logging anybody out in a rolling deploy, go in two
// phases (PROTOCOL.md §9): first publish the new key as verify-only on
// every replica, NewKeySet(old, new); once every replica runs that set,
// make it active, NewKeySet(new, old). Mid-deploy, replicas that sign with
// either key accept each other's tokens. Drop the old key only once no
// token it signed can be accepted: after the refresh tokens' lifetime
// ([Policy].RefreshTTL) plus the leeway, not after one access-token TTL.
// Sessions survive because each renewal and refresh is signed with the
// new active key. Through a JWKS ([Server.JWKSHandler], [RemoteKeySet]),
// wait for the JWKS's max-age between the two phases (PROTOCOL.md §9).
//
// A set made by [NewVerifyKeySet] or [RemoteKeySet.KeySet] has no active
// key: a server given it only verifies (see [NewServer]).
//
// A KeySet is immutable and safe for concurrent use; a remote set's keys
// change only by fetches of its JWKS.
type KeySet struct {
	active *Key // nil for a set that cannot sign
	byID   map[string]*Key
	list   []*Key // the keys in order, active first, for the JWKS
	algs   []string
	// remote, if set, is asked for a key that byID does not hold (see
	// [RemoteKeySet.KeySet]).
	remote *RemoteKeySet
}

// NewKeySet returns a set that signs with active and verifies with active
// and every key in verifyOnly. active must hold private material; a
// service that only verifies uses [NewVerifyKeySet] or a [RemoteKeySet].
// Key ids must be unique. Every key must come from [NewKey]: a nil or zero
// Key is refused with [ErrInvalidKeySet].
func NewKeySet(active *Key, verifyOnly ...*Key) (*KeySet, error) {
	if active != nil && !active.usable() {
		return nil, fmt.Errorf("%w: the active key was not made by NewKey", ErrInvalidKeySet)
	}
	if !active.CanSign() {
		return nil, fmt.Errorf("%w: the active key must be able to sign (a service that only verifies uses NewVerifyKeySet)", ErrInvalidKeySet)
	}
	return newKeySet(active, append([]*Key{active}, verifyOnly...))
}

// NewVerifyKeySet returns a set that verifies with every key in keys and
// cannot sign: a server given it verifies tokens and never mints one (see
// [NewServer]). It keeps only the public half of an asymmetric key, so a
// private key passed by mistake is not held. An HMAC secret verifies and
// signs alike: a verify-only set keeps this package from minting with it,
// but whoever holds the secret can sign, so in a mesh use asymmetric keys
// and give the secret half to the signing service only. Key ids must be
// unique; keys must come from [NewKey]; at least one is needed.
func NewVerifyKeySet(keys ...*Key) (*KeySet, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrInvalidKeySet)
	}
	pub := make([]*Key, len(keys))
	for i, k := range keys {
		if !k.usable() {
			return nil, fmt.Errorf("%w: key %d was not made by NewKey", ErrInvalidKeySet, i)
		}
		pub[i] = k.verifyOnly()
	}
	return newKeySet(nil, pub)
}

// newKeySet builds a set of keys, whose first key is active unless active
// is nil.
func newKeySet(active *Key, keys []*Key) (*KeySet, error) {
	ks := &KeySet{active: active, byID: make(map[string]*Key, len(keys)), list: keys}
	for i, k := range keys {
		if active != nil {
			i-- // verify-only keys are numbered from 0 after the active one
		}
		if k == nil {
			return nil, fmt.Errorf("%w: nil key", ErrInvalidKeySet)
		}
		if !k.usable() {
			return nil, fmt.Errorf("%w: verify-only key %d was not made by NewKey", ErrInvalidKeySet, i)
		}
		if _, dup := ks.byID[k.id]; dup {
			return nil, fmt.Errorf("%w: duplicate key id %q", ErrInvalidKeySet, k.id)
		}
		ks.byID[k.id] = k
		if !slices.Contains(ks.algs, k.method.Alg()) {
			ks.algs = append(ks.algs, k.method.Alg())
		}
	}
	return ks, nil
}

// Active returns the signing key; nil for a set that cannot sign and for
// a nil or zero KeySet.
func (ks *KeySet) Active() *Key {
	if ks == nil {
		return nil
	}
	return ks.active
}

// CanSign reports whether the set has an active key: false for a set made
// by [NewVerifyKeySet] or [RemoteKeySet.KeySet], and for a nil or zero
// KeySet.
func (ks *KeySet) CanSign() bool { return ks != nil && ks.active.usable() }

// checkKeySet returns an [ErrInvalidKeySet] error unless ks was made by
// [NewKeySet], [NewVerifyKeySet] or [RemoteKeySet.KeySet]: a nil or zero
// KeySet has no key.
func checkKeySet(ks *KeySet) error {
	if ks == nil || ks.byID == nil || ks.active != nil && !ks.active.usable() {
		return fmt.Errorf("%w: nil key set or one not made by NewKeySet", ErrInvalidKeySet)
	}
	return nil
}

// keyFor enforces the header rules for a token of JOSE type typ, and
// returns the key to verify it with. parseJWS calls it
// where golang-jwt calls its key function: after decoding the header and
// the claims, before checking the signature. It serves access and refresh
// tokens alike. Duplicate header names were refused by readHeader.
func (ks *KeySet) keyFor(h joseHeader, typ string) (any, error) {
	if h.crit {
		return nil, errCritHeader
	}
	if !isType(h.typ, typ) {
		return nil, errWrongType
	}
	k := ks.byID[h.kid]
	if k == nil {
		if ks.remote == nil {
			return nil, errUnknownKey
		}
		var err error
		if k, err = ks.remote.key(h.kid); err != nil {
			return nil, err
		}
	}
	if h.alg != k.method.Alg() {
		return nil, errAlgMismatch
	}
	return k.verifyKey, nil
}
