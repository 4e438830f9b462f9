package interceptor

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// policyDefaults fills p's defaults and fails the test on an error.
func policyDefaults(t *testing.T, p Policy) Policy {
	t.Helper()
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate(%+v): %v", p, err)
	}
	return p.Effective()
}

// policyCaller calls the env's server with a token it sets itself, without
// a TokenHolder, so a test controls exactly which token each call presents.
type policyCaller struct {
	t      testing.TB
	client testpb.TestServiceClient
}

func newPolicyCaller(t *testing.T, e *testEnv) *policyCaller {
	t.Helper()
	return &policyCaller{t: t, client: testpb.NewTestServiceClient(e.dial(t))}
}

// stream makes a server-streaming call with tok, reads it to the end and
// returns the renewed token from the header ("" if none).
func (p *policyCaller) stream(tok string) (string, error) {
	st, err := p.client.StreamingOutputCall(bearerCtx(tok), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}},
	})
	if err != nil {
		return "", err
	}
	for {
		if _, err = st.Recv(); err != nil {
			break
		}
	}
	header, _ := st.Header()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return renewedToken(p.t, header), err
}

func (p *policyCaller) call(kind, tok string) (string, error) {
	if kind == "stream" {
		return p.stream(tok)
	}
	return unaryCall(p.t, p.client, tok)
}

// policyMint signs c with the env's active key, bypassing StartSession, so
// that a test can present a token with chosen times.
func policyMint(t *testing.T, e *testEnv, authTime, iat, exp time.Time) string {
	t.Helper()
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   "alice",
			ExpiresAt: jwt.NewNumericDate(exp),
			IssuedAt:  jwt.NewNumericDate(iat),
			ID:        randomID(),
		},
		SessionID: randomID(),
		AuthTime:  jwt.NewNumericDate(authTime),
	}
	tok, err := e.server.sign(e.server.ver.Load(), c, accessTokenType)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// policyRel formats t relative to base as "+5s" or "-10s".
func policyRel(base, t time.Time) string {
	d := t.Sub(base)
	if d < 0 {
		return d.String()
	}
	return "+" + d.String()
}

// pol is the effective Policy with these three fields and the defaults of
// the refresh and leeway fields.
func pol(ttl, maxLifetime, renewBefore time.Duration) Policy {
	return Policy{TTL: ttl, MaxLifetime: maxLifetime, RenewBefore: renewBefore,
		RefreshTTL: DefaultRefreshTTL, RefreshGrace: DefaultRefreshGrace, Leeway: DefaultLeeway}
}

