package interceptor

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// sessStart starts a session for alice on e with its own max lifetime d.
func sessStart(t testing.TB, e *testEnv, d time.Duration) Session {
	t.Helper()
	s, err := e.server.StartSession(context.Background(), "alice", nil, WithMaxLifetime(d))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sessClaim returns the session_exp of tok, or the zero time without one.
func sessClaim(t testing.TB, tok string) time.Time {
	t.Helper()
	if c := decodeToken(t, tok).claims; c.SessionExpiry != nil {
		return c.SessionExpiry.Time
	}
	return time.Time{}
}

// TestStartSession_WithMaxLifetime: a session's own max lifetime must be
// at least a second and no longer than the policy's; a shorter one
// travels as session_exp, and the first token and Session.End keep to it.
func TestStartSession_WithMaxLifetime(t *testing.T) {
	for _, tc := range []struct {
		name    string
		d       time.Duration
		wantErr bool
		wantEnd time.Time // the session's end; session_exp unless it is the policy's
		claim   bool
	}{
		{"none", 0, false, t0.Add(DefaultMaxLifetime), false},
		{"negative", -time.Hour, true, time.Time{}, false},
		{"one tick below a second", time.Second - time.Nanosecond, true, time.Time{}, false},
		{"one second", time.Second, false, t0.Add(time.Second), true},
		{"shorter than the TTL", time.Hour, false, t0.Add(time.Hour), true},
		{"fractional seconds are cut", 90*time.Minute + 700*time.Millisecond, false, t0.Add(90 * time.Minute), true},
		{"one tick below the policy's", DefaultMaxLifetime - time.Nanosecond, false, t0.Add(DefaultMaxLifetime - time.Second), true},
		{"the policy's", DefaultMaxLifetime, false, t0.Add(DefaultMaxLifetime), false},
		{"one tick over the policy's", DefaultMaxLifetime + time.Nanosecond, true, time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s, err := e.server.StartSession(context.Background(), "alice", nil, WithMaxLifetime(tc.d))
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidOption) {
					t.Fatalf("StartSession: %v, want ErrInvalidOption", err)
				}
				if s.AccessToken != "" {
					t.Fatal("a refused session still got a token")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !s.End.Equal(tc.wantEnd) {
				t.Errorf("End = %v, want %v", s.End, tc.wantEnd)
			}
			wantExp := t0.Add(DefaultTTL)
			if tc.wantEnd.Before(wantExp) {
				wantExp = tc.wantEnd
			}
			if !s.Expiry.Equal(wantExp) {
				t.Errorf("Expiry = %v, want %v", s.Expiry, wantExp)
			}
			got := sessClaim(t, s.AccessToken)
			switch {
			case tc.claim && !got.Equal(tc.wantEnd):
				t.Errorf("session_exp = %v, want %v", got, tc.wantEnd)
			case !tc.claim && !got.IsZero():
				t.Errorf("session_exp = %v, want none", got)
			}
		})
	}
}

// TestSessionMaxLifetime_Boundary: every replica that shares the keys
// refuses a session at its own end plus the leeway, as it does at the
// policy's end, for unary calls and streams: accepted one tick before,
// SESSION_EXPIRED at it and one tick after, without running the handler.
func TestSessionMaxLifetime_Boundary(t *testing.T) {
	const d = 2 * time.Hour
	end := t0.Add(d)
	for _, tc := range []struct {
		name string
		at   time.Time
		want Reason
	}{
		{"end", end, noReason},
		{"end+leeway-1ns", end.Add(DefaultLeeway - time.Nanosecond), noReason},
		{"end+leeway", end.Add(DefaultLeeway), ReasonSessionExpired},
		{"end+leeway+1ns", end.Add(DefaultLeeway + time.Nanosecond), ReasonSessionExpired},
	} {
		for _, kind := range []string{"unary", "stream"} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				login := newEnv(t)
				// A token whose exp lies past the session's own end: only
				// session_exp can end it. Signed as a replica with a
				// longer TTL would sign it.
				c := &Claims{
					RegisteredClaims: jwt.RegisteredClaims{
						Subject: "alice", ID: randomID(),
						IssuedAt:  jwt.NewNumericDate(t0),
						ExpiresAt: jwt.NewNumericDate(end),
					},
					SessionID: randomID(), AuthTime: jwt.NewNumericDate(t0), SessionExpiry: jwt.NewNumericDate(end),
				}
				tok, err := login.server.sign(login.server.ver.Load(), c, accessTokenType)
				if err != nil {
					t.Fatal(err)
				}
				// Another replica with the same keys and a week-long policy.
				replica := newEnv(t, withKeys(login.keys), withClock(login.clock))
				login.clock.Set(tc.at)
				renewed, err := newPolicyCaller(t, replica).call(kind, tok)
				if tc.want == noReason {
					if err != nil {
						t.Fatalf("call at %s: %v, want success", policyRel(end, tc.at), err)
					}
					if renewed != "" {
						t.Fatalf("call at %s renewed a token that expires at the session's end", policyRel(end, tc.at))
					}
					return
				}
				wantReason(t, err, tc.want)
				if n := replica.svc.calls.Load(); n != 0 {
					t.Fatalf("handler ran %d times, want 0", n)
				}
			})
		}
	}
}

