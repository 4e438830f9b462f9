package interceptor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// crfWait bounds every wait of these tests, so that a deadlock fails the
// test instead of hanging it. It is never a timing assertion.
const crfWait = 10 * time.Second

// crfHooks records a holder's OnSwap and OnRefresh calls.
type crfHooks struct {
	mu        sync.Mutex
	swaps     []string
	refreshes []*slidejwtv1.TokenPair
}

func (k *crfHooks) onSwap(tok string, _ time.Time) {
	k.mu.Lock()
	k.swaps = append(k.swaps, tok)
	k.mu.Unlock()
}

func (k *crfHooks) onRefresh(p *slidejwtv1.TokenPair) {
	k.mu.Lock()
	k.refreshes = append(k.refreshes, p)
	k.mu.Unlock()
}

func (k *crfHooks) counts() (swaps, refreshes int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.swaps), len(k.refreshes)
}

// lastRefresh returns the pair of the last OnRefresh call, or nil.
func (k *crfHooks) lastRefresh() *slidejwtv1.TokenPair {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.refreshes) == 0 {
		return nil
	}
	return k.refreshes[len(k.refreshes)-1]
}

// crfHolder returns a TestService client whose calls go through a holder
// for s with s's refresh token, on the env's clock, and the holder's hooks.
// The holder is bound to the env's target: without a WithRefresher in
// opts, it refreshes on the same connection.
func crfHolder(t testing.TB, e *testEnv, s Session, opts ...ClientOption) (testpb.TestServiceClient, *TokenHolder, *crfHooks) {
	t.Helper()
	hooks := new(crfHooks)
	all := append([]ClientOption{
		BindTarget(cliTarget),
		AllowInsecureTransport(),
		WithClock(e.clock.Now),
		WithRefreshToken(s.RefreshToken),
		OnSwap(hooks.onSwap),
		OnRefresh(hooks.onRefresh),
	}, opts...)
	h, err := NewTokenHolder(s.AccessToken, all...)
	if err != nil {
		t.Fatal(err)
	}
	conn := e.dial(t,
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
	return testpb.NewTestServiceClient(conn), h, hooks
}

// crfRefresher is a counting Refresher. By default it calls the env's
// TokenService on a connection of its own.
type crfRefresher struct {
	calls   atomic.Int64
	started chan struct{} // if non-nil, gets a value as each call starts
	release chan struct{} // if non-nil, each call waits until it is closed
	err     error         // if non-nil, returned instead of refreshing
	pair    func(refreshToken string) (*slidejwtv1.TokenPair, error)
	next    Refresher
}

func (r *crfRefresher) Refresh(ctx context.Context, rt string) (*slidejwtv1.TokenPair, error) {
	r.calls.Add(1)
	if r.started != nil {
		r.started <- struct{}{}
	}
	if r.release != nil {
		select {
		case <-r.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	switch {
	case r.err != nil:
		return nil, r.err
	case r.pair != nil:
		return r.pair(rt)
	}
	return r.next.Refresh(ctx, rt)
}

// crfNewRefresher returns a crfRefresher that refreshes through e.
func crfNewRefresher(t testing.TB, e *testEnv) *crfRefresher {
	t.Helper()
	_, tc := e.clients(t)
	return &crfRefresher{next: TokenServiceRefresher(tc)}
}

// crfCtx is a context bounded by crfWait.
func crfCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), crfWait)
	t.Cleanup(cancel)
	return ctx
}

// crfUnary makes one UnaryCall through c.
func crfUnary(t testing.TB, c testpb.TestServiceClient) error {
	t.Helper()
	_, err := c.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
	return err
}

// crfServerStream opens a StreamingOutputCall asking for n messages and
// returns how many arrived and the stream's final error (nil on io.EOF).
func crfServerStream(t testing.TB, c testpb.TestServiceClient, n int) (int, error) {
	t.Helper()
	params := make([]*testpb.ResponseParameters, n)
	for i := range params {
		params[i] = &testpb.ResponseParameters{}
	}
	st, err := c.StreamingOutputCall(crfCtx(t), &testpb.StreamingOutputCallRequest{
		ResponseParameters: params,
		Payload:            &testpb.Payload{Body: []byte("x")},
	})
	if err != nil {
		return 0, err
	}
	got := 0
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return got, nil
			}
			return got, err
		}
		got++
	}
}

// crfLapse moves the clock one tick past the point where the server
// rejects s's access token as expired, well before its refresh token
// lapses.
func crfLapse(e *testEnv, s Session) {
	e.clock.Set(s.Expiry.Add(DefaultLeeway + time.Nanosecond))
}

// crfWantCalls fails unless method reached the server n times.
func crfWantCalls(t testing.TB, e *testEnv, method string, n int) {
	t.Helper()
	if got, _ := e.calls.get(method); got != n {
		t.Fatalf("%s reached the server %d times, want %d", method, got, n)
	}
}

// crfWantRefreshes fails unless the server answered n Refresh calls.
func crfWantRefreshes(t testing.TB, e *testEnv, n int) {
	t.Helper()
	if got := refreshAnswered(e); got != n {
		t.Fatalf("server answered %d Refresh calls, want %d", got, n)
	}
}

// TestClientRefresh_ReactiveUnary: a unary call whose access token lapsed
// is refreshed and retried once, transparently.
func TestClientRefresh_ReactiveUnary(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0))
	crfLapse(e, s)

	if err := crfUnary(t, c); err != nil {
		t.Fatalf("call with a lapsed token: %v", err)
	}
	crfWantRefreshes(t, e, 1)
	if got := e.events.count(EventRefreshed, refreshMethod); got != 1 {
		t.Fatalf("%d successful refreshes, want 1", got)
	}
	crfWantCalls(t, e, refreshUnaryMethod, 2)
	if rejected, handled := e.events.count(EventRejected, refreshUnaryMethod), e.svc.calls.Load(); rejected != 1 || handled != 1 {
		t.Fatalf("UnaryCall: %d rejected, %d handled; want 1, 1", rejected, handled)
	}
	swaps, refreshes := hooks.counts()
	if swaps != 1 || refreshes != 1 {
		t.Fatalf("OnSwap called %d times, OnRefresh %d; want 1, 1", swaps, refreshes)
	}
	p := hooks.lastRefresh()
	if h.Token() != p.GetAccessToken() || h.RefreshToken() != p.GetRefreshToken() {
		t.Fatal("holder does not hold the refreshed pair")
	}
	if h.Token() == s.AccessToken || h.RefreshToken() == s.RefreshToken {
		t.Fatal("holder still holds the old tokens")
	}
	if !h.Expiry().Equal(p.GetAccessTokenExpiresAt().AsTime()) {
		t.Fatalf("Expiry = %v, want %v", h.Expiry(), p.GetAccessTokenExpiresAt().AsTime())
	}
	if got := e.svc.lastClaims.Load(); got == nil || got.ID != decodeToken(t, p.GetAccessToken()).claims.ID {
		t.Fatal("the retry did not carry the refreshed access token")
	}

	// The next call goes straight through with the new token.
	if err := crfUnary(t, c); err != nil {
		t.Fatal(err)
	}
	crfWantRefreshes(t, e, 1)
	crfWantCalls(t, e, refreshUnaryMethod, 3)
}