func TestPolicy_WithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Policy
		want Policy
	}{
		{"zero", Policy{}, pol(24*time.Hour, 168*time.Hour, 12*time.Hour)},
		{"RenewBefore defaults to TTL/2", Policy{TTL: 10 * time.Hour}, pol(10*time.Hour, 168*time.Hour, 5*time.Hour)},
		{"smallest TTL", Policy{TTL: time.Second}, pol(time.Second, 168*time.Hour, 500*time.Millisecond)},
		{"MaxLifetime equal to TTL", Policy{TTL: 24 * time.Hour, MaxLifetime: 24 * time.Hour}, pol(24*time.Hour, 24*time.Hour, 12*time.Hour)},
		{"RenewBefore equal to TTL", Policy{RenewBefore: 24 * time.Hour}, pol(24*time.Hour, 168*time.Hour, 24*time.Hour)},
		{"explicit kept", pol(2*time.Hour, 10*time.Hour, time.Hour), pol(2*time.Hour, 10*time.Hour, time.Hour)},
		{"TTL equal to default MaxLifetime", Policy{TTL: 168 * time.Hour}, pol(168*time.Hour, 168*time.Hour, 84*time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.in.Validate(); err != nil {
				t.Fatalf("Validate(%+v) = %v, want nil", tt.in, err)
			}
			if got := tt.in.Effective(); got != tt.want {
				t.Fatalf("Effective(%+v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestPolicy_WithDefaultsErrors(t *testing.T) {
	tests := []struct {
		name string
		in   Policy
	}{
		{"negative TTL", Policy{TTL: -time.Nanosecond}},
		{"negative MaxLifetime", Policy{MaxLifetime: -time.Nanosecond}},
		{"negative RefreshTTL", Policy{RefreshTTL: -time.Nanosecond}},
		{"RefreshTTL one tick below a second", Policy{RefreshTTL: time.Second - time.Nanosecond}},
		{"RefreshGrace one tick above RefreshTTL", Policy{RefreshTTL: time.Hour, RefreshGrace: time.Hour + time.Nanosecond}},
		{"Leeway one tick above 5 minutes", Policy{Leeway: 5*time.Minute + time.Nanosecond}},
		{"TTL one tick below a second", Policy{TTL: time.Second - time.Nanosecond}},
		{"MaxLifetime one tick below TTL", Policy{TTL: 24 * time.Hour, MaxLifetime: 24*time.Hour - time.Nanosecond}},
		{"TTL above default MaxLifetime", Policy{TTL: 168*time.Hour + time.Nanosecond}},
		{"RenewBefore one tick above TTL", Policy{TTL: 24 * time.Hour, RenewBefore: 24*time.Hour + time.Nanosecond}},
		{"RenewBefore above default TTL", Policy{RenewBefore: 25 * time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.in.Validate(); !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate(%+v) = %v, want ErrInvalidPolicy", tt.in, err)
			}
			if _, err := NewServer(testKeySet(t), WithPolicy(tt.in)); !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("NewServer(WithPolicy(%+v)) error = %v, want ErrInvalidPolicy", tt.in, err)
			}
		})
	}
}

func TestPolicy_ServerPolicyHasDefaults(t *testing.T) {
	s, err := NewServer(testKeySet(t), WithPolicy(Policy{TTL: 10 * time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Policy(), (pol(10*time.Hour, 168*time.Hour, 5*time.Hour)); got != want {
		t.Fatalf("Policy() = %+v, want %+v", got, want)
	}
}

func TestPolicy_Decide(t *testing.T) {
	const ns, sec, hour = time.Nanosecond, time.Second, time.Hour
	def := policyDefaults(t, Policy{}) // TTL 24h, MaxLifetime 168h, RenewBefore 12h
	every := policyDefaults(t, Policy{TTL: 24 * hour, RenewBefore: 24 * hour})
	fracCap := policyDefaults(t, Policy{MaxLifetime: 168*hour + 500*time.Millisecond})
	capT := t0.Add(168 * hour) // session end of a login at t0
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	renew := func(exp time.Time) Decision { return Decision{Renew: true, Expiry: exp} }
	tests := []struct {
		name     string
		p        Policy
		now, exp time.Time
		want     Decision
	}{
		// The threshold: renew only when exp − now < RenewBefore.
		{"remaining equals RenewBefore", def, at(12 * hour), at(24 * hour), Decision{}},
		{"remaining one ns above RenewBefore", def, at(12*hour - ns), at(24 * hour), Decision{}},
		{"remaining one ns below RenewBefore", def, at(12*hour + ns), at(24 * hour), renew(at(36 * hour))},
		{"remaining one second below RenewBefore", def, at(12*hour + sec), at(24 * hour), renew(at(36*hour + sec))},
		{"fresh token", def, t0, at(24 * hour), Decision{}},
		{"exp passed, within leeway", def, at(24*hour + 10*sec), at(24 * hour), renew(at(48*hour + 10*sec))},
		// Truncation of the new exp to whole seconds.
		{"new exp truncated to whole seconds", def, at(13*hour + sec - ns), at(24 * hour), renew(at(37 * hour))},
		{"new exp truncated, half second", def, at(13*hour + 500*time.Millisecond), at(24 * hour), renew(at(37 * hour))},
		// RenewBefore = TTL: every request renews once a whole second passed.
		{"every request: at issue", every, t0, at(24 * hour), Decision{}},
		{"every request: one ns after issue, same exp", every, at(ns), at(24 * hour), Decision{}},
		{"every request: one tick below a second", every, at(sec - ns), at(24 * hour), Decision{}},
		{"every request: one second after issue", every, at(sec), at(24 * hour), renew(at(24*hour + sec))},
		{"every request: an hour after issue", every, at(hour), at(24 * hour), renew(at(25 * hour))},
		// The cap: new exp = min(now + TTL, auth_time + MaxLifetime).
		{"now+TTL one ns below cap", def, at(144*hour - ns), at(150 * hour), renew(capT.Add(-sec))},
		{"now+TTL equals cap", def, at(144 * hour), at(150 * hour), renew(capT)},
		{"now+TTL one ns above cap", def, at(144*hour + ns), at(150 * hour), renew(capT)},
		{"near cap clamped", def, at(150 * hour), at(160 * hour), renew(capT)},
		{"exp one second before cap", def, at(160 * hour), capT.Add(-sec), renew(capT)},
		{"exp one ns before cap", def, at(160 * hour), capT.Add(-ns), renew(capT)},
		{"exp equals cap", def, at(160 * hour), capT, Decision{}},
		{"exp equals cap, one ns before the cap", def, capT.Add(-ns), capT, Decision{}},
		{"exp equals cap, at the cap", def, capT, capT, Decision{}},
		{"fractional cap truncated, exp at truncated cap", fracCap, at(160 * hour), capT, Decision{}},
		{"fractional cap truncated", fracCap, at(150 * hour), at(160 * hour), renew(capT)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.p.Decide(tt.now, tt.exp, t0)
			if got.Renew != tt.want.Renew || !got.Expiry.Equal(tt.want.Expiry) {
				t.Fatalf("Decide(now=t0%s, exp=t0%s) = %+v, want %+v", policyRel(t0, tt.now), policyRel(t0, tt.exp), got, tt.want)
			}
			if got.Renew && got.Expiry.Nanosecond() != 0 {
				t.Fatalf("Expiry %v is not a whole second", got.Expiry)
			}
		})
	}
}

// TestPolicy_DecideNeverMintsExpiredToken: a renewal must expire after the
// time it is minted at. Near the cap, a token presented within its leeway
// after the cap would otherwise be "renewed" to exp = cap ≤ iat, a token
// that Claims.Validate rejects as out of range.
func TestPolicy_DecideNeverMintsExpiredToken(t *testing.T) {
	p := policyDefaults(t, Policy{})
	capT := p.SessionEnd(t0)
	for _, tc := range []struct {
		name     string
		now, exp time.Time
	}{
		{"at the cap, exp one second before", capT, capT.Add(-time.Second)},
		{"after the cap within leeway", capT.Add(5 * time.Second), capT.Add(-10 * time.Second)},
		{"half a second after the cap", capT.Add(500 * time.Millisecond), capT.Add(-20 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := p.Decide(tc.now, tc.exp, t0)
			if d.Renew && !d.Expiry.After(tc.now) {
				t.Fatalf("Decide(now=cap%s, exp=cap%s) = renew to cap%s, want no renewal or an exp after now",
					policyRel(capT, tc.now), policyRel(capT, tc.exp), policyRel(capT, d.Expiry))
			}
		})
	}
}

// TestPolicy_DecideZeroValues: Decide applies the same defaults as a
// server, so Policy{TTL: 24h} renews in the last 12 h wherever it is used,
// and a negative RenewBefore never renews.
func TestPolicy_DecideZeroValues(t *testing.T) {
	exp := t0.Add(24 * time.Hour)
	tests := []struct {
		name string
		p    Policy
		now  time.Time
		want bool
	}{
		{"zero RenewBefore: remaining 12h, not below TTL/2", Policy{TTL: 24 * time.Hour}, exp.Add(-12 * time.Hour), false},
		{"zero RenewBefore: remaining 12h-1ns", Policy{TTL: 24 * time.Hour}, exp.Add(-12*time.Hour + time.Nanosecond), true},
		{"zero Policy: remaining 1s", Policy{}, exp.Add(-time.Second), true},
		{"negative RenewBefore: remaining 1s", Policy{TTL: 24 * time.Hour, RenewBefore: -1}, exp.Add(-time.Second), false},
		{"negative RenewBefore: within the leeway", Policy{RenewBefore: -1}, exp.Add(10 * time.Second), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Decide(tt.now, exp, t0).Renew; got != tt.want {
				t.Fatalf("%+v.Decide(now=exp%s) renews = %v, want %v", tt.p, policyRel(exp, tt.now), got, tt.want)
			}
			s, err := NewServer(testKeySet(t), WithPolicy(tt.p))
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Policy().Decide(tt.now, exp, t0).Renew; got != tt.want {
				t.Fatalf("server policy %+v renews = %v, want %v", s.Policy(), got, tt.want)
			}
		})
	}
}

func TestPolicy_LeewayOption(t *testing.T) {
	for _, tc := range []struct {
		leeway time.Duration
		ok     bool
	}{
		{0, true},
		{30 * time.Second, true},
		{5 * time.Minute, true},
		{5*time.Minute + time.Nanosecond, false},
		{time.Hour, false},
		{-time.Nanosecond, false},
	} {
		_, err := NewServer(testKeySet(t), WithLeeway(tc.leeway))
		if tc.ok && err != nil {
			t.Errorf("NewServer(WithLeeway(%v)) error %v, want nil", tc.leeway, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidOption) {
			t.Errorf("NewServer(WithLeeway(%v)) error %v, want ErrInvalidOption", tc.leeway, err)
		}
	}
}

// TestPolicy_ExpiryBoundary: a token is accepted while now < exp + leeway.
func TestPolicy_ExpiryBoundary(t *testing.T) {
	exp := t0.Add(24 * time.Hour) // exp of a login at t0
	tests := []struct {
		name   string
		leeway []ServerOption
		now    time.Time
		want   Reason // "" for accepted
	}{
		{"leeway 30s: exp+leeway-1ns", nil, exp.Add(30*time.Second - time.Nanosecond), noReason},
		{"leeway 30s: exp", nil, exp, noReason},
		{"leeway 30s: exp+leeway", nil, exp.Add(30 * time.Second), ReasonTokenExpired},
		{"leeway 30s: exp+leeway+1ns", nil, exp.Add(30*time.Second + time.Nanosecond), ReasonTokenExpired},
		{"leeway 0: exp-1ns", []ServerOption{WithLeeway(0)}, exp.Add(-time.Nanosecond), noReason},
		{"leeway 0: exp", []ServerOption{WithLeeway(0)}, exp, ReasonTokenExpired},
		{"leeway 0: exp+1ns", []ServerOption{WithLeeway(0)}, exp.Add(time.Nanosecond), ReasonTokenExpired},
	}
	for _, kind := range []string{"unary", "stream"} {
		for _, tt := range tests {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t, withServerOptions(tt.leeway...))
				s := e.startSession(t, nil)
				if !s.Expiry.Equal(exp) {
					t.Fatalf("first exp = %v, want %v", s.Expiry, exp)
				}
				e.clock.Set(tt.now)
				renewed, err := newPolicyCaller(t, e).call(kind, s.AccessToken)
				if tt.want == noReason {
					if err != nil {
						t.Fatalf("call at exp%s: %v, want success", policyRel(exp, tt.now), err)
					}
					if renewed == "" {
						t.Fatalf("call at exp%s: no renewed token, want one", policyRel(exp, tt.now))
					}
					if got, want := decodeToken(t, renewed).claims.ExpiresAt.Time, tt.now.Add(24*time.Hour).Truncate(time.Second); !got.Equal(want) {
						t.Fatalf("renewed exp = %v, want %v", got, want)
					}
					return
				}
				wantReason(t, err, tt.want)
				if renewed != "" {
					t.Fatalf("rejected call carried a renewed token")
				}
				if n := e.svc.calls.Load(); n != 0 {
					t.Fatalf("handler ran %d times, want 0", n)
				}
			})
		}
	}
}

// TestPolicy_SessionCapBoundary: a session is accepted while now <
// auth_time + MaxLifetime + leeway, whatever the token's exp.
func TestPolicy_SessionCapBoundary(t *testing.T) {
	capT := t0.Add(168 * time.Hour)
	tests := []struct {
		name string
		opts []ServerOption
		now  time.Time
		want Reason
	}{
		{"leeway 30s: cap+leeway-1ns", nil, capT.Add(30*time.Second - time.Nanosecond), noReason},
		{"leeway 30s: cap", nil, capT, noReason},
		{"leeway 30s: cap+leeway", nil, capT.Add(30 * time.Second), ReasonSessionExpired},
		{"leeway 30s: cap+leeway+1ns", nil, capT.Add(30*time.Second + time.Nanosecond), ReasonSessionExpired},
		{"leeway 30s: a day after the cap", nil, capT.Add(24 * time.Hour), ReasonSessionExpired},
		{"leeway 0: cap-1ns", []ServerOption{WithLeeway(0)}, capT.Add(-time.Nanosecond), noReason},
		{"leeway 0: cap", []ServerOption{WithLeeway(0)}, capT, ReasonSessionExpired},
		{"leeway 0: cap+1ns", []ServerOption{WithLeeway(0)}, capT.Add(time.Nanosecond), ReasonSessionExpired},
	}
	for _, kind := range []string{"unary", "stream"} {
		for _, tt := range tests {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				e := newEnv(t, withServerOptions(tt.opts...))
				// A token whose exp lies beyond the cap, so that only the
				// session rule can reject it.
				tok := policyMint(t, e, t0, t0.Add(160*time.Hour), t0.Add(184*time.Hour))
				e.clock.Set(tt.now)
				renewed, err := newPolicyCaller(t, e).call(kind, tok)
				if tt.want == noReason {
					if err != nil {
						t.Fatalf("call at cap%s: %v, want success", policyRel(capT, tt.now), err)
					}
					if renewed != "" {
						t.Fatalf("call at cap%s renewed a token whose exp is past the cap", policyRel(capT, tt.now))
					}
					return
				}
				wantReason(t, err, tt.want)
				if n := e.svc.calls.Load(); n != 0 {
					t.Fatalf("handler ran %d times, want 0", n)
				}
			})
		}
	}
}

