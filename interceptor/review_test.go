package interceptor

// Regression tests for the fixes of the security review (one test per
// fix). Each fails on the code before its fix.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
)

// reviewWait bounds the waits of these tests that must end well within
// the 5 s budget; it is never a timing assertion.
const reviewWait = 2 * time.Second

// reviewCtx is a context bounded by d.
func reviewCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestReview_RefreshNeedsSecureTransport: the default refresher sends the
// refresh token only where the holder would send the access token. Without
// AllowInsecureTransport, on a plaintext connection, no Refresh call
// leaves the client, proactive or with a lapsed token.
func TestReview_RefreshNeedsSecureTransport(t *testing.T) {
	for _, tc := range []struct {
		name     string
		at       func(s Session) time.Time
		insecure bool
	}{
		{"inside the margin", func(s Session) time.Time { return s.Expiry.Add(-10 * time.Second) }, false},
		{"lapsed", func(s Session) time.Time { return s.Expiry.Add(DefaultLeeway + time.Second) }, false},
		{"control: inside the margin, insecure allowed", func(s Session) time.Time { return s.Expiry.Add(-10 * time.Second) }, true},
		{"control: lapsed, insecure allowed", func(s Session) time.Time { return s.Expiry.Add(DefaultLeeway + time.Second) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			opts := []ClientOption{WithClock(e.clock.Now), WithRefreshToken(s.RefreshToken), WithRefreshTimeout(reviewWait), BindTarget(cliTarget)}
			if tc.insecure {
				opts = append(opts, AllowInsecureTransport())
			}
			h, err := NewTokenHolder(s.AccessToken, opts...)
			if err != nil {
				t.Fatal(err)
			}
			conn := e.dial(t,
				grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
				grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
			c := testpb.NewTestServiceClient(conn)
			e.clock.Set(tc.at(s))

			_, err = c.UnaryCall(reviewCtx(t, reviewWait), &testpb.SimpleRequest{})
			refreshes, _ := e.calls.get(refreshMethod)
			if tc.insecure {
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				if refreshes != 1 {
					t.Fatalf("Refresh reached the server %d times, want 1", refreshes)
				}
				if h.RefreshToken() == s.RefreshToken {
					t.Fatal("holder did not take the new refresh token")
				}
				return
			}
			if got := status.Code(err); got != codes.Unauthenticated {
				t.Fatalf("code = %v (err %v), want %v from the client", got, err, codes.Unauthenticated)
			}
			if r, ok := ReasonOf(err); ok {
				t.Fatalf("reason = %v, want none: the call must fail in the client", r)
			}
			if refreshes != 0 {
				t.Fatalf("Refresh reached the server %d times over plaintext, want 0", refreshes)
			}
			if got := refreshAnswered(e); got != 0 {
				t.Fatalf("server answered %d Refresh calls, want 0", got)
			}
			crfWantCalls(t, e, refreshUnaryMethod, 0)
			if h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder's refresh token changed")
			}
		})
	}
}

// reviewLookalikes are custom claim names that differ from a session claim
// only under Unicode simple folding, or that look like one but do not
// fold to it (U+212A KELVIN SIGN folds to k, which no session claim has).
var reviewLookalikes = []string{"ſub", "ſid", "freſh", "iſs", "SUB", "Fresh", "\u212Aid", "\u212Aſub", "subſ"}

// reviewFoldsToReserved reports, independently of the library, whether
// name equals a session claim under strings.EqualFold.
func reviewFoldsToReserved(name string) bool {
	for _, r := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "auth_time", "fresh"} {
		if strings.EqualFold(name, r) {
			return true
		}
	}
	return false
}

// reviewSecret is the HMAC secret of the servers that verify hand-made
// tokens in these tests.
var reviewSecret = []byte("review-test-secret-0123456789abcdef")

// reviewKeys is the key set of reviewSecret, kid "rk".
func reviewKeys(t testing.TB) *KeySet {
	t.Helper()
	k, err := NewKey("rk", jwt.SigningMethodHS256, reviewSecret)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(k)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// reviewSign assembles a compact HS256 JWS of typ at+jwt, kid "rk", over
// payload exactly as given (no re-encoding), signed with reviewSecret.
func reviewSign(payload string) string {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(`{"alg":"HS256","kid":"rk","typ":"at+jwt"}`)) + "." + enc.EncodeToString([]byte(payload))
	mac := hmac.New(sha256.New, reviewSecret)
	mac.Write([]byte(input))
	return input + "." + enc.EncodeToString(mac.Sum(nil))
}

