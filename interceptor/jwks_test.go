package interceptor

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
)

// jwSigningKeys returns one signing key of each asymmetric algorithm,
// with kids "es256", "es384", "eddsa", "rs256" and "ps256".
func jwSigningKeys(t testing.TB) []*Key {
	t.Helper()
	return []*Key{
		keysMust(t, "es256", jwt.SigningMethodES256, keysEC(t, elliptic.P256())),
		keysMust(t, "es384", jwt.SigningMethodES384, keysEC(t, elliptic.P384())),
		keysMust(t, "eddsa", jwt.SigningMethodEdDSA, keysEd(t)),
		keysMust(t, "rs256", jwt.SigningMethodRS256, keysRSA(t)),
		keysMust(t, "ps256", jwt.SigningMethodPS256, keysRSA(t)),
	}
}

// jwPrivateMembers are the JWK members that carry private material.
var jwPrivateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// jwNoPrivate fails the test if any object in the JSON document doc has a
// member that carries private material, at any depth.
func jwNoPrivate(t testing.TB, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("document is not JSON: %v", err)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for name, m := range x {
				for _, p := range jwPrivateMembers {
					if strings.EqualFold(name, p) {
						t.Errorf("document has a private member %q", name)
					}
				}
				walk(m)
			}
		case []any:
			for _, m := range x {
				walk(m)
			}
		}
	}
	walk(v)
}

// TestKey_Public: the public half of each asymmetric key keeps its id and
// algorithm, cannot sign, and verifies what the private key signs. An HMAC
// secret has none, and a zero Key is refused.
func TestKey_Public(t *testing.T) {
	for _, k := range jwSigningKeys(t) {
		t.Run(k.ID(), func(t *testing.T) {
			pub, err := k.Public()
			if err != nil {
				t.Fatalf("Public: %v", err)
			}
			if pub.ID() != k.ID() || pub.Algorithm() != k.Algorithm() || pub.CanSign() {
				t.Fatalf("Public() = %q %q CanSign %v; want %q %q false", pub.ID(), pub.Algorithm(), pub.CanSign(), k.ID(), k.Algorithm())
			}
			if !k.CanSign() {
				t.Fatal("Public changed the key it was called on")
			}
			again, err := pub.Public()
			if err != nil || again != pub {
				t.Fatalf("Public of a public key = %p, %v; want the same key", again, err)
			}
			signer := newEnv(t, withKeys(keysSet(t, k)))
			verifier := newEnv(t, withKeys(jwVerifySet(t, pub)), withClock(signer.clock))
			if _, err := unaryCall(t, srvClient(t, verifier), signer.startSession(t, nil).AccessToken); err != nil {
				t.Fatalf("the public half refused a token of the private key: %v", err)
			}
		})
	}
	hs := keysMust(t, "hs", jwt.SigningMethodHS256, testSecret(t))
	if pub, err := hs.Public(); !errors.Is(err, ErrNoPublicKey) || pub != nil {
		t.Errorf("HMAC Public() = %v, %v; want nil, ErrNoPublicKey", pub, err)
	}
	if j, err := hs.JWK(); !errors.Is(err, ErrNoPublicKey) || j != nil {
		t.Errorf("HMAC JWK() = %s, %v; want nil, ErrNoPublicKey", j, err)
	}
	for _, k := range []*Key{nil, {}} {
		if _, err := k.Public(); !errors.Is(err, ErrInvalidKeySet) {
			t.Errorf("zero Key Public() err = %v, want ErrInvalidKeySet", err)
		}
		if _, err := k.JWK(); !errors.Is(err, ErrInvalidKeySet) {
			t.Errorf("zero Key JWK() err = %v, want ErrInvalidKeySet", err)
		}
	}
}