// TestPolicy_IssuedInFuture: golang-jwt accepts iat while now >= iat −
// leeway, so iat − leeway itself is accepted and one tick earlier is not.
func TestPolicy_IssuedInFuture(t *testing.T) {
	iat := t0.Add(time.Hour)
	tests := []struct {
		name string
		opts []ServerOption
		now  time.Time
		want Reason
	}{
		{"leeway 30s: iat-leeway", nil, iat.Add(-30 * time.Second), noReason},
		{"leeway 30s: iat-leeway+1ns", nil, iat.Add(-30*time.Second + time.Nanosecond), noReason},
		{"leeway 30s: iat-leeway-1ns", nil, iat.Add(-30*time.Second - time.Nanosecond), ReasonTokenInvalid},
		{"leeway 30s: iat-leeway-1s", nil, iat.Add(-31 * time.Second), ReasonTokenInvalid},
		{"leeway 0: iat", []ServerOption{WithLeeway(0)}, iat, noReason},
		{"leeway 0: iat-1ns", []ServerOption{WithLeeway(0)}, iat.Add(-time.Nanosecond), ReasonTokenInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, withServerOptions(tt.opts...))
			tok := policyMint(t, e, t0, iat, iat.Add(24*time.Hour))
			e.clock.Set(tt.now)
			_, err := unaryCall(t, srvClient(t, e), tok)
			if tt.want == noReason {
				if err != nil {
					t.Fatalf("call at iat%s: %v, want success", policyRel(iat, tt.now), err)
				}
				return
			}
			wantReason(t, err, tt.want)
			if n := e.svc.calls.Load(); n != 0 {
				t.Fatalf("handler ran %d times, want 0", n)
			}
		})
	}
}

