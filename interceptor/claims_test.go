package interceptor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// claimsSegment decodes segment i (0 header, 1 payload) of a compact JWT
// into its JSON members, raw.
func claimsSegment(t *testing.T, tok string, i int) map[string]json.RawMessage {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(parts[i])
	if err != nil {
		t.Fatalf("segment %d: %v", i, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("segment %d: %v", i, err)
	}
	return m
}

// claimsCustom returns the members of a payload that are not reserved.
func claimsCustom(m map[string]json.RawMessage) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage)
	for k, v := range m {
		if !reservedClaims[k] {
			out[k] = v
		}
	}
	return out
}

// claimsChain starts a session with custom and renews it n times, 13 h
// apart, presenting each renewed token. It returns the tokens, first
// first, and the times at which each was minted.
func claimsChain(t *testing.T, e *testEnv, custom map[string]any, n int) ([]string, []time.Time) {
	t.Helper()
	s := e.startSession(t, custom)
	toks, times := []string{s.AccessToken}, []time.Time{e.clock.Now()}
	p := newPolicyCaller(t, e)
	for i := range n {
		// Odd seconds and nanoseconds, so that iat truncation shows.
		e.clock.Advance(13*time.Hour + time.Duration(i)*time.Second + 700*time.Millisecond)
		renewed, err := unaryCall(t, p.client, toks[len(toks)-1])
		if err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
		if renewed == "" {
			t.Fatalf("renewal %d: no renewed token", i+1)
		}
		toks, times = append(toks, renewed), append(times, e.clock.Now())
	}
	return toks, times
}

// claimsRichCustom is a set of custom claims of every JSON kind.
func claimsRichCustom() map[string]any {
	return map[string]any{
		"profile": map[string]any{
			"name":    "Zoë",
			"langs":   []string{"go", "日本語"},
			"address": map[string]any{"city": "Zürich", "zip": "8001", "geo": []float64{47.37, 8.54}},
		},
		"big":     uint64(12345678901234567890),
		"bigger":  json.Number("123456789012345678901234567890"),
		"float":   3.25,
		"neg":     -42,
		"uni":     "héllo 世界 🎉 \u2028 <&> \"q\" \\",
		"arr":     []any{1, "two", nil, true, 2.5, []int{}, map[string]any{}},
		"nothing": nil,
		"yes":     true,
		"no":      false,
		"empty":   "",
		"raw":     json.RawMessage(`{ "spaced" : [ 1 , 2 ] }`),
	}
}

func TestClaims_CustomSurviveRenewals(t *testing.T) {
	e := newEnv(t)
	custom := claimsRichCustom()
	toks, _ := claimsChain(t, e, custom, 3)
	first := claimsCustom(claimsSegment(t, toks[0], 1))
	if got, want := slices.Sorted(maps.Keys(first)), slices.Sorted(maps.Keys(custom)); !slices.Equal(got, want) {
		t.Fatalf("first token's custom claims = %q, want %q", got, want)
	}
	for name, v := range custom {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first[name], want) {
			t.Errorf("first token: claim %q = %s, want %s", name, first[name], want)
		}
	}
	for i, tok := range toks[1:] {
		got := claimsCustom(claimsSegment(t, tok, 1))
		if len(got) != len(first) {
			t.Errorf("renewal %d: %d custom claims, want %d", i+1, len(got), len(first))
		}
		for name, raw := range first {
			if !bytes.Equal(got[name], raw) {
				t.Errorf("renewal %d: claim %q = %s, want %s", i+1, name, got[name], raw)
			}
		}
	}
}

func TestClaims_Lookup(t *testing.T) {
	e := newEnv(t)
	toks, _ := claimsChain(t, e, claimsRichCustom(), 1)
	// The handler sees the claims of the presented (renewed) token.
	if _, err := unaryCall(t, srvClient(t, e), toks[1]); err != nil {
		t.Fatal(err)
	}
	c := e.svc.lastClaims.Load()
	if c == nil {
		t.Fatal("handler saw no claims")
	}
	if c.Fresh {
		t.Fatal("handler claims of a renewed token: Fresh = true")
	}

	var big uint64
	if ok, err := c.Lookup("big", &big); !ok || err != nil || big != 12345678901234567890 {
		t.Errorf(`Lookup("big") = %d, %v, %v; want 12345678901234567890, true, nil`, big, ok, err)
	}
	var bigger json.Number
	if ok, err := c.Lookup("bigger", &bigger); !ok || err != nil || bigger != "123456789012345678901234567890" {
		t.Errorf(`Lookup("bigger") = %s, %v, %v; want the exact digits`, bigger, ok, err)
	}
	var biggerInt bigIntClaim
	if ok, err := c.Lookup("bigger", &biggerInt); !ok || err != nil || biggerInt.String() != "123456789012345678901234567890" {
		t.Errorf(`Lookup("bigger") into big.Int = %s, %v, %v`, biggerInt.String(), ok, err)
	}
	var profile struct {
		Name    string
		Langs   []string
		Address struct {
			City string
			Geo  []float64
		}
	}
	if ok, err := c.Lookup("profile", &profile); !ok || err != nil {
		t.Fatalf(`Lookup("profile") = %v, %v`, ok, err)
	}
	if profile.Name != "Zoë" || !slices.Equal(profile.Langs, []string{"go", "日本語"}) ||
		profile.Address.City != "Zürich" || !slices.Equal(profile.Address.Geo, []float64{47.37, 8.54}) {
		t.Errorf(`Lookup("profile") = %+v`, profile)
	}
	var uni string
	if ok, err := c.Lookup("uni", &uni); !ok || err != nil || uni != "héllo 世界 🎉 \u2028 <&> \"q\" \\" {
		t.Errorf(`Lookup("uni") = %q, %v, %v`, uni, ok, err)
	}
	var arr []any
	if ok, err := c.Lookup("arr", &arr); !ok || err != nil || len(arr) != 7 || arr[0] != 1.0 || arr[1] != "two" || arr[2] != nil || arr[3] != true {
		t.Errorf(`Lookup("arr") = %v, %v, %v`, arr, ok, err)
	}
	nothing := new(string)
	if ok, err := c.Lookup("nothing", &nothing); !ok || err != nil || nothing != nil {
		t.Errorf(`Lookup("nothing") = %v, %v, %v; want nil pointer, true, nil`, nothing, ok, err)
	}
	var yes, no bool = false, true
	if ok, err := c.Lookup("yes", &yes); !ok || err != nil || !yes {
		t.Errorf(`Lookup("yes") = %v, %v, %v`, yes, ok, err)
	}
	if ok, err := c.Lookup("no", &no); !ok || err != nil || no {
		t.Errorf(`Lookup("no") = %v, %v, %v`, no, ok, err)
	}
	var missing string
	if ok, err := c.Lookup("missing", &missing); ok || err != nil {
		t.Errorf(`Lookup("missing") = %v, %v; want false, nil`, ok, err)
	}
	var wrong int
	if ok, err := c.Lookup("uni", &wrong); !ok || err == nil {
		t.Errorf(`Lookup("uni") into int = %v, %v; want true and an error`, ok, err)
	}
	for _, reserved := range []string{"sub", "exp", "sid", "auth_time", "fresh"} {
		var v any
		if ok, _ := c.Lookup(reserved, &v); ok {
			t.Errorf("Lookup(%q) found a reserved claim among the custom ones", reserved)
		}
	}
}

