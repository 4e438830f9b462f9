package interceptor

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// keysRSAKey is one 2048-bit RSA key shared by the tests of this package:
// generating it takes long enough under -race to do it only once.
var keysRSAKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, 2048)
})

func keysRSA(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := keysRSAKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keysEC(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keysEd(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keysSecret(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewKey_HMACSecretLength(t *testing.T) {
	for _, tc := range []struct {
		method *jwt.SigningMethodHMAC
		n      int
		ok     bool
	}{
		{jwt.SigningMethodHS256, 0, false},
		{jwt.SigningMethodHS256, 31, false},
		{jwt.SigningMethodHS256, 32, true},
		{jwt.SigningMethodHS384, 32, false},
		{jwt.SigningMethodHS384, 47, false},
		{jwt.SigningMethodHS384, 48, true},
		{jwt.SigningMethodHS512, 48, false},
		{jwt.SigningMethodHS512, 63, false},
		{jwt.SigningMethodHS512, 64, true},
		{jwt.SigningMethodHS512, 65, true},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.method.Alg(), tc.n), func(t *testing.T) {
			k, err := NewKey("k", tc.method, keysSecret(t, tc.n))
			if tc.ok {
				if err != nil || k == nil {
					t.Fatalf("NewKey err = %v, key %t; want a key", err, k != nil)
				}
				if got, want := k.Algorithm(), tc.method.Alg(); got != want {
					t.Errorf("Algorithm() = %q, want %q", got, want)
				}
				if !k.CanSign() {
					t.Errorf("CanSign() = false, want true for an HMAC secret")
				}
				return
			}
			if !errors.Is(err, ErrKeyTooShort) {
				t.Fatalf("NewKey err = %v, want ErrKeyTooShort", err)
			}
			if k != nil {
				t.Errorf("NewKey returned a key with the error")
			}
		})
	}
}

// keysForeignMethod is a signing method that is not golang-jwt's own but
// claims one of its names.
type keysForeignMethod struct{ alg string }

func (m keysForeignMethod) Alg() string                    { return m.alg }
func (keysForeignMethod) Sign(string, any) ([]byte, error) { return []byte("sig"), nil }
func (keysForeignMethod) Verify(string, []byte, any) error { return nil }

func TestNewKey_Refusals(t *testing.T) {
	rsaKey := keysRSA(t)
	p256, p384 := keysEC(t, elliptic.P256()), keysEC(t, elliptic.P384())
	ed := keysEd(t)
	secret := keysSecret(t, 64)
	// A 2047-bit modulus: NewKey only reads the public modulus, so a
	// synthetic public key is enough to probe the bound.
	short := &rsa.PublicKey{N: new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 2046), big.NewInt(1)), E: 65537}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		id     string
		method jwt.SigningMethod
		key    any
		want   error
	}{
		{"ES256 with P-384 private", "k", jwt.SigningMethodES256, p384, ErrKeyType},
		{"ES256 with P-384 public", "k", jwt.SigningMethodES256, &p384.PublicKey, ErrKeyType},
		{"ES384 with P-256 private", "k", jwt.SigningMethodES384, p256, ErrKeyType},
		{"ES384 with P-256 public", "k", jwt.SigningMethodES384, &p256.PublicKey, ErrKeyType},
		{"RS256 with 1024-bit private", "k", jwt.SigningMethodRS256, small, ErrKeyTooShort},
		{"PS256 with 1024-bit public", "k", jwt.SigningMethodPS256, &small.PublicKey, ErrKeyTooShort},
		{"RS256 with 2047-bit public", "k", jwt.SigningMethodRS256, short, ErrKeyTooShort},
		{"HS256 with RSA key", "k", jwt.SigningMethodHS256, rsaKey, ErrKeyType},
		{"HS256 with string secret", "k", jwt.SigningMethodHS256, string(secret), ErrKeyType},
		{"ES256 with RSA key", "k", jwt.SigningMethodES256, rsaKey, ErrKeyType},
		{"ES256 with ecdsa value not pointer", "k", jwt.SigningMethodES256, *p256, ErrKeyType},
		{"ES256 with Ed25519 key", "k", jwt.SigningMethodES256, ed, ErrKeyType},
		{"EdDSA with ECDSA key", "k", jwt.SigningMethodEdDSA, p256, ErrKeyType},
		{"EdDSA with raw []byte", "k", jwt.SigningMethodEdDSA, []byte(ed), ErrKeyType},
		{"EdDSA with short private", "k", jwt.SigningMethodEdDSA, ed[:32], ErrKeyType},
		{"EdDSA with pointer", "k", jwt.SigningMethodEdDSA, &ed, ErrKeyType},
		{"RS256 with ECDSA key", "k", jwt.SigningMethodRS256, p256, ErrKeyType},
		{"PS256 with HMAC secret", "k", jwt.SigningMethodPS256, secret, ErrKeyType},
		{"RS256 with empty public", "k", jwt.SigningMethodRS256, &rsa.PublicKey{}, ErrKeyType},
		{"none", "k", jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, ErrUnsupportedAlgorithm},
		{"RS384", "k", jwt.SigningMethodRS384, rsaKey, ErrUnsupportedAlgorithm},
		{"RS512", "k", jwt.SigningMethodRS512, rsaKey, ErrUnsupportedAlgorithm},
		{"PS384", "k", jwt.SigningMethodPS384, rsaKey, ErrUnsupportedAlgorithm},
		{"ES512", "k", jwt.SigningMethodES512, keysEC(t, elliptic.P521()), ErrUnsupportedAlgorithm},
		{"nil method", "k", nil, secret, ErrUnsupportedAlgorithm},
		{"empty kid", "", jwt.SigningMethodHS256, secret, ErrInvalidKeySet},
		{"HMAC nil key", "k", jwt.SigningMethodHS256, nil, ErrKeyType},
		{"HMAC nil []byte", "k", jwt.SigningMethodHS256, []byte(nil), ErrKeyTooShort},
		{"ECDSA nil key", "k", jwt.SigningMethodES256, nil, ErrKeyType},
		{"ECDSA typed nil private", "k", jwt.SigningMethodES256, (*ecdsa.PrivateKey)(nil), ErrKeyType},
		{"ECDSA typed nil public", "k", jwt.SigningMethodES256, (*ecdsa.PublicKey)(nil), ErrKeyType},
		{"EdDSA nil key", "k", jwt.SigningMethodEdDSA, nil, ErrKeyType},
		{"EdDSA typed nil private", "k", jwt.SigningMethodEdDSA, ed25519.PrivateKey(nil), ErrKeyType},
		{"EdDSA typed nil public", "k", jwt.SigningMethodEdDSA, ed25519.PublicKey(nil), ErrKeyType},
		{"RSA nil key", "k", jwt.SigningMethodRS256, nil, ErrKeyType},
		{"RSA typed nil private", "k", jwt.SigningMethodRS256, (*rsa.PrivateKey)(nil), ErrKeyType},
		{"RSA typed nil public", "k", jwt.SigningMethodPS256, (*rsa.PublicKey)(nil), ErrKeyType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := NewKey(tc.id, tc.method, tc.key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewKey err = %v, want %v", err, tc.want)
			}
			if k != nil {
				t.Errorf("NewKey returned a key with the error")
			}
		})
	}
}