// TestPolicy_SteadyActivityWeek walks a whole week calling every 12h01m
// through a TokenHolder: each call renews to min(now + TTL, cap) until
// the cap, and the session ends with SESSION_EXPIRED at the cap.
func TestPolicy_SteadyActivityWeek(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	client, h := e.holderClient(t, s.AccessToken)
	capT := t0.Add(168 * time.Hour)
	if !s.End.Equal(capT) {
		t.Fatalf("session end = %v, want %v", s.End, capT)
	}
	ctx := context.Background()
	call := func(i int) error {
		if i%2 == 0 {
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			return err
		}
		st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
		if err != nil {
			return err
		}
		return drain(st)
	}
	step := 12*time.Hour + time.Minute
	renewals := 0
	for i := 1; ; i++ {
		e.clock.Advance(step)
		now := e.clock.Now()
		before := h.Expiry()
		err := call(i)
		if !now.Before(capT.Add(DefaultLeeway)) {
			wantReason(t, err, ReasonSessionExpired)
			if i != 14 {
				t.Fatalf("session ended at call %d (t0+%v), want call 14", i, now.Sub(t0))
			}
			break
		}
		if err != nil {
			t.Fatalf("call %d at t0+%v: %v", i, now.Sub(t0), err)
		}
		want := now.Add(24 * time.Hour).Truncate(time.Second)
		if want.After(capT) {
			want = capT
		}
		if !want.After(before) {
			want = before // at the cap: no renewal
		} else {
			renewals++
		}
		if got := h.Expiry(); !got.Equal(want) {
			t.Fatalf("call %d at t0+%v: exp = t0+%v, want t0+%v", i, now.Sub(t0), got.Sub(t0), want.Sub(t0))
		}
		if i > 20 {
			t.Fatalf("session still alive after %d calls", i)
		}
	}
	if renewals != 12 {
		t.Fatalf("renewals = %d, want 12", renewals)
	}
	if got := h.Expiry(); !got.Equal(capT) {
		t.Fatalf("final exp = t0+%v, want the cap t0+%v", got.Sub(t0), capT.Sub(t0))
	}
	// The exact end: one tick before cap + leeway the session still works.
	e.clock.Set(capT.Add(DefaultLeeway - time.Nanosecond))
	if err := call(0); err != nil {
		t.Fatalf("call at cap+leeway-1ns: %v", err)
	}
	e.clock.Set(capT.Add(DefaultLeeway))
	wantReason(t, call(0), ReasonSessionExpired)
}

