package interceptor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// remJWKS is a JWKS endpoint over TLS whose answer the test sets. It
// counts the requests that reach it.
type remJWKS struct {
	srv     *httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	h       http.Handler
}

func newRemJWKS(t testing.TB, h http.Handler) *remJWKS {
	t.Helper()
	j := &remJWKS{h: h}
	j.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		j.mu.Lock()
		h := j.h
		j.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *remJWKS) set(h http.Handler) {
	j.mu.Lock()
	j.h = h
	j.mu.Unlock()
}

func (j *remJWKS) url() string { return j.srv.URL + JWKSPath }

// remStatic serves body with status 200 and the header pairs kv.
func remStatic(body string, kv ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(kv); i += 2 {
			w.Header().Set(kv[i], kv[i+1])
		}
		_, _ = w.Write([]byte(body))
	})
}

// remDown answers every request with 503.
var remDown = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "down", http.StatusServiceUnavailable)
})

// remSet returns a RemoteKeySet reading j on clock's time.
func remSet(t testing.TB, j *remJWKS, clock *fakeClock, opts ...RemoteKeySetOption) *RemoteKeySet {
	t.Helper()
	r, err := NewRemoteKeySet(j.url(), append([]RemoteKeySetOption{
		WithHTTPClient(j.srv.Client()), WithRemoteClock(clock.Now),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// remIdle waits until r has no fetch in progress.
func remIdle(r *RemoteKeySet) {
	r.mu.Lock()
	f := r.inflight
	r.mu.Unlock()
	if f != nil {
		<-f.done
	}
}

// remMesh is a signing server ("auth") that publishes its JWKS over TLS,
// and a verify-only server ("svc") that reads it, on one fake clock.
type remMesh struct {
	clock     *fakeClock
	auth, svc *testEnv
	jwks      *remJWKS
	remote    *RemoteKeySet
	authC     testpb.TestServiceClient
	svcC      testpb.TestServiceClient
}

func newRemMesh(t testing.TB, authKeys *KeySet, ropts []RemoteKeySetOption, sopts ...ServerOption) *remMesh {
	t.Helper()
	m := &remMesh{clock: newFakeClock(t0)}
	m.auth = newEnv(t, withKeys(authKeys), withClock(m.clock), withServerOptions(sopts...))
	h, err := m.auth.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	m.jwks = newRemJWKS(t, h)
	m.remote = remSet(t, m.jwks, m.clock, ropts...)
	m.svc = newEnv(t, withKeys(m.remote.KeySet()), withClock(m.clock), withServerOptions(sopts...))
	m.authC, m.svcC = srvClient(t, m.auth), srvClient(t, m.svc)
	return m
}

// remES256 returns an ES256 signing key with id kid.
func remES256(t testing.TB, kid string) *Key {
	t.Helper()
	return keysMust(t, kid, jwt.SigningMethodES256, keysEC(t, elliptic.P256()))
}

// remForge signs the claims of tok again under k, with k's kid and alg.
func remForge(t testing.TB, k *Key, tok string) string {
	t.Helper()
	forged, err := signCompact(k, decodeToken(t, tok).claims, accessTokenType)
	if err != nil {
		t.Fatal(err)
	}
	return forged
}

// remWantUnavailable fails the test unless err is codes.Unavailable with
// no slidejwt reason, which no client takes for a reason to log in again.
func remWantUnavailable(t testing.TB, err error) {
	t.Helper()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want codes.Unavailable", err)
	}
	if r, ok := ReasonOf(err); ok {
		t.Fatalf("Unavailable carries reason %v, want none", r)
	}
}

// TestRemote_VerifiesAndBindsAlg: a verify-only server reading the JWKS
// accepts the signing server's tokens after one fetch, serves repeats from
// its cache without fetching, and refuses the algorithm-confusion forgeries
// (HS256 with the public key as secret, another alg under the kid, none)
// without fetching either.
func TestRemote_VerifiesAndBindsAlg(t *testing.T) {
	k := remES256(t, "auth-1")
	m := newRemMesh(t, keysSet(t, k), nil)
	tok := m.auth.startSession(t, nil).AccessToken
	for i := range 3 {
		if _, err := unaryCall(t, m.svcC, tok); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := m.jwks.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	if hits := m.svc.events.kinds(EventAuthenticated); len(hits) != 3 || hits[2].Cache != CacheHit {
		t.Fatalf("events %v, want 3 authenticated, the last a cache hit", hits)
	}

	pubBytes, err := k.verifyKey.(*ecdsa.PublicKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	hsKey := keysMust(t, "auth-1", jwt.SigningMethodHS256, pubBytes)
	es384 := keysMust(t, "auth-1", jwt.SigningMethodES384, keysEC(t, elliptic.P384()))
	parts := strings.Split(tok, ".")
	hdrNone := b64url([]byte(`{"alg":"none","kid":"auth-1","typ":"at+jwt"}`))
	for name, forged := range map[string]string{
		"HS256 with the public key as secret": remForge(t, hsKey, tok),
		"ES384 under an ES256 kid":            remForge(t, es384, tok),
		"alg none":                            hdrNone + "." + parts[1] + ".",
	} {
		_, err := unaryCall(t, m.svcC, forged)
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: err %v, want Unauthenticated", name, err)
		}
		wantReason(t, err, ReasonTokenInvalid)
	}
	if n := m.jwks.fetches.Load(); n != 1 {
		t.Errorf("%d fetches after the forgeries, want still 1", n)
	}
	if n := m.svc.svc.calls.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
}

// TestRemote_UnknownKidFlood: hundreds of concurrent tokens naming kids
// the JWKS does not have cost no fetch within the refetch interval of the
// last one, and exactly one, shared, from the interval on. Each is
// TOKEN_INVALID, no handler runs, and the real token still works
// throughout.
func TestRemote_UnknownKidFlood(t *testing.T) {
	m := newRemMesh(t, keysSet(t, remES256(t, "auth-1")), nil)
	tok := m.auth.startSession(t, nil).AccessToken
	if _, err := unaryCall(t, m.svcC, tok); err != nil {
		t.Fatal(err)
	}
	attacker := keysEC(t, elliptic.P256())
	const n = 200
	bogus := make([]string, n)
	for i := range bogus {
		bogus[i] = remForge(t, keysMust(t, fmt.Sprintf("bogus-%d", i), jwt.SigningMethodES256, attacker), tok)
	}
	flood := func(step string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n+1)
		for _, b := range bogus {
			wg.Go(func() {
				_, err := unaryCall(t, m.svcC, b)
				if r, ok := ReasonOf(err); !ok || r != ReasonTokenInvalid {
					errs <- fmt.Errorf("bogus kid: %v, want TOKEN_INVALID", err)
				}
			})
		}
		wg.Go(func() {
			if _, err := unaryCall(t, m.svcC, tok); err != nil {
				errs <- fmt.Errorf("the real token during the flood: %v", err)
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", step, err)
		}
	}
	before := m.jwks.fetches.Load()
	flood("at the fetch")
	m.clock.Advance(DefaultJWKSRefetchInterval - time.Nanosecond)
	flood("one tick before the interval")
	if got := m.jwks.fetches.Load() - before; got != 0 {
		t.Fatalf("%d fetches within the refetch interval, want 0", got)
	}
	m.clock.Advance(time.Nanosecond)
	flood("at the interval")
	if got := m.jwks.fetches.Load() - before; got != 1 {
		t.Fatalf("%d fetches for a flood at the interval, want 1", got)
	}
	if calls := m.svc.svc.calls.Load(); calls != 4 {
		t.Errorf("handler ran %d times, want 4 (the real token's calls only)", calls)
	}
}

// remPrivBytes returns the private scalar of k, as a JWK's "d" holds it.
func remPrivBytes(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// remJWK returns k's JWK as a map, to be altered.
func remJWK(t testing.TB, k *Key) map[string]any {
	t.Helper()
	raw, err := k.JWK()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// remWith returns a copy of j with the members of set set (nil deletes).
func remWith(j map[string]any, set map[string]any) map[string]any {
	out := make(map[string]any, len(j))
	for k, v := range j {
		out[k] = v
	}
	for k, v := range set {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

func remJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestParseJWK_Hostile: each entry of a JWKS is bound to one algorithm, or
// refused for the reason named; a private member, a symmetric key, alg
// none or HS256, a key for another use, an alg that does not fit the kty
// or crv, an RSA key without alg, a point off its curve or of another
// curve's size, and members matched only case-insensitively are refused.
func TestParseJWK_Hostile(t *testing.T) {
	p256, p384 := keysEC(t, elliptic.P256()), keysEC(t, elliptic.P384())
	es := remJWK(t, keysMust(t, "es", jwt.SigningMethodES256, p256))
	es384 := remJWK(t, keysMust(t, "es384", jwt.SigningMethodES384, p384))
	ed := remJWK(t, keysMust(t, "ed", jwt.SigningMethodEdDSA, keysEd(t)))
	rs := remJWK(t, keysMust(t, "rs", jwt.SigningMethodRS256, keysRSA(t)))
	y := []byte(es["y"].(string))
	y[len(y)-2] ^= 1 // a point off the curve (base64url still valid: flips within the alphabet)
	offCurve := string(y)
	if offCurve == es["y"] {
		t.Fatal("the y tweak did nothing")
	}
	short := make([]byte, 128)
	short[0] = 0xC1 // a 1024-bit modulus
	long := make([]byte, maxJWKRSABits/8+1)
	long[0] = 1
	d := b64url(remPrivBytes(t, p256))

	for _, tc := range []struct {
		name    string
		jwk     any
		wantAlg string // "" when refused
		wantErr error
	}{
		{"EC P-256", es, "ES256", nil},
		{"EC P-256 without alg", remWith(es, map[string]any{"alg": nil}), "ES256", nil},
		{"EC P-384 without alg", remWith(es384, map[string]any{"alg": nil}), "ES384", nil},
		{"OKP Ed25519 without alg", remWith(ed, map[string]any{"alg": nil}), "EdDSA", nil},
		{"RSA RS256", rs, "RS256", nil},
		{"RSA PS256", remWith(rs, map[string]any{"alg": "PS256"}), "PS256", nil},
		{"without use", remWith(es, map[string]any{"use": nil}), "ES256", nil},
		{"key_ops verify", remWith(es, map[string]any{"key_ops": []string{"verify"}}), "ES256", nil},
		{"extra members ignored", remWith(es, map[string]any{"x5t": "abc", "ext": true}), "ES256", nil},

		{"EC with alg RS256", remWith(es, map[string]any{"alg": "RS256"}), "", errJWKAlg},
		{"EC P-256 with alg ES384", remWith(es, map[string]any{"alg": "ES384"}), "", errJWKAlg},
		{"OKP with alg ES256", remWith(ed, map[string]any{"alg": "ES256"}), "", errJWKAlg},
		{"RSA with alg EdDSA", remWith(rs, map[string]any{"alg": "EdDSA"}), "", errJWKAlg},
		{"RSA with alg RS512", remWith(rs, map[string]any{"alg": "RS512"}), "", errJWKAlg},
		{"alg none", remWith(es, map[string]any{"alg": "none"}), "", errJWKAlg},
		{"alg HS256 on an EC key", remWith(es, map[string]any{"alg": "HS256"}), "", errJWKAlg},
		{"alg not a string", remWith(es, map[string]any{"alg": 7}), "", errJWKAlg},
		{"oct HS256 secret", map[string]any{"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64url(testSecret(t))}, "", errJWKSymmetric},
		{"oct without k", map[string]any{"kty": "oct", "kid": "hs", "alg": "HS256"}, "", errJWKSymmetric},
		{"RSA without alg", remWith(rs, map[string]any{"alg": nil}), "", errJWKNoAlg},
		{"neither alg nor kty", remWith(es, map[string]any{"alg": nil, "kty": nil}), "", errJWKKty},
		{"kty RSA-ish", remWith(es, map[string]any{"kty": "rsa"}), "", errJWKKty},
		{"EC P-521", remWith(es, map[string]any{"crv": "P-521", "alg": nil}), "", errJWKCurve},
		{"EC without crv", remWith(es, map[string]any{"crv": nil}), "", errJWKCurve},
		{"OKP X25519", remWith(ed, map[string]any{"crv": "X25519", "alg": nil}), "", errJWKCurve},
		{"EC P-384 point as P-256", remWith(es384, map[string]any{"crv": "P-256", "alg": "ES256"}), "", errJWKMember},
		{"EC P-256 point as P-384", remWith(es, map[string]any{"crv": "P-384", "alg": "ES384"}), "", errJWKMember},
		{"EC point off the curve", remWith(es, map[string]any{"y": offCurve}), "", errJWKMember},
		{"EC x padded", remWith(es, map[string]any{"x": es["x"].(string) + "="}), "", errJWKMember},
		{"EC x with a line break", remWith(es, map[string]any{"x": es["x"].(string)[:10] + "\n" + es["x"].(string)[10:]}), "", errJWKMember},
		{"EC x standard base64", remWith(es, map[string]any{"x": strings.NewReplacer("-", "+", "_", "/").Replace(es["x"].(string)) + "+"}), "", errJWKMember},
		{"EC without y", remWith(es, map[string]any{"y": nil}), "", errJWKMember},
		{"OKP x short", remWith(ed, map[string]any{"x": b64url(make([]byte, 31))}), "", errJWKMember},
		{"RSA 1024 bits", remWith(rs, map[string]any{"n": b64url(short)}), "", ErrKeyTooShort},
		{"RSA modulus too large", remWith(rs, map[string]any{"n": b64url(long)}), "", errJWKMember},
		{"RSA e even", remWith(rs, map[string]any{"e": b64url([]byte{1, 0, 0})}), "", errJWKMember},
		{"RSA e 1", remWith(rs, map[string]any{"e": b64url([]byte{1})}), "", errJWKMember},
		{"RSA e too long", remWith(rs, map[string]any{"e": b64url([]byte{1, 0, 0, 0, 1})}), "", errJWKMember},
		{"EC with d", remWith(es, map[string]any{"d": d}), "", errJWKPrivate},
		{"OKP with d", remWith(ed, map[string]any{"d": d}), "", errJWKPrivate},
		{"RSA with p", remWith(rs, map[string]any{"p": "AQAB"}), "", errJWKPrivate},
		{"d of another type", remWith(es, map[string]any{"d": 1}), "", errJWKPrivate},
		{"use enc", remWith(es, map[string]any{"use": "enc"}), "", errJWKUse},
		{"use empty", remWith(es, map[string]any{"use": ""}), "", errJWKUse},
		{"use not a string", remWith(es, map[string]any{"use": []string{"sig"}}), "", errJWKUse},
		{"key_ops encrypt", remWith(es, map[string]any{"key_ops": []string{"encrypt"}}), "", errJWKOps},
		{"key_ops not a list", remWith(es, map[string]any{"key_ops": "verify"}), "", errJWKOps},
		{"no kid", remWith(es, map[string]any{"kid": nil}), "", errJWKNoKid},
		{"empty kid", remWith(es, map[string]any{"kid": ""}), "", errJWKNoKid},
		{"kid not a string", remWith(es, map[string]any{"kid": 1}), "", errJWKNoKid},
		{"KID in capitals only", remWith(es, map[string]any{"kid": nil, "KID": "es"}), "", errJWKNoKid},
		{"X in capitals only", remWith(es, map[string]any{"x": nil, "X": es["x"]}), "", errJWKMember},
		{"not an object", []any{es}, "", errJWKNotObject},
		{"null", nil, "", errJWKNotObject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, _, err := parseJWK(remJSON(t, tc.jwk))
			if tc.wantErr == nil {
				if err != nil || k == nil {
					t.Fatalf("parseJWK = %v, want a key", err)
				}
				if k.Algorithm() != tc.wantAlg || k.CanSign() {
					t.Fatalf("key bound to %q, CanSign %v; want %q, false", k.Algorithm(), k.CanSign(), tc.wantAlg)
				}
				return
			}
			if k != nil || !errors.Is(err, tc.wantErr) {
				t.Fatalf("parseJWK = %v, %v; want no key, %v", k, err, tc.wantErr)
			}
		})
	}
}

// TestParseJWKS_Document: a document that is not a JSON object with a
// "keys" array, or names a member twice anywhere, is refused as a whole;
// a kid that two entries share is refused in both, the other keys kept.
func TestParseJWKS_Document(t *testing.T) {
	a := remJWK(t, remES256(t, "a"))
	b := remJWK(t, remES256(t, "b"))
	aAgain := remJWK(t, keysMust(t, "a", jwt.SigningMethodEdDSA, keysEd(t)))
	good := string(remJSON(t, map[string]any{"keys": []any{a}}))
	for _, tc := range []struct {
		name string
		doc  string
	}{
		{"HTML", "<html><body>502 Bad Gateway</body></html>"},
		{"empty", ""},
		{"array", "[" + good + "]"},
		{"null", "null"},
		{"no keys", `{"kid":"a"}`},
		{"keys an object", `{"keys":{}}`},
		{"keys null", `{"keys":null}`},
		{"keys a string", `{"keys":"[]"}`},
		{"keys twice", `{"keys":[],"keys":` + string(remJSON(t, []any{a})) + `}`},
		{"a member twice in a key", strings.Replace(good, `"kid":"a"`, `"kid":"a","kid":"b"`, 1)},
		{"trailing garbage", good + "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := parseJWKS([]byte(tc.doc)); !errors.Is(err, ErrInvalidJWKS) || got != nil {
				t.Fatalf("parseJWKS = %v, %v; want nil, ErrInvalidJWKS", got, err)
			}
		})
	}

	got, err := parseJWKS(remJSON(t, map[string]any{"keys": []any{a, b, aAgain}}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.list) != 1 || got.list[0].ID() != "b" || got.byID["a"] != nil || len(got.refused) != 2 {
		t.Fatalf("duplicate kid: kept %d keys, refused %d; want b alone, 2 refused", len(got.list), len(got.refused))
	}
	// A refused entry still makes its kid ambiguous.
	got, err = parseJWKS(remJSON(t, map[string]any{"keys": []any{a, remWith(aAgain, map[string]any{"use": "enc"})}}))
	if err != nil || len(got.list) != 0 {
		t.Fatalf("kid shared with a refused entry: %v, %d keys; want none", err, len(got.list))
	}
	got, err = parseJWKS([]byte(`{"keys":[]}`))
	if err != nil || len(got.list) != 0 {
		t.Fatalf("empty set: %v, %d keys", err, len(got.list))
	}
}

// TestRemote_RefusesPublishedSecrets: a JWKS holding an HMAC secret or a
// key with its private half is no key for anyone to sign with: tokens
// signed with either are TOKEN_INVALID, the JWKS's good key still works,
// and the refusals are reported.
func TestRemote_RefusesPublishedSecrets(t *testing.T) {
	good := remES256(t, "auth-1")
	leaked := keysEC(t, elliptic.P256())
	leakedKey := keysMust(t, "leaked", jwt.SigningMethodES256, leaked)
	secret := testSecret(t)
	doc := map[string]any{"keys": []any{
		map[string]any{"kty": "oct", "kid": "hs", "alg": "HS256", "use": "sig", "k": b64url(secret)},
		remWith(remJWK(t, leakedKey), map[string]any{"d": b64url(remPrivBytes(t, leaked))}),
		remJWK(t, good),
	}}
	clock := newFakeClock(t0)
	j := newRemJWKS(t, remStatic(string(remJSON(t, doc))))
	var mu sync.Mutex
	var reported []error
	r := remSet(t, j, clock, OnJWKSError(func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}))
	signer := newEnv(t, withKeys(keysSet(t, good)), withClock(clock))
	svc := newEnv(t, withKeys(r.KeySet()), withClock(clock))
	client := srvClient(t, svc)
	tok := signer.startSession(t, nil).AccessToken
	if _, err := unaryCall(t, client, tok); err != nil {
		t.Fatalf("the good key's token: %v", err)
	}
	for name, forged := range map[string]string{
		"HS256 with the published secret": remForge(t, keysMust(t, "hs", jwt.SigningMethodHS256, secret), tok),
		"ES256 with the published d":      remForge(t, leakedKey, tok),
	} {
		_, err := unaryCall(t, client, forged)
		if r, ok := ReasonOf(err); !ok || r != ReasonTokenInvalid {
			t.Errorf("%s: err %v, want TOKEN_INVALID", name, err)
		}
	}
	if r.KeySet().CanSign() {
		t.Error("a remote key set can sign")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 2 || !errors.Is(reported[0], ErrInvalidJWKS) || !errors.Is(reported[1], ErrInvalidJWKS) {
		t.Fatalf("reported %v, want the two refused entries", reported)
	}
	for _, err := range reported {
		if strings.Contains(err.Error(), b64url(secret)) || strings.Contains(err.Error(), b64url(remPrivBytes(t, leaked))) {
			t.Errorf("a report quotes the private material: %v", err)
		}
	}
}

// TestRemote_BadResponsesKeepLastGood: a fetch that gets a bad status,
// a body over the size limit (also an endless one), non-JSON or a
// document refused as a whole fails with ErrInvalidJWKS and keeps the
// keys it had. A body of exactly the limit is read.
func TestRemote_BadResponsesKeepLastGood(t *testing.T) {
	const limit = 4096
	k := remES256(t, "auth-1")
	doc, err := keysSet(t, k).JWKS()
	if err != nil {
		t.Fatal(err)
	}
	pad := func(n int) string { return string(doc) + strings.Repeat(" ", n-len(doc)) }
	clock := newFakeClock(t0)
	j := newRemJWKS(t, remStatic(pad(limit)))
	r := remSet(t, j, clock, WithJWKSMaxSize(limit))
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatalf("a body of exactly the limit: %v", err)
	}
	first := r.cur.Load()
	endless := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		chunk := []byte(strings.Repeat("[", 1024))
		for req.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	for name, h := range map[string]http.Handler{
		"one byte over":   remStatic(pad(limit + 1)),
		"endless":         endless,
		"HTML":            remStatic("<html>oops</html>", "Content-Type", "text/html"),
		"404":             http.NotFoundHandler(),
		"503":             remDown,
		"keys not a list": remStatic(`{"keys":{"kid":"x"}}`),
	} {
		t.Run(name, func(t *testing.T) {
			j.set(h)
			err := r.Refresh(context.Background())
			if !errors.Is(err, ErrInvalidJWKS) {
				t.Fatalf("Refresh err = %v, want ErrInvalidJWKS", err)
			}
			if r.cur.Load() != first {
				t.Fatal("a bad response replaced the keys")
			}
			if key, err := r.key("auth-1"); err != nil || !sameKey(key, k.verifyOnly()) {
				t.Fatalf("key after a bad response: %v", err)
			}
		})
	}
}

// TestRemote_DownUntilMaxStale: while the JWKS is down the set keeps
// verifying with its last good keys, tokens it verified before and new
// ones alike, until exactly max-stale after the fetch that got them;
// from then on every call, cache hit or not, fails closed with
// Unavailable and no reason, before the handler. A kid it does not know
// while fetches fail is Unavailable too, not TOKEN_INVALID. Once the JWKS
// is back, the next allowed fetch restores it.
func TestRemote_DownUntilMaxStale(t *testing.T) {
	const maxStale = 2 * time.Hour
	m := newRemMesh(t, keysSet(t, remES256(t, "auth-1")), []RemoteKeySetOption{WithJWKSMaxStale(maxStale)})
	old := m.auth.startSession(t, nil).AccessToken
	if _, err := unaryCall(t, m.svcC, old); err != nil {
		t.Fatal(err)
	}
	fetched := m.remote.cur.Load().fetched
	if !fetched.Equal(t0) {
		t.Fatalf("fetched at %v, want t0", fetched)
	}
	m.jwks.set(remDown)
	bogus := remForge(t, remES256(t, "unknown"), old)

	m.clock.Set(t0.Add(maxStale - time.Nanosecond))
	remIdle(m.remote)
	fresh := m.auth.startSession(t, nil).AccessToken
	for name, tok := range map[string]string{"cached": old, "new": fresh} {
		if _, err := unaryCall(t, m.svcC, tok); err != nil {
			t.Fatalf("one tick before max-stale, %s token: %v", name, err)
		}
	}
	remIdle(m.remote)
	_, err := unaryCall(t, m.svcC, bogus)
	remWantUnavailable(t, err)
	if m.jwks.fetches.Load() < 2 {
		t.Fatal("no fetch was tried while the JWKS was down")
	}

	calls := m.svc.svc.calls.Load()
	m.svc.events.take()
	m.clock.Set(t0.Add(maxStale))
	for name, tok := range map[string]string{"cached": old, "new": fresh, "unknown kid": bogus} {
		_, err := unaryCall(t, m.svcC, tok)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("at max-stale, %s token: %v, want Unavailable", name, err)
		}
	}
	if got := m.svc.svc.calls.Load(); got != calls {
		t.Fatalf("handler ran %d times past max-stale, want 0", got-calls)
	}
	for _, ev := range m.svc.events.take() {
		if ev.Kind != EventRejected || status.Code(ev.Err) != codes.Unavailable {
			t.Fatalf("event %v %v, want rejected with Unavailable", ev.Kind, ev.Err)
		}
	}

	h, err := m.auth.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	m.jwks.set(h)
	m.clock.Advance(DefaultJWKSRefetchInterval)
	if _, err := unaryCall(t, m.svcC, fresh); err != nil {
		t.Fatalf("after the JWKS came back: %v", err)
	}
	if got := m.remote.cur.Load().fetched; got.Before(t0.Add(maxStale)) {
		t.Fatalf("keys fetched at %v, want a new fetch", got)
	}
}

// TestRemote_NeverFetched: with the JWKS unreachable from the start, a
// call is Unavailable, not TOKEN_INVALID, and Refresh reports why.
func TestRemote_NeverFetched(t *testing.T) {
	m := newRemMesh(t, keysSet(t, remES256(t, "auth-1")), nil)
	m.jwks.set(remDown)
	_, err := unaryCall(t, m.svcC, m.auth.startSession(t, nil).AccessToken)
	remWantUnavailable(t, err)
	if err := m.remote.Refresh(context.Background()); !errors.Is(err, ErrInvalidJWKS) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Refresh err = %v, want ErrInvalidJWKS naming the status", err)
	}
}

// TestRemote_SlowServer: a fetch that does not answer ends at the fetch
// timeout; a call that needs it waits no longer, and a call whose kid the
// set knows does not wait for a refresh in progress at all. Refresh stops
// waiting at its context's deadline.
func TestRemote_SlowServer(t *testing.T) {
	const timeout = 300 * time.Millisecond
	m := newRemMesh(t, keysSet(t, remES256(t, "auth-1")), []RemoteKeySetOption{WithJWKSTimeout(timeout)})
	h, err := m.auth.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	defer close(release)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
			h.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
	m.jwks.set(slow)
	tok := m.auth.startSession(t, nil).AccessToken
	start := time.Now()
	_, err = unaryCall(t, m.svcC, tok)
	remWantUnavailable(t, err)
	if d := time.Since(start); d < timeout || d > 20*timeout {
		t.Fatalf("call waited %v for a fetch that times out after %v", d, timeout)
	}
	if err := m.remote.Refresh(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh err = %v, want the fetch's deadline", err)
	}

	// With keys in hand, a due refresh runs in the background.
	m.jwks.set(h)
	if err := m.remote.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.jwks.set(slow)
	m.clock.Advance(DefaultJWKSMaxAge)
	if _, err := unaryCall(t, m.svcC, m.auth.startSession(t, nil).AccessToken); err != nil {
		t.Fatalf("known kid during a slow refresh: %v", err)
	}
	m.remote.mu.Lock()
	inflight := m.remote.inflight != nil
	m.remote.mu.Unlock()
	if !inflight {
		t.Fatal("no refresh in progress: the call either waited for it or started none")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout/10)
	defer cancel()
	if err := m.remote.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Refresh with a short deadline: %v", err)
	}
	remIdle(m.remote)
}

// TestRemote_RefreshBoundary: a set fetched with max-age 120 s is not
// refreshed one tick before 120 s and is, in the background and once, at
// exactly 120 s, whether the lookup is a cache miss or a hit. A 304 to
// its ETag keeps the keys and restarts their age.
func TestRemote_RefreshBoundary(t *testing.T) {
	for _, path := range []string{"miss", "hit"} {
		t.Run(path, func(t *testing.T) {
			clock := newFakeClock(t0)
			k := remES256(t, "auth-1")
			auth := newEnv(t, withKeys(keysSet(t, k)), withClock(clock))
			h, err := auth.server.JWKSHandler(WithJWKSMaxAge(120 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			j := newRemJWKS(t, h)
			r := remSet(t, j, clock)
			if err := r.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			first := r.cur.Load()
			if got := first.refreshAt.Sub(first.fetched); got != 120*time.Second {
				t.Fatalf("refresh after %v, want 120s", got)
			}
			lookup := func() {
				t.Helper()
				if path == "miss" {
					if _, err := r.key("auth-1"); err != nil {
						t.Fatal(err)
					}
				} else if !r.hitOK(clock.Now()) {
					t.Fatal("hitOK = false within max-stale")
				}
				remIdle(r)
			}
			clock.Set(t0.Add(120*time.Second - time.Nanosecond))
			lookup()
			if n := j.fetches.Load(); n != 1 {
				t.Fatalf("%d fetches one tick before max-age, want 1", n)
			}
			clock.Set(t0.Add(120 * time.Second))
			lookup()
			lookup()
			if n := j.fetches.Load(); n != 2 {
				t.Fatalf("%d fetches at max-age, want 2", n)
			}
			next := r.cur.Load()
			if !next.fetched.Equal(t0.Add(120*time.Second)) || &next.list[0] != &first.list[0] || next.gen != first.gen {
				t.Fatal("a 304 did not keep the keys and restart their age")
			}
		})
	}
}

// TestRemote_MaxStaleBoundary: keys are usable one tick before max-stale
// after their fetch and not at it, and hitOK agrees.
func TestRemote_MaxStaleBoundary(t *testing.T) {
	const maxStale = 3 * time.Hour
	clock := newFakeClock(t0)
	doc, err := keysSet(t, remES256(t, "auth-1")).JWKS()
	if err != nil {
		t.Fatal(err)
	}
	j := newRemJWKS(t, remStatic(string(doc)))
	r := remSet(t, j, clock, WithJWKSMaxStale(maxStale))
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	j.set(remDown)
	for _, tc := range []struct {
		at time.Duration
		ok bool
	}{
		{maxStale - time.Nanosecond, true},
		{maxStale, false},
		{maxStale + time.Nanosecond, false},
	} {
		clock.Set(t0.Add(tc.at))
		_, err := r.key("auth-1")
		remIdle(r)
		if (err == nil) != tc.ok || !tc.ok && !errors.Is(err, errKeysUnavailable) {
			t.Errorf("at +%v: key err = %v, want ok %v", tc.at, err, tc.ok)
		}
		if got := r.hitOK(clock.Now()); got != tc.ok {
			t.Errorf("at +%v: hitOK = %v, want %v", tc.at, got, tc.ok)
		}
		remIdle(r)
	}
}

// TestRemote_CacheControl: the refresh interval is the response's max-age
// clamped to the bounds, the default without one, the lower bound for
// no-cache.
func TestRemote_CacheControl(t *testing.T) {
	doc, err := keysSet(t, remES256(t, "auth-1")).JWKS()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		header string
		want   time.Duration
	}{
		{"", DefaultJWKSMaxAge},
		{"public, max-age=600", 10 * time.Minute},
		{`max-age="600"`, 10 * time.Minute},
		{"MAX-AGE=90", 90 * time.Second},
		{"max-age=5", DefaultJWKSRefreshMin},
		{"max-age=0", DefaultJWKSRefreshMin},
		{"no-cache", DefaultJWKSRefreshMin},
		{"no-store, max-age=600", DefaultJWKSRefreshMin},
		{"max-age=999999999999", DefaultJWKSRefreshMax},
		{"max-age=-5", DefaultJWKSMaxAge},
		{"max-age=abc", DefaultJWKSMaxAge},
	} {
		t.Run(tc.header, func(t *testing.T) {
			clock := newFakeClock(t0)
			var kv []string
			if tc.header != "" {
				kv = []string{"Cache-Control", tc.header}
			}
			r := remSet(t, newRemJWKS(t, remStatic(string(doc), kv...)), clock)
			if err := r.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
			s := r.cur.Load()
			if got := s.refreshAt.Sub(s.fetched); got != tc.want {
				t.Fatalf("refresh after %v, want %v", got, tc.want)
			}
			if got := s.expires.Sub(s.fetched); got != DefaultJWKSMaxStale {
				t.Fatalf("expires after %v, want %v", got, DefaultJWKSMaxStale)
			}
		})
	}
}

// TestRemote_DroppedKeyEmptiesCaches: when a fetch drops a kid, a token of
// that key is no longer served from the verified-token cache; when a
// fetch only adds one, the cache stays.
func TestRemote_DroppedKeyEmptiesCaches(t *testing.T) {
	k1, k2, k3 := remES256(t, "k1"), remES256(t, "k2"), remES256(t, "k3")
	m := newRemMesh(t, keysSet(t, k1, k2), nil)
	tok1 := m.auth.startSession(t, nil).AccessToken
	if err := m.auth.server.RotateKeys(keysSet(t, k2, k1)); err != nil {
		t.Fatal(err)
	}
	tok2 := m.auth.startSession(t, nil).AccessToken
	lastCache := func() CacheResult {
		evs := m.svc.events.kinds(EventAuthenticated)
		return evs[len(evs)-1].Cache
	}
	for _, tok := range []string{tok1, tok2, tok1, tok2} {
		if _, err := unaryCall(t, m.svcC, tok); err != nil {
			t.Fatal(err)
		}
	}
	if lastCache() != CacheHit {
		t.Fatal("the second round was not served from the cache")
	}
	// Adding k3 keeps the cache.
	if err := m.auth.server.RotateKeys(keysSet(t, k2, k1, k3)); err != nil {
		t.Fatal(err)
	}
	if err := m.remote.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := unaryCall(t, m.svcC, tok2); err != nil || lastCache() != CacheHit {
		t.Fatalf("after a key was added: err %v, cache %v; want a hit", err, lastCache())
	}
	// Dropping k1 empties it: tok1 is verified again, and refused.
	if err := m.auth.server.RotateKeys(keysSet(t, k2, k3)); err != nil {
		t.Fatal(err)
	}
	if err := m.remote.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err := unaryCall(t, m.svcC, tok1)
	wantReason(t, err, ReasonTokenInvalid)
	if _, err := unaryCall(t, m.svcC, tok2); err != nil || lastCache() != CacheMiss {
		t.Fatalf("tok2 after a key was dropped: err %v, cache %v; want a miss", err, lastCache())
	}
	// Another key under a kid it had is a drop too.
	if err := m.auth.server.RotateKeys(keysSet(t, k2, remES256(t, "k3"))); err != nil {
		t.Fatal(err)
	}
	gen := m.remote.gen()
	if err := m.remote.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m.remote.gen() != gen+1 {
		t.Fatal("a kid whose key changed did not count as a drop")
	}
}

// TestRemote_Options: NewRemoteKeySet refuses URLs that are not absolute
// http(s), plain http without AllowInsecureJWKS, and options that cannot
// work; a redirect to plain http is refused.
func TestRemote_Options(t *testing.T) {
	for _, tc := range []struct {
		url  string
		opts []RemoteKeySetOption
	}{
		{"", nil},
		{"/.well-known/jwks.json", nil},
		{"https://", nil},
		{"ftp://auth.example.com/jwks.json", nil},
		{"file:///etc/jwks.json", nil},
		{"http://auth.example.com/jwks.json", nil},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithHTTPClient(nil)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithRemoteClock(nil)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSTimeout(0)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSRefetchInterval(0)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSRefreshBounds(0, time.Hour)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSRefreshBounds(time.Hour, time.Minute)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSMaxStale(30 * time.Minute)}},
		{"https://auth.example.com/jwks.json", []RemoteKeySetOption{WithJWKSMaxSize(1023)}},
	} {
		if _, err := NewRemoteKeySet(tc.url, tc.opts...); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("NewRemoteKeySet(%q, %d options) err = %v, want ErrInvalidOption", tc.url, len(tc.opts), err)
		}
	}
	doc, err := keysSet(t, remES256(t, "auth-1")).JWKS()
	if err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(remStatic(string(doc)))
	t.Cleanup(plain.Close)
	r, err := NewRemoteKeySet(plain.URL+JWKSPath, AllowInsecureJWKS())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Refresh(context.Background()); err != nil {
		t.Fatalf("http with AllowInsecureJWKS: %v", err)
	}
	redirect := newRemJWKS(t, http.RedirectHandler(plain.URL+JWKSPath, http.StatusFound))
	r = remSet(t, redirect, newFakeClock(t0))
	if err := r.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("redirect to http: err = %v, want it refused", err)
	}
	if r.cur.Load() != nil {
		t.Fatal("keys from a refused redirect")
	}
}

// TestRemote_RotationThroughJWKS simulates the four steps of PROTOCOL.md
// §9 between a signing service and a verify-only one reading its JWKS,
// with a client that calls both every two minutes and renews at the
// signing service. At every step, every access token issued so far that
// has not expired is accepted by both; the verify-only service learns the
// new key by its ordinary refresh before the key signs; the refresh token
// of the login, signed with the old key, refreshes until the old key is
// dropped; and after the drop the verify-only service no longer knows the
// old key.
func TestRotation_ThroughJWKS(t *testing.T) {
	const (
		ttl        = 20 * time.Minute
		refreshTTL = time.Hour
		maxAge     = 10 * time.Minute
		round      = 2 * time.Minute
	)
	oldKey, newKey := remES256(t, "old"), remES256(t, "new")
	clock := newFakeClock(t0)
	policy := WithPolicy(Policy{TTL: ttl, RenewBefore: ttl, RefreshTTL: refreshTTL, MaxLifetime: 24 * time.Hour})
	auth := newEnv(t, withKeys(keysSet(t, oldKey)), withClock(clock), withMemStore(), withServerOptions(policy))
	h, err := auth.server.JWKSHandler(WithJWKSMaxAge(maxAge))
	if err != nil {
		t.Fatal(err)
	}
	j := newRemJWKS(t, h)
	remote := remSet(t, j, clock)
	svc := newEnv(t, withKeys(remote.KeySet()), withClock(clock), withServerOptions(policy))
	authC, tokensC := auth.clients(t)
	svcC := srvClient(t, svc)

	sess := auth.startSession(t, nil)
	cur := sess.AccessToken
	issued := []string{cur}
	check := func(step string) {
		t.Helper()
		now := clock.Now()
		for _, tok := range issued {
			if !now.Before(decodeToken(t, tok).claims.ExpiresAt.Time) {
				continue
			}
			for name, c := range map[string]testpb.TestServiceClient{"signing": authC, "verify-only": svcC} {
				if _, err := unaryCall(t, c, tok); err != nil {
					t.Fatalf("%s: %s service refused a valid token with kid %q: %v", step, name, rotKid(t, tok), err)
				}
			}
		}
	}
	rounds := func(step string, d time.Duration) {
		t.Helper()
		for end := clock.Now().Add(d); clock.Now().Before(end); {
			clock.Advance(round)
			renewed, err := unaryCall(t, authC, cur)
			if err != nil {
				t.Fatalf("%s: signing service: %v", step, err)
			}
			if renewed != "" {
				cur = renewed
				issued = append(issued, cur)
			}
			if _, err := unaryCall(t, svcC, cur); err != nil {
				t.Fatalf("%s: verify-only service refused the current token (kid %q): %v", step, rotKid(t, cur), err)
			}
			check(step)
		}
	}

	rounds("before", 10*time.Minute)
	// 1. Publish the new key, verify-only.
	if err := auth.server.RotateKeys(keysSet(t, oldKey, newKey)); err != nil {
		t.Fatal(err)
	}
	rounds("published", 2*round)
	// 2. Wait for the caches' maximum age (and the refetch interval).
	rounds("waiting", maxAge)
	remIdle(remote)
	if remote.cur.Load().byID["new"] == nil {
		t.Fatal("the verify-only service did not learn the new key within max-age")
	}
	// The last refresh token the old key signs: it outlives the
	// activation by the refresh tokens' lifetime.
	pair := refreshMust(t, tokensC, sess.RefreshToken)
	lastOld := pair.GetRefreshToken()
	if rotKid(t, lastOld) != "old" {
		t.Fatal("the refresh token before activation is not the old key's")
	}
	cur = pair.GetAccessToken()
	issued = append(issued, cur)
	activated := clock.Now()
	// 3. Activate it. No fetch is needed to accept its tokens.
	if err := auth.server.RotateKeys(keysSet(t, newKey, oldKey)); err != nil {
		t.Fatal(err)
	}
	fetches := j.fetches.Load()
	rounds("activated", round)
	if rotKid(t, cur) != "new" {
		t.Fatalf("renewed under %q after activation, want new", rotKid(t, cur))
	}
	if got := j.fetches.Load(); got != fetches {
		t.Errorf("%d fetches when the new key began to sign, want 0", got-fetches)
	}
	rounds("activated", refreshTTL-2*round)
	// Just before it expires, the old key's last refresh token still
	// refreshes, and its successor is the new key's.
	pair = refreshMust(t, tokensC, lastOld)
	cur = pair.GetAccessToken()
	issued = append(issued, cur)
	if rotKid(t, cur) != "new" || rotKid(t, pair.GetRefreshToken()) != "new" {
		t.Fatal("the refreshed pair is not the new key's")
	}
	check("refreshed")
	clock.Set(activated.Add(refreshTTL + DefaultLeeway))
	_, err = refreshCall(tokensC, lastOld)
	wantReason(t, err, ReasonSessionExpired) // it outlives its lifetime nowhere
	// 4. Drop the old key after the refresh tokens' lifetime (and leeway).
	if err := auth.server.RotateKeys(keysSet(t, newKey)); err != nil {
		t.Fatal(err)
	}
	rounds("dropped", maxAge+round)
	remIdle(remote)
	if remote.cur.Load().byID["old"] != nil {
		t.Fatal("the verify-only service still trusts the dropped key")
	}
	for _, tok := range issued {
		if rotKid(t, tok) == "old" && clock.Now().Before(decodeToken(t, tok).claims.ExpiresAt.Time) {
			t.Fatal("a token of the old key is still valid after the drop")
		}
	}
}

// BenchmarkAuthenticateJWKS measures a cache hit of one ES256 token on a
// server with the key in a local set and on one reading it from a JWKS:
// the difference is what the remote set costs on the hot path.
func BenchmarkAuthenticateJWKS(b *testing.B) {
	k := remES256(b, "auth-1")
	signer := newEnv(b, withKeys(keysSet(b, k)), withRealClock())
	tok := signer.startSession(b, nil).AccessToken
	ctx := metadata.NewIncomingContext(context.Background(), bearerMD(tok))
	h, err := signer.server.JWKSHandler()
	if err != nil {
		b.Fatal(err)
	}
	j := newRemJWKS(b, h)
	remote, err := NewRemoteKeySet(j.url(), WithHTTPClient(j.srv.Client()))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		keys *KeySet
	}{
		{"local", jwVerifySet(b, k)},
		{"jwks", remote.KeySet()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, withKeys(tc.keys), withRealClock())
			e.server.cfg.onEvent = nil // the harness's recorder keeps every event
			if _, _, _, err := e.server.authenticate(ctx, "/bench/Call"); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, _, err := e.server.authenticate(ctx, "/bench/Call"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