// TestClientRefresh_NoRefreshForOtherRejections: rejections that a refresh
// cannot cure go to the caller as they came, with no refresh and no retry.
func TestClientRefresh_NoRefreshForOtherRejections(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, e *testEnv) Session
		want  Reason
	}{
		{"session expired", func(t *testing.T, e *testEnv) Session {
			s := e.startSession(t, nil)
			e.clock.Set(s.End.Add(DefaultLeeway))
			return s
		}, ReasonSessionExpired},
		{"session revoked", func(t *testing.T, e *testEnv) Session {
			s := e.startSession(t, nil)
			if err := e.server.RevokeSession(context.Background(), s.SessionID); err != nil {
				t.Fatal(err)
			}
			return s
		}, ReasonSessionRevoked},
		{"token invalid", func(t *testing.T, e *testEnv) Session {
			// A session of another server, with keys of its own.
			return newEnv(t, withMemStore(), withStart(e.clock.Now())).startSession(t, nil)
		}, ReasonTokenInvalid},
	} {
		for _, kind := range []string{"unary", "server-stream"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				e := newEnv(t, withMemStore())
				s := tc.setup(t, e)
				r := crfNewRefresher(t, e)
				c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
				method := refreshUnaryMethod
				var err error
				if kind == "unary" {
					err = crfUnary(t, c)
				} else {
					method = refreshOutMethod
					_, err = crfServerStream(t, c, 1)
				}
				wantReason(t, err, tc.want)
				if n := r.calls.Load(); n != 0 {
					t.Fatalf("refresher called %d times, want 0", n)
				}
				crfWantRefreshes(t, e, 0)
				crfWantCalls(t, e, method, 1)
				if swaps, refreshes := hooks.counts(); swaps+refreshes != 0 || h.Token() != s.AccessToken {
					t.Fatal("holder's tokens changed")
				}
			})
		}
	}
}

// TestClientRefresh_FailedRefresh: a refresh that fails returns its error
// and the call is not retried. A rejected refresh is remembered for that
// token generation; a transient failure is tried again on the next call.
func TestClientRefresh_FailedRefresh(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
		// setup prepares the session so that its refresh fails; it may
		// replace the refresher's behaviour.
		setup      func(t *testing.T, e *testEnv, s Session, r *crfRefresher)
		wantReason Reason     // if set
		wantCode   codes.Code // otherwise
		wantSecond int64      // refresher calls after a second call
	}{
		{"refresh token reused", nil, func(t *testing.T, e *testEnv, s Session, _ *crfRefresher) {
			// Someone else rotated the token long ago: reuse after the
			// grace period revokes the session.
			_, tc := e.clients(t)
			refreshMust(t, tc, s.RefreshToken)
		}, ReasonSessionRevoked, 0, 1},
		{"refresh token lapsed", []ServerOption{WithRefreshTTL(time.Hour)}, nil, ReasonSessionExpired, 0, 1},
		{"refresher rejects", nil, func(_ *testing.T, _ *testEnv, _ Session, r *crfRefresher) {
			r.err = reject(ReasonTokenInvalid, "")
		}, ReasonTokenInvalid, 0, 1},
		{"refresher unavailable", nil, func(_ *testing.T, _ *testEnv, _ Session, r *crfRefresher) {
			r.err = status.Error(codes.Unavailable, "token service down")
		}, noReason, codes.Unavailable, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore(), withServerOptions(tc.opts...))
			s := e.startSession(t, nil)
			r := crfNewRefresher(t, e)
			if tc.setup != nil {
				tc.setup(t, e, s, r)
			}
			refreshesBefore := refreshAnswered(e)
			c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
			crfLapse(e, s)

			check := func(err error) {
				t.Helper()
				if tc.wantReason != noReason {
					wantReason(t, err, tc.wantReason)
				} else {
					refreshWantCode(t, err, tc.wantCode)
				}
			}
			check(crfUnary(t, c))
			if n := r.calls.Load(); n != 1 {
				t.Fatalf("refresher called %d times, want 1", n)
			}
			crfWantCalls(t, e, refreshUnaryMethod, 1)
			if e.svc.calls.Load() != 0 {
				t.Fatal("handler ran")
			}
			if swaps, refreshes := hooks.counts(); swaps+refreshes != 0 || h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder's tokens changed after a failed refresh")
			}

			check(crfUnary(t, c))
			if n := r.calls.Load(); n != tc.wantSecond {
				t.Fatalf("after a second call: refresher called %d times, want %d", n, tc.wantSecond)
			}
			crfWantCalls(t, e, refreshUnaryMethod, 2)
			// Only the refresher's own calls reached TokenService.
			if got := refreshAnswered(e) - refreshesBefore; r.err == nil && got != 1 {
				t.Fatalf("server answered %d Refresh calls from the holder, want 1", got)
			}
		})
	}
}

// TestClientRefresh_RetriedOnce: when the refreshed token is rejected with
// TOKEN_EXPIRED again, the error goes to the caller: one refresh, one
// retry or reopen, even if the caller keeps reading the stream.
func TestClientRefresh_RetriedOnce(t *testing.T) {
	for _, kind := range []string{"unary", "server-stream", "bidi"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			_, tokc := e.clients(t)
			e.clock.Advance(time.Hour)
			later := refreshMust(t, tokc, s.RefreshToken) // expires an hour after s's
			r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) { return later, nil }}
			c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
			e.clock.Set(later.GetAccessTokenExpiresAt().AsTime().Add(time.Hour)) // both lapsed

			var method string
			switch kind {
			case "unary":
				method = refreshUnaryMethod
				wantReason(t, crfUnary(t, c), ReasonTokenExpired)
			case "server-stream":
				method = refreshOutMethod
				st, err := c.StreamingOutputCall(crfCtx(t), &testpb.StreamingOutputCallRequest{
					ResponseParameters: []*testpb.ResponseParameters{{}},
				})
				if err != nil {
					t.Fatal(err)
				}
				for range 3 { // the caller keeps reading
					_, err := st.Recv()
					wantReason(t, err, ReasonTokenExpired)
				}
			case "bidi":
				method = refreshBidiMethod
				st, err := c.FullDuplexCall(crfCtx(t))
				if err != nil {
					t.Fatal(err)
				}
				_ = st.Send(&testpb.StreamingOutputCallRequest{})
				_ = st.CloseSend()
				for range 3 {
					_, err := st.Recv()
					wantReason(t, err, ReasonTokenExpired)
				}
			}
			if n := r.calls.Load(); n != 1 {
				t.Fatalf("refresher called %d times, want 1", n)
			}
			crfWantCalls(t, e, method, 2)
		})
	}
}