// TestPolicy_GapLongerThanTTL: after a renewal, a gap of TTL + leeway ends
// the session with TOKEN_EXPIRED; one tick less does not.
func TestPolicy_GapLongerThanTTL(t *testing.T) {
	for _, tc := range []struct {
		gap  time.Duration
		want Reason
	}{
		{24*time.Hour + DefaultLeeway - time.Nanosecond, noReason},
		{24*time.Hour + DefaultLeeway, ReasonTokenExpired},
		{48 * time.Hour, ReasonTokenExpired},
	} {
		t.Run(tc.gap.String(), func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			client, h := e.holderClient(t, s.AccessToken)
			e.clock.Advance(13 * time.Hour)
			if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			if got, want := h.Expiry(), t0.Add(37*time.Hour); !got.Equal(want) {
				t.Fatalf("exp after renewal = %v, want %v", got, want)
			}
			e.clock.Advance(tc.gap)
			_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
			if tc.want == noReason {
				if err != nil {
					t.Fatalf("call after gap %v: %v", tc.gap, err)
				}
				return
			}
			wantReason(t, err, tc.want)
		})
	}
}

// TestPolicy_RenewalAfterCapIsUsable: a token presented within its leeway
// right after the session cap must not be swapped for a token the server
// itself rejects. Here the old token stays acceptable until cap+20s.
func TestPolicy_RenewalAfterCapIsUsable(t *testing.T) {
	e := newEnv(t)
	capT := t0.Add(168 * time.Hour)
	tok := policyMint(t, e, t0, capT.Add(-24*time.Hour-10*time.Second), capT.Add(-10*time.Second))
	client, h := e.holderClient(t, tok)
	e.clock.Set(capT.Add(5 * time.Second))
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call at cap+5s: %v", err)
	}
	e.clock.Set(capT.Add(6 * time.Second))
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		held := "the presented token"
		if h.Token() != tok {
			held = "a renewed token expiring at cap" + policyRel(capT, h.Expiry())
		}
		t.Fatalf("call at cap+6s holding %s: %v; want success (the old token is valid until cap+20s)", held, err)
	}
}