// bigIntClaim decodes a JSON number of any size.
type bigIntClaim struct{ big.Int }

func TestClaims_SessionClaimsAcrossRenewals(t *testing.T) {
	e := newEnv(t)
	toks, times := claimsChain(t, e, nil, 3)
	first := claimsSegment(t, toks[0], 1)
	if got := string(first["fresh"]); got != "true" {
		t.Fatalf("first token fresh = %s, want true", got)
	}
	jtis := map[string]bool{}
	for i, tok := range toks {
		p := claimsSegment(t, tok, 1)
		var jti string
		if err := json.Unmarshal(p["jti"], &jti); err != nil || jti == "" {
			t.Fatalf("token %d: jti %s: %v", i, p["jti"], err)
		}
		if jtis[jti] {
			t.Fatalf("token %d: jti repeated", i)
		}
		jtis[jti] = true
		if !bytes.Equal(p["sid"], first["sid"]) {
			t.Errorf("token %d: sid = %s, want %s", i, p["sid"], first["sid"])
		}
		if !bytes.Equal(p["auth_time"], first["auth_time"]) {
			t.Errorf("token %d: auth_time = %s, want %s", i, p["auth_time"], first["auth_time"])
		}
		if !bytes.Equal(p["sub"], first["sub"]) {
			t.Errorf("token %d: sub = %s, want %s", i, p["sub"], first["sub"])
		}
		var iat, exp int64
		if err := json.Unmarshal(p["iat"], &iat); err != nil {
			t.Fatalf("token %d: iat %s: %v", i, p["iat"], err)
		}
		if err := json.Unmarshal(p["exp"], &exp); err != nil {
			t.Fatalf("token %d: exp %s: %v", i, p["exp"], err)
		}
		if want := times[i].Unix(); iat != want {
			t.Errorf("token %d: iat = %d, want %d (its mint time, truncated)", i, iat, want)
		}
		if want := times[i].Add(24 * time.Hour).Unix(); exp != want {
			t.Errorf("token %d: exp = %d, want %d", i, exp, want)
		}
		if i > 0 {
			if f, ok := p["fresh"]; ok {
				t.Errorf("renewed token %d carries fresh = %s, want no fresh member", i, f)
			}
		}
	}
	var auth int64
	if err := json.Unmarshal(first["auth_time"], &auth); err != nil || auth != t0.Unix() {
		t.Fatalf("auth_time = %s, %v; want %d", first["auth_time"], err, t0.Unix())
	}
}

func TestClaims_ReservedNames(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "auth_time", "fresh"} {
		t.Run(name, func(t *testing.T) {
			_, err := e.server.StartSession(context.Background(), "alice", map[string]any{"ok": 1, name: "x"})
			if !errors.Is(err, ErrReservedClaim) {
				t.Fatalf("StartSession with custom %q: %v, want ErrReservedClaim", name, err)
			}
		})
	}
}