// TestClientRefresh_SingleFlightReactive: 50 goroutines fail with
// TOKEN_EXPIRED at once and share one refresh.
func TestClientRefresh_SingleFlightReactive(t *testing.T) {
	const n = 50
	var rejected atomic.Int64
	allRejected := make(chan struct{})
	e := newEnv(t, withMemStore(), withEventHook(func(ev Event) {
		if ev.Kind == EventRejected && ev.Method == refreshUnaryMethod && rejected.Add(1) == n {
			close(allRejected)
		}
	}))
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	r.started = make(chan struct{}, n)
	r.release = make(chan struct{})
	c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
	crfLapse(e, s)

	// Hold the refresh until every first attempt has been rejected, so
	// that all 50 need it.
	crfPileUp(t, c, n, r, allRejected)
	if got := r.calls.Load(); got != 1 {
		t.Fatalf("refresher called %d times, want 1", got)
	}
	crfWantRefreshes(t, e, 1)
	crfWantCalls(t, e, refreshUnaryMethod, 2*n)
	if got := e.svc.calls.Load(); got != n {
		t.Fatalf("handler ran %d times, want %d", got, n)
	}
	if _, refreshes := hooks.counts(); refreshes != 1 || h.Token() != hooks.lastRefresh().GetAccessToken() {
		t.Fatalf("OnRefresh called %d times, want 1, and the holder to hold its token", refreshes)
	}
}

// TestClientRefresh_SingleFlightProactive: 50 goroutines call at once with
// a token inside the refresh margin and share one refresh.
func TestClientRefresh_SingleFlightProactive(t *testing.T) {
	const n = 50
	e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{RenewBefore: time.Second})))
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	r.started = make(chan struct{}, n)
	r.release = make(chan struct{})
	var entered atomic.Int64
	allEntered := make(chan struct{})
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if entered.Add(1) == n {
			close(allEntered)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
		WithRefreshToken(s.RefreshToken), WithRefresher(r))
	if err != nil {
		t.Fatal(err)
	}
	c := testpb.NewTestServiceClient(e.dial(t, grpc.WithChainUnaryInterceptor(count, h.UnaryClientInterceptor())))
	e.clock.Set(s.Expiry.Add(-time.Second)) // inside the 30 s margin, still valid

	crfPileUp(t, c, n, r, allEntered)
	if got := r.calls.Load(); got != 1 {
		t.Fatalf("refresher called %d times, want 1", got)
	}
	crfWantCalls(t, e, refreshUnaryMethod, n)
	if got := e.events.count(EventRejected, refreshUnaryMethod); got != 0 {
		t.Fatalf("%d calls rejected, want 0", got)
	}
}

// TestClientRefresh_ProactiveMargin: the holder refreshes before a call
// when exp − now is below the margin, at the boundary and one tick either
// side; margin 0 turns it off.
func TestClientRefresh_ProactiveMargin(t *testing.T) {
	for _, tc := range []struct {
		name        string
		opts        []ClientOption
		left        time.Duration // exp − now at the call
		wantRefresh bool
	}{
		{"default margin, 30s+1ns left", nil, DefaultRefreshMargin + time.Nanosecond, false},
		{"default margin, 30s left", nil, DefaultRefreshMargin, false},
		{"default margin, 30s-1ns left", nil, DefaultRefreshMargin - time.Nanosecond, true},
		{"30s margin, 30s-1ns left", []ClientOption{WithRefreshMargin(30 * time.Second)}, 30*time.Second - time.Nanosecond, true},
		{"1m margin, 1m left", []ClientOption{WithRefreshMargin(time.Minute)}, time.Minute, false},
		{"1m margin, 1m-1ns left", []ClientOption{WithRefreshMargin(time.Minute)}, time.Minute - time.Nanosecond, true},
		{"margin 0, 1ns left", []ClientOption{WithRefreshMargin(0)}, time.Nanosecond, false},
	} {
		for _, kind := range []string{"unary", "server-stream"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				// RenewBefore 1 s: no renewal in the response muddles what
				// the holder holds.
				e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{RenewBefore: time.Second})))
				s := e.startSession(t, nil)
				c, h, hooks := crfHolder(t, e, s, tc.opts...)
				e.clock.Set(s.Expiry.Add(-tc.left))

				method := refreshUnaryMethod
				if kind == "unary" {
					if err := crfUnary(t, c); err != nil {
						t.Fatal(err)
					}
				} else {
					method = refreshOutMethod
					if got, err := crfServerStream(t, c, 2); err != nil || got != 2 {
						t.Fatalf("stream: %d messages, err %v; want 2, nil", got, err)
					}
				}
				crfWantCalls(t, e, method, 1)
				wantJTI := decodeToken(t, s.AccessToken).claims.ID
				want := 0
				if tc.wantRefresh {
					want = 1
					wantJTI = decodeToken(t, hooks.lastRefresh().GetAccessToken()).claims.ID
					if h.Token() == s.AccessToken {
						t.Fatal("holder kept the old token after a proactive refresh")
					}
				}
				crfWantRefreshes(t, e, want)
				if _, refreshes := hooks.counts(); refreshes != want {
					t.Fatalf("OnRefresh called %d times, want %d", refreshes, want)
				}
				if got := e.svc.lastClaims.Load(); got == nil || got.ID != wantJTI {
					t.Fatalf("server saw jti %v, want %s (refreshed: %v)", got, wantJTI, tc.wantRefresh)
				}
			})
		}
	}
}

// TestClientRefresh_ProactiveFailureSendsHeldToken: a proactive refresh
// that fails does not fail the call, which goes out with the held token.
// A rejected proactive refresh is not tried again for that token.
func TestClientRefresh_ProactiveFailureSendsHeldToken(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		wantSecond int64 // refresher calls after a second call
	}{
		{"unavailable", status.Error(codes.Unavailable, "token service down"), 2},
		{"rejected", reject(ReasonSessionRevoked, ""), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{RenewBefore: time.Second})))
			s := e.startSession(t, nil)
			r := crfNewRefresher(t, e)
			r.err = tc.err
			c, h, _ := crfHolder(t, e, s, WithRefresher(r))
			e.clock.Set(s.Expiry.Add(-10 * time.Second))

			if err := crfUnary(t, c); err != nil {
				t.Fatalf("call after a failed proactive refresh: %v", err)
			}
			if n := r.calls.Load(); n != 1 {
				t.Fatalf("refresher called %d times, want 1", n)
			}
			crfWantCalls(t, e, refreshUnaryMethod, 1)
			if got := e.svc.lastClaims.Load(); got == nil || got.ID != decodeToken(t, s.AccessToken).claims.ID {
				t.Fatal("the call did not carry the held token")
			}
			if h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder's tokens changed")
			}
			if err := crfUnary(t, c); err != nil {
				t.Fatal(err)
			}
			if n := r.calls.Load(); n != tc.wantSecond {
				t.Fatalf("after a second call: refresher called %d times, want %d", n, tc.wantSecond)
			}
		})
	}
}

