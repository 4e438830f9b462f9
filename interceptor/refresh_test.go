package interceptor

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// Full method names the refresh tests count.
const (
	refreshUnaryMethod = testpb.TestService_UnaryCall_FullMethodName
	refreshOutMethod   = testpb.TestService_StreamingOutputCall_FullMethodName
	refreshInMethod    = testpb.TestService_StreamingInputCall_FullMethodName
	refreshBidiMethod  = testpb.TestService_FullDuplexCall_FullMethodName
)

// revoked reports whether the env's store refuses session sid now.
func (e *testEnv) revoked(t testing.TB, sid string) bool {
	t.Helper()
	ok, err := e.store.IsRevoked(context.Background(), sid, e.clock.Now())
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", sid, err)
	}
	return ok
}

// refreshAnswered returns the number of Refresh calls the env's server
// answered, successfully or not.
func refreshAnswered(e *testEnv) int {
	return e.events.count(EventRefreshed, refreshMethod) + e.events.count(EventRejected, refreshMethod)
}

// refreshCall calls TokenService.Refresh with rt and no authorization.
func refreshCall(tc slidejwtv1.TokenServiceClient, rt string) (*slidejwtv1.TokenPair, error) {
	resp, err := tc.Refresh(context.Background(), &slidejwtv1.RefreshRequest{RefreshToken: rt})
	return resp.GetTokens(), err
}

// refreshMust is refreshCall that fails the test on an error.
func refreshMust(t testing.TB, tc slidejwtv1.TokenServiceClient, rt string) *slidejwtv1.TokenPair {
	t.Helper()
	p, err := refreshCall(tc, rt)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	return p
}

// refreshStream opens a StreamingOutputCall with tok and reads it to its
// end.
func refreshStream(tc testpb.TestServiceClient, tok string) error {
	st, err := tc.StreamingOutputCall(bearerCtx(tok), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}},
	})
	if err != nil {
		return err
	}
	return drain(st)
}

// refreshSameCustom reports whether a and b hold the same custom claims,
// byte for byte.
func refreshSameCustom(a, b map[string]json.RawMessage) bool {
	return maps.EqualFunc(a, b, func(x, y json.RawMessage) bool { return bytes.Equal(x, y) })
}

// refreshWantCode fails unless err has code want.
func refreshWantCode(t testing.TB, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code = %v (err %v), want %v", got, err, want)
	}
}

// TestRefresh_StartSessionRefreshToken: with a store, StartSession also
// returns a refresh token of typ rt+jwt for the same session, expiring at
// min(now + refresh TTL, session end).
func TestRefresh_StartSessionRefreshToken(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []ServerOption
		wantExp time.Time
	}{
		{"defaults: refresh TTL equals the lifetime", nil, t0.Add(DefaultRefreshTTL)},
		{"refresh TTL shorter than the lifetime", []ServerOption{WithRefreshTTL(time.Hour)}, t0.Add(time.Hour)},
		{"refresh TTL capped at the session end",
			[]ServerOption{WithPolicy(Policy{MaxLifetime: 48 * time.Hour}), WithRefreshTTL(72 * time.Hour)}, t0.Add(48 * time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore(), withServerOptions(tc.opts...))
			s := e.startSession(t, map[string]any{"role": "admin"})
			if s.RefreshToken == "" {
				t.Fatal("RefreshToken is empty with a session store")
			}
			rd, ad := decodeToken(t, s.RefreshToken), decodeToken(t, s.AccessToken)
			typ, rc, atyp, ac := rd.typ(), rd.claims, ad.typ(), ad.claims
			if typ != refreshTokenType || atyp != accessTokenType {
				t.Fatalf("typ = %q (refresh), %q (access); want %q, %q", typ, atyp, refreshTokenType, accessTokenType)
			}
			if rc.SessionID != s.SessionID || ac.SessionID != s.SessionID || rc.Subject != "alice" {
				t.Fatalf("refresh sid %q sub %q, session %q; want the session's sid and alice", rc.SessionID, rc.Subject, s.SessionID)
			}
			if rc.ID == "" || rc.ID == ac.ID {
				t.Fatalf("refresh jti %q, access jti %q: want distinct and non-empty", rc.ID, ac.ID)
			}
			if got := rc.ExpiresAt.Time; !got.Equal(tc.wantExp) {
				t.Fatalf("refresh exp = %v, want %v", got, tc.wantExp)
			}
			if !s.RefreshExpiry.Equal(tc.wantExp) {
				t.Fatalf("Session.RefreshExpiry = %v, want %v", s.RefreshExpiry, tc.wantExp)
			}
			if got := s.TokenPair().GetRefreshTokenExpiresAt().AsTime(); !got.Equal(tc.wantExp) {
				t.Fatalf("TokenPair refresh_token_expires_at = %v, want %v", got, tc.wantExp)
			}
			if rc.Fresh || !ac.Fresh {
				t.Fatalf("fresh: refresh %v, access %v; want false, true", rc.Fresh, ac.Fresh)
			}
			if !rc.AuthTime.Equal(t0) {
				t.Fatalf("refresh auth_time = %v, want %v", rc.AuthTime.Time, t0)
			}
		})
	}
}