// TestPolicy_RenewalTooLarge: a renewal longer than WithMaxTokenSize is not
// sent, the call succeeds, and the hook hears EventRenewalFailed.
func TestPolicy_RenewalTooLarge(t *testing.T) {
	const limit = 512
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, withServerOptions(WithMaxTokenSize(limit)))
			events := e.events
			s := e.startSession(t, nil)
			if len(s.AccessToken) > limit {
				t.Fatalf("first token has %d bytes, limit %d", len(s.AccessToken), limit)
			}
			// Rotate to a key whose long kid makes every new token too long;
			// the old key still verifies the presented token.
			long, err := NewKey(strings.Repeat("k", 300), jwt.SigningMethodHS256, testSecret(t))
			if err != nil {
				t.Fatal(err)
			}
			ks, err := NewKeySet(long, e.keys.Active())
			if err != nil {
				t.Fatal(err)
			}
			if err := e.server.RotateKeys(ks); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(13 * time.Hour)
			renewed, err := newPolicyCaller(t, e).call(kind, s.AccessToken)
			if err != nil {
				t.Fatalf("call: %v, want success", err)
			}
			if renewed != "" {
				t.Fatalf("renewed token of %d bytes sent, want none (limit %d)", len(renewed), limit)
			}
			if n := e.svc.calls.Load(); n != 1 {
				t.Fatalf("handler ran %d times, want 1", n)
			}
			failed := events.kinds(EventRenewalFailed)
			if len(failed) != 1 {
				t.Fatalf("got %d EventRenewalFailed, want 1 (events %+v)", len(failed), events.all())
			}
			if !errors.Is(failed[0].Err, ErrTokenTooLarge) {
				t.Fatalf("EventRenewalFailed.Err = %v, want ErrTokenTooLarge", failed[0].Err)
			}
			if failed[0].SessionID != s.SessionID {
				t.Fatalf("event sid = %q, want %q", failed[0].SessionID, s.SessionID)
			}
			if got := events.kinds(EventRenewed); len(got) != 0 {
				t.Fatalf("got %d EventRenewed, want 0", len(got))
			}
		})
	}
}