// reviewPayload is a valid access-token payload for sid s1 and subject
// alice, issued at t0 and expiring an hour later, with extra members
// appended as given.
func reviewPayload(extra string) string {
	p := fmt.Sprintf(`{"sub":"alice","exp":%d,"iat":%d,"jti":"j1","sid":"s1","auth_time":%d`,
		t0.Add(time.Hour).Unix(), t0.Unix(), t0.Unix())
	if extra != "" {
		p += "," + extra
	}
	return p + "}"
}

// reviewAuthenticate runs s's unary interceptor on a call that presents
// tok, and returns its error and the claims the handler saw (nil if it did
// not run).
func reviewAuthenticate(s *Server, tok string) (*Claims, error) {
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

// TestReview_UnicodeFoldedClaimNames: encoding/json matches member names
// under Unicode simple folding, so "ſub" is "sub" to it. Such names are
// refused as custom claims, and a token carrying one is invalid.
func TestReview_UnicodeFoldedClaimNames(t *testing.T) {
	t.Run("StartSession", func(t *testing.T) {
		e := newEnv(t)
		for _, name := range reviewLookalikes {
			reserved := reviewFoldsToReserved(name)
			_, err := e.server.StartSession(context.Background(), "alice", map[string]any{name: "mallory"})
			if got := errors.Is(err, ErrReservedClaim); got != reserved {
				t.Errorf("StartSession with claim %q: err = %v; want ErrReservedClaim %v", name, err, reserved)
			}
		}
	})

	t.Run("MarshalJSON", func(t *testing.T) {
		for _, name := range reviewLookalikes {
			c := Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice"}, Custom: map[string]json.RawMessage{name: json.RawMessage(`"mallory"`)}}
			_, err := c.MarshalJSON()
			if got := errors.Is(err, ErrReservedClaim); got != reviewFoldsToReserved(name) {
				t.Errorf("MarshalJSON with claim %q: err = %v; want ErrReservedClaim %v", name, err, reviewFoldsToReserved(name))
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
		s := newEnv(t, withKeys(reviewKeys(t)), withStart(t0.Add(time.Minute))).server
		// The hand-made token verifies without a look-alike member.
		c, err := reviewAuthenticate(s, reviewSign(reviewPayload("")))
		if err != nil || c == nil || c.Subject != "alice" {
			t.Fatalf("control token: claims %v, err %v; want it accepted for alice", c, err)
		}
		for _, extra := range []string{`"ſub":"mallory"`, `"ſid":"s2"`, `"freſh":true`, `"iſs":"evil"`} {
			c, err := reviewAuthenticate(s, reviewSign(reviewPayload(extra)))
			if c != nil {
				t.Errorf("token with %s: handler ran with sub %q, sid %q, fresh %v", extra, c.Subject, c.SessionID, c.Fresh)
				continue
			}
			wantReason(t, err, ReasonTokenInvalid)
		}
	})
}

// reviewRenewed makes a call of kind presenting tok and returns the
// renewed token the server sent ("" for none).
func reviewRenewed(t testing.TB, c testpb.TestServiceClient, kind, tok string) string {
	t.Helper()
	ctx := metadata.NewOutgoingContext(reviewCtx(t, reviewWait), bearerMD(tok))
	var md metadata.MD
	switch kind {
	case "unary":
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&md)); err != nil {
			t.Fatalf("UnaryCall: %v", err)
		}
	case "server-stream":
		st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := drain(st); err != nil {
			t.Fatalf("stream: %v", err)
		}
		md = st.Trailer()
	}
	v := md.Get(DefaultRenewalHeader)
	if len(v) != 1 {
		t.Fatalf("%d renewed tokens, want 1", len(v))
	}
	return v[0]
}

// TestReview_RenewalDedupPerToken: two trusted tokens that share a jti but
// belong to different sessions each get a renewal of their own session.
func TestReview_RenewalDedupPerToken(t *testing.T) {
	for _, kind := range []string{"unary", "server-stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			c := testpb.NewTestServiceClient(e.dial(t))
			mint := func(sub, sid string) string {
				tok, err := e.server.sign(e.server.ver.Load(), &Claims{
					RegisteredClaims: jwt.RegisteredClaims{
						Subject:   sub,
						ID:        "the-same-jti",
						IssuedAt:  jwt.NewNumericDate(t0),
						ExpiresAt: jwt.NewNumericDate(t0.Add(DefaultTTL)),
					},
					SessionID: sid,
					AuthTime:  jwt.NewNumericDate(t0),
				}, accessTokenType)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			toks := []struct{ sub, sid, tok string }{
				{"alice", "sid-alice", mint("alice", "sid-alice")},
				{"bob", "sid-bob", mint("bob", "sid-bob")},
			}
			e.clock.Set(t0.Add(DefaultTTL/2 + time.Hour)) // renewal due for both
			for _, want := range toks {
				got := decodeToken(t, reviewRenewed(t, c, kind, want.tok)).claims
				if got.Subject != want.sub || got.SessionID != want.sid {
					t.Fatalf("renewal of %s's token: sub %q, sid %q; want %q, %q", want.sub, got.Subject, got.SessionID, want.sub, want.sid)
				}
			}
		})
	}
}