// TestRefresh_NoStore: without a session store there is no refresh token
// and Refresh answers FailedPrecondition.
func TestRefresh_NoStore(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	if s.RefreshToken != "" || !s.RefreshExpiry.IsZero() {
		t.Fatalf("without a store: RefreshToken length %d, RefreshExpiry %v; want empty", len(s.RefreshToken), s.RefreshExpiry)
	}
	if p := s.TokenPair(); p.GetRefreshToken() != "" || p.GetRefreshTokenExpiresAt() != nil {
		t.Fatal("TokenPair carries a refresh token without a store")
	}
	_, tc := e.clients(t)
	for _, rt := range []string{"", s.AccessToken, "garbage"} {
		_, err := refreshCall(tc, rt)
		refreshWantCode(t, err, codes.FailedPrecondition)
	}
}

// TestRefresh_Rotates: Refresh returns a new access and refresh token for
// the same session, with new jtis, no freshness marker and the custom
// claims of the session; both work at once.
func TestRefresh_Rotates(t *testing.T) {
	e := newEnv(t, withMemStore())
	custom := map[string]any{"role": "admin", "n": 7, "tags": []string{"a", "b"}}
	s := e.startSession(t, custom)
	orig := decodeToken(t, s.AccessToken).claims
	origRT := decodeToken(t, s.RefreshToken).claims
	tsc, tc := e.clients(t)

	e.clock.Advance(time.Hour)
	p := refreshMust(t, tc, s.RefreshToken)
	ad, rd := decodeToken(t, p.GetAccessToken()), decodeToken(t, p.GetRefreshToken())
	atyp, ac, rtyp, rc := ad.typ(), ad.claims, rd.typ(), rd.claims
	if atyp != accessTokenType || rtyp != refreshTokenType {
		t.Fatalf("typ = %q, %q; want %q, %q", atyp, rtyp, accessTokenType, refreshTokenType)
	}
	if p.GetAccessToken() == s.AccessToken || p.GetRefreshToken() == s.RefreshToken {
		t.Fatal("Refresh returned a token it was given")
	}
	if ac.SessionID != s.SessionID || rc.SessionID != s.SessionID {
		t.Fatalf("sid = %q, %q; want %q", ac.SessionID, rc.SessionID, s.SessionID)
	}
	if ac.Subject != "alice" || rc.Subject != "alice" {
		t.Fatalf("sub = %q, %q; want alice", ac.Subject, rc.Subject)
	}
	if ids := map[string]bool{ac.ID: true, rc.ID: true, orig.ID: true, origRT.ID: true}; len(ids) != 4 {
		t.Fatalf("jtis are not all distinct: %v", ids)
	}
	if ac.Fresh || rc.Fresh {
		t.Fatal("refreshed token carries the freshness marker")
	}
	if !ac.AuthTime.Equal(t0) || !rc.AuthTime.Equal(t0) {
		t.Fatalf("auth_time = %v, %v; want %v", ac.AuthTime.Time, rc.AuthTime.Time, t0)
	}
	if !refreshSameCustom(ac.Custom, orig.Custom) || len(ac.Custom) != len(custom) {
		t.Fatalf("custom claims = %s, want %s", ac.Custom, orig.Custom)
	}
	if !refreshSameCustom(rc.Custom, orig.Custom) {
		t.Fatalf("refresh token custom claims = %s, want %s", rc.Custom, orig.Custom)
	}
	now := t0.Add(time.Hour)
	if want := now.Add(DefaultTTL); !ac.ExpiresAt.Equal(want) || !p.GetAccessTokenExpiresAt().AsTime().Equal(want) {
		t.Fatalf("access exp = %v (pair %v), want %v", ac.ExpiresAt.Time, p.GetAccessTokenExpiresAt().AsTime(), want)
	}
	if want := t0.Add(DefaultMaxLifetime); !rc.ExpiresAt.Equal(want) || !p.GetRefreshTokenExpiresAt().AsTime().Equal(want) {
		t.Fatalf("refresh exp = %v (pair %v), want %v (capped at the session end)", rc.ExpiresAt.Time, p.GetRefreshTokenExpiresAt().AsTime(), want)
	}
	if want := t0.Add(DefaultMaxLifetime); !p.GetSessionEndsAt().AsTime().Equal(want) {
		t.Fatalf("session_ends_at = %v, want %v", p.GetSessionEndsAt().AsTime(), want)
	}

	// The new access token authenticates; the handler sees it.
	if _, err := unaryCall(t, tsc, p.GetAccessToken()); err != nil {
		t.Fatalf("call with the refreshed access token: %v", err)
	}
	if got := e.svc.lastClaims.Load(); got == nil || got.ID != ac.ID || got.Fresh {
		t.Fatalf("handler saw claims %+v, want jti %q, not fresh", got, ac.ID)
	}
	// The new refresh token rotates in turn.
	e.clock.Advance(time.Hour)
	p2 := refreshMust(t, tc, p.GetRefreshToken())
	if c2 := decodeToken(t, p2.GetAccessToken()).claims; c2.SessionID != s.SessionID {
		t.Fatalf("second refresh: sid %q, want %q", c2.SessionID, s.SessionID)
	}
}