// TestNewKey_ForeignMethod: NewKey documents that it accepts golang-jwt's
// own methods. A method of another type that borrows one of their names
// must be refused, never bound (the verifier would check its tokens with
// golang-jwt's method of that name) and never make NewKey panic.
func TestNewKey_ForeignMethod(t *testing.T) {
	rsaKey := keysRSA(t)
	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		key    any
	}{
		{"foreign type named HS256", keysForeignMethod{"HS256"}, keysSecret(t, 32)},
		{"foreign type named ES256", keysForeignMethod{"ES256"}, keysEC(t, elliptic.P256())},
		{"foreign type named EdDSA", keysForeignMethod{"EdDSA"}, keysEd(t)},
		{"foreign type named RS256", keysForeignMethod{"RS256"}, rsaKey},
		{"HMAC-SHA1 named HS256", &jwt.SigningMethodHMAC{Name: "HS256", Hash: crypto.SHA1}, keysSecret(t, 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				k   *Key
				err error
			)
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("NewKey panicked: %v", r)
					}
				}()
				k, err = NewKey("k", tc.method, tc.key)
			}()
			if !errors.Is(err, ErrUnsupportedAlgorithm) {
				t.Errorf("NewKey returned key %t, err %v; want ErrUnsupportedAlgorithm", k != nil, err)
			}
		})
	}
}

