package interceptor

import (
	"context"
	"errors"
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
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// svcLogin is a Login that starts sessions for "svc-orders" on an env's
// server, counting its calls; fail, if set, decides instead.
type svcLogin struct {
	e      *testEnv
	opts   []SessionOption
	calls  atomic.Int64
	mu     sync.Mutex
	fail   func(ctx context.Context) (*slidejwtv1.TokenPair, error)
	before func() // if set, called first (to hold a login)
}

func (l *svcLogin) Login(ctx context.Context) (*slidejwtv1.TokenPair, error) {
	l.calls.Add(1)
	if l.before != nil {
		l.before()
	}
	l.mu.Lock()
	fail := l.fail
	l.mu.Unlock()
	if fail != nil {
		return fail(ctx)
	}
	s, err := l.e.server.StartSession(ctx, "svc-orders", nil, l.opts...)
	if err != nil {
		return nil, err
	}
	return s.TokenPair(), nil
}

func (l *svcLogin) setFail(f func(ctx context.Context) (*slidejwtv1.TokenPair, error)) {
	l.mu.Lock()
	l.fail = f
	l.mu.Unlock()
}

// svcHolder returns a ServiceHolder logging in on e (with sopts), and a
// TestService client of e through its interceptors.
func svcHolder(t testing.TB, e *testEnv, sopts []SessionOption, opts ...ClientOption) (*ServiceHolder, *svcLogin, testpb.TestServiceClient) {
	t.Helper()
	l := &svcLogin{e: e, opts: sopts}
	sh, err := NewServiceHolder(l, append([]ClientOption{AllowInsecureTransport(), WithClock(e.clock.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	conn := e.dial(t,
		grpc.WithChainUnaryInterceptor(sh.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(sh.StreamClientInterceptor()))
	return sh, l, testpb.NewTestServiceClient(conn)
}

// svcWantServiceError fails unless err is a ServiceHolder error of kind
// want (ErrServiceRejected or ErrServiceLogin): codes.Unavailable, no
// slidejwt reason, and nothing of what the tokens or the login said.
func svcWantServiceError(t testing.TB, err, want error, secrets ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("code = %v (err %v), want Unavailable", got, err)
	}
	if r, ok := ReasonOf(err); ok {
		t.Fatalf("err carries reason %v, want none", r)
	}
	if len(status.Convert(err).Details()) != 0 {
		t.Fatalf("err carries details %v, want none", status.Convert(err).Details())
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(status.Convert(err).Message(), s) {
			t.Fatalf("status message %q leaks %q", status.Convert(err).Message(), s)
		}
	}
}

// TestServiceHolder_LazyLogin: no login until the first call, one for it,
// and the call runs as the service.
func TestServiceHolder_LazyLogin(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			sh, l, c := svcHolder(t, e, nil)
			if n := l.calls.Load(); n != 0 || sh.SessionID() != "" {
				t.Fatalf("%d logins and session %q before any call, want none", n, sh.SessionID())
			}
			for range 3 {
				if err := fwdDownCall(context.Background(), c, kind); err != nil {
					t.Fatal(err)
				}
			}
			if n := l.calls.Load(); n != 1 {
				t.Fatalf("%d logins for 3 calls, want 1", n)
			}
			if got := e.svc.lastClaims.Load(); got == nil || got.Subject != "svc-orders" || got.SessionID != sh.SessionID() {
				t.Fatalf("handler claims = %+v, want the service's session %q", got, sh.SessionID())
			}
		})
	}
}

// TestServiceHolder_ConcurrentFirstUse: calls that all need the first
// session share one login.
func TestServiceHolder_ConcurrentFirstUse(t *testing.T) {
	const callers = 16
	e := newEnv(t)
	release := make(chan struct{})
	_, l, c := svcHolder(t, e, nil)
	l.before = func() { <-release }
	var ready, done sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			kind := "unary"
			if i%2 == 1 {
				kind = "stream"
			}
			errs[i] = fwdDownCall(context.Background(), c, kind)
		}()
	}
	ready.Wait()
	time.Sleep(50 * time.Millisecond) // let them pile up on the login
	close(release)
	done.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("%d logins for %d concurrent first calls, want 1", n, callers)
	}
}