// TestRefresh_GracePeriod: a retired refresh token presented again before
// the grace period ends gets the same pair, byte for byte; at its end or
// later, the session is revoked and all its tokens fail.
func TestRefresh_GracePeriod(t *testing.T) {
	for _, tc := range []struct {
		name       string
		grace      time.Duration
		offset     time.Duration // after rotation time + grace
		wantReplay bool
	}{
		{"default grace, one tick before its end", DefaultRefreshGrace, -time.Nanosecond, true},
		{"default grace, at its end", DefaultRefreshGrace, 0, false},
		{"default grace, one tick after its end", DefaultRefreshGrace, time.Nanosecond, false},
		{"5s grace, one tick before its end", 5 * time.Second, -time.Nanosecond, true},
		{"5s grace, at its end", 5 * time.Second, 0, false},
		{"no grace, same instant", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore(), withServerOptions(WithRefreshGrace(tc.grace)))
			s := e.startSession(t, nil)
			tsc, tc2 := e.clients(t)
			e.clock.Advance(time.Hour + 500*time.Millisecond) // rotation time, not on a whole second
			rotatedAt := e.clock.Now()
			p1 := refreshMust(t, tc2, s.RefreshToken)

			e.clock.Set(rotatedAt.Add(tc.grace + tc.offset))
			p2, err := refreshCall(tc2, s.RefreshToken)
			if tc.wantReplay {
				if err != nil {
					t.Fatalf("replay within the grace period: %v", err)
				}
				if !proto.Equal(p1, p2) || p1.GetAccessToken() != p2.GetAccessToken() || p1.GetRefreshToken() != p2.GetRefreshToken() {
					t.Fatal("replay returned a different pair, want the same one")
				}
				if revoked := e.revoked(t, s.SessionID); revoked {
					t.Fatal("session revoked by a replay within the grace period")
				}
				if _, err := unaryCall(t, tsc, p1.GetAccessToken()); err != nil {
					t.Fatalf("successor access token after a replay: %v", err)
				}
				if _, err := refreshCall(tc2, p1.GetRefreshToken()); err != nil {
					t.Fatalf("successor refresh token after a replay: %v", err)
				}
				return
			}
			wantReason(t, err, ReasonSessionRevoked)
			if !e.revoked(t, s.SessionID) {
				t.Fatal("session not revoked after reuse")
			}
			before := e.svc.calls.Load()
			for _, tok := range []string{p1.GetAccessToken(), s.AccessToken} {
				_, err := unaryCall(t, tsc, tok)
				wantReason(t, err, ReasonSessionRevoked)
				wantReason(t, refreshStream(tsc, tok), ReasonSessionRevoked)
			}
			if got := e.svc.calls.Load(); got != before {
				t.Fatalf("handler ran %d times for a revoked session", got-before)
			}
			_, err = refreshCall(tc2, p1.GetRefreshToken())
			wantReason(t, err, ReasonSessionRevoked)
		})
	}
}

// TestRefresh_TokenTypeSeparation: an access token is no refresh token and
// a refresh token is no access token.
func TestRefresh_TokenTypeSeparation(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	tsc, tc := e.clients(t)

	_, err := refreshCall(tc, s.AccessToken)
	wantReason(t, err, ReasonTokenInvalid)

	_, err = unaryCall(t, tsc, s.RefreshToken)
	wantReason(t, err, ReasonTokenInvalid)
	wantReason(t, refreshStream(tsc, s.RefreshToken), ReasonTokenInvalid)
	_, err = tc.Revoke(bearerCtx(s.RefreshToken), &slidejwtv1.RevokeRequest{})
	wantReason(t, err, ReasonTokenInvalid)
	if got := e.svc.calls.Load(); got != 0 {
		t.Fatalf("handler ran %d times for a refresh token", got)
	}
	if e.revoked(t, s.SessionID) {
		t.Fatal("Revoke with a refresh token revoked the session")
	}
	// Neither rejection consumed anything: both tokens still work.
	if _, err := unaryCall(t, tsc, s.AccessToken); err != nil {
		t.Fatalf("access token after the type checks: %v", err)
	}
	refreshMust(t, tc, s.RefreshToken)
}