// TestClientRefresh_StreamReopen: a stream rejected with TOKEN_EXPIRED
// before any response is reopened once, and the messages sent so far
// (and the half-close) are replayed in order.
func TestClientRefresh_StreamReopen(t *testing.T) {
	payloads := []string{"one", "two", "three"}
	for _, tc := range []struct {
		name   string
		method string
		// run sends on the stream, opens the gate once everything is
		// sent, and checks what comes back.
		run func(t *testing.T, c testpb.TestServiceClient, gate chan struct{}) error
	}{
		{"server-stream", refreshOutMethod, func(t *testing.T, c testpb.TestServiceClient, gate chan struct{}) error {
			st, err := c.StreamingOutputCall(crfCtx(t), &testpb.StreamingOutputCallRequest{
				ResponseParameters: []*testpb.ResponseParameters{{}, {}, {}},
				Payload:            &testpb.Payload{Body: []byte("x")},
			})
			if err != nil {
				return err
			}
			close(gate)
			for i := range 3 {
				m, err := st.Recv()
				if err != nil {
					return fmt.Errorf("message %d: %w", i, err)
				}
				if string(m.GetPayload().GetBody()) != "x" {
					return fmt.Errorf("message %d: payload %q, want x", i, m.GetPayload().GetBody())
				}
			}
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				return fmt.Errorf("after 3 messages: %v, want io.EOF", err)
			}
			return nil
		}},
		{"client-stream", refreshInMethod, func(t *testing.T, c testpb.TestServiceClient, gate chan struct{}) error {
			st, err := c.StreamingInputCall(crfCtx(t))
			if err != nil {
				return err
			}
			for _, p := range payloads {
				if err := st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(p)}}); err != nil {
					return err
				}
			}
			close(gate)
			resp, err := st.CloseAndRecv()
			if err != nil {
				return err
			}
			if got, want := resp.GetAggregatedPayloadSize(), int32(len("onetwothree")); got != want {
				return fmt.Errorf("aggregated size %d, want %d", got, want)
			}
			return nil
		}},
		{"bidi", refreshBidiMethod, func(t *testing.T, c testpb.TestServiceClient, gate chan struct{}) error {
			st, err := c.FullDuplexCall(crfCtx(t))
			if err != nil {
				return err
			}
			for _, p := range payloads {
				if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(p)}}); err != nil {
					return err
				}
			}
			if err := st.CloseSend(); err != nil {
				return err
			}
			close(gate)
			for i, want := range payloads {
				m, err := st.Recv()
				if err != nil {
					return fmt.Errorf("echo %d: %w", i, err)
				}
				if got := string(m.GetPayload().GetBody()); got != want {
					return fmt.Errorf("echo %d = %q, want %q", i, got, want)
				}
			}
			if _, err := st.Recv(); !errors.Is(err, io.EOF) {
				return fmt.Errorf("after the echoes: %v, want io.EOF", err)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gate := make(chan struct{})
			e := newEnv(t, withMemStore(), withBefore(nil, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
				select { // hold the stream, before authentication, until gate closes
				case <-gate:
				case <-ss.Context().Done():
					return ss.Context().Err()
				}
				return handler(srv, ss)
			}))
			s := e.startSession(t, nil)
			c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0))
			crfLapse(e, s)

			if err := tc.run(t, c, gate); err != nil {
				t.Fatal(err)
			}
			crfWantRefreshes(t, e, 1)
			crfWantCalls(t, e, tc.method, 2)
			if rejected := e.events.count(EventRejected, tc.method); rejected != 1 {
				t.Fatalf("%d attempts rejected, want 1", rejected)
			}
			if got := e.svc.calls.Load(); got != 1 {
				t.Fatalf("handler ran %d times, want 1", got)
			}
			if p := hooks.lastRefresh(); p == nil || h.Token() != p.GetAccessToken() {
				t.Fatal("holder does not hold the refreshed token")
			}
		})
	}
}

// TestClientRefresh_StreamHeaderFirst: a caller that reads the header of a
// server stream before its first message still gets the stream reopened
// after TOKEN_EXPIRED (no header arrived: nothing was exchanged).
func TestClientRefresh_StreamHeaderFirst(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0))
	crfLapse(e, s)

	st, err := c.StreamingOutputCall(crfCtx(t), &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}, {}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Logf("Header: %v", err)
	}
	got := 0
	for {
		if _, err := st.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("after %d messages: %v, want the stream reopened", got, err)
			}
			break
		}
		got++
	}
	if got != 2 {
		t.Fatalf("got %d messages, want 2", got)
	}
	crfWantRefreshes(t, e, 1)
	crfWantCalls(t, e, refreshOutMethod, 2)
}

// crfMidStreamService sends one message and then fails with TOKEN_EXPIRED,
// as no real server does, to show that a stream that has received a
// message is never replayed.
type crfMidStreamService struct{ *testService }

func (s crfMidStreamService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
		return err
	}
	return reject(ReasonTokenExpired, "")
}

// TestClientRefresh_StreamNotReplayedAfterMessage: TOKEN_EXPIRED after a
// message arrived goes to the caller; nothing is refreshed or reopened.
func TestClientRefresh_StreamNotReplayedAfterMessage(t *testing.T) {
	svc := crfMidStreamService{&testService{}}
	e := newEnv(t, withMemStore(), withService(svc))
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))

	got, err := crfServerStream(t, c, 3)
	if got != 1 {
		t.Fatalf("got %d messages, want 1", got)
	}
	wantReason(t, err, ReasonTokenExpired)
	if n := r.calls.Load(); n != 0 {
		t.Fatalf("refresher called %d times, want 0", n)
	}
	crfWantRefreshes(t, e, 0)
	crfWantCalls(t, e, refreshOutMethod, 1)
	if svc.calls.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", svc.calls.Load())
	}
	if h.Token() != s.AccessToken {
		t.Fatal("holder's token changed")
	}
}

// TestClientRefresh_RefreshCallIsolation: with the default refresher, the
// holder's own Refresh goes over the same connection, through its own
// interceptors, without recursion and without an access token.
func TestClientRefresh_RefreshCallIsolation(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ClientOption
		at   func(s Session) time.Time
	}{
		{"reactive", []ClientOption{WithRefreshMargin(0)}, func(s Session) time.Time { return s.Expiry.Add(DefaultLeeway) }},
		{"proactive", nil, func(s Session) time.Time { return s.Expiry.Add(-time.Second) }},
	} {
		for _, kind := range []string{"unary", "server-stream"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				e := newEnv(t, withMemStore())
				s := e.startSession(t, nil)
				c, h, _ := crfHolder(t, e, s, append([]ClientOption{WithRefreshTimeout(crfWait)}, tc.opts...)...)
				e.clock.Set(tc.at(s))
				if kind == "unary" {
					if err := crfUnary(t, c); err != nil {
						t.Fatal(err)
					}
				} else if n, err := crfServerStream(t, c, 1); err != nil || n != 1 {
					t.Fatalf("stream: %d messages, err %v; want 1, nil", n, err)
				}
				all, authorized := e.calls.get(refreshMethod)
				if all != 1 || authorized != 0 {
					t.Fatalf("Refresh reached the server %d times, %d with authorization; want 1, 0", all, authorized)
				}
				if h.RefreshToken() == s.RefreshToken {
					t.Fatal("holder did not take the new refresh token")
				}
			})
		}
	}
}