// TestServiceHolder_ReloginAfterRevocation: once its session is revoked,
// the holder logs in again by itself. A unary call rejected before its
// handler ran is made once more with the new session; a stream fails once
// (as ErrServiceRejected) and the next one runs with the new session.
func TestServiceHolder_ReloginAfterRevocation(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			sh, l, c := svcHolder(t, e, nil)
			if err := fwdDownCall(context.Background(), c, kind); err != nil {
				t.Fatal(err)
			}
			old := sh.SessionID()
			if err := e.server.RevokeSession(context.Background(), old); err != nil {
				t.Fatal(err)
			}
			err := fwdDownCall(context.Background(), c, kind)
			if kind == "unary" {
				if err != nil {
					t.Fatalf("call after revocation: %v, want success with a new session", err)
				}
			} else {
				svcWantServiceError(t, err, ErrServiceRejected)
				if r, _ := ReasonOf(errors.Unwrap(err)); r != ReasonSessionRevoked {
					t.Errorf("unwrapped reason = %v, want %v", r, ReasonSessionRevoked)
				}
				if err := fwdDownCall(context.Background(), c, kind); err != nil {
					t.Fatalf("next stream: %v", err)
				}
			}
			if n := l.calls.Load(); n != 2 {
				t.Fatalf("%d logins, want 2", n)
			}
			if sh.SessionID() == old || e.svc.lastClaims.Load().SessionID != sh.SessionID() {
				t.Fatalf("calls still run as the revoked session")
			}
			if n := e.events.count(EventRejected, ""); n != 1 {
				t.Errorf("server rejected %d calls, want 1", n)
			}
			if n := e.svc.calls.Load(); n != 2 {
				t.Errorf("handler ran %d times, want 2 (the rejected attempt did not run it)", n)
			}
		})
	}
}

// TestServiceHolder_ReloginAtSessionEnd: a session that no refresh can
// extend is replaced before a call once its token expires within the
// margin: not at the margin, one tick inside it; with no margin, at the
// token's expiry. The server never sees the old session expire.
func TestServiceHolder_ReloginAtSessionEnd(t *testing.T) {
	const life = 30 * time.Minute
	end := t0.Add(life)
	for _, tc := range []struct {
		name   string
		margin time.Duration
		at     time.Time
		logins int64
	}{
		{"at the margin", DefaultRefreshMargin, end.Add(-DefaultRefreshMargin), 1},
		{"one tick inside the margin", DefaultRefreshMargin, end.Add(-DefaultRefreshMargin + time.Nanosecond), 2},
		{"no margin, one tick before the end", 0, end.Add(-time.Nanosecond), 1},
		{"no margin, at the end", 0, end, 2},
	} {
		for _, kind := range []string{"unary", "stream"} {
			t.Run(kind+", "+tc.name, func(t *testing.T) {
				e := newEnv(t, withMemStore())
				sh, l, c := svcHolder(t, e, []SessionOption{WithMaxLifetime(life)}, WithRefreshMargin(tc.margin))
				if err := fwdDownCall(context.Background(), c, kind); err != nil {
					t.Fatal(err)
				}
				first := sh.SessionID()
				e.clock.Set(tc.at)
				if err := fwdDownCall(context.Background(), c, kind); err != nil {
					t.Fatalf("call at end%+v: %v", tc.at.Sub(end), err)
				}
				if n := l.calls.Load(); n != tc.logins {
					t.Fatalf("%d logins, want %d", n, tc.logins)
				}
				if (sh.SessionID() != first) != (tc.logins == 2) {
					t.Fatal("the session changed without a login, or a login changed nothing")
				}
				if n := e.events.count(EventRejected, ""); n != 0 {
					t.Errorf("server rejected %d calls, want 0", n)
				}
			})
		}
	}

	// A clock an hour behind the server's: only the server sees the end.
	t.Run("end seen by the server only", func(t *testing.T) {
		e := newEnv(t, withMemStore())
		l := &svcLogin{e: e, opts: []SessionOption{WithMaxLifetime(life)}}
		sh, err := NewServiceHolder(l, AllowInsecureTransport(), WithClock(func() time.Time { return e.clock.Now().Add(-time.Hour) }))
		if err != nil {
			t.Fatal(err)
		}
		c := testpb.NewTestServiceClient(e.dial(t, grpc.WithChainUnaryInterceptor(sh.UnaryClientInterceptor())))
		if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		e.clock.Set(end.Add(DefaultLeeway))
		if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call past the session's end: %v, want success with a new session", err)
		}
		evs := e.events.kinds(EventRejected)
		if len(evs) != 1 || evs[0].Reason != ReasonSessionExpired {
			t.Fatalf("rejections = %v, want one %v", evs, ReasonSessionExpired)
		}
		if n := l.calls.Load(); n != 2 {
			t.Fatalf("%d logins, want 2", n)
		}
	})
}