// TestRefresh_Rejections: refresh tokens that cannot be exchanged.
func TestRefresh_Rejections(t *testing.T) {
	const leeway = DefaultLeeway
	lifetime := 48 * time.Hour
	for _, tc := range []struct {
		name string
		opts []ServerOption
		// tok returns the refresh token to present, given a session
		// started at t0, and sets the clock.
		tok  func(t *testing.T, e *testEnv, s Session) string
		want Reason // noReason: success, and the access token works at once
	}{
		{"refresh token one tick before its exp + leeway", []ServerOption{WithRefreshTTL(time.Hour)},
			refreshAt(time.Hour + leeway - time.Nanosecond), noReason},
		{"refresh token at its exp + leeway", []ServerOption{WithRefreshTTL(time.Hour)},
			refreshAt(time.Hour + leeway), ReasonSessionExpired},
		{"refresh token long lapsed", []ServerOption{WithRefreshTTL(time.Hour)},
			refreshAt(50 * time.Hour), ReasonSessionExpired},
		{"one second before the session end", []ServerOption{WithPolicy(Policy{MaxLifetime: lifetime})},
			refreshAt(lifetime - time.Second), noReason},
		{"one tick before the session end", []ServerOption{WithPolicy(Policy{MaxLifetime: lifetime})},
			refreshAt(lifetime - time.Nanosecond), noReason},
		// From the end on, any pair minted would expire no later than it
		// was issued.
		{"at the session end", []ServerOption{WithPolicy(Policy{MaxLifetime: lifetime})},
			refreshAt(lifetime), ReasonSessionExpired},
		{"past the session end, within the leeway", []ServerOption{WithPolicy(Policy{MaxLifetime: lifetime})},
			refreshAt(lifetime + leeway/2), ReasonSessionExpired},
		{"at the session end + leeway", []ServerOption{WithPolicy(Policy{MaxLifetime: lifetime})},
			refreshAt(lifetime + leeway), ReasonSessionExpired},
		{"empty", nil, refreshFixed(""), ReasonTokenMissing},
		{"garbage", nil, refreshFixed("garbage"), ReasonTokenInvalid},
		{"three empty-ish segments", nil, refreshFixed("a.b.c"), ReasonTokenInvalid},
		{"over-size", nil, refreshFixed(strings.Repeat("a", DefaultMaxTokenSize+1)), ReasonTokenInvalid},
		{"line break inserted", nil, func(_ *testing.T, _ *testEnv, s Session) string {
			return s.RefreshToken[:10] + "\n" + s.RefreshToken[10:]
		}, ReasonTokenInvalid},
		{"signature altered", nil, func(_ *testing.T, _ *testEnv, s Session) string {
			last := s.RefreshToken[len(s.RefreshToken)-2]
			flip := byte('A')
			if last == 'A' {
				flip = 'B'
			}
			return s.RefreshToken[:len(s.RefreshToken)-2] + string(flip) + s.RefreshToken[len(s.RefreshToken)-1:]
		}, ReasonTokenInvalid},
		{"signed by an untrusted key", nil, func(t *testing.T, e *testEnv, _ Session) string {
			// A session of another server, with keys of its own.
			return newEnv(t, withMemStore(), withStart(e.clock.Now())).startSession(t, nil).RefreshToken
		}, ReasonTokenInvalid},
		{"session unknown to the store", nil, func(t *testing.T, e *testEnv, _ Session) string {
			// A replica with the same keys but its own store: this env's
			// store never saw the session.
			// A session of another server with the same keys and its own store.
			return newEnv(t, withMemStore(), withStart(e.clock.Now()), withKeys(e.keys)).startSession(t, nil).RefreshToken
		}, ReasonSessionRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore(), withServerOptions(tc.opts...))
			s := e.startSession(t, nil)
			tsc, tokc := e.clients(t)
			p, err := refreshCall(tokc, tc.tok(t, e, s))
			if tc.want != noReason {
				wantReason(t, err, tc.want)
				return
			}
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			// Every pair Refresh hands out must be usable at once.
			if _, err := unaryCall(t, tsc, p.GetAccessToken()); err != nil {
				t.Fatalf("refreshed access token rejected at once: %v", err)
			}
		})
	}
}

// refreshAt returns a token func that presents the session's refresh token at
// t0+d.
func refreshAt(d time.Duration) func(*testing.T, *testEnv, Session) string {
	return func(_ *testing.T, e *testEnv, s Session) string {
		e.clock.Set(t0.Add(d))
		return s.RefreshToken
	}
}

// refreshFixed returns a token func that presents tok.
func refreshFixed(tok string) func(*testing.T, *testEnv, Session) string {
	return func(*testing.T, *testEnv, Session) string { return tok }
}

// TestRefresh_ExemptFromAccessAuth: Refresh needs no access token, and a
// lapsed or broken one in authorization does not stop it.
func TestRefresh_ExemptFromAccessAuth(t *testing.T) {
	for _, tc := range []struct {
		name string
		md   func(s Session) metadata.MD
	}{
		{"no authorization", func(Session) metadata.MD { return nil }},
		{"lapsed access token", func(s Session) metadata.MD {
			return bearerMD(s.AccessToken)
		}},
		{"garbage authorization", func(Session) metadata.MD { return metadata.Pairs("authorization", "Bearer garbage") }},
		{"two authorization values", func(s Session) metadata.MD {
			return metadata.Pairs("authorization", "Bearer "+s.AccessToken, "authorization", "Basic eA==")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			tsc, tokc := e.clients(t)
			e.clock.Set(s.Expiry.Add(DefaultLeeway)) // the access token has lapsed
			_, err := unaryCall(t, tsc, s.AccessToken)
			wantReason(t, err, ReasonTokenExpired)

			ctx := metadata.NewOutgoingContext(context.Background(), tc.md(s))
			resp, err := tokc.Refresh(ctx, &slidejwtv1.RefreshRequest{RefreshToken: s.RefreshToken})
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if _, err := unaryCall(t, tsc, resp.GetTokens().GetAccessToken()); err != nil {
				t.Fatalf("refreshed access token: %v", err)
			}
		})
	}
}