// reviewHeaderThenExpired sends a response header and then fails with
// TOKEN_EXPIRED, as no slidejwt server does: the handler ran. Its
// FullDuplexCall first reads one message.
type reviewHeaderThenExpired struct {
	*testService
	consumed atomic.Int64
}

func (s *reviewHeaderThenExpired) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := stream.SendHeader(metadata.Pairs("x-review", "handler-ran")); err != nil {
		return err
	}
	return reject(ReasonTokenExpired, "")
}

func (s *reviewHeaderThenExpired) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := stream.SendHeader(metadata.Pairs("x-review", "handler-ran")); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	s.consumed.Add(1)
	return reject(ReasonTokenExpired, "")
}

// TestReview_NoReopenAfterHeader: a stream that received a header before
// it failed with TOKEN_EXPIRED is not refreshed and reopened: its handler
// ran and may have consumed the messages a reopen would replay.
func TestReview_NoReopenAfterHeader(t *testing.T) {
	for _, kind := range []string{"server-stream", "bidi"} {
		t.Run(kind, func(t *testing.T) {
			svc := &reviewHeaderThenExpired{testService: &testService{}}
			e := newEnv(t, withMemStore(), withService(svc))
			s := e.startSession(t, nil)
			r := crfNewRefresher(t, e)
			c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))

			var err error
			method := refreshOutMethod
			switch kind {
			case "server-stream":
				var got int
				got, err = crfServerStream(t, c, 1)
				if got != 0 {
					t.Fatalf("got %d messages, want 0", got)
				}
			case "bidi":
				method = refreshBidiMethod
				st, oerr := c.FullDuplexCall(reviewCtx(t, reviewWait))
				if oerr != nil {
					t.Fatal(oerr)
				}
				if serr := st.Send(&testpb.StreamingOutputCallRequest{}); serr != nil && !errors.Is(serr, io.EOF) {
					t.Fatal(serr)
				}
				_ = st.CloseSend()
				_, err = st.Recv()
			}
			wantReason(t, err, ReasonTokenExpired)
			if n := r.calls.Load(); n != 0 {
				t.Fatalf("refresher called %d times, want 0", n)
			}
			crfWantRefreshes(t, e, 0)
			crfWantCalls(t, e, method, 1)
			if n := svc.calls.Load(); n != 1 {
				t.Fatalf("handler ran %d times, want 1", n)
			}
			if kind == "bidi" && svc.consumed.Load() != 1 {
				t.Fatalf("handler consumed %d messages, want 1", svc.consumed.Load())
			}
			if h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder's tokens changed")
			}
		})
	}
}