// TestSessionMaxLifetime_Renewal: renewals keep session_exp byte for byte
// and never expire after it, on the replica that started the session and
// on one that did not.
func TestSessionMaxLifetime_Renewal(t *testing.T) {
	policy := Policy{TTL: time.Hour, MaxLifetime: 24 * time.Hour}
	e := newEnv(t, withServerOptions(WithPolicy(policy)))
	replica := newEnv(t, withKeys(e.keys), withClock(e.clock), withServerOptions(WithPolicy(policy)))
	const d = 90 * time.Minute
	end := t0.Add(d)
	s := sessStart(t, e, d)

	// 45 min in, 15 min left of an hour: renewed, capped at the end.
	e.clock.Set(t0.Add(45 * time.Minute))
	r1, err := unaryCall(t, newPolicyCaller(t, replica).client, s.AccessToken)
	if err != nil || r1 == "" {
		t.Fatalf("renewal: %q, %v; want a renewed token", r1, err)
	}
	c := decodeToken(t, r1).claims
	if !c.ExpiresAt.Equal(end) {
		t.Errorf("renewed exp = %v, want the session's end %v (not now + TTL = %v)", c.ExpiresAt.Time, end, e.clock.Now().Add(time.Hour))
	}
	if got := sessClaim(t, r1); !got.Equal(end) {
		t.Errorf("renewed session_exp = %v, want %v", got, end)
	}
	// One tick before the end, the renewal at the end is no renewal.
	e.clock.Set(end.Add(-time.Second))
	if r2, err := unaryCall(t, newPolicyCaller(t, e).client, r1); err != nil || r2 != "" {
		t.Fatalf("call one second before the end: renewed %q, %v; want no renewal", r2, err)
	}
}

// TestSessionMaxLifetime_Refresh: a refresh keeps session_exp, caps both
// tokens and session_ends_at at it, and is refused from the session's own
// end on (no leeway), one tick after a refresh that succeeds.
func TestSessionMaxLifetime_Refresh(t *testing.T) {
	e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{TTL: time.Hour})))
	const d = 3 * time.Hour
	end := t0.Add(d)
	s := sessStart(t, e, d)
	if !s.RefreshExpiry.Equal(end) {
		t.Errorf("refresh token expires %v, want the session's end %v", s.RefreshExpiry, end)
	}
	if got := sessClaim(t, s.RefreshToken); !got.Equal(end) {
		t.Errorf("refresh token session_exp = %v, want %v", got, end)
	}
	_, tokc := e.clients(t)

	e.clock.Set(end.Add(-time.Nanosecond))
	pair := refreshMust(t, tokc, s.RefreshToken)
	if got := pair.GetSessionEndsAt().AsTime(); !got.Equal(end) {
		t.Errorf("session_ends_at = %v, want %v", got, end)
	}
	for name, tok := range map[string]string{"access": pair.GetAccessToken(), "refresh": pair.GetRefreshToken()} {
		c := decodeToken(t, tok).claims
		if c.ExpiresAt.After(end) {
			t.Errorf("%s token expires %v, after the session's end %v", name, c.ExpiresAt.Time, end)
		}
		if got := sessClaim(t, tok); !got.Equal(end) {
			t.Errorf("%s token session_exp = %v, want %v", name, got, end)
		}
	}

	e.clock.Set(end)
	_, err := tokc.Refresh(context.Background(), &slidejwtv1.RefreshRequest{RefreshToken: pair.GetRefreshToken()})
	wantReason(t, err, ReasonSessionExpired)
}

// TestSessionMaxLifetime_StreamEnds: an open stream ends at its session's
// own end plus the leeway, not at the policy's: still open one tick before.
func TestSessionMaxLifetime_StreamEnds(t *testing.T) {
	for _, kind := range []string{streamBidi, streamServer, streamClient} {
		t.Run(kind, func(t *testing.T) {
			e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(streamNever)))
			s := sessStart(t, e.testEnv, 90*time.Minute)
			until := t0.Add(90*time.Minute + DefaultLeeway)
			sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, kind)
			sc.ping("at login")

			e.clock.Set(until.Add(-time.Nanosecond))
			sc.ping("one tick before the session's own end + leeway")
			if evs := e.ended(); len(evs) != 0 {
				t.Fatalf("stream ended before its session: %v", evs)
			}
			e.clock.Set(until)
			streamWantEnded(t, e, s, kind, sc.msg(), ReasonSessionExpired)
		})
	}
}