// TestRefresh_Revoke: TokenService.Revoke with the access token ends the
// caller's session: its access tokens fail on every kind of call and its
// refresh token fails; other sessions go on.
func TestRefresh_Revoke(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	other := e.startSession(t, nil)
	tsc, tc := e.clients(t)

	_, err := tc.Revoke(context.Background(), &slidejwtv1.RevokeRequest{})
	wantReason(t, err, ReasonTokenMissing)
	if n := e.events.count(EventRevoked, ""); n != 0 {
		t.Fatalf("%d revocations without a token", n)
	}

	e.clock.Advance(time.Minute)
	if _, err := tc.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if !e.revoked(t, s.SessionID) {
		t.Fatal("session not revoked in the store")
	}
	before := e.svc.calls.Load()
	_, err = unaryCall(t, tsc, s.AccessToken)
	wantReason(t, err, ReasonSessionRevoked)
	wantReason(t, refreshStream(tsc, s.AccessToken), ReasonSessionRevoked)
	bidi, err := tsc.FullDuplexCall(bearerCtx(s.AccessToken))
	if err != nil {
		t.Fatal(err)
	}
	_ = bidi.CloseSend()
	_, err = bidi.Recv()
	wantReason(t, err, ReasonSessionRevoked)
	if got := e.svc.calls.Load(); got != before {
		t.Fatalf("handler ran %d times after Revoke", got-before)
	}
	_, err = refreshCall(tc, s.RefreshToken)
	wantReason(t, err, ReasonSessionRevoked)
	_, err = tc.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{})
	wantReason(t, err, ReasonSessionRevoked)

	// Another session of the same user is untouched.
	if _, err := unaryCall(t, tsc, other.AccessToken); err != nil {
		t.Fatalf("other session after Revoke: %v", err)
	}
	refreshMust(t, tc, other.RefreshToken)
}

// TestRefresh_RevokeSession: Server.RevokeSession works with a session
// store and with a MemoryRevocationList, and refuses without either.
func TestRefresh_RevokeSession(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     []envOption
		wantCode codes.Code // of RevokeSession
	}{
		{"session store", []envOption{withMemStore()}, codes.OK},
		{"memory revocation list", []envOption{withServerOptions(WithRevocationList(&memstore.RevocationList{}))}, codes.OK},
		{"neither", nil, codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts...)
			s := e.startSession(t, nil)
			tsc, tokc := e.clients(t)
			err := e.server.RevokeSession(context.Background(), s.SessionID)
			refreshWantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if _, err := unaryCall(t, tsc, s.AccessToken); err != nil {
					t.Fatalf("call after a refused RevokeSession: %v", err)
				}
				if n := e.events.count(EventRevoked, ""); n != 0 {
					t.Fatalf("%d %v events for a refused RevokeSession", n, EventRevoked)
				}
				return
			}
			_, err = unaryCall(t, tsc, s.AccessToken)
			wantReason(t, err, ReasonSessionRevoked)
			wantReason(t, refreshStream(tsc, s.AccessToken), ReasonSessionRevoked)
			if s.RefreshToken != "" {
				_, err := refreshCall(tokc, s.RefreshToken)
				wantReason(t, err, ReasonSessionRevoked)
			}
			if n := e.events.count(EventRevoked, ""); n != 1 {
				t.Fatalf("%d %v events, want 1", n, EventRevoked)
			}
		})
	}
}

// TestRefresh_Concurrent: 50 goroutines present the same refresh token at
// the same instant. All succeed with the same successor, which is the
// session's current refresh token.
func TestRefresh_Concurrent(t *testing.T) {
	const n = 50
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	tsc, tc := e.clients(t)
	e.clock.Advance(time.Hour)

	pairs := make([]*slidejwtv1.TokenPair, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			pairs[i], errs[i] = refreshCall(tc, s.RefreshToken)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if pairs[i].GetRefreshToken() != pairs[0].GetRefreshToken() || pairs[i].GetAccessToken() != pairs[0].GetAccessToken() {
			t.Fatalf("goroutine %d got another successor than goroutine 0", i)
		}
	}
	if got := e.events.count(EventRefreshed, refreshMethod); got != n {
		t.Fatalf("%d %v events, want %d", got, EventRefreshed, n)
	}
	if e.revoked(t, s.SessionID) {
		t.Fatal("concurrent refresh revoked the session")
	}
	// The one successor is current: it rotates (a stale one would be
	// taken as reuse and revoke the session).
	e.clock.Advance(time.Minute)
	p := refreshMust(t, tc, pairs[0].GetRefreshToken())
	if _, err := unaryCall(t, tsc, p.GetAccessToken()); err != nil {
		t.Fatal(err)
	}
}