// TestClientRefresh_Options: refresh options NewTokenHolder refuses.
func TestClientRefresh_Options(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	other := e.startSession(t, nil)
	conn := e.dial(t)
	r := RefreshFunc(func(context.Context, string) (*slidejwtv1.TokenPair, error) { return nil, nil })
	for _, tc := range []struct {
		name    string
		opts    []ClientOption
		wantErr error
	}{
		{"refresher without refresh token", []ClientOption{WithRefresher(r)}, ErrInvalidOption},
		{"refresher with empty refresh token", []ClientOption{WithRefreshToken(""), WithRefresher(r)}, ErrInvalidOption},
		{"negative margin", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefreshMargin(-time.Nanosecond)}, ErrInvalidOption},
		{"zero timeout", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefreshTimeout(0)}, ErrInvalidOption},
		{"negative timeout", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefreshTimeout(-time.Second)}, ErrInvalidOption},
		{"refresh token alone", []ClientOption{WithRefreshToken(s.RefreshToken)}, ErrInvalidOption},
		{"refresh token, unbound, margin 0", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefreshMargin(0)}, ErrInvalidOption},
		{"token service without refresh token", []ClientOption{WithTokenService(conn)}, ErrInvalidOption},
		{"token service and refresher", []ClientOption{WithRefreshToken(s.RefreshToken), WithTokenService(conn), WithRefresher(r)}, ErrInvalidOption},
		{"empty bound target", []ClientOption{BindTarget("")}, ErrInvalidOption},
		{"access token in place of the refresh token", []ClientOption{WithRefreshToken(s.AccessToken), WithRefresher(r)}, ErrMalformedToken},
		{"refresh token of another session", []ClientOption{WithRefreshToken(other.RefreshToken), WithRefresher(r)}, ErrInvalidOption},
		{"session end before the token's exp", []ClientOption{WithSessionEnd(s.Expiry.Add(-time.Second))}, ErrInvalidOption},
		{"session end at the token's exp", []ClientOption{WithSessionEnd(s.Expiry)}, nil},
		{"refresh token, bound", []ClientOption{WithRefreshToken(s.RefreshToken), BindTarget(cliTarget)}, nil},
		{"refresh token and token service", []ClientOption{WithRefreshToken(s.RefreshToken), WithTokenService(conn)}, nil},
		{"refresh token and refresher", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefresher(r)}, nil},
		{"zero margin", []ClientOption{WithRefreshToken(s.RefreshToken), WithRefreshMargin(0), BindTarget(cliTarget)}, nil},
		{"no refresh at all", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := NewTokenHolder(s.AccessToken, tc.opts...)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("NewTokenHolder err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && h.RefreshToken() != crfOptToken(tc.opts) {
				t.Fatal("RefreshToken() is not the one given")
			}
		})
	}
}

// crfOptToken is the refresh token a holder built with opts should report.
func crfOptToken(opts []ClientOption) string {
	var cfg clientConfig
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	return cfg.refreshToken
}

// TestClientRefresh_InstallRules: what a holder does with the pair a
// refresher returns.
func TestClientRefresh_InstallRules(t *testing.T) {
	t.Run("pair of another session is refused", func(t *testing.T) {
		e := newEnv(t, withMemStore())
		s := e.startSession(t, nil)
		foreign := e.startSession(t, nil) // same subject, another sid
		r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) { return foreign.TokenPair(), nil }}
		c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
		crfLapse(e, s)
		if err := crfUnary(t, c); err == nil {
			t.Fatal("call succeeded with another session's tokens")
		}
		if h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken || h.SessionID() != s.SessionID {
			t.Fatal("holder took another session's tokens")
		}
		if swaps, refreshes := hooks.counts(); swaps+refreshes != 0 {
			t.Fatalf("OnSwap %d, OnRefresh %d calls; want 0", swaps, refreshes)
		}
		crfWantCalls(t, e, refreshUnaryMethod, 1)
	})

	for _, tc := range []struct {
		name string
		pair func(s Session) *slidejwtv1.TokenPair
	}{
		{"no refresh token", func(s Session) *slidejwtv1.TokenPair {
			p := s.TokenPair()
			p.RefreshToken = ""
			return p
		}},
		{"malformed access token", func(s Session) *slidejwtv1.TokenPair {
			p := s.TokenPair()
			p.AccessToken = "garbage"
			return p
		}},
		{"refresh token in place of the access token", func(s Session) *slidejwtv1.TokenPair {
			p := s.TokenPair()
			p.AccessToken = s.RefreshToken
			return p
		}},
		{"nil pair", func(Session) *slidejwtv1.TokenPair { return nil }},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			e.clock.Advance(time.Hour)
			_, tokc := e.clients(t)
			next := refreshMust(t, tokc, s.RefreshToken)
			nextSession := Session{AccessToken: next.GetAccessToken(), RefreshToken: next.GetRefreshToken(), Expiry: next.GetAccessTokenExpiresAt().AsTime()}
			r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) { return tc.pair(nextSession), nil }}
			c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
			crfLapse(e, s)
			if err := crfUnary(t, c); err == nil {
				t.Fatal("call succeeded with a broken pair")
			}
			if h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
				t.Fatal("holder took a broken pair")
			}
			if swaps, refreshes := hooks.counts(); swaps+refreshes != 0 {
				t.Fatalf("OnSwap %d, OnRefresh %d calls; want 0", swaps, refreshes)
			}
		})
	}

	t.Run("older access token keeps the held one but takes the refresh token", func(t *testing.T) {
		e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{RenewBefore: time.Second})))
		s := e.startSession(t, nil)
		_, tokc := e.clients(t)
		older := refreshMust(t, tokc, s.RefreshToken) // access exp t0+24h
		e.clock.Advance(time.Hour)
		newer := refreshMust(t, tokc, older.GetRefreshToken()) // access exp t0+25h
		held := Session{AccessToken: newer.GetAccessToken(), RefreshToken: newer.GetRefreshToken()}

		nextRT := refreshMust(t, tokc, newer.GetRefreshToken()).GetRefreshToken()
		r := &crfRefresher{pair: func(string) (*slidejwtv1.TokenPair, error) {
			p := proto.Clone(older).(*slidejwtv1.TokenPair)
			p.RefreshToken = nextRT
			return p, nil
		}}
		c, h, hooks := crfHolder(t, e, held, WithRefresher(r))
		e.clock.Set(newer.GetAccessTokenExpiresAt().AsTime().Add(-10 * time.Second)) // proactive refresh due

		if err := crfUnary(t, c); err != nil {
			t.Fatal(err)
		}
		if n := r.calls.Load(); n != 1 {
			t.Fatalf("refresher called %d times, want 1", n)
		}
		if h.Token() != newer.GetAccessToken() {
			t.Fatal("holder swapped in an access token older than the held one")
		}
		if !h.Expiry().Equal(newer.GetAccessTokenExpiresAt().AsTime()) {
			t.Fatalf("Expiry = %v, want the held %v", h.Expiry(), newer.GetAccessTokenExpiresAt().AsTime())
		}
		if h.RefreshToken() != nextRT {
			t.Fatal("holder did not take the new refresh token")
		}
		swaps, refreshes := hooks.counts()
		if swaps != 0 || refreshes != 1 {
			t.Fatalf("OnSwap %d, OnRefresh %d calls; want 0, 1", swaps, refreshes)
		}
		if got := e.svc.lastClaims.Load(); got == nil || got.ID != decodeToken(t, newer.GetAccessToken()).claims.ID {
			t.Fatal("the call did not carry the held access token")
		}
	})
}