// TestServiceHolder_RefreshesWithTokenService: with a token service, the
// holder refreshes its session rather than logging in again.
func TestServiceHolder_RefreshesWithTokenService(t *testing.T) {
	e := newEnv(t, withMemStore(), withServerOptions(WithPolicy(Policy{TTL: time.Hour, RenewBefore: -1})))
	_, l, c := svcHolder(t, e, nil, WithTokenService(e.dial(t)))
	if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Hour - 10*time.Second)
	if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := l.calls.Load(); n != 1 {
		t.Errorf("%d logins, want 1", n)
	}
	if n := e.events.count(EventRefreshed, ""); n != 1 {
		t.Errorf("%d refreshes, want 1", n)
	}
}

// TestServiceHolder_LoginBackoff: a failed login surfaces as
// ErrServiceLogin (codes.Unavailable, no reason, none of the login's own
// words), and the next login waits for the backoff, which doubles; calls
// meanwhile fail at once. A working session resets it.
func TestServiceHolder_LoginBackoff(t *testing.T) {
	e := newEnv(t, withMemStore())
	sh, l, c := svcHolder(t, e, nil, WithLoginBackoff(time.Second, time.Minute))
	const secret = "client-secret-s3cr3t"
	bad := func(context.Context) (*slidejwtv1.TokenPair, error) {
		return nil, crfRejection(t, ReasonSessionRevoked, "false") // as an auth service might say it
	}
	l.setFail(func(ctx context.Context) (*slidejwtv1.TokenPair, error) {
		_, err := bad(ctx)
		return nil, errors.Join(err, errors.New(secret))
	})
	call := func() error { return fwdDownCall(context.Background(), c, "unary") }
	wantLogins := func(n int64) {
		t.Helper()
		if got := l.calls.Load(); got != n {
			t.Fatalf("%d logins, want %d", got, n)
		}
	}

	err := call()
	svcWantServiceError(t, err, ErrServiceLogin, secret)
	if !strings.Contains(errors.Unwrap(err).Error(), secret) {
		t.Error("errors.Unwrap does not give the login function's error")
	}
	wantLogins(1)
	start := e.clock.Now()
	e.clock.Set(start.Add(time.Second - time.Nanosecond))
	svcWantServiceError(t, call(), ErrServiceLogin)
	wantLogins(1)
	e.clock.Set(start.Add(time.Second + time.Second/4 + time.Nanosecond))
	svcWantServiceError(t, call(), ErrServiceLogin)
	wantLogins(2)

	start = e.clock.Now()
	e.clock.Set(start.Add(2*time.Second - time.Nanosecond))
	svcWantServiceError(t, call(), ErrServiceLogin)
	wantLogins(2)
	l.setFail(nil)
	e.clock.Set(start.Add(2*time.Second + 2*time.Second/4 + time.Nanosecond))
	if err := call(); err != nil {
		t.Fatalf("call after the backoff with a working login: %v", err)
	}
	wantLogins(3)

	// A session that worked and was revoked: log in again at once, and a
	// failure then backs off from the first step again.
	l.setFail(bad)
	if err := e.server.RevokeSession(context.Background(), sh.SessionID()); err != nil {
		t.Fatal(err)
	}
	svcWantServiceError(t, call(), ErrServiceLogin)
	wantLogins(4)
	start = e.clock.Now()
	l.setFail(nil)
	e.clock.Set(start.Add(time.Second + time.Second/4 + time.Nanosecond))
	if err := call(); err != nil {
		t.Fatalf("call after one backoff step: %v", err)
	}
	wantLogins(5)
}