// TestRefresh_Events: Refresh and revocation report events, which never
// carry a token.
func TestRefresh_Events(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	_, tc := e.clients(t)
	tokens := []string{s.AccessToken, s.RefreshToken}
	var seen []Event // every event taken
	// take returns the events since the last take but the store calls,
	// which TestEvents_StoreCalls checks.
	take := func() []Event {
		evs := e.events.take()
		seen = append(seen, evs...)
		var out []Event
		for _, ev := range evs {
			if ev.Kind != EventStoreCall {
				out = append(out, ev)
			}
		}
		return out
	}
	take()

	e.clock.Advance(time.Hour)
	p := refreshMust(t, tc, s.RefreshToken)
	tokens = append(tokens, p.GetAccessToken(), p.GetRefreshToken())
	evs := take()
	if len(evs) != 1 {
		t.Fatalf("events after Refresh = %v, want 1", evs)
	}
	if ev := evs[0]; ev.Kind != EventRefreshed || ev.Method != refreshMethod || ev.Subject != "alice" ||
		ev.SessionID != s.SessionID || !ev.Expiry.Equal(p.GetAccessTokenExpiresAt().AsTime()) || ev.Err != nil || ev.Reason != noReason {
		t.Fatalf("event = %+v, want %v for alice's session expiring %v", ev, EventRefreshed, p.GetAccessTokenExpiresAt().AsTime())
	}

	for _, tc2 := range []struct {
		name      string
		tok       string
		reason    Reason
		sessionID string
	}{
		{"garbage", "garbage", ReasonTokenInvalid, ""},
		{"access token", s.AccessToken, ReasonTokenInvalid, ""},
		{"reused", s.RefreshToken, ReasonSessionRevoked, s.SessionID}, // past the grace period
	} {
		if tc2.name == "reused" {
			e.clock.Advance(DefaultRefreshGrace)
		}
		_, err := refreshCall(tc, tc2.tok)
		wantReason(t, err, tc2.reason)
		evs := take()
		if len(evs) != 1 {
			t.Fatalf("%s: events = %v, want 1", tc2.name, evs)
		}
		if ev := evs[0]; ev.Kind != EventRejected || ev.Method != refreshMethod || ev.Reason != tc2.reason ||
			ev.SessionID != tc2.sessionID || ev.Err == nil {
			t.Fatalf("%s: event = %+v, want %v %q for session %q", tc2.name, ev, EventRejected, tc2.reason, tc2.sessionID)
		}
	}

	s2 := e.startSession(t, nil)
	tokens = append(tokens, s2.AccessToken, s2.RefreshToken)
	take()
	if _, err := tc.Revoke(bearerCtx(s2.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatal(err)
	}
	evs = take()
	var revoked []Event
	for _, ev := range evs {
		if ev.Kind == EventRevoked {
			revoked = append(revoked, ev)
		}
	}
	if len(revoked) != 1 || revoked[0].SessionID != s2.SessionID {
		t.Fatalf("events after Revoke = %v, want one %v for %q", evs, EventRevoked, s2.SessionID)
	}

	if len(seen) < 7 {
		t.Fatalf("%d events seen, want at least 7", len(seen))
	}
	for _, ev := range seen {
		srvCheckNoToken(t, ev, tokens...)
	}
}

// TestRefresh_NewServerRefusals: option combinations NewServer refuses.
func TestRefresh_NewServerRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []ServerOption
		wantErr error
	}{
		{"store and revocation list", []ServerOption{WithSessionStore(&memstore.SessionStore{}), WithRevocationList(&memstore.RevocationList{})}, ErrInvalidOption},
		{"refresh TTL below one second", []ServerOption{WithRefreshTTL(time.Second - time.Nanosecond)}, ErrInvalidOption},
		{"refresh TTL zero", []ServerOption{WithRefreshTTL(0)}, ErrInvalidOption},
		{"refresh TTL negative", []ServerOption{WithRefreshTTL(-time.Hour)}, ErrInvalidOption},
		{"refresh TTL one second", []ServerOption{WithRefreshTTL(time.Second), WithRefreshGrace(0)}, nil},
		{"grace negative", []ServerOption{WithRefreshGrace(-time.Nanosecond)}, ErrInvalidOption},
		{"grace above refresh TTL", []ServerOption{WithRefreshTTL(time.Hour), WithRefreshGrace(time.Hour + time.Nanosecond)}, ErrInvalidPolicy},
		{"grace equal to refresh TTL", []ServerOption{WithRefreshTTL(time.Hour), WithRefreshGrace(time.Hour)}, nil},
		{"grace zero", []ServerOption{WithRefreshGrace(0)}, nil},
		{"store alone", []ServerOption{WithSessionStore(&memstore.SessionStore{})}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewServer(testKeySet(t), tc.opts...)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("NewServer err = %v, want %v", err, tc.wantErr)
			}
			if err != nil && s != nil {
				t.Fatal("NewServer returned a server with an error")
			}
		})
	}
}