// TestClaims_ReservedNameCaseVariants: encoding/json matches object keys
// to struct fields case-insensitively, so a custom claim "SID", "Exp",
// "Auth_Time" or "FRESH" that follows the real member in the payload
// would replace the session claim when the token is decoded. StartSession
// must either refuse such a name or the decoding must ignore it.
func TestClaims_ReservedNameCaseVariants(t *testing.T) {
	tests := []struct {
		name  string
		value any
	}{
		{"SID", "attacker-chosen"},
		{"Exp", 4102444800},          // 2100-01-01
		{"Auth_Time", 4102444800},    // beyond the cap
		{"FRESH", true},              // survives renewal
		{"Jti", "constant"},          // same jti for every token
		{"Iat", 1},                   // far past
		{"Sub", "mallory"},           // another subject
		{"AUD", []string{"other"}},   // another audience
		{"Iss", "elsewhere.example"}, // another issuer
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			s, err := e.server.StartSession(context.Background(), "alice", map[string]any{tt.name: tt.value})
			if errors.Is(err, ErrReservedClaim) {
				return // refused: fine
			}
			if err != nil {
				t.Fatalf("StartSession: %v", err)
			}
			// Accepted: then the session claims must be unaffected, in the
			// login token and in a renewed one.
			p := newPolicyCaller(t, e)
			e.clock.Advance(13 * time.Hour)
			renewed, err := unaryCall(t, p.client, s.AccessToken)
			if err != nil {
				t.Fatalf("first call: %v", err)
			}
			c := e.svc.lastClaims.Load()
			if c.SessionID != s.SessionID || c.Subject != "alice" || !c.ExpiresAt.Equal(s.Expiry) || !c.AuthTime.Equal(s.AuthTime) ||
				c.ID == "constant" || c.Issuer != "" || len(c.Audience) != 0 || !c.IssuedAt.Equal(s.AuthTime) {
				t.Fatalf("custom claim %q changed the login token's session claims: sid same %v, sub %q, exp %v (want %v), auth_time %v (want %v), jti %q, iss %q, aud %q, iat %v",
					tt.name, c.SessionID == s.SessionID, c.Subject, c.ExpiresAt.Time, s.Expiry, c.AuthTime.Time, s.AuthTime, c.ID, c.Issuer, c.Audience, c.IssuedAt.Time)
			}
			if renewed == "" {
				t.Fatal("no renewed token")
			}
			if _, err := unaryCall(t, p.client, renewed); err != nil {
				t.Fatalf("call with the renewed token: %v", err)
			}
			c = e.svc.lastClaims.Load()
			if c.Fresh || c.SessionID != s.SessionID || !c.AuthTime.Equal(s.AuthTime) {
				t.Fatalf("custom claim %q changed the renewed token's session claims: fresh %v, sid same %v, auth_time %v",
					tt.name, c.Fresh, c.SessionID == s.SessionID, c.AuthTime.Time)
			}
		})
	}
}

func TestClaims_UnmarshalableValue(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name  string
		value any
	}{
		{"channel", make(chan int)},
		{"func", func() {}},
		{"NaN", math.NaN()},
		{"Inf", math.Inf(1)},
		{"invalid raw JSON", json.RawMessage(`{"a":`)},
		{"channel nested", map[string]any{"x": []any{make(chan int)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := e.server.StartSession(context.Background(), "alice", map[string]any{"bad": tt.value})
			if err == nil {
				t.Fatalf("StartSession with a %s claim succeeded (token of %d bytes), want an error", tt.name, len(s.AccessToken))
			}
			if errors.Is(err, ErrReservedClaim) {
				t.Fatalf("StartSession with a %s claim: %v, want a marshalling error, not ErrReservedClaim", tt.name, err)
			}
			if !strings.Contains(err.Error(), `"bad"`) {
				t.Errorf("error %q does not name the claim", err)
			}
		})
	}
	var ute *json.UnsupportedTypeError
	if _, err := e.server.StartSession(context.Background(), "alice", map[string]any{"ch": make(chan int)}); !errors.As(err, &ute) {
		t.Fatalf("channel claim: %v, want a *json.UnsupportedTypeError in the chain", err)
	}
}

// claimsFreshEnv chains an interceptor that calls RequireFresh after the
// server's, as a password-change handler would first thing.
func claimsFreshEnv(t *testing.T) *testEnv {
	return newEnv(t, withGRPC(func(s *Server) []grpc.ServerOption {
		requireFresh := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if err := RequireFresh(ctx); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor(), requireFresh),
			grpc.ChainStreamInterceptor(s.StreamServerInterceptor()),
		}
	}))
}

func TestClaims_RequireFresh(t *testing.T) {
	e := claimsFreshEnv(t)
	s := e.startSession(t, nil)
	p := newPolicyCaller(t, e)

	// The login token passes, also while it is being renewed.
	if _, err := unaryCall(t, p.client, s.AccessToken); err != nil {
		t.Fatalf("login token: %v, want success", err)
	}
	e.clock.Advance(13 * time.Hour)
	renewed, err := unaryCall(t, p.client, s.AccessToken)
	if err != nil {
		t.Fatalf("login token at 13h: %v, want success", err)
	}
	if renewed == "" {
		t.Fatal("no renewed token")
	}
	if n := e.svc.calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}

	// A renewed token is refused with PermissionDenied, and the handler
	// does not run.
	_, err = unaryCall(t, p.client, renewed)
	wantReason(t, err, ReasonFreshTokenRequired)
	if n := e.svc.calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

func TestClaims_RequireFreshDirect(t *testing.T) {
	fresh := &Claims{Fresh: true}
	renewed := &Claims{}
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		wantCode codes.Code
		want     Reason
	}{
		{"fresh claims", context.WithValue(context.Background(), claimsKey{}, compactClaims(fresh)), codes.OK, noReason},
		{"renewed claims", context.WithValue(context.Background(), claimsKey{}, compactClaims(renewed)), codes.PermissionDenied, ReasonFreshTokenRequired},
		{"no claims", context.Background(), codes.Unauthenticated, ReasonTokenMissing},
		{"nil claims", context.WithValue(context.Background(), claimsKey{}, (*verifiedClaims)(nil)), codes.Unauthenticated, ReasonTokenMissing},
		{"claims value, not pointer", context.WithValue(context.Background(), claimsKey{}, *compactClaims(fresh)), codes.Unauthenticated, ReasonTokenMissing},
		{"public claims, not the server's own", context.WithValue(context.Background(), claimsKey{}, fresh), codes.Unauthenticated, ReasonTokenMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := RequireFresh(tc.ctx)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("RequireFresh code = %v (err %v), want %v", got, err, tc.wantCode)
			}
			if tc.want != noReason {
				wantReason(t, err, tc.want)
			}
		})
	}
}