// crfPileUp makes n concurrent unary calls on c, holds r's refresh until it
// has started and gate is closed (every call is waiting for it), then
// releases it and fails the test for any call that did not succeed.
func crfPileUp(t *testing.T, c testpb.TestServiceClient, n int, r *crfRefresher, gate <-chan struct{}) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = crfUnary(t, c) })
	}
	for _, ch := range []<-chan struct{}{r.started, gate} {
		select {
		case <-ch:
		case <-time.After(crfWait):
			t.Fatal("calls did not pile up")
		}
	}
	close(r.release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
}

// crfRejection is a slidejwt rejection built by hand, as it travels on the
// wire, with the ErrorInfo metadata handler_ran set to handlerRan unless
// that is "".
func crfRejection(t testing.TB, reason Reason, handlerRan string) error {
	t.Helper()
	info := &errdetails.ErrorInfo{Reason: WireReason(reason), Domain: ErrorDomain}
	if handlerRan != "" {
		info.Metadata = map[string]string{MetadataHandlerRan: handlerRan}
	}
	st, err := status.New(codes.Unauthenticated, "rejected").WithDetails(info)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// crfRelayed is crfRejection as a handler passes it on when a Forwarder
// relayed it: a rejection of the caller's own token, which the server
// interceptor lets through to the caller (any other slidejwt rejection a
// handler returns becomes codes.Unavailable without a reason).
func crfRelayed(t testing.TB, reason Reason, handlerRan string) error {
	t.Helper()
	return &forwardedError{crfRejection(t, reason, handlerRan)}
}

// crfRogueTokenService records every Refresh call that reaches it.
type crfRogueTokenService struct {
	slidejwtv1.UnimplementedTokenServiceServer
	calls atomic.Int64
}

func (s *crfRogueTokenService) Refresh(context.Context, *slidejwtv1.RefreshRequest) (*slidejwtv1.RefreshResponse, error) {
	s.calls.Add(1)
	return nil, status.Error(codes.Unavailable, "rogue")
}

// TestClientRefresh_RogueTokenExpiredGetsNoRefreshToken: a rogue backend
// answers TOKEN_EXPIRED (with the marker) on purpose. The holder refreshes
// at its configured token service only; the refresh token never reaches
// the rogue, in a Refresh call or in any metadata.
func TestClientRefresh_RogueTokenExpiredGetsNoRefreshToken(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	var (
		mu  sync.Mutex
		got []string // every metadata value that reached the rogue
	)
	seen := func(ctx context.Context) {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		defer mu.Unlock()
		for _, vs := range md {
			got = append(got, vs...)
		}
	}
	expired := crfRejection(t, ReasonTokenExpired, "false")
	rogueTS := new(crfRogueTokenService)
	rogueSvc := &testService{}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			seen(ctx)
			if info.FullMethod == refreshMethod {
				return handler(ctx, req)
			}
			return nil, expired
		}),
		grpc.ChainStreamInterceptor(func(_ any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, _ grpc.StreamHandler) error {
			seen(ss.Context())
			return expired
		}),
	)
	testpb.RegisterTestServiceServer(srv, rogueSvc)
	slidejwtv1.RegisterTokenServiceServer(srv, rogueTS)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	hooks := new(crfHooks)
	h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
		WithRefreshToken(s.RefreshToken), WithRefreshMargin(0), WithTokenService(e.dial(t)),
		OnSwap(hooks.onSwap), OnRefresh(hooks.onRefresh))
	if err != nil {
		t.Fatal(err)
	}
	rogue := testpb.NewTestServiceClient(cliDialAs(t, lis, "passthrough:///rogue",
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor())))

	wantReason(t, crfUnary(t, rogue), ReasonTokenExpired)
	_, serr := crfServerStream(t, rogue, 1)
	wantReason(t, serr, ReasonTokenExpired)

	if n := rogueTS.calls.Load(); n != 0 {
		t.Fatalf("rogue TokenService got %d Refresh calls, want 0", n)
	}
	// One refresh per call, each at the configured token service: the
	// stream was rejected with the token the unary call's refresh got.
	if n := refreshAnswered(e); n != 2 {
		t.Fatalf("configured token service answered %d Refresh calls, want 2", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range got {
		for _, rt := range []string{s.RefreshToken, h.RefreshToken()} {
			if strings.Contains(v, rt) {
				t.Fatal("a refresh token reached the rogue in metadata")
			}
		}
	}
	if len(got) == 0 {
		t.Fatal("the rogue recorded no metadata; the test checks nothing")
	}
}

// crfRejectingService runs its handler and then fails every UnaryCall and
// StreamingOutputCall with err, before sending anything: as a handler
// that forwards another service's rejection does.
type crfRejectingService struct {
	*testService
	err func() error
}

func (s crfRejectingService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.enter(ctx)
	if err := s.err(); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{}, nil
}

func (s crfRejectingService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := s.err(); err != nil {
		return err
	}
	return stream.Send(&testpb.StreamingOutputCallResponse{})
}

// TestClientRefresh_RetryNeedsMarker: a TOKEN_EXPIRED that a handler
// returns is never retried, for unary calls and streams alike: without
// the handler_ran marker, with "true", and with a "false" that the handler
// itself put there (the server interceptor rewrites it to "true"). No
// refresh, no retry, no replay.
func TestClientRefresh_RetryNeedsMarker(t *testing.T) {
	for _, tc := range []struct {
		name      string
		marker    string
		wantCalls int64 // handler runs
	}{
		{"no marker", "", 1},
		{"handler ran", "true", 1},
		// A handler cannot claim it did not run: the server interceptor
		// marks every slidejwt error a handler returns as handler_ran=true.
		// (The real interceptor's own rejections, before the handler, are
		// retried: see the reactive-refresh tests.)
		{"handler claims it did not run", "false", 1},
	} {
		for _, kind := range []string{"unary", "server-stream"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				var n atomic.Int64
				svc := crfRejectingService{&testService{}, func() error {
					if n.Add(1) == 1 {
						return crfRelayed(t, ReasonTokenExpired, tc.marker)
					}
					return nil
				}}
				e := newEnv(t, withMemStore(), withService(svc))
				s := e.startSession(t, nil)
				r := crfNewRefresher(t, e)
				c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
				var err error
				if kind == "unary" {
					err = crfUnary(t, c)
				} else {
					_, err = crfServerStream(t, c, 1)
				}
				if got := svc.calls.Load(); got != tc.wantCalls {
					t.Fatalf("handler ran %d times, want %d", got, tc.wantCalls)
				}
				if tc.wantCalls == 1 {
					wantReason(t, err, ReasonTokenExpired)
					if n := r.calls.Load(); n != 0 {
						t.Fatalf("refresher called %d times, want 0", n)
					}
					return
				}
				if err != nil {
					t.Fatalf("with the marker: %v", err)
				}
				if n := r.calls.Load(); n != 1 {
					t.Fatalf("refresher called %d times, want 1", n)
				}
			})
		}
	}
}