// TestServiceHolder_RejectedSessionBacksOff: a session that a server
// rejects before any call succeeded with it counts as a failed login: the
// holder does not log in again at once (which could hammer the auth
// service with sessions that fail the same way).
func TestServiceHolder_RejectedSessionBacksOff(t *testing.T) {
	e := newEnv(t, withMemStore())
	_, l, c := svcHolder(t, e, nil)
	l.setFail(func(ctx context.Context) (*slidejwtv1.TokenPair, error) {
		s, err := e.server.StartSession(ctx, "svc-orders", nil)
		if err == nil {
			err = e.server.RevokeSession(ctx, s.SessionID)
		}
		return s.TokenPair(), err
	})
	for range 3 {
		svcWantServiceError(t, fwdDownCall(context.Background(), c, "unary"), ErrServiceRejected)
	}
	if n := l.calls.Load(); n != 1 {
		t.Fatalf("%d logins, want 1", n)
	}
	e.clock.Advance(2 * time.Second)
	svcWantServiceError(t, fwdDownCall(context.Background(), c, "unary"), ErrServiceRejected)
	if n := l.calls.Load(); n != 2 {
		t.Fatalf("%d logins after the backoff, want 2", n)
	}
}

// TestServiceHolder_UnusableLogin: a login that returns no tokens, tokens
// that do not decode, or an expired token is a failed login.
func TestServiceHolder_UnusableLogin(t *testing.T) {
	e := newEnv(t, withMemStore())
	good := e.startSession(t, nil)
	for name, pair := range map[string]*slidejwtv1.TokenPair{
		"nil":                           nil,
		"empty":                         {},
		"garbage":                       {AccessToken: "not.a.token"},
		"refresh token as access token": {AccessToken: good.RefreshToken},
	} {
		t.Run(name, func(t *testing.T) {
			_, l, c := svcHolder(t, e, nil)
			l.setFail(func(context.Context) (*slidejwtv1.TokenPair, error) { return pair, nil })
			svcWantServiceError(t, fwdDownCall(context.Background(), c, "unary"), ErrServiceLogin, good.AccessToken)
		})
	}
	t.Run("expired", func(t *testing.T) {
		_, l, c := svcHolder(t, e, nil)
		l.setFail(func(context.Context) (*slidejwtv1.TokenPair, error) { return good.TokenPair(), nil })
		defer e.clock.Set(e.clock.Now())
		e.clock.Set(good.Expiry)
		svcWantServiceError(t, fwdDownCall(context.Background(), c, "unary"), ErrServiceLogin)
	})
}