func TestClaims_JOSEHeader(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	checkHeader := func(tok, kid, alg string) {
		t.Helper()
		h := claimsSegment(t, tok, 0)
		want := map[string]string{"typ": `"at+jwt"`, "kid": `"` + kid + `"`, "alg": `"` + alg + `"`}
		if len(h) != len(want) {
			t.Errorf("header has members %q, want exactly typ, kid, alg", slices.Sorted(maps.Keys(h)))
		}
		for k, v := range want {
			if got := string(h[k]); got != v {
				t.Errorf("header %s = %s, want %s", k, got, v)
			}
		}
	}
	checkHeader(s.AccessToken, "k1", "HS256")

	// After a rotation the renewed token names the new active key.
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := NewKey("k2", jwt.SigningMethodES256, priv)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(k2, e.keys.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.server.RotateKeys(ks); err != nil {
		t.Fatal(err)
	}
	p := newPolicyCaller(t, e)
	e.clock.Advance(13 * time.Hour)
	renewed, err := unaryCall(t, p.client, s.AccessToken)
	if err != nil || renewed == "" {
		t.Fatalf("renewal after rotation: renewed %v, err %v", renewed != "", err)
	}
	checkHeader(renewed, "k2", "ES256")
	if _, err := unaryCall(t, p.client, renewed); err != nil {
		t.Fatalf("renewed ES256 token rejected: %v", err)
	}
	s2 := e.startSession(t, nil)
	checkHeader(s2.AccessToken, "k2", "ES256")
}

func TestClaims_JSONRoundTrip(t *testing.T) {
	in := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "auth.example.com",
			Subject:   "alice",
			Audience:  jwt.ClaimStrings{"orders", "billing"},
			ExpiresAt: jwt.NewNumericDate(t0.Add(24 * time.Hour)),
			NotBefore: jwt.NewNumericDate(t0),
			IssuedAt:  jwt.NewNumericDate(t0),
			ID:        "jti-1",
		},
		SessionID: "sid-1",
		AuthTime:  jwt.NewNumericDate(t0),
		Fresh:     true,
		Custom: map[string]json.RawMessage{
			"role":  json.RawMessage(`"admin"`),
			"big":   json.RawMessage(`12345678901234567890`),
			"obj":   json.RawMessage(`{"a": [1, null, true]}`), // compacted on output
			"uni":   json.RawMessage(`"世界"`),
			"null":  json.RawMessage(`null`),
			"empty": json.RawMessage(`{}`),
		},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("MarshalJSON output is not valid JSON: %s", b)
	}
	var out Claims
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Issuer != in.Issuer || out.Subject != in.Subject || !slices.Equal(out.Audience, in.Audience) ||
		out.ID != in.ID || out.SessionID != in.SessionID || out.Fresh != in.Fresh {
		t.Fatalf("round trip: got %+v, want %+v", out, in)
	}
	for name, got := range map[string][2]*jwt.NumericDate{
		"exp": {out.ExpiresAt, in.ExpiresAt}, "nbf": {out.NotBefore, in.NotBefore},
		"iat": {out.IssuedAt, in.IssuedAt}, "auth_time": {out.AuthTime, in.AuthTime},
	} {
		if got[0] == nil || !got[0].Equal(got[1].Time) {
			t.Errorf("round trip %s = %v, want %v", name, got[0], got[1])
		}
	}
	if len(out.Custom) != len(in.Custom) {
		t.Fatalf("round trip custom = %d members, want %d", len(out.Custom), len(in.Custom))
	}
	for name, raw := range in.Custom {
		var want bytes.Buffer
		if err := json.Compact(&want, raw); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Custom[name], want.Bytes()) {
			t.Errorf("round trip custom %q = %s, want %s", name, out.Custom[name], want.Bytes())
		}
	}
	// A second round trip is byte-identical.
	b2, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, b2) {
		t.Fatalf("second marshal differs:\n%s\n%s", b, b2)
	}
}