// TestSessionMaxLifetime_TimerEndsStream: on the real clock, the timer
// ends a silent stream at the session's own end.
func TestSessionMaxLifetime_TimerEndsStream(t *testing.T) {
	const slack = 1500 * time.Millisecond
	e := newStreamEnv(t, withRealClock(), withServerOptions(WithStreamCheckInterval(streamNever), WithLeeway(0)))
	s, err := e.server.StartSession(context.Background(), "alice", nil, WithMaxLifetime(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
	sc.ping("after login")
	err = sc.end(time.Until(s.End) + slack)
	if now := time.Now(); now.Before(s.End) {
		t.Errorf("stream ended %v before its session's end", s.End.Sub(now))
	}
	streamWantEnded(t, e, s, streamBidi, err, ReasonSessionExpired)
}

// TestSessionMaxLifetime_Holder: the holder knows the session's own end
// from the token, refuses a renewal that moves or drops session_exp or
// expires after it (even one signed with the server's key, as a rogue
// replica could), and does not refresh at the end.
func TestSessionMaxLifetime_Holder(t *testing.T) {
	e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{TTL: time.Hour})))
	const d = 2 * time.Hour
	end := t0.Add(d)
	s := sessStart(t, e, d)
	var refreshes atomic.Int64
	h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
		WithRefreshToken(s.RefreshToken), WithRefreshMargin(10*time.Minute),
		WithRefresher(RefreshFunc(func(ctx context.Context, rt string) (*slidejwtv1.TokenPair, error) {
			refreshes.Add(1)
			sess, err := e.server.Refresh(ctx, rt)
			return sess.TokenPair(), err
		})))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.SessionEnd(); !got.Equal(end) {
		t.Fatalf("SessionEnd = %v, want the token's session_exp %v", got, end)
	}
	// A later WithSessionEnd does not move it; an earlier one does.
	for _, tc := range []struct {
		given, want time.Time
	}{{end.Add(time.Hour), end}, {end.Add(-time.Minute), end.Add(-time.Minute)}} {
		h2, err := NewTokenHolder(s.AccessToken, WithSessionEnd(tc.given))
		if err != nil {
			t.Fatal(err)
		}
		if got := h2.SessionEnd(); !got.Equal(tc.want) {
			t.Errorf("WithSessionEnd(end%+v): SessionEnd = end%+v, want end%+v", tc.given.Sub(end), got.Sub(end), tc.want.Sub(end))
		}
	}

	forge := func(exp time.Time, sessionExp *jwt.NumericDate) string {
		c := &Claims{
			RegisteredClaims: jwt.RegisteredClaims{
				Subject: "alice", ID: randomID(),
				IssuedAt: jwt.NewNumericDate(e.clock.Now()), ExpiresAt: jwt.NewNumericDate(exp),
			},
			SessionID: s.SessionID, AuthTime: jwt.NewNumericDate(s.AuthTime), SessionExpiry: sessionExp,
		}
		tok, err := signCompact(e.keys.Active(), c, accessTokenType)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	e.clock.Set(t0.Add(30 * time.Minute))
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"exp one second past session_exp", forge(end.Add(time.Second), jwt.NewNumericDate(end))},
		{"session_exp moved later", forge(end.Add(time.Hour), jwt.NewNumericDate(end.Add(time.Hour)))},
		{"session_exp moved earlier", forge(end.Add(-time.Minute), jwt.NewNumericDate(end.Add(-time.Minute)))},
		{"session_exp dropped", forge(t0.Add(90*time.Minute), nil)},
	} {
		if h.offer(tc.tok) {
			t.Fatalf("holder took a renewal with %s", tc.name)
		}
	}
	if !h.offer(forge(end, jwt.NewNumericDate(end))) {
		t.Fatal("holder refused a renewal that expires exactly at the session's end")
	}

	// At the end, within the margin: no proactive refresh can extend it.
	e.clock.Set(end.Add(-5 * time.Minute))
	conn := e.dial(t, grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()))
	if _, err := testpb.NewTestServiceClient(conn).UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call five minutes before the end: %v", err)
	}
	if n := refreshes.Load(); n != 0 {
		t.Errorf("holder refreshed %d times at the session's end, want 0", n)
	}
}