// TestReview_InstallFailureRemembered: a refreshed pair the holder cannot
// take is remembered like a rejection: the next call does not present the
// refresh token again.
func TestReview_InstallFailureRemembered(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T, e *testEnv) *slidejwtv1.TokenPair
	}{
		{"another session", func(t *testing.T, e *testEnv) *slidejwtv1.TokenPair { return e.startSession(t, nil).TokenPair() }},
		{"garbage access token", func(*testing.T, *testEnv) *slidejwtv1.TokenPair {
			return &slidejwtv1.TokenPair{AccessToken: "garbage", RefreshToken: "next"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			pair := tc.pair(t, e)
			r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) { return pair, nil }}
			c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
			crfLapse(e, s)

			for i := 1; i <= 2; i++ {
				err := crfUnary(t, c)
				if got := status.Code(err); got != codes.Internal {
					t.Fatalf("call %d: code = %v (err %v), want %v", i, got, err, codes.Internal)
				}
				if n := r.calls.Load(); n != 1 {
					t.Fatalf("after call %d: refresher called %d times, want 1", i, n)
				}
			}
			if h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder took the pair")
			}
		})
	}
}

// reviewWaitCtx is a context that reports when its Done channel is first
// asked for: a waiter of a refresh flight does so only to wait on it.
type reviewWaitCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *reviewWaitCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// TestReview_RefresherPanicReleasesWaiters: when a Refresher panics, the
// callers waiting on its refresh are released with an error, and later
// calls are not stuck behind the dead refresh.
func TestReview_RefresherPanicReleasesWaiters(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	r := RefreshFunc(func(context.Context, string) (*slidejwtv1.TokenPair, error) {
		if calls.Add(1) == 1 {
			close(started)
			<-release
			panic("review: refresher panics")
		}
		return nil, status.Error(codes.Unavailable, "review: token service down")
	})
	c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
	crfLapse(e, s)
	seen := h.cur.Load()

	// The leader: a call whose token lapsed runs the refresh, which
	// panics on its goroutine.
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.UnaryCall(reviewCtx(t, reviewWait), &testpb.SimpleRequest{})
	}()
	select {
	case <-started:
	case <-time.After(crfWait):
		t.Fatal("the refresh did not start")
	}

	// The waiters join the refresh in flight.
	const n = 3
	errs := make(chan error, n)
	for range n {
		ctx := &reviewWaitCtx{Context: reviewCtx(t, reviewWait), waiting: make(chan struct{})}
		go func() {
			err := h.refreshFrom(ctx, nil, seen)
			if ctx.Err() != nil {
				err = fmt.Errorf("still waiting at the deadline: %w", err)
			}
			errs <- err
		}()
		select {
		case <-ctx.waiting:
		case <-time.After(crfWait):
			t.Fatal("a waiter did not join the refresh")
		}
	}
	close(release)

	select {
	case v := <-panicked:
		if v == nil {
			t.Fatal("the refresher's panic did not reach the leader's goroutine")
		}
	case <-time.After(crfWait):
		t.Fatal("the leader did not return")
	}
	for range n {
		if err := <-errs; err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiter: err = %v, want an error before the deadline", err)
		}
	}
	// No refresh is left in flight: the next call refreshes again.
	err := crfUnary(t, c)
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("next call: code = %v (err %v), want %v from the refresher", got, err, codes.Unavailable)
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("refresher called %d times, want 2", got)
	}
}

// TestReview_NoProactiveRefreshAtSessionEnd: once a refresh returned an
// access token that expires at the session's end, calls within the margin
// do not refresh again: no refresh can extend the session.
func TestReview_NoProactiveRefreshAtSessionEnd(t *testing.T) {
	e := newEnv(t, withMemStore(), withServerOptions(
		WithPolicy(Policy{TTL: time.Hour, MaxLifetime: 90 * time.Minute}),
	))
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	c, h, hooks := crfHolder(t, e, s, WithRefresher(r))

	e.clock.Set(s.Expiry.Add(-10 * time.Second)) // inside the 30 s margin
	if err := crfUnary(t, c); err != nil {
		t.Fatal(err)
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("refresher called %d times, want 1", n)
	}
	pair := hooks.lastRefresh()
	end := pair.GetSessionEndsAt().AsTime()
	if !end.Equal(s.End) || !h.Expiry().Equal(end) {
		t.Fatalf("after the refresh: exp %v, session end %v; want both %v", h.Expiry(), end, s.End)
	}

	for _, before := range []time.Duration{20 * time.Second, time.Second, 0} {
		e.clock.Set(end.Add(-before))
		if err := crfUnary(t, c); err != nil {
			t.Fatalf("call %v before the end: %v", before, err)
		}
		if n := r.calls.Load(); n != 1 {
			t.Fatalf("call %v before the end: refresher called %d times, want 1", before, n)
		}
	}
}