// TestPolicy_FirstTokenSizeLimit: StartSession mints a token of exactly
// the limit and refuses one byte more with ErrTokenTooLarge.
func TestPolicy_FirstTokenSizeLimit(t *testing.T) {
	e := newEnv(t)
	size := func(pad int) int {
		return len(e.startSession(t, map[string]any{"pad": strings.Repeat("x", pad)}).AccessToken)
	}
	// Find a padding whose token is longer than the previous one's.
	var limit, over int
	for pad := 300; pad < 310; pad++ {
		if a, b := size(pad), size(pad+1); b > a {
			limit, over = a, pad+1
			break
		}
	}
	if limit == 0 {
		t.Fatal("the token does not grow with its custom claims")
	}
	atLimit := over - 1
	var events eventLog
	s, err := NewServer(e.keys, WithClock(e.clock.Now), WithMaxTokenSize(limit), WithEventHook(events.hook))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.StartSession(context.Background(), "alice", map[string]any{"pad": strings.Repeat("x", atLimit)})
	if err != nil || len(got.AccessToken) != limit {
		t.Fatalf("StartSession at the limit: %d bytes, %v; want %d bytes, nil", len(got.AccessToken), err, limit)
	}
	if _, err := s.StartSession(context.Background(), "alice", map[string]any{"pad": strings.Repeat("x", over)}); !errors.Is(err, ErrTokenTooLarge) {
		t.Fatalf("StartSession one over the limit: %v, want ErrTokenTooLarge", err)
	}
	if _, err := s.StartSession(context.Background(), "alice", map[string]any{"pad": strings.Repeat("x", 10*limit)}); !errors.Is(err, ErrTokenTooLarge) {
		t.Fatalf("StartSession far over the limit: %v, want ErrTokenTooLarge", err)
	}
	if n := len(events.kinds(EventSessionStarted)); n != 1 {
		t.Fatalf("EventSessionStarted %d times, want 1 (refused sessions must not be reported as started)", n)
	}
}