// TestRefresh_StoreCheckedBeforeSigning: Refresh asks the store whether
// the session is live before it signs anything. A refresh token of a
// revoked session, or of a session the store does not know, costs no
// signature and is answered SESSION_REVOKED; a valid refresh signs
// exactly two tokens (access and refresh).
func TestRefresh_StoreCheckedBeforeSigning(t *testing.T) {
	for _, tc := range []struct {
		name string
		// tok returns the refresh token to present, after preparing the
		// env.
		tok       func(t *testing.T, e *testEnv, s Session) string
		want      Reason // noReason: success
		wantSigns int64
	}{
		{"valid", func(_ *testing.T, _ *testEnv, s Session) string { return s.RefreshToken }, noReason, 2},
		{"revoked by RevokeSession", func(t *testing.T, e *testEnv, s Session) string {
			if err := e.server.RevokeSession(context.Background(), s.SessionID); err != nil {
				t.Fatal(err)
			}
			return s.RefreshToken
		}, ReasonSessionRevoked, 0},
		{"revoked by logout", func(t *testing.T, e *testEnv, s Session) string {
			_, tokc := e.clients(t)
			if _, err := tokc.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
				t.Fatal(err)
			}
			return s.RefreshToken
		}, ReasonSessionRevoked, 0},
		{"session unknown to the store", func(t *testing.T, e *testEnv, _ Session) string {
			// Same keys, another store: the record is missing here, as
			// after a store that lost its data.
			// A session of another server with the same keys and its own store.
			return newEnv(t, withMemStore(), withStart(e.clock.Now()), withKeys(e.keys)).startSession(t, nil).RefreshToken
		}, ReasonSessionRevoked, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			var signs atomic.Int64
			e.server.signHook = func() { signs.Add(1) }
			s := e.startSession(t, nil)
			_, tokc := e.clients(t)
			e.clock.Advance(time.Hour)
			rt := tc.tok(t, e, s)

			signs.Store(0)
			p, err := refreshCall(tokc, rt)
			if got := signs.Load(); got != tc.wantSigns {
				t.Errorf("Refresh signed %d tokens, want %d", got, tc.wantSigns)
			}
			if tc.want != noReason {
				wantReason(t, err, tc.want)
				return
			}
			if err != nil {
				t.Fatalf("Refresh: %v", err)
			}
			if p.GetAccessToken() == "" || p.GetRefreshToken() == "" {
				t.Fatal("Refresh returned an incomplete pair")
			}
		})
	}
}

// refreshRecordingStore is a session store that keeps a copy of every
// byte string it is handed.
type refreshRecordingStore struct {
	*memstore.SessionStore
	mu         sync.Mutex
	received   [][]byte
	successors [][]byte
}

func (r *refreshRecordingStore) record(bs ...[]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range bs {
		r.received = append(r.received, bytes.Clone(b))
	}
}

func (r *refreshRecordingStore) Create(ctx context.Context, sid string, refresh store.Digest, now, keepUntil time.Time) error {
	r.record([]byte(sid), refresh[:])
	return r.SessionStore.Create(ctx, sid, refresh, now, keepUntil)
}

func (r *refreshRecordingStore) Rotate(ctx context.Context, rot store.Rotation) (store.Result, error) {
	r.record([]byte(rot.SessionID), rot.Presented[:], rot.Next[:], rot.Successor)
	r.mu.Lock()
	r.successors = append(r.successors, bytes.Clone(rot.Successor))
	r.mu.Unlock()
	return r.SessionStore.Rotate(ctx, rot)
}

func (r *refreshRecordingStore) Revoke(ctx context.Context, sid string, now, keepUntil time.Time) error {
	r.record([]byte(sid))
	return r.SessionStore.Revoke(ctx, sid, now, keepUntil)
}

func (r *refreshRecordingStore) IsRevoked(ctx context.Context, sid string, now time.Time) (bool, error) {
	r.record([]byte(sid))
	return r.SessionStore.IsRevoked(ctx, sid, now)
}