// reviewSecretValue is a claim value that no error may quote.
const reviewSecretValue = "SECRET-VALUE"

// TestReview_ErrorsDoNotQuoteClaims: client-side decode errors and
// Claims.Lookup errors never quote a claim's value.
func TestReview_ErrorsDoNotQuoteClaims(t *testing.T) {
	badPayloads := []string{
		`{"sub":"alice","sid":"s1","exp":"` + reviewSecretValue + `"}`,
		`{"sub":"alice","sid":"s1","exp":1,"iat":"` + reviewSecretValue + `"}`,
		`{"sub":"alice","sid":"s1","exp":1,"auth_time":"` + reviewSecretValue + `"}`,
	}
	t.Run("NewTokenHolder", func(t *testing.T) {
		for _, p := range badPayloads {
			_, err := NewTokenHolder(reviewSign(p))
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("err = %v, want ErrMalformedToken", err)
			}
			if strings.Contains(err.Error(), reviewSecretValue) {
				t.Fatalf("error quotes a claim value: %v", err)
			}
		}
	})

	t.Run("refreshed pair", func(t *testing.T) {
		e := newEnv(t, withMemStore())
		s := e.startSession(t, nil)
		r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) {
			return &slidejwtv1.TokenPair{AccessToken: reviewSign(badPayloads[0]), RefreshToken: "next"}, nil
		}}
		c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
		crfLapse(e, s)
		err := crfUnary(t, c)
		if err == nil || strings.Contains(err.Error(), reviewSecretValue) {
			t.Fatalf("err = %v, want an error that does not quote a claim value", err)
		}
	})

	t.Run("Lookup", func(t *testing.T) {
		c := &Claims{Custom: map[string]json.RawMessage{
			"when":  json.RawMessage(`"` + reviewSecretValue + `"`),
			"count": json.RawMessage(`987654321`),
		}}
		for _, tc := range []struct {
			name, secret string
			into         any
		}{
			{"when", reviewSecretValue, new(time.Time)},
			{"when", reviewSecretValue, new(int)},
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

// TestReview_ReopenAfterEarlierInterceptorHeader: a server interceptor
// before slidejwt's may send a response header (a request id, say) before
// slidejwt rejects the stream. The rejection says the handler did not run
// (ErrorInfo handler_ran=false), so the client still refreshes and reopens.
func TestReview_ReopenAfterEarlierInterceptorHeader(t *testing.T) {
	clock := newFakeClock(t0)
	sessions, err := NewServer(testKeySet(t), WithClock(clock.Now), WithSessionStore(&memstore.SessionStore{}))
	if err != nil {
		t.Fatal(err)
	}
	requestID := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := ss.SendHeader(metadata.Pairs("x-request-id", "r1")); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	svc := &testService{}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(requestID, sessions.StreamServerInterceptor()),
	)
	testpb.RegisterTestServiceServer(srv, svc)
	slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	s, err := sessions.StartSession(context.Background(), "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	var refreshes atomic.Int64
	h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(clock.Now),
		WithRefreshToken(s.RefreshToken), WithRefreshMargin(0), BindTarget(cliTarget),
		OnRefresh(func(*slidejwtv1.TokenPair) { refreshes.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	conn := dialBufconn(t, lis, grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))

	clock.Set(s.Expiry.Add(DefaultLeeway + time.Nanosecond)) // lapsed; the refresh token is not
	st, err := testpb.NewTestServiceClient(conn).StreamingOutputCall(reviewCtx(t, reviewWait),
		&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}, {}}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := st.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("after %d messages: %v, want the stream reopened", n, err)
			}
			break
		}
		n++
	}
	if n != 2 || refreshes.Load() != 1 || svc.calls.Load() != 1 {
		t.Fatalf("messages %d, refreshes %d, handler runs %d; want 2, 1, 1", n, refreshes.Load(), svc.calls.Load())
	}
}