// TestServiceHolder_LoginTimeout: a login is bounded by the login timeout,
// not by the deadline of the call that started it; a caller whose own
// deadline passes stops waiting.
func TestServiceHolder_LoginTimeout(t *testing.T) {
	e := newEnv(t)
	_, l, c := svcHolder(t, e, nil, WithLoginTimeout(50*time.Millisecond))
	l.setFail(func(ctx context.Context) (*slidejwtv1.TokenPair, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	err := fwdDownCall(context.Background(), c, "unary")
	svcWantServiceError(t, err, ErrServiceLogin)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the login's deadline as its cause", err)
	}

	_, l2, c2 := svcHolder(t, e, nil)
	release := make(chan struct{})
	l2.before = func() { <-release }
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := fwdDownCall(ctx, c2, "unary"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("caller with a short deadline: %v, want DeadlineExceeded", err)
	}
}

// TestServiceHolder_LoginPanic: a panic in the login function is raised on
// the goroutine of the call that started the login, not swallowed.
func TestServiceHolder_LoginPanic(t *testing.T) {
	e := newEnv(t)
	_, l, c := svcHolder(t, e, nil)
	l.setFail(func(context.Context) (*slidejwtv1.TokenPair, error) { panic("login exploded") })
	defer func() {
		if p := recover(); p != "login exploded" {
			t.Fatalf("recovered %v, want the login's panic", p)
		}
	}()
	_ = fwdDownCall(context.Background(), c, "unary")
	t.Fatal("the login's panic was swallowed")
}

// TestServiceHolder_OutOfOrder: a late response never regresses the
// token: an older renewal of the same session is not swapped in over a
// newer one, and a renewal of an old session never replaces the session
// the holder logged in to since.
func TestServiceHolder_OutOfOrder(t *testing.T) {
	policy := WithPolicy(Policy{TTL: time.Hour})
	t.Run("same session", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		var hold atomic.Bool
		e := newEnv(t, withServerOptions(WithCacheSize(0), policy), withDelay(func() {
			if hold.CompareAndSwap(true, false) {
				close(entered)
				<-release
			}
		}))
		sh, _, c := svcHolder(t, e, nil)
		if err := fwdDownCall(context.Background(), c, "unary"); err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(40 * time.Minute) // renewal due
		hold.Store(true)
		doneA := make(chan error, 1)
		go func() { doneA <- fwdDownCall(context.Background(), c, "unary") }()
		<-entered // A's renewal (exp +40m+1h) is minted; its handler waits
		e.clock.Advance(5 * time.Minute)
		if err := fwdDownCall(context.Background(), c, "unary"); err != nil {
			t.Fatal(err)
		}
		sess := sh.cur.Load()
		wantExp := t0.Add(45*time.Minute + time.Hour)
		if !sess.h.Expiry().Equal(wantExp) {
			t.Fatalf("holder exp = %v, want B's %v", sess.h.Expiry(), wantExp)
		}
		close(release)
		if err := <-doneA; err != nil {
			t.Fatal(err)
		}
		if got := sh.cur.Load(); got != sess || !got.h.Expiry().Equal(wantExp) {
			t.Fatalf("late older renewal moved the holder to exp %v, want %v", got.h.Expiry(), wantExp)
		}
	})
	t.Run("old session", func(t *testing.T) {
		entered, release := make(chan struct{}), make(chan struct{})
		var hold atomic.Bool
		e := newEnv(t, withMemStore(), withServerOptions(policy), withDelay(func() {
			if hold.CompareAndSwap(true, false) {
				close(entered)
				<-release
			}
		}))
		sh, l, c := svcHolder(t, e, nil)
		if err := fwdDownCall(context.Background(), c, "unary"); err != nil {
			t.Fatal(err)
		}
		first := sh.cur.Load()
		e.clock.Advance(40 * time.Minute)
		hold.Store(true)
		var trailerA metadata.MD
		doneA := make(chan error, 1)
		go func() {
			_, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailerA))
			doneA <- err
		}()
		<-entered // A carries a renewal of the first session
		if err := e.server.RevokeSession(context.Background(), first.h.SessionID()); err != nil {
			t.Fatal(err)
		}
		if err := fwdDownCall(context.Background(), c, "unary"); err != nil {
			t.Fatalf("call after revocation: %v", err)
		}
		second := sh.cur.Load()
		if second == first || l.calls.Load() != 2 {
			t.Fatal("no new session after the revocation")
		}
		tok := second.h.Token()
		close(release)
		if err := <-doneA; err != nil {
			t.Fatal(err)
		}
		if renewedToken(t, trailerA) == "" {
			t.Fatal("precondition: the late response carries no renewal")
		}
		if sh.cur.Load() != second || second.h.Token() != tok || sh.SessionID() != second.h.SessionID() {
			t.Fatal("a late renewal of the old session replaced the new one")
		}
	})
}

// TestServiceHolder_Options: the options a ServiceHolder refuses, and
// its own options refused elsewhere.
func TestServiceHolder_Options(t *testing.T) {
	login := LoginFunc(func(context.Context) (*slidejwtv1.TokenPair, error) { return nil, nil })
	if _, err := NewServiceHolder(nil); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("nil login: %v, want ErrInvalidOption", err)
	}
	for name, opt := range map[string]ClientOption{
		"WithRefreshToken":            WithRefreshToken("x"),
		"WithSessionEnd":              WithSessionEnd(t0),
		"WithLoginTimeout 0":          WithLoginTimeout(0),
		"WithLoginBackoff 0":          WithLoginBackoff(0, time.Second),
		"WithLoginBackoff first>most": WithLoginBackoff(2*time.Second, time.Second),
		"WithRefresher and WithTokenService": clientOptionFunc(func(c *clientConfig) {
			c.refresher, c.tokenService = RefreshFunc(nil), &grpc.ClientConn{}
		}),
	} {
		if _, err := NewServiceHolder(login, opt); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("NewServiceHolder(%s): %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := NewServiceHolder(login, WithRefresher(RefreshFunc(nil))); err != nil {
		t.Errorf("NewServiceHolder(WithRefresher): %v, want a refresh token from each login", err)
	}
	e := newEnv(t)
	s := e.startSession(t, nil)
	if _, err := NewTokenHolder(s.AccessToken, WithLoginBackoff(time.Second, time.Minute)); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("NewTokenHolder(WithLoginBackoff): %v, want ErrInvalidOption", err)
	}
}