// jwVerifySet is NewVerifyKeySet that fails the test on an error.
func jwVerifySet(t testing.TB, keys ...*Key) *KeySet {
	t.Helper()
	ks, err := NewVerifyKeySet(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// TestKey_JWK: each key's JWK has exactly the members a verifier needs,
// with the values RFC 7518 and RFC 8037 give, no private member, and reads
// back as the same public key bound to the same algorithm.
func TestKey_JWK(t *testing.T) {
	want := map[string]map[string]string{
		"es256": {"kty": "EC", "crv": "P-256", "alg": "ES256"},
		"es384": {"kty": "EC", "crv": "P-384", "alg": "ES384"},
		"eddsa": {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA"},
		"rs256": {"kty": "RSA", "alg": "RS256"},
		"ps256": {"kty": "RSA", "alg": "PS256"},
	}
	members := map[string][]string{
		"EC":  {"alg", "crv", "kid", "kty", "use", "x", "y"},
		"OKP": {"alg", "crv", "kid", "kty", "use", "x"},
		"RSA": {"alg", "e", "kid", "kty", "n", "use"},
	}
	for _, k := range jwSigningKeys(t) {
		t.Run(k.ID(), func(t *testing.T) {
			raw, err := k.JWK()
			if err != nil {
				t.Fatal(err)
			}
			jwNoPrivate(t, raw)
			var m map[string]string
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatalf("JWK is not an object of strings: %v", err)
			}
			if m["kid"] != k.ID() || m["use"] != "sig" {
				t.Errorf("kid, use = %q, %q; want %q, sig", m["kid"], m["use"], k.ID())
			}
			for name, v := range want[k.ID()] {
				if m[name] != v {
					t.Errorf("%s = %q, want %q", name, m[name], v)
				}
			}
			var got []string
			for name := range m {
				got = append(got, name)
			}
			if g, w := strings.Join(slices.Sorted(slices.Values(got)), ","), strings.Join(members[m["kty"]], ","); g != w {
				t.Errorf("members %s, want %s", g, w)
			}
			back, kid, err := parseJWK(raw)
			if err != nil || kid != k.ID() {
				t.Fatalf("parseJWK(JWK()) = %v, %q; want the key", err, kid)
			}
			if !sameKey(back, k.verifyOnly()) || back.CanSign() {
				t.Error("the JWK reads back as another key, or one that signs")
			}
		})
	}
}

// jwGet fetches path from h with the request headers hdr.
func jwGet(t testing.TB, h http.Handler, method string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, JWKSPath, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func jwBody(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestJWKSHandler_Serves: the handler serves the public halves of the
// active and verify-only keys, in order, never a private member nor an
// HMAC secret, with the content type, cache header and ETag of a JWKS;
// it answers If-None-Match with 304, HEAD without a body, and other
// methods with 405.
func TestJWKSHandler_Serves(t *testing.T) {
	keys := jwSigningKeys(t)
	hs := keysMust(t, "hs", jwt.SigningMethodHS256, testSecret(t))
	e := newEnv(t, withKeys(keysSet(t, keys[0], append(keys[1:], hs)...)))
	h, err := e.server.JWKSHandler(WithJWKSMaxAge(90 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	resp := jwGet(t, h, http.MethodGet, nil)
	body := jwBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	for name, want := range map[string]string{
		"Content-Type":           "application/json",
		"Cache-Control":          "public, max-age=90",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	etag := resp.Header.Get("ETag")
	if len(etag) < 10 || etag[0] != '"' || strings.HasPrefix(etag, "W/") {
		t.Errorf("ETag = %q, want a strong entity tag", etag)
	}
	jwNoPrivate(t, body)
	if strings.Contains(string(body), `"d"`) || strings.Contains(string(body), `"hs"`) || strings.Contains(string(body), "oct") {
		t.Errorf("document holds private or symmetric material: %s", body)
	}
	got, err := parseJWKS(body)
	if err != nil || len(got.refused) > 0 {
		t.Fatalf("parseJWKS = %v, refused %v", err, got.refused)
	}
	if len(got.list) != len(keys) {
		t.Fatalf("%d keys served, want %d (the asymmetric ones)", len(got.list), len(keys))
	}
	for i, k := range keys {
		if got.list[i].ID() != k.ID() || !sameKey(got.list[i], k.verifyOnly()) {
			t.Errorf("key %d = %q, want %q's public half", i, got.list[i].ID(), k.ID())
		}
	}

	notMod := jwGet(t, h, http.MethodGet, map[string]string{"If-None-Match": etag})
	if notMod.StatusCode != http.StatusNotModified || len(jwBody(t, notMod)) != 0 {
		t.Errorf("If-None-Match with the ETag: status %d, want 304 with no body", notMod.StatusCode)
	}
	if other := jwGet(t, h, http.MethodGet, map[string]string{"If-None-Match": `"other"`}); other.StatusCode != http.StatusOK {
		t.Errorf("If-None-Match with another ETag: status %d, want 200", other.StatusCode)
	}
	head := jwGet(t, h, http.MethodHead, nil)
	if head.StatusCode != http.StatusOK || len(jwBody(t, head)) != 0 || head.Header.Get("ETag") != etag {
		t.Errorf("HEAD: status %d, want 200, no body, the same ETag", head.StatusCode)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		r := jwGet(t, h, m, nil)
		if r.StatusCode != http.StatusMethodNotAllowed || r.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s: status %d Allow %q, want 405 GET, HEAD", m, r.StatusCode, r.Header.Get("Allow"))
		}
	}

	if _, err := e.server.JWKSHandler(WithJWKSMaxAge(-time.Second)); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("negative max-age: err = %v, want ErrInvalidOption", err)
	}
	h0, err := e.server.JWKSHandler(WithJWKSMaxAge(0))
	if err != nil {
		t.Fatal(err)
	}
	if got := jwGet(t, h0, http.MethodGet, nil).Header.Get("Cache-Control"); got != "public, max-age=0" {
		t.Errorf("max-age 0: Cache-Control = %q", got)
	}
	hd, err := e.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	if got := jwGet(t, hd, http.MethodGet, nil).Header.Get("Cache-Control"); got != "public, max-age=300" {
		t.Errorf("default: Cache-Control = %q, want public, max-age=300", got)
	}
}

// TestJWKSHandler_FollowsRotateKeys: after RotateKeys the handler serves
// the new set, under a new ETag; an HMAC-only set publishes no key.
func TestJWKSHandler_FollowsRotateKeys(t *testing.T) {
	keys := jwSigningKeys(t)
	e := newEnv(t, withKeys(keysSet(t, keys[0])))
	h, err := e.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	kids := func() (string, string) {
		resp := jwGet(t, h, http.MethodGet, nil)
		got, err := parseJWKS(jwBody(t, resp))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, k := range got.list {
			ids = append(ids, k.ID())
		}
		return strings.Join(ids, ","), resp.Header.Get("ETag")
	}
	k1, tag1 := kids()
	if err := e.server.RotateKeys(keysSet(t, keys[2], keys[0])); err != nil {
		t.Fatal(err)
	}
	k2, tag2 := kids()
	if k1 != "es256" || k2 != "eddsa,es256" || tag1 == tag2 {
		t.Errorf("kids %q (ETag %s) then %q (ETag %s); want es256 then eddsa,es256 under two ETags", k1, tag1, k2, tag2)
	}
	if err := e.server.RotateKeys(testKeySet(t)); err != nil {
		t.Fatal(err)
	}
	body := jwBody(t, jwGet(t, h, http.MethodGet, nil))
	if string(body) != `{"keys":[]}` {
		t.Errorf("HMAC-only set publishes %s, want no key", body)
	}
	if b, err := testKeySet(t).JWKS(); err != nil || string(b) != `{"keys":[]}` {
		t.Errorf("KeySet.JWKS of an HMAC set = %s, %v", b, err)
	}
	if _, err := (&KeySet{}).JWKS(); !errors.Is(err, ErrInvalidKeySet) {
		t.Errorf("zero KeySet JWKS err = %v, want ErrInvalidKeySet", err)
	}
}

// TestVerifyKeySet: NewVerifyKeySet keeps only public halves, refuses no
// keys, zero keys and duplicate kids, and cannot sign; NewKeySet still
// refuses a public active key, pointing at NewVerifyKeySet.
func TestVerifyKeySet(t *testing.T) {
	keys := jwSigningKeys(t)
	ks := jwVerifySet(t, keys...)
	if ks.CanSign() || ks.Active() != nil {
		t.Fatal("a verify-only set can sign")
	}
	for _, k := range keys {
		if got := ks.byID[k.ID()]; got == nil || got.CanSign() || !sameKey(got, k.verifyOnly()) {
			t.Errorf("%s: held %v, want its public half only", k.ID(), got)
		}
	}
	for _, tc := range []struct {
		name string
		keys []*Key
	}{
		{"none", nil},
		{"nil key", []*Key{keys[0], nil}},
		{"zero key", []*Key{{}}},
		{"duplicate kid", []*Key{keys[0], keysMust(t, "es256", jwt.SigningMethodEdDSA, keysEd(t))}},
	} {
		if _, err := NewVerifyKeySet(tc.keys...); !errors.Is(err, ErrInvalidKeySet) {
			t.Errorf("%s: err = %v, want ErrInvalidKeySet", tc.name, err)
		}
	}
	pub, _ := keys[0].Public()
	_, err := NewKeySet(pub)
	if !errors.Is(err, ErrInvalidKeySet) || !strings.Contains(err.Error(), "NewVerifyKeySet") {
		t.Errorf("NewKeySet(public key) err = %v, want ErrInvalidKeySet naming NewVerifyKeySet", err)
	}
	if !keysSet(t, keys[0]).CanSign() || (*KeySet)(nil).CanSign() || new(KeySet).CanSign() {
		t.Error("CanSign wrong for a signing, nil or zero set")
	}
}

// TestVerifyOnlyServer: a server on a set that cannot sign verifies what
// the signing server mints, but never mints: StartSession fails with
// ErrVerifyOnly, Refresh with FailedPrecondition before anything else, and
// a call whose renewal is due gets none and reports EventAuthenticated.
// Revoke still works through a shared store.
func TestVerifyOnlyServer(t *testing.T) {
	for _, kind := range []string{"unary", streamServer} {
		t.Run(kind, func(t *testing.T) {
			signKey := keysMust(t, "auth-1", jwt.SigningMethodES256, keysEC(t, elliptic.P256()))
			pub, err := signKey.Public()
			if err != nil {
				t.Fatal(err)
			}
			shared := &memstore.SessionStore{}
			policy := WithPolicy(Policy{TTL: time.Hour, RenewBefore: time.Hour}) // due on every call
			auth := newEnv(t, withKeys(keysSet(t, signKey)), withStore(shared), withServerOptions(policy))
			svc := newEnv(t, withKeys(jwVerifySet(t, pub)), withStore(shared), withClock(auth.clock), withServerOptions(policy))
			sess := auth.startSession(t, nil)
			auth.clock.Advance(time.Minute)
			client, tokens := svc.clients(t)
			svc.events.take()

			var renewed string
			if kind == "unary" {
				renewed, err = unaryCall(t, client, sess.AccessToken)
			} else {
				renewed, err = jwStreamRenewal(t, client, sess.AccessToken)
			}
			if err != nil {
				t.Fatalf("verify-only server refused a token of the signing server: %v", err)
			}
			if renewed != "" {
				t.Fatal("verify-only server sent a renewal")
			}
			var kinds []string
			for _, ev := range svc.events.take() {
				if ev.Kind != EventStoreCall {
					kinds = append(kinds, ev.Kind.String())
				}
			}
			if strings.Join(kinds, ",") != "authenticated" {
				t.Fatalf("events [%s] (store calls aside), want [authenticated]", strings.Join(kinds, ","))
			}
			// The signing server renews the same token.
			if r, err := unaryCall(t, srvClient(t, auth), sess.AccessToken); err != nil || r == "" {
				t.Fatalf("signing server: renewal %t, err %v; want a renewal", r != "", err)
			}

			if _, err := svc.server.StartSession(context.Background(), "mallory", nil); !errors.Is(err, ErrVerifyOnly) {
				t.Errorf("StartSession err = %v, want ErrVerifyOnly", err)
			}
			for _, rt := range []string{sess.RefreshToken, "", "garbage"} {
				if _, err := refreshCall(tokens, rt); status.Code(err) != codes.FailedPrecondition {
					t.Errorf("Refresh(%d bytes) code = %v, want FailedPrecondition", len(rt), status.Code(err))
				}
			}
			// Logout through the verify-only server ends the session at both.
			if _, err := tokens.Revoke(bearerCtx(sess.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
				t.Fatalf("Revoke on the verify-only server: %v", err)
			}
			_, err = unaryCall(t, srvClient(t, auth), sess.AccessToken)
			wantReason(t, err, ReasonSessionRevoked)
		})
	}
}

// jwStreamRenewal opens a server stream with tok, drains it and returns
// the renewal its header carries ("" for none), failing the test if the
// trailer carries another.
func jwStreamRenewal(t testing.TB, client testpb.TestServiceClient, tok string) (string, error) {
	t.Helper()
	var hdr, tr metadata.MD
	st, err := client.StreamingOutputCall(bearerCtx(tok), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}},
	}, grpc.Header(&hdr), grpc.Trailer(&tr))
	if err == nil {
		err = drain(st)
	}
	h, tt := renewedToken(t, hdr), renewedToken(t, tr)
	if h != tt {
		t.Errorf("header and trailer carry different renewals")
	}
	return h, err
}

// TestNeverRenew: Policy{RenewBefore: NeverRenew} is valid and renews at
// no point of a token's life, on a server that could sign; the policy's
// defaults keep it switched off.
func TestNeverRenew(t *testing.T) {
	p := Policy{TTL: time.Hour, RenewBefore: NeverRenew}
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if got := p.Effective().RenewBefore; got != NeverRenew {
		t.Fatalf("Effective().RenewBefore = %v, want NeverRenew", got)
	}
	for _, left := range []time.Duration{time.Hour, 30 * time.Minute, time.Second, 0} {
		if d := p.Decide(t0.Add(time.Hour-left), t0.Add(time.Hour), t0); d.Renew {
			t.Errorf("Decide with %v left renews", left)
		}
	}
	e := newEnv(t, withServerOptions(WithPolicy(p)))
	client := srvClient(t, e)
	s := e.startSession(t, nil)
	for _, at := range []time.Duration{time.Second, 30 * time.Minute, time.Hour - time.Second} {
		e.clock.Set(t0.Add(at))
		renewed, err := unaryCall(t, client, s.AccessToken)
		if err != nil || renewed != "" {
			t.Fatalf("at +%v: renewal %t, err %v; want none and no error", at, renewed != "", err)
		}
	}
	if n := e.events.count(EventRenewed, ""); n != 0 {
		t.Errorf("%d EventRenewed, want 0", n)
	}
	// The same policy with RenewBefore left zero renews in the second half.
	d := Policy{TTL: time.Hour}.Decide(t0.Add(time.Hour-time.Second), t0.Add(time.Hour), t0)
	if !d.Renew {
		t.Error("the default RenewBefore does not renew near expiry; the test above proves nothing")
	}
}