func TestNewKey_CopiesSecret(t *testing.T) {
	secret := keysSecret(t, 32)
	orig := bytes.Clone(secret)
	k := keysMust(t, "k1", jwt.SigningMethodHS256, secret)
	e := newEnv(t, withKeys(keysSet(t, k)))
	s, err := e.server.StartSession(context.Background(), "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(secret) // the caller reuses its buffer
	client := testpb.NewTestServiceClient(e.dial(t))
	if _, err := unaryCall(t, client, s.AccessToken); err != nil {
		t.Fatalf("call after the caller cleared its secret buffer: %v", err)
	}
	// And the token is signed with the original secret, not the cleared one.
	if _, err := jwt.Parse(s.AccessToken, func(*jwt.Token) (any, error) { return orig, nil },
		jwt.WithTimeFunc(e.clock.Now)); err != nil {
		t.Errorf("token does not verify with the original secret: %v", err)
	}
}

func TestNewKeySet_Refusals(t *testing.T) {
	ec := keysEC(t, elliptic.P256())
	ed := keysEd(t)
	rsaKey := keysRSA(t)
	hs := keysMust(t, "hs", jwt.SigningMethodHS256, keysSecret(t, 32))
	hs2 := keysMust(t, "hs", jwt.SigningMethodHS512, keysSecret(t, 64))
	ecPub := keysMust(t, "ec-pub", jwt.SigningMethodES256, &ec.PublicKey)
	edPub := keysMust(t, "ed-pub", jwt.SigningMethodEdDSA, ed.Public())
	rsaPub := keysMust(t, "rsa-pub", jwt.SigningMethodRS256, &rsaKey.PublicKey)
	for _, k := range []*Key{ecPub, edPub, rsaPub} {
		if k.CanSign() {
			t.Errorf("%s public key: CanSign() = true, want false", k.Algorithm())
		}
	}
	for _, tc := range []struct {
		name       string
		active     *Key
		verifyOnly []*Key
	}{
		{"nil active", nil, nil},
		{"ES256 public active", ecPub, nil},
		{"EdDSA public active", edPub, nil},
		{"RS256 public active", rsaPub, nil},
		{"only public keys", ecPub, []*Key{edPub, rsaPub}},
		{"duplicate kid", hs, []*Key{hs2}},
		{"active repeated", hs, []*Key{hs}},
		{"duplicate among verify-only", hs, []*Key{ecPub, keysMust(t, "ec-pub", jwt.SigningMethodEdDSA, ed.Public())}},
		{"nil verify-only", hs, []*Key{nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := NewKeySet(tc.active, tc.verifyOnly...)
			if !errors.Is(err, ErrInvalidKeySet) {
				t.Fatalf("NewKeySet err = %v, want ErrInvalidKeySet", err)
			}
			if ks != nil {
				t.Errorf("NewKeySet returned a set with the error")
			}
		})
	}
	if _, err := NewServer(nil); !errors.Is(err, ErrInvalidKeySet) {
		t.Errorf("NewServer(nil) err = %v, want ErrInvalidKeySet", err)
	}
}

// TestKeys_RoundTrip: for every supported algorithm a session started by
// the server authenticates a unary call through gRPC, and the renewal it
// hands back is signed with the same key and authenticates too.
func TestKeys_RoundTrip(t *testing.T) {
	rsaKey := keysRSA(t)
	for _, tc := range []struct {
		method jwt.SigningMethod
		key    any
	}{
		{jwt.SigningMethodHS256, keysSecret(t, 32)},
		{jwt.SigningMethodHS384, keysSecret(t, 48)},
		{jwt.SigningMethodHS512, keysSecret(t, 64)},
		{jwt.SigningMethodES256, keysEC(t, elliptic.P256())},
		{jwt.SigningMethodES384, keysEC(t, elliptic.P384())},
		{jwt.SigningMethodEdDSA, keysEd(t)},
		{jwt.SigningMethodRS256, rsaKey},
		{jwt.SigningMethodPS256, rsaKey},
	} {
		alg := tc.method.Alg()
		t.Run(alg, func(t *testing.T) {
			kid := "kid-" + alg
			e := newEnv(t, withKeys(keysSet(t, keysMust(t, kid, tc.method, tc.key))))
			client := testpb.NewTestServiceClient(e.dial(t))
			s := e.startSession(t, map[string]any{"role": "admin"})
			h := decodeToken(t, s.AccessToken).header
			if h["alg"] != alg || h["kid"] != kid || h["typ"] != "at+jwt" {
				t.Errorf("header = %v, want alg %q kid %q typ at+jwt", h, alg, kid)
			}
			renewed, err := unaryCall(t, client, s.AccessToken)
			if err != nil {
				t.Fatalf("first call: %v", err)
			}
			if renewed != "" {
				t.Errorf("fresh token renewed at once")
			}
			if got := e.svc.calls.Load(); got != 1 {
				t.Fatalf("handler calls = %d, want 1", got)
			}
			if c := e.svc.lastClaims.Load(); c == nil || c.Subject != "alice" || c.SessionID != s.SessionID {
				t.Fatalf("handler claims = %+v, want sub alice sid %s", c, s.SessionID)
			}
			e.clock.Advance(13 * time.Hour)
			renewed, err = unaryCall(t, client, s.AccessToken)
			if err != nil {
				t.Fatalf("call in the renewal window: %v", err)
			}
			if renewed == "" {
				t.Fatal("no renewed token in the renewal window")
			}
			if h := decodeToken(t, renewed).header; h["alg"] != alg || h["kid"] != kid {
				t.Errorf("renewed header = %v, want alg %q kid %q", h, alg, kid)
			}
			if _, err := unaryCall(t, client, renewed); err != nil {
				t.Fatalf("call with the renewed token: %v", err)
			}
			if got := e.svc.calls.Load(); got != 3 {
				t.Errorf("handler calls = %d, want 3", got)
			}
		})
	}
}

// TestKeys_VerifyOnlyPublic: a server holding only the public half of
// another server's key verifies that server's tokens.
func TestKeys_VerifyOnlyPublic(t *testing.T) {
	rsaKey := keysRSA(t)
	ec := keysEC(t, elliptic.P384())
	ed := keysEd(t)
	for _, tc := range []struct {
		method    jwt.SigningMethod
		priv, pub any
	}{
		{jwt.SigningMethodES384, ec, &ec.PublicKey},
		{jwt.SigningMethodEdDSA, ed, ed.Public()},
		{jwt.SigningMethodRS256, rsaKey, &rsaKey.PublicKey},
		{jwt.SigningMethodPS256, rsaKey, &rsaKey.PublicKey},
	} {
		t.Run(tc.method.Alg(), func(t *testing.T) {
			pub := keysMust(t, "issuer", tc.method, tc.pub)
			if _, err := NewKeySet(pub); !errors.Is(err, ErrInvalidKeySet) {
				t.Fatalf("NewKeySet(public only) err = %v, want ErrInvalidKeySet", err)
			}
			minter, err := NewServer(keysSet(t, keysMust(t, "issuer", tc.method, tc.priv)), WithClock(func() time.Time { return t0 }))
			if err != nil {
				t.Fatal(err)
			}
			s, err := minter.StartSession(context.Background(), "alice", nil)
			if err != nil {
				t.Fatal(err)
			}
			local := keysMust(t, "local", jwt.SigningMethodHS256, keysSecret(t, 32))
			e := newEnv(t, withKeys(keysSet(t, local, pub)))
			client := testpb.NewTestServiceClient(e.dial(t))
			if _, err := unaryCall(t, client, s.AccessToken); err != nil {
				t.Fatalf("verify-only key: %v", err)
			}
			if got := e.svc.calls.Load(); got != 1 {
				t.Errorf("handler calls = %d, want 1", got)
			}
			// Without the public key the same token is a stranger's.
			if err := e.server.RotateKeys(keysSet(t, local)); err != nil {
				t.Fatal(err)
			}
			_, err = unaryCall(t, client, s.AccessToken)
			wantReason(t, err, ReasonTokenInvalid)
			if got := e.svc.calls.Load(); got != 1 {
				t.Errorf("handler calls = %d after rejection, want 1", got)
			}
		})
	}
}

// TestKeys_Rotation: a token signed with the old key k1 is still accepted
// while k1 is kept for verification, its renewal is signed with the new
// active key k2, and once k1 is dropped the old token is rejected while the
// renewed one keeps the session alive.
func TestKeys_Rotation(t *testing.T) {
	k1 := keysMust(t, "k1", jwt.SigningMethodHS256, keysSecret(t, 32))
	k2 := keysMust(t, "k2", jwt.SigningMethodEdDSA, keysEd(t))
	e := newEnv(t, withKeys(keysSet(t, k1)))
	client := testpb.NewTestServiceClient(e.dial(t))
	s := e.startSession(t, nil)
	if kid := decodeToken(t, s.AccessToken).header["kid"]; kid != "k1" {
		t.Fatalf("first token kid = %v, want k1", kid)
	}

	if err := e.server.RotateKeys(keysSet(t, k2, k1)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(13 * time.Hour) // into the renewal window
	renewed, err := unaryCall(t, client, s.AccessToken)
	if err != nil {
		t.Fatalf("k1 token under (k2, k1): %v", err)
	}
	if renewed == "" {
		t.Fatal("no renewal in the renewal window")
	}
	if h := decodeToken(t, renewed).header; h["kid"] != "k2" || h["alg"] != "EdDSA" {
		t.Errorf("renewed header = %v, want kid k2 alg EdDSA", h)
	}
	if got := e.svc.calls.Load(); got != 1 {
		t.Fatalf("handler calls = %d, want 1", got)
	}

	if err := e.server.RotateKeys(keysSet(t, k2)); err != nil {
		t.Fatal(err)
	}
	_, err = unaryCall(t, client, s.AccessToken)
	wantReason(t, err, ReasonTokenInvalid)
	if got := e.svc.calls.Load(); got != 1 {
		t.Errorf("handler calls = %d after the k1 token was rejected, want 1", got)
	}
	if _, err := unaryCall(t, client, renewed); err != nil {
		t.Fatalf("k2 renewal after k1 was dropped: %v", err)
	}
	if got := e.svc.calls.Load(); got != 2 {
		t.Errorf("handler calls = %d, want 2", got)
	}
	if err := e.server.RotateKeys(nil); !errors.Is(err, ErrInvalidKeySet) {
		t.Errorf("RotateKeys(nil) err = %v, want ErrInvalidKeySet", err)
	}
}

// TestKeys_ZeroKey: a Key not made by NewKey (new(Key), &Key{}) is refused
// with ErrInvalidKeySet wherever a *Key is accepted, and its methods do not
// panic. A copy of a real Key is still a Key.
func TestKeys_ZeroKey(t *testing.T) {
	hs := keysMust(t, "hs", jwt.SigningMethodHS256, keysSecret(t, 32))
	ecPub := keysMust(t, "ec-pub", jwt.SigningMethodES256, &keysEC(t, elliptic.P256()).PublicKey)
	for _, tc := range []struct {
		name       string
		active     *Key
		verifyOnly []*Key
	}{
		{"zero active", &Key{}, nil},
		{"new(Key) active", new(Key), []*Key{hs}},
		{"zero verify-only", hs, []*Key{&Key{}}},
		{"zero verify-only after a real one", hs, []*Key{ecPub, new(Key)}},
		{"zero active and verify-only", &Key{}, []*Key{&Key{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ks *KeySet
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("NewKeySet panicked: %v", r)
					}
				}()
				ks, err = NewKeySet(tc.active, tc.verifyOnly...)
			}()
			if !errors.Is(err, ErrInvalidKeySet) {
				t.Fatalf("NewKeySet err = %v, want ErrInvalidKeySet", err)
			}
			if ks != nil {
				t.Error("NewKeySet returned a set with the error")
			}
		})
	}

	t.Run("methods", func(t *testing.T) {
		for _, k := range []*Key{nil, {}} {
			if id, alg, sign := k.ID(), k.Algorithm(), k.CanSign(); id != "" || alg != "" || sign {
				t.Errorf("%#v: ID, Algorithm, CanSign = %q, %q, %v; want \"\", \"\", false", k, id, alg, sign)
			}
		}
	})

	t.Run("copy of a real key", func(t *testing.T) {
		cp := *hs
		ks, err := NewKeySet(&cp)
		if err != nil {
			t.Fatalf("NewKeySet(copy of a key) = %v, want nil", err)
		}
		e := newEnv(t, withKeys(ks))
		client := testpb.NewTestServiceClient(e.dial(t))
		if _, err := unaryCall(t, client, e.startSession(t, nil).AccessToken); err != nil {
			t.Fatalf("call with a token signed by the copy: %v", err)
		}
	})
}

// TestKeys_ZeroKeySet: NewServer and RotateKeys refuse a nil or zero
// KeySet with ErrInvalidKeySet instead of panicking on the first token
// they sign, and a refused rotation keeps the old keys.
func TestKeys_ZeroKeySet(t *testing.T) {
	for _, tc := range []struct {
		name string
		ks   *KeySet
	}{
		{"nil", nil},
		{"zero", &KeySet{}},
		{"new(KeySet)", new(KeySet)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if s, err := NewServer(tc.ks); !errors.Is(err, ErrInvalidKeySet) || s != nil {
				t.Errorf("NewServer = %v, %v; want nil, ErrInvalidKeySet", s, err)
			}
			e := newEnv(t)
			if err := e.server.RotateKeys(tc.ks); !errors.Is(err, ErrInvalidKeySet) {
				t.Errorf("RotateKeys err = %v, want ErrInvalidKeySet", err)
			}
			if got := tc.ks.Active(); got != nil {
				t.Errorf("Active() = %v, want nil", got)
			}
			s := e.startSession(t, nil) // still signs with the old keys
			if _, err := unaryCall(t, srvClient(t, e), s.AccessToken); err != nil {
				t.Errorf("call after the refused rotation: %v", err)
			}
		})
	}
}