func TestClaims_MarshalJSON(t *testing.T) {
	tests := []struct {
		name string
		in   Claims
		want string
	}{
		{"empty", Claims{}, `{}`},
		{"custom only", Claims{Custom: map[string]json.RawMessage{"b": json.RawMessage(`2`), "a": json.RawMessage(` [ 1 ] `)}}, `{"a":[1],"b":2}`},
		{"registered and custom", Claims{SessionID: "s", Custom: map[string]json.RawMessage{"x": json.RawMessage(`"y"`)}}, `{"sid":"s","x":"y"}`},
		{"fresh false omitted", Claims{Fresh: false, SessionID: "s"}, `{"sid":"s"}`},
		{"custom name escaped", Claims{Custom: map[string]json.RawMessage{`q"<`: json.RawMessage(`1`)}}, `{"q\"\u003c":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("Marshal = %s, want %s", got, tt.want)
			}
		})
	}
	for _, name := range []string{"exp", "sid", "fresh", "nbf"} {
		_, err := json.Marshal(Claims{Custom: map[string]json.RawMessage{name: json.RawMessage(`1`)}})
		if !errors.Is(err, ErrReservedClaim) {
			t.Errorf("Marshal with custom %q: %v, want ErrReservedClaim", name, err)
		}
	}
	if _, err := json.Marshal(Claims{Custom: map[string]json.RawMessage{"bad": json.RawMessage(`{"a":`)}}); err == nil {
		t.Error("Marshal with invalid custom JSON succeeded, want an error")
	}
}

func TestClaims_UnmarshalUnknownMembers(t *testing.T) {
	payload := `{"iss":"i","sub":"alice","aud":"orders","exp":1800000000,"nbf":1700000000,"iat":1700000000,` +
		`"jti":"j","sid":"s","auth_time":1700000000,"fresh":true,` +
		`"role":"admin","n":12345678901234567890,"obj":{"exp":1,"sid":"inner"},"arr":[1,2],"nil":null}`
	var c Claims
	if err := json.Unmarshal([]byte(payload), &c); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"role": `"admin"`, "n": `12345678901234567890`, "obj": `{"exp":1,"sid":"inner"}`, "arr": `[1,2]`, "nil": `null`,
	}
	if len(c.Custom) != len(want) {
		t.Errorf("Custom has %q, want %q", slices.Sorted(maps.Keys(c.Custom)), slices.Sorted(maps.Keys(want)))
	}
	for k, v := range want {
		if got := string(c.Custom[k]); got != v {
			t.Errorf("Custom[%q] = %s, want %s", k, got, v)
		}
	}
	for name := range reservedClaims {
		if _, ok := c.Custom[name]; ok {
			t.Errorf("Custom holds reserved claim %q", name)
		}
	}
	if c.Issuer != "i" || c.Subject != "alice" || !slices.Equal(c.Audience, jwt.ClaimStrings{"orders"}) || c.ID != "j" ||
		c.SessionID != "s" || !c.Fresh || c.AuthTime == nil || c.AuthTime.Unix() != 1700000000 ||
		c.ExpiresAt == nil || c.ExpiresAt.Unix() != 1800000000 || c.NotBefore == nil {
		t.Errorf("registered claims not decoded: %+v", c)
	}

	// Only reserved members: Custom stays nil.
	var only Claims
	if err := json.Unmarshal([]byte(`{"sub":"a","sid":"s"}`), &only); err != nil {
		t.Fatal(err)
	}
	if only.Custom != nil {
		t.Errorf("Custom = %v, want nil", only.Custom)
	}
	// A reserved member of the wrong type is an error.
	for _, bad := range []string{`{"sid":5}`, `{"exp":"soon"}`, `{"fresh":"yes"}`, `[]`, `{`} {
		var c Claims
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("Unmarshal(%s) succeeded, want an error", bad)
		}
	}
}

// claimsVandalize changes everything a handler can reach from c: every
// field, the audience and custom-claim bytes in place, the dates through
// their pointers, and the custom map itself.
func claimsVandalize(c *Claims) {
	c.Subject, c.SessionID, c.ID, c.Issuer = "mallory", "sid-evil", "jti-evil", "https://evil.test"
	for i := range c.Audience {
		c.Audience[i] = "evil-aud"
	}
	c.Audience = append(c.Audience, "more-aud")
	// A second earlier: small enough that, if this reached the cache, the
	// next call would still hit it and renew from it.
	for _, d := range []*jwt.NumericDate{c.ExpiresAt, c.IssuedAt, c.NotBefore, c.AuthTime} {
		if d != nil {
			d.Time = d.Add(-time.Second)
		}
	}
	c.Fresh = !c.Fresh
	for _, raw := range c.Custom {
		_ = append(raw[:0], `"overflow-into-spare-capacity"`...)
		for i := range raw {
			raw[i] = ' '
		}
		raw[0] = '0' // still JSON, so that a renewal could sign it
	}
	copy(c.Custom["role"], `"writer"`) // as long as "reader"
	c.Custom["extra"] = json.RawMessage(`true`)
	delete(c.Custom, "tags")
}

// claimsVandalEnv is a server whose calls pass, after the session
// interceptor, through one that records the claims it gets as JSON, then
// vandalizes them, and records a second ClaimsFromContext as JSON again.
type claimsVandalEnv struct {
	*testEnv
	mu   sync.Mutex
	seen [][2]string // per call: the claims before and after vandalism
}

func newClaimsVandalEnv(t *testing.T, opts ...ServerOption) *claimsVandalEnv {
	v := &claimsVandalEnv{}
	vandal := func(ctx context.Context) {
		c, ok := ClaimsFromContext(ctx)
		if !ok {
			t.Error("no claims in the handler's context")
			return
		}
		before, err := json.Marshal(c)
		if err != nil {
			t.Error(err)
		}
		claimsVandalize(c)
		again, _ := ClaimsFromContext(ctx)
		after, err := json.Marshal(again)
		if err != nil {
			t.Error(err)
		}
		*again = Claims{}
		v.mu.Lock()
		v.seen = append(v.seen, [2]string{string(before), string(after)})
		v.mu.Unlock()
	}
	v.testEnv = newEnv(t, withServerOptions(opts...), withAfter(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			vandal(ctx)
			return h(ctx, req)
		},
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			vandal(ss.Context())
			return h(srv, ss)
		}))
	return v
}

func (v *claimsVandalEnv) last(t *testing.T) (before, after string) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.seen) == 0 {
		t.Fatal("the handler did not run")
	}
	s := v.seen[len(v.seen)-1]
	return s[0], s[1]
}

// TestClaims_HandlerCannotChangeClaims: a handler that modifies everything
// it can reach from ClaimsFromContext changes neither what a second
// ClaimsFromContext returns, nor the claims a later call with the same
// token gets from the verified-token cache, nor the claims that call's
// renewal signs.
func TestClaims_HandlerCannotChangeClaims(t *testing.T) {
	custom := map[string]any{"role": "reader", "perm": map[string]any{"level": "reader"}, "tags": []string{"a", "b"}}
	for _, kind := range []string{"unary", "stream"} {
		for _, aud := range [][]string{{"orders"}, {"orders", "billing"}} {
			t.Run(fmt.Sprintf("%s/aud=%d", kind, len(aud)), func(t *testing.T) {
				v := newClaimsVandalEnv(t, WithIssuer("https://issuer.test"), WithAudience(aud...))
				p := newPolicyCaller(t, v.testEnv)
				tok := v.startSession(t, custom).AccessToken
				login, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
				if err != nil {
					t.Fatal(err)
				}

				// Call 1, before the renewal window: the handler vandalizes.
				v.clock.Advance(time.Minute)
				if renewed, err := p.call(kind, tok); err != nil || renewed != "" {
					t.Fatalf("call 1: renewed %v, err %v; want no renewal, nil", renewed != "", err)
				}
				before, after := v.last(t)
				if before != string(login) {
					t.Errorf("call 1: handler got claims\n%s\nwant the token's\n%s", before, login)
				}
				if after != before {
					t.Errorf("call 1: a second ClaimsFromContext after vandalism = \n%s\nwant\n%s", after, before)
				}
				if got, err := json.Marshal(v.svc.lastClaims.Load()); err != nil || string(got) != string(login) {
					t.Errorf("call 1: the interceptor's own claims = \n%s (%v)\nwant\n%s", got, err, login)
				}

				// Call 2, same token (a cache hit), in the renewal window.
				v.clock.Advance(13 * time.Hour)
				renewed, err := p.call(kind, tok)
				if err != nil || renewed == "" {
					t.Fatalf("call 2: renewed %v, err %v; want a renewal", renewed != "", err)
				}
				if before, _ := v.last(t); before != string(login) {
					t.Errorf("call 2: handler got claims\n%s\nwant the token's\n%s", before, login)
				}
				want := claimsSegment(t, tok, 1)
				got := claimsSegment(t, renewed, 1)
				for name, raw := range want {
					switch name {
					case "iat", "exp", "jti", "fresh":
						continue
					}
					if string(got[name]) != string(raw) {
						t.Errorf("renewal: %s = %s, want %s", name, got[name], raw)
					}
				}
				for name := range got {
					if _, ok := want[name]; !ok && name != "iat" && name != "exp" && name != "jti" {
						t.Errorf("renewal carries %s = %s, which the token did not", name, got[name])
					}
				}

				// Call 3 with the renewal: the vandalism of call 2 did not
				// reach it either.
				if _, err := p.call(kind, renewed); err != nil {
					t.Fatalf("call 3: %v", err)
				}
				before, _ = v.last(t)
				var c Claims
				if err := json.Unmarshal([]byte(before), &c); err != nil {
					t.Fatal(err)
				}
				var role string
				if ok, err := c.Lookup("role", &role); c.Subject != "alice" || !slices.Equal(c.Audience, aud) || !ok || err != nil || role != "reader" {
					t.Fatalf("call 3: handler got sub %q, aud %q, role %q (%v, %v); want alice, %q, reader", c.Subject, c.Audience, role, ok, err, aud)
				}
			})
		}
	}
}

// TestClaims_CloneIsDeep: the copy ClaimsFromContext returns shares
// nothing with the interceptor's claims, and one custom claim's bytes
// cannot spill into another's.
func TestClaims_CloneIsDeep(t *testing.T) {
	for _, aud := range []jwt.ClaimStrings{nil, {}, {"orders"}, {"orders", "billing", "x"}} {
		orig := &Claims{
			RegisteredClaims: jwt.RegisteredClaims{
				Issuer: "i", Subject: "alice", Audience: aud, ID: "j",
				ExpiresAt: jwt.NewNumericDate(t0.Add(time.Hour)), NotBefore: jwt.NewNumericDate(t0),
				IssuedAt: jwt.NewNumericDate(t0),
			},
			SessionID: "s", AuthTime: jwt.NewNumericDate(t0), Fresh: true,
			Custom: map[string]json.RawMessage{"role": json.RawMessage(`"reader"`), "n": json.RawMessage(`1`), "o": json.RawMessage(`{"a":[1]}`)},
		}
		want, err := json.Marshal(orig)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.WithValue(context.Background(), claimsKey{}, compactClaims(orig))
		c, ok := ClaimsFromContext(ctx)
		if !ok || c == orig {
			t.Fatalf("aud %q: ClaimsFromContext = %p, %v; want a copy of %p", aud, c, ok, orig)
		}
		if got, _ := json.Marshal(c); string(got) != string(want) {
			t.Fatalf("aud %q: copy = %s, want %s", aud, got, want)
		}
		if (c.Audience == nil) != (aud == nil) {
			t.Errorf("aud %q: copy's audience nil = %v, want %v", aud, c.Audience == nil, aud == nil)
		}
		// Growing one custom claim in place leaves the others alone.
		c.Custom["n"] = append(c.Custom["n"], `23456789`...)
		for name, wantRaw := range map[string]string{"role": `"reader"`, "o": `{"a":[1]}`, "n": `123456789`} {
			if got := string(c.Custom[name]); got != wantRaw {
				t.Errorf("aud %q: after appending to n, copy's %s = %s, want %s", aud, name, got, wantRaw)
			}
		}
		claimsVandalize(c)
		if got, _ := json.Marshal(orig); string(got) != string(want) {
			t.Errorf("aud %q: after vandalizing the copy, original = %s, want %s", aud, got, want)
		}
		again, _ := ClaimsFromContext(ctx)
		if got, _ := json.Marshal(again); string(got) != string(want) {
			t.Errorf("aud %q: after vandalizing the copy, the context's claims = %s, want %s", aud, got, want)
		}
		if (again.Audience == nil) != (aud == nil) {
			t.Errorf("aud %q: second copy's audience nil = %v, want %v", aud, again.Audience == nil, aud == nil)
		}
	}
}

// TestClaims_ContextCost: reading claims costs one allocation for the
// usual claims, and RequireFresh, which only reads, none.
func TestClaims_ContextCost(t *testing.T) {
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: "i", Subject: "alice", Audience: jwt.ClaimStrings{"orders"}, ID: "j",
			ExpiresAt: jwt.NewNumericDate(t0.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(t0),
		},
		SessionID: "s", AuthTime: jwt.NewNumericDate(t0), Fresh: true,
	}
	ctx := context.WithValue(context.Background(), claimsKey{}, compactClaims(c))
	for _, tc := range []struct {
		name string
		f    func()
		want float64
	}{
		{"ClaimsFromContext", func() { _, _ = ClaimsFromContext(ctx) }, 1},
		{"RequireFresh", func() { _ = RequireFresh(ctx) }, 0},
	} {
		if got := testing.AllocsPerRun(100, tc.f); got != tc.want {
			t.Errorf("%s: %v allocations, want %v", tc.name, got, tc.want)
		}
	}
}

// TestClaims_UnmarshalDuplicateNames: Claims refuses a payload that names
// a member twice, at any depth, also when the names differ only in their
// escaping.
func TestClaims_UnmarshalDuplicateNames(t *testing.T) {
	for _, payload := range []string{
		`{"sub":"mallory","sub":"alice","sid":"s"}`,
		`{"sub":"alice","sid":"s","sid":"t"}`,
		`{"exp":1,"sub":"alice","exp":2}`,
		`{"s\u0075b":"mallory","sub":"alice"}`,
		`{"sub":"alice","role":"admin","role":"reader"}`,
		`{"sub":"alice","perm":{"level":"admin","level":"reader"}}`,
		`{"sub":"alice","perm":[{"l\u0065vel":"admin","level":"reader"}]}`,
	} {
		var c Claims
		if err := json.Unmarshal([]byte(payload), &c); !errors.Is(err, errDuplicateName) {
			t.Errorf("Unmarshal(%s) = %v, want errDuplicateName", payload, err)
		}
	}
}

// claimsLookalikes are custom claim names that differ from a session claim
// only under Unicode simple folding, or that look like one but do not
// fold to it (U+212A KELVIN SIGN folds to k, which no session claim has).
var claimsLookalikes = []string{"ſub", "ſid", "freſh", "iſs", "SUB", "Fresh", "\u212Aid", "\u212Aſub", "subſ"}

// claimsFoldsToReserved reports, independently of the library, whether
// name equals a session claim under strings.EqualFold.
func claimsFoldsToReserved(name string) bool {
	for _, r := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "auth_time", "fresh"} {
		if strings.EqualFold(name, r) {
			return true
		}
	}
	return false
}

// claimsSecret is the HMAC secret of hand-made tokens (claimsSign) and of
// the servers that verify them (claimsKeys).
var claimsSecret = []byte("claims-test-secret-0123456789abcdef")

// claimsKeys is the key set of claimsSecret, kid "rk".
func claimsKeys(t testing.TB) *KeySet {
	t.Helper()
	return keysSet(t, keysMust(t, "rk", jwt.SigningMethodHS256, claimsSecret))
}

// claimsSign assembles a compact HS256 JWS of typ at+jwt, kid "rk", over
// payload exactly as given (no re-encoding), signed with claimsSecret.
func claimsSign(payload string) string {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(`{"alg":"HS256","kid":"rk","typ":"at+jwt"}`)) + "." + enc.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, claimsSecret)
	mac.Write([]byte(input))
	return input + "." + enc.EncodeToString(mac.Sum(nil))
}

// claimsPayload is a valid access-token payload for sid s1 and subject
// alice, issued at t0 and expiring an hour later, with extra members
// appended as given.
func claimsPayload(extra string) string {
	p := fmt.Sprintf(`{"sub":"alice","exp":%d,"iat":%d,"jti":"j1","sid":"s1","auth_time":%d`,
		t0.Add(time.Hour).Unix(), t0.Unix(), t0.Unix())
	if extra != "" {
		p += "," + extra
	}
	return p + "}"
}

// claimsAuthenticate runs s's unary interceptor on a call that presents
// tok, and returns its error and the claims the handler saw (nil if it did
// not run).
func claimsAuthenticate(s *Server, tok string) (*Claims, error) {
	ctx := metadata.NewIncomingContext(context.Background(), bearerMD(tok))
	var seen *Claims
	handler := func(ctx context.Context, _ any) (any, error) {
		seen, _ = ClaimsFromContext(ctx)
		if seen == nil {
			seen = new(Claims)
		}
		return nil, nil
	}
	_, err := s.UnaryServerInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: refreshUnaryMethod}, handler)
	return seen, err
}

// TestClaims_UnicodeFoldedNames: encoding/json matches member names
// under Unicode simple folding, so "ſub" is "sub" to it. Such names are
// refused as custom claims, and a token carrying one is invalid.
func TestClaims_UnicodeFoldedNames(t *testing.T) {
	t.Run("StartSession", func(t *testing.T) {
		e := newEnv(t)
		for _, name := range claimsLookalikes {
			reserved := claimsFoldsToReserved(name)
			_, err := e.server.StartSession(context.Background(), "alice", map[string]any{name: "mallory"})
			if got := errors.Is(err, ErrReservedClaim); got != reserved {
				t.Errorf("StartSession with claim %q: err = %v; want ErrReservedClaim %v", name, err, reserved)
			}
		}
	})

	t.Run("MarshalJSON", func(t *testing.T) {
		for _, name := range claimsLookalikes {
			c := Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice"}, Custom: map[string]json.RawMessage{name: json.RawMessage(`"mallory"`)}}
			_, err := c.MarshalJSON()
			if got := errors.Is(err, ErrReservedClaim); got != claimsFoldsToReserved(name) {
				t.Errorf("MarshalJSON with claim %q: err = %v; want ErrReservedClaim %v", name, err, claimsFoldsToReserved(name))
			}
		}
	})

	t.Run("UnmarshalJSON", func(t *testing.T) {
		for _, tc := range []struct {
			name, payload string
		}{
			{"after", `{"sub":"alice","ſub":"mallory","sid":"s1"}`},
			{"before", `{"ſub":"mallory","sub":"alice","sid":"s1"}`},
			{"alone", `{"ſub":"mallory","sid":"s1"}`},
			{"sid", `{"sub":"alice","sid":"s1","ſid":"s2"}`},
			{"fresh", `{"sub":"alice","sid":"s1","freſh":true}`},
		} {
			var c Claims
			if err := json.Unmarshal([]byte(tc.payload), &c); err == nil {
				t.Errorf("%s: Unmarshal accepted a look-alike member: sub %q, sid %q, fresh %v", tc.name, c.Subject, c.SessionID, c.Fresh)
			}
		}
		// A name that does not fold to a session claim is a custom claim.
		var c Claims
		if err := json.Unmarshal([]byte(`{"sub":"alice","\u212Aid":"x"}`), &c); err != nil {
			t.Fatalf("Unmarshal with a custom claim %q: %v", "\u212Aid", err)
		}
		if c.Subject != "alice" || string(c.Custom["\u212Aid"]) != `"x"` {
			t.Fatalf("got sub %q, custom %q; want alice, %q", c.Subject, c.Custom, `"x"`)
		}
	})

	t.Run("signed token", func(t *testing.T) {
		s := newEnv(t, withKeys(claimsKeys(t)), withStart(t0.Add(time.Minute))).server
		// The hand-made token verifies without a look-alike member.
		c, err := claimsAuthenticate(s, claimsSign(claimsPayload("")))
		if err != nil || c == nil || c.Subject != "alice" {
			t.Fatalf("control token: claims %v, err %v; want it accepted for alice", c, err)
		}
		for _, extra := range []string{`"ſub":"mallory"`, `"ſid":"s2"`, `"freſh":true`, `"iſs":"evil"`} {
			c, err := claimsAuthenticate(s, claimsSign(claimsPayload(extra)))
			if c != nil {
				t.Errorf("token with %s: handler ran with sub %q, sid %q, fresh %v", extra, c.Subject, c.SessionID, c.Fresh)
				continue
			}
			wantReason(t, err, ReasonTokenInvalid)
		}
	})
}

// claimsSecretValue is a claim value that no error may quote.
const claimsSecretValue = "SECRET-VALUE"

// TestClaims_ErrorsDoNotQuoteValues: client-side decode errors and
// Claims.Lookup errors never quote a claim's value.
func TestClaims_ErrorsDoNotQuoteValues(t *testing.T) {
	badPayloads := []string{
		`{"sub":"alice","sid":"s1","exp":"` + claimsSecretValue + `"}`,
		`{"sub":"alice","sid":"s1","exp":1,"iat":"` + claimsSecretValue + `"}`,
		`{"sub":"alice","sid":"s1","exp":1,"auth_time":"` + claimsSecretValue + `"}`,
	}
	t.Run("NewTokenHolder", func(t *testing.T) {
		for _, p := range badPayloads {
			_, err := NewTokenHolder(claimsSign(p))
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("err = %v, want ErrMalformedToken", err)
			}
			if strings.Contains(err.Error(), claimsSecretValue) {
				t.Fatalf("error quotes a claim value: %v", err)
			}
		}
	})

	t.Run("refreshed pair", func(t *testing.T) {
		e := newEnv(t, withMemStore())
		s := e.startSession(t, nil)
		r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) {
			return &slidejwtv1.TokenPair{AccessToken: claimsSign(badPayloads[0]), RefreshToken: "next"}, nil
		}}
		c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
		crfLapse(e, s)
		err := crfUnary(t, c)
		if err == nil || strings.Contains(err.Error(), claimsSecretValue) {
			t.Fatalf("err = %v, want an error that does not quote a claim value", err)
		}
	})

	t.Run("Lookup", func(t *testing.T) {
		c := &Claims{Custom: map[string]json.RawMessage{
			"when":  json.RawMessage(`"` + claimsSecretValue + `"`),
			"count": json.RawMessage(`987654321`),
		}}
		for _, tc := range []struct {
			name, secret string
			into         any
		}{
			{"when", claimsSecretValue, new(time.Time)},
			{"when", claimsSecretValue, new(int)},
			{"count", "987654321", new(int8)},
			{"count", "987654321", new(string)},
		} {
			ok, err := c.Lookup(tc.name, tc.into)
			if !ok || err == nil {
				t.Fatalf("Lookup(%q, %T) = %v, %v; want true and an error", tc.name, tc.into, ok, err)
			}
			if strings.Contains(err.Error(), tc.secret) {
				t.Fatalf("Lookup(%q, %T) error quotes the claim's value: %v", tc.name, tc.into, err)
			}
		}
	})

	t.Run("Lookup on nil Claims", func(t *testing.T) {
		var c *Claims
		var v string
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("Lookup on nil *Claims panicked: %v", p)
				}
			}()
			ok, err := c.Lookup("role", &v)
			if ok || err != nil {
				t.Fatalf("Lookup on nil *Claims = %v, %v; want false, nil", ok, err)
			}
		}()
	})
}