// TestClientRefresh_LeaderHonoursDeadline: the caller that starts a
// refresh with a 200 ms deadline returns at its deadline with
// DeadlineExceeded while the token service hangs; the refresh goes on for
// a second caller, which gets its result.
func TestClientRefresh_LeaderHonoursDeadline(t *testing.T) {
	var rejected atomic.Int64
	secondRejected := make(chan struct{})
	e := newEnv(t, withMemStore(), withEventHook(func(ev Event) {
		if ev.Kind == EventRejected && ev.Method == refreshUnaryMethod && rejected.Add(1) == 2 {
			close(secondRejected)
		}
	}))
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	r.started = make(chan struct{}, 2)
	r.release = make(chan struct{})
	released := false
	release := func() {
		if !released {
			released = true
			close(r.release)
		}
	}
	defer release()
	c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r), WithRefreshTimeout(crfWait))
	crfLapse(e, s)

	leaderCtx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	leader := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(leaderCtx, &testpb.SimpleRequest{})
		leader <- err
	}()
	select {
	case <-r.started:
	case <-time.After(crfWait):
		t.Fatal("the refresh did not start")
	}
	var err error
	select {
	case err = <-leader:
	case <-time.After(crfWait):
		release()
		t.Fatal("the leader did not return at its deadline")
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Fatalf("the leader returned after %v, want about 200ms", elapsed)
	}
	if got := status.Code(err); got != codes.DeadlineExceeded {
		t.Fatalf("leader: code = %v (err %v), want %v", got, err, codes.DeadlineExceeded)
	}

	// The refresh still hangs; a second caller joins it and gets its
	// result once the token service answers.
	second := make(chan error, 1)
	go func() { second <- crfUnary(t, c) }()
	select {
	case <-secondRejected:
	case <-time.After(crfWait):
		t.Fatal("the second call was not rejected")
	}
	release()
	if err := <-second; err != nil {
		t.Fatalf("second caller: %v", err)
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("refresher called %d times, want 1", n)
	}
	if h.Token() == s.AccessToken {
		t.Fatal("holder did not take the refreshed token")
	}
}

// TestClientRefresh_InstallChecks: the pair a refresher returns is held
// to the rules of a renewal, and its tokens to the session's end. Tested
// on install directly, at the end and one second either side.
func TestClientRefresh_InstallChecks(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	foreign := e.startSession(t, nil)
	e.clock.Advance(time.Hour)
	_, tokc := e.clients(t)
	next := refreshMust(t, tokc, s.RefreshToken)
	end := next.GetSessionEndsAt().AsTime()
	if !end.Equal(s.End) {
		t.Fatalf("pair's session end %v, want %v", end, s.End)
	}
	with := func(mod func(p *slidejwtv1.TokenPair)) *slidejwtv1.TokenPair {
		p := proto.Clone(next).(*slidejwtv1.TokenPair)
		mod(p)
		return p
	}
	access := func(mod func(h, c map[string]any)) func(p *slidejwtv1.TokenPair) {
		return func(p *slidejwtv1.TokenPair) { p.AccessToken = cliRemint(t, p.AccessToken, mod) }
	}
	refresh := func(mod func(h, c map[string]any)) func(p *slidejwtv1.TokenPair) {
		return func(p *slidejwtv1.TokenPair) { p.RefreshToken = cliRemint(t, p.RefreshToken, mod) }
	}
	expAt := func(at time.Time) func(h, c map[string]any) {
		return func(_, c map[string]any) { c["exp"] = cliUnix(at) }
	}
	for _, tc := range []struct {
		name string
		opts []ClientOption
		pair *slidejwtv1.TokenPair
		ok   bool
	}{
		{"control: the token service's pair", nil, next, true},
		{"access exp at the session end", nil, with(access(expAt(end))), true},
		{"access exp one second before the end", nil, with(access(expAt(end.Add(-time.Second)))), true},
		{"access exp one second past the end", nil, with(access(expAt(end.Add(time.Second)))), false},
		{"refresh exp at the session end", nil, with(refresh(expAt(end))), true},
		{"refresh exp one second past the end", nil, with(refresh(expAt(end.Add(time.Second)))), false},
		{"access exp in 2999, end moved along", nil, with(func(p *slidejwtv1.TokenPair) {
			y2999 := time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)
			access(expAt(y2999))(p)
			p.SessionEndsAt = timestamppb.New(y2999)
		}), true}, // with no end known, the configured token service is trusted with it
		{"access exp in 2999, end known", []ClientOption{WithSessionEnd(s.End)}, with(func(p *slidejwtv1.TokenPair) {
			y2999 := time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)
			access(expAt(y2999))(p)
			p.SessionEndsAt = timestamppb.New(y2999)
		}), false},
		{"session end one second later than the known one", []ClientOption{WithSessionEnd(s.End)}, with(func(p *slidejwtv1.TokenPair) {
			p.SessionEndsAt = timestamppb.New(s.End.Add(time.Second))
		}), false},
		{"session end at the known one", []ClientOption{WithSessionEnd(s.End)}, next, true},
		{"no session end, access exp past auth_time + DefaultMaxLifetime", nil, with(func(p *slidejwtv1.TokenPair) {
			p.SessionEndsAt = nil
			access(expAt(s.AuthTime.Add(DefaultMaxLifetime + time.Second)))(p)
		}), false},
		{"refresh token with typ at+jwt", nil, with(func(p *slidejwtv1.TokenPair) { p.RefreshToken = p.AccessToken }), false},
		{"refresh token of another session", nil, with(func(p *slidejwtv1.TokenPair) { p.RefreshToken = foreign.RefreshToken }), false},
		{"access token of another session", nil, with(func(p *slidejwtv1.TokenPair) { p.AccessToken = foreign.AccessToken }), false},
		{"access other iss", nil, with(access(func(_, c map[string]any) { c["iss"] = "rogue.example" })), false},
		{"access other aud", nil, with(access(func(_, c map[string]any) { c["aud"] = []string{"rogue"} })), false},
		{"access other auth_time", nil, with(access(func(_, c map[string]any) { c["auth_time"] = cliUnix(s.AuthTime.Add(time.Second)) })), false},
		{"refresh other auth_time", nil, with(refresh(func(_, c map[string]any) { c["auth_time"] = cliUnix(s.AuthTime.Add(-time.Second)) })), false},
		{"access unsigned", nil, with(func(p *slidejwtv1.TokenPair) {
			p.AccessToken = p.AccessToken[:strings.LastIndexByte(p.AccessToken, '.')+1]
		}), false},
		{"refresh alg none", nil, with(refresh(func(h, _ map[string]any) { h["alg"] = "none" })), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hooks := new(crfHooks)
			h, err := NewTokenHolder(s.AccessToken, append([]ClientOption{WithRefreshToken(s.RefreshToken),
				WithRefresher(new(crfRefresher)), OnSwap(hooks.onSwap), OnRefresh(hooks.onRefresh)}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			err = h.install(tc.pair)
			swaps, refreshes := hooks.counts()
			if !tc.ok {
				if err == nil || status.Code(err) != codes.Internal {
					t.Fatalf("install = %v, want a codes.Internal error", err)
				}
				if swaps+refreshes != 0 || h.Token() != s.AccessToken || h.RefreshToken() != s.RefreshToken {
					t.Fatal("holder took a pair it refused")
				}
				return
			}
			if err != nil {
				t.Fatalf("install = %v, want nil", err)
			}
			if swaps != 1 || refreshes != 1 || h.Token() != tc.pair.GetAccessToken() || h.RefreshToken() != tc.pair.GetRefreshToken() {
				t.Fatalf("OnSwap %d, OnRefresh %d; want the pair taken", swaps, refreshes)
			}
			if want := tc.pair.GetSessionEndsAt().AsTime(); !h.SessionEnd().Equal(want) {
				t.Fatalf("SessionEnd = %v, want %v", h.SessionEnd(), want)
			}
		})
	}
}