// TestRefresh_StoreSeesNoBearerToken: a replay within the grace period
// returns exactly the successor pair, yet nothing the store was handed
// (digests, the sealed successor) contains a token of the session, a
// segment of one, or a refresh token's id, and the successor opens only
// with the id of the refresh token it succeeds.
func TestRefresh_StoreSeesNoBearerToken(t *testing.T) {
	clock := newFakeClock(t0)
	rec := &refreshRecordingStore{SessionStore: &memstore.SessionStore{}}
	srv, err := NewServer(testKeySet(t), WithClock(clock.Now), WithSessionStore(rec))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := srv.StartSession(ctx, "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour + 500*time.Millisecond)
	rotatedAt := clock.Now()
	next, err := srv.Refresh(ctx, s.RefreshToken)
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	clock.Set(rotatedAt.Add(DefaultRefreshGrace - time.Nanosecond))
	replayed, err := srv.Refresh(ctx, s.RefreshToken)
	if err != nil {
		t.Fatalf("replay within the grace period: %v", err)
	}
	if replayed.AccessToken != next.AccessToken || replayed.RefreshToken != next.RefreshToken ||
		replayed.SessionID != next.SessionID || !proto.Equal(replayed.TokenPair(), next.TokenPair()) {
		t.Fatalf("replay returned %+v, want the successor %+v", replayed.TokenPair(), next.TokenPair())
	}

	rec.mu.Lock()
	received, successors := rec.received, rec.successors
	rec.mu.Unlock()
	if len(successors) != 2 || len(successors[0]) == 0 {
		t.Fatalf("store got %d successors, want 2 non-empty", len(successors))
	}
	plainPair, err := proto.Marshal(next.TokenPair())
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string][]byte{"successor pair, marshalled": plainPair}
	for name, tok := range map[string]string{
		"login access token": s.AccessToken, "login refresh token": s.RefreshToken,
		"successor access token": next.AccessToken, "successor refresh token": next.RefreshToken,
	} {
		secrets[name] = []byte(tok)
		parts := strings.Split(tok, ".")
		secrets[name+" payload"] = []byte(parts[1])
		secrets[name+" signature"] = []byte(parts[2])
		jti := decodeToken(t, tok).claims.ID
		secrets[name+" jti"] = []byte(jti)
		if raw, err := base64.RawURLEncoding.DecodeString(jti); err == nil {
			secrets[name+" jti bytes"] = raw
		}
	}
	if len(received) == 0 {
		t.Fatal("store received nothing")
	}
	for _, b := range received {
		for name, secret := range secrets {
			if bytes.Contains(b, secret) {
				t.Errorf("store received the %s", name)
			}
		}
	}

	// The stored successor is the sealed pair, for the presented token's
	// id and this session only.
	presentedJTI := decodeToken(t, s.RefreshToken).claims.ID
	pair, err := openSuccessor(successors[0], presentedJTI, s.SessionID)
	if err != nil || !proto.Equal(pair, next.TokenPair()) {
		t.Fatalf("stored successor opens to %v (err %v), want the successor pair", pair, err)
	}
	if _, err := openSuccessor(successors[0], decodeToken(t, next.RefreshToken).claims.ID, s.SessionID); err == nil {
		t.Fatal("stored successor opens with another refresh token's id")
	}
	if _, err := openSuccessor(successors[0], presentedJTI, "another-session"); err == nil {
		t.Fatal("stored successor opens in another session")
	}
}

// TestRefresh_RevokeResponseCarriesNoRenewal: a logout's response carries
// no renewed token of the session it ends, even when a renewal is due.
func TestRefresh_RevokeResponseCarriesNoRenewal(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	other := e.startSession(t, nil)
	tsc, tokc := e.clients(t)
	e.clock.Advance(13 * time.Hour) // 11 h left: below RenewBefore (12 h)

	// A renewal is due: an ordinary call gets one.
	var tr metadata.MD
	if _, err := tsc.UnaryCall(bearerCtx(other.AccessToken), &testpb.SimpleRequest{}, grpc.Trailer(&tr)); err != nil {
		t.Fatal(err)
	}
	if len(tr.Get(DefaultRenewalHeader)) != 1 {
		t.Fatalf("control call trailer has %d renewals, want 1", len(tr.Get(DefaultRenewalHeader)))
	}

	var hdr metadata.MD
	tr = nil
	if _, err := tokc.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if h, tt := hdr.Get(DefaultRenewalHeader), tr.Get(DefaultRenewalHeader); len(h)+len(tt) != 0 {
		t.Fatalf("Revoke response carries %d renewals in the header and %d in the trailer, want none", len(h), len(tt))
	}
	if n := e.events.count(EventRenewed, revokeMethod); n != 0 {
		t.Fatalf("%d %v events for Revoke, want 0", n, EventRenewed)
	}
	if n := e.events.count(EventAuthenticated, revokeMethod); n != 1 {
		t.Fatalf("%d %v events for Revoke, want 1", n, EventAuthenticated)
	}
}

// createFailsStore is a session store whose Create fails, as a store that
// cannot be reached does.
type createFailsStore struct {
	*memstore.SessionStore
	err error
}

func (s createFailsStore) Create(context.Context, string, store.Digest, time.Time, time.Time) error {
	return s.err
}

// TestStartSession_StoreUnavailable: when the store cannot record a new
// session, StartSession returns no tokens and an error that is
// ErrStoreUnavailable and still the store's own, so that a login handler
// can answer codes.Unavailable.
func TestStartSession_StoreUnavailable(t *testing.T) {
	cause := errors.New("connection refused")
	e := newEnv(t, withStore(createFailsStore{&memstore.SessionStore{}, cause}))
	s, err := e.server.StartSession(context.Background(), "alice", nil)
	if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, cause) {
		t.Fatalf("StartSession err = %v, want ErrStoreUnavailable wrapping the store's error", err)
	}
	if s.AccessToken != "" || s.RefreshToken != "" {
		t.Fatal("StartSession returned tokens for a session the store did not record")
	}
}