// svcRejectingDown is a downstream server that rejects every call before
// its handler with reason, as a slidejwt server does.
func svcRejectingDown(t testing.TB, reason Reason) *bufconn.Listener {
	t.Helper()
	rej := crfRejection(t, reason, "false")
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
			return nil, rej
		}),
		grpc.ChainStreamInterceptor(func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
			return rej
		}))
	testpb.RegisterTestServiceServer(srv, &testService{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis
}

// TestServiceHolder_RejectionNamesTheService: when a downstream service
// rejects the upstream service's own token, the upstream's caller gets
// codes.Unavailable without a reason, never a reason about its own
// session: its holder neither refreshes nor retries, and its refresh
// token is not rotated. The upstream handler can still tell why.
func TestServiceHolder_RejectionNamesTheService(t *testing.T) {
	for _, reason := range []Reason{ReasonSessionRevoked, ReasonSessionExpired, ReasonTokenExpired, ReasonTokenInvalid, ReasonFreshTokenRequired} {
		for _, up := range fwdKinds {
			for _, down := range []string{"unary", "stream"} {
				t.Run(WireReason(reason)+", "+up+" to "+down, func(t *testing.T) {
					svc := new(fwdUpSvc)
					upEnv := newEnv(t, withMemStore(), withService(svc))
					lis := svcRejectingDown(t, reason)
					l := &svcLogin{e: upEnv}
					sh, err := NewServiceHolder(l, AllowInsecureTransport(), WithClock(upEnv.clock.Now))
					if err != nil {
						t.Fatal(err)
					}
					downC := testpb.NewTestServiceClient(dialBufconn(t, lis,
						grpc.WithChainUnaryInterceptor(sh.UnaryClientInterceptor()),
						grpc.WithChainStreamInterceptor(sh.StreamClientInterceptor())))
					svc.do = func(ctx context.Context) error { return fwdDownCall(ctx, downC, down) }

					alice := upEnv.startSession(t, nil)
					r := crfNewRefresher(t, upEnv)
					c, h, _ := crfHolder(t, upEnv, alice, WithRefresher(r), WithRefreshMargin(0))
					switch up {
					case "unary":
						_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{})
					case streamServer:
						err = fwdDownCall(context.Background(), c, "stream")
					default:
						var st grpc.BidiStreamingClient[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]
						if st, err = c.FullDuplexCall(context.Background()); err == nil {
							_ = st.CloseSend()
							err = drain(st)
						}
					}
					if status.Code(err) != codes.Unavailable {
						t.Fatalf("alice got %v, want Unavailable", err)
					}
					if got, ok := ReasonOf(err); ok {
						t.Fatalf("alice got reason %v about a token she did not send", got)
					}
					if n := r.calls.Load(); n != 0 || h.RefreshToken() != alice.RefreshToken {
						t.Fatalf("alice's holder refreshed %d times (refresh token rotated: %v), want never",
							n, h.RefreshToken() != alice.RefreshToken)
					}
					if n := svc.calls.Load(); n != 1 {
						t.Fatalf("upstream handler ran %d times, want 1 (no retry)", n)
					}
					herr := svc.lastErr()
					svcWantServiceError(t, herr, ErrServiceRejected)
					if got, _ := ReasonOf(errors.Unwrap(herr)); got != reason {
						t.Errorf("the handler's error unwraps to reason %v, want %v", got, reason)
					}
					if n := l.calls.Load(); n != 1 {
						t.Errorf("service logged in %d times, want 1", n)
					}
				})
			}
		}
	}
}