// TestClientRefresh_NeedsSecureTransport: the default refresher sends the
// refresh token only where the holder would send the access token. Without
// AllowInsecureTransport, on a plaintext connection, no Refresh call
// leaves the client, proactive or with a lapsed token.
func TestClientRefresh_NeedsSecureTransport(t *testing.T) {
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
			opts := []ClientOption{WithClock(e.clock.Now), WithRefreshToken(s.RefreshToken), WithRefreshTimeout(crfWait), BindTarget(cliTarget)}
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

			_, err = c.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
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

// crfHeaderThenExpired sends a response header and then fails with
// TOKEN_EXPIRED, as no slidejwt server does: the handler ran. Its
// FullDuplexCall first reads one message.
type crfHeaderThenExpired struct {
	*testService
	consumed atomic.Int64
}

func (s *crfHeaderThenExpired) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := stream.SendHeader(metadata.Pairs("x-handler", "ran")); err != nil {
		return err
	}
	return reject(ReasonTokenExpired, "")
}

func (s *crfHeaderThenExpired) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	if err := stream.SendHeader(metadata.Pairs("x-handler", "ran")); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	s.consumed.Add(1)
	return reject(ReasonTokenExpired, "")
}

// TestClientRefresh_StreamNoReopenAfterHeader: a stream that received a header before
// it failed with TOKEN_EXPIRED is not refreshed and reopened: its handler
// ran and may have consumed the messages a reopen would replay.
func TestClientRefresh_StreamNoReopenAfterHeader(t *testing.T) {
	for _, kind := range []string{"server-stream", "bidi"} {
		t.Run(kind, func(t *testing.T) {
			svc := &crfHeaderThenExpired{testService: &testService{}}
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
				st, oerr := c.FullDuplexCall(crfCtx(t))
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

// TestClientRefresh_InstallFailureRemembered: a refreshed pair the holder cannot
// take is remembered like a rejection: the next call does not present the
// refresh token again.
func TestClientRefresh_InstallFailureRemembered(t *testing.T) {
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

// crfWaitCtx is a context that reports when its Done channel is first
// asked for: a waiter of a refresh flight does so only to wait on it.
type crfWaitCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *crfWaitCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

// TestClientRefresh_RefresherPanicReleasesWaiters: when a Refresher panics, the
// callers waiting on its refresh are released with an error, and later
// calls are not stuck behind the dead refresh.
func TestClientRefresh_RefresherPanicReleasesWaiters(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	r := RefreshFunc(func(context.Context, string) (*slidejwtv1.TokenPair, error) {
		if calls.Add(1) == 1 {
			close(started)
			<-release
			panic("refresher panics")
		}
		return nil, status.Error(codes.Unavailable, "token service down")
	})
	c, h, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r))
	crfLapse(e, s)
	seen := h.cur.Load()

	// The leader: a call whose token lapsed runs the refresh, which
	// panics on its goroutine.
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = c.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
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
		ctx := &crfWaitCtx{Context: crfCtx(t), waiting: make(chan struct{})}
		go func() {
			err := h.refreshFrom(ctx, nil, "", 0, seen)
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

// TestClientRefresh_NoProactiveRefreshAtSessionEnd: once a refresh returned an
// access token that expires at the session's end, calls within the margin
// do not refresh again: no refresh can extend the session.
func TestClientRefresh_NoProactiveRefreshAtSessionEnd(t *testing.T) {
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

// TestClientRefresh_StreamReopenAfterEarlierInterceptorHeader: a server interceptor
// before slidejwt's may send a response header (a request id, say) before
// slidejwt rejects the stream. The rejection says the handler did not run
// (ErrorInfo handler_ran=false), so the client still refreshes and reopens.
func TestClientRefresh_StreamReopenAfterEarlierInterceptorHeader(t *testing.T) {
	requestID := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := ss.SendHeader(metadata.Pairs("x-request-id", "r1")); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	e := newEnv(t, withMemStore(), withBefore(nil, requestID))
	s := e.startSession(t, nil)
	var refreshes atomic.Int64
	h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
		WithRefreshToken(s.RefreshToken), WithRefreshMargin(0), BindTarget(cliTarget),
		OnRefresh(func(*slidejwtv1.TokenPair) { refreshes.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	conn := e.dial(t, grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))

	e.clock.Set(s.Expiry.Add(DefaultLeeway + time.Nanosecond)) // lapsed; the refresh token is not
	st, err := testpb.NewTestServiceClient(conn).StreamingOutputCall(crfCtx(t),
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
	if n != 2 || refreshes.Load() != 1 || e.svc.calls.Load() != 1 {
		t.Fatalf("messages %d, refreshes %d, handler runs %d; want 2, 1, 1", n, refreshes.Load(), e.svc.calls.Load())
	}
}