// TestPolicy_TimeRules tests every time rule of Policy at its boundary and
// one tick either side, for the default policy and one with its switches
// off.
func TestPolicy_TimeRules(t *testing.T) {
	const tick = time.Nanosecond
	def := Policy{}
	off := Policy{TTL: time.Hour, MaxLifetime: 2 * time.Hour, RefreshTTL: 90 * time.Minute, RefreshGrace: -1, Leeway: -1}
	end := t0.Add(DefaultMaxLifetime)
	offEnd := t0.Add(2 * time.Hour)

	t.Run("SessionEnd and AcceptUntil", func(t *testing.T) {
		for _, tc := range []struct {
			p          Policy
			end, until time.Time
		}{
			{def, end, end.Add(DefaultLeeway)},
			{off, offEnd, offEnd},
		} {
			if got := tc.p.SessionEnd(t0); !got.Equal(tc.end) {
				t.Errorf("%+v.SessionEnd = t0%s, want t0%s", tc.p, policyRel(t0, got), policyRel(t0, tc.end))
			}
			if got := tc.p.AcceptUntil(t0); !got.Equal(tc.until) {
				t.Errorf("%+v.AcceptUntil = t0%s, want t0%s", tc.p, policyRel(t0, got), policyRel(t0, tc.until))
			}
			if got := tc.p.KeepUntil(t0); !got.Equal(tc.until) {
				t.Errorf("%+v.KeepUntil = t0%s, want t0%s", tc.p, policyRel(t0, got), policyRel(t0, tc.until))
			}
		}
	})

	t.Run("SessionEnded and CanRefresh", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			p          Policy
			now        time.Time
			ended, can bool
		}{
			{"default: end-1ns", def, end.Add(-tick), false, true},
			{"default: end", def, end, false, false},
			{"default: end+leeway-1ns", def, end.Add(DefaultLeeway - tick), false, false},
			{"default: end+leeway", def, end.Add(DefaultLeeway), true, false},
			{"no leeway: end-1ns", off, offEnd.Add(-tick), false, true},
			{"no leeway: end", off, offEnd, true, false},
		} {
			if got := tc.p.SessionEnded(tc.now, t0); got != tc.ended {
				t.Errorf("%s: SessionEnded = %v, want %v", tc.name, got, tc.ended)
			}
			if got := tc.p.CanRefresh(tc.now, t0); got != tc.can {
				t.Errorf("%s: CanRefresh = %v, want %v", tc.name, got, tc.can)
			}
		}
	})

	t.Run("AccessExpiry and RefreshExpiry", func(t *testing.T) {
		for _, tc := range []struct {
			name            string
			p               Policy
			now             time.Time
			access, refresh time.Time
		}{
			{"default: at login", def, t0, t0.Add(DefaultTTL), t0.Add(DefaultRefreshTTL)},
			{"default: sub-second now truncates", def, t0.Add(time.Second - tick), t0.Add(DefaultTTL), t0.Add(DefaultRefreshTTL)},
			{"default: one TTL before the end", def, end.Add(-DefaultTTL), end, end},
			{"default: one TTL and a second before the end", def, end.Add(-DefaultTTL - time.Second), end.Add(-time.Second), end},
			{"default: after the end", def, end.Add(time.Hour), end, end},
			{"off: refresh capped by the end", off, t0.Add(time.Hour), offEnd, offEnd},
			{"off: refresh one second short of the cap", off, t0.Add(30*time.Minute - time.Second), t0.Add(90*time.Minute - time.Second), t0.Add(2*time.Hour - time.Second)},
		} {
			if got := tc.p.AccessExpiry(tc.now, t0); !got.Equal(tc.access) {
				t.Errorf("%s: AccessExpiry = t0%s, want t0%s", tc.name, policyRel(t0, got), policyRel(t0, tc.access))
			}
			if got := tc.p.RefreshExpiry(tc.now, t0); !got.Equal(tc.refresh) {
				t.Errorf("%s: RefreshExpiry = t0%s, want t0%s", tc.name, policyRel(t0, got), policyRel(t0, tc.refresh))
			}
		}
	})

	t.Run("GraceUntil and AcceptExpiryUntil", func(t *testing.T) {
		exp := t0.Add(time.Hour)
		if got, want := def.GraceUntil(t0), t0.Add(DefaultRefreshGrace); !got.Equal(want) {
			t.Errorf("default GraceUntil = t0%s, want t0%s", policyRel(t0, got), policyRel(t0, want))
		}
		if got := off.GraceUntil(t0); !got.Equal(t0) {
			t.Errorf("GraceUntil with the grace off = t0%s, want t0", policyRel(t0, got))
		}
		if got := (Policy{RefreshTTL: 10 * time.Second}).GraceUntil(t0); !got.Equal(t0.Add(10 * time.Second)) {
			t.Errorf("GraceUntil with a 10s refresh TTL = t0%s, want t0+10s (grace capped by the TTL)", policyRel(t0, got))
		}
		if got, want := def.AcceptExpiryUntil(exp), exp.Add(DefaultLeeway); !got.Equal(want) {
			t.Errorf("default AcceptExpiryUntil = t0%s, want t0%s", policyRel(t0, got), policyRel(t0, want))
		}
		if got := off.AcceptExpiryUntil(exp); !got.Equal(exp) {
			t.Errorf("AcceptExpiryUntil with no leeway = t0%s, want exp", policyRel(t0, got))
		}
	})
}
