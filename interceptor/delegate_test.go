package interceptor

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// delPolicy is the policy of both services of a delMesh: a renewal is
// due in the last 5 minutes of a 10-minute token, for 3 hours.
var delPolicy = Policy{TTL: 10 * time.Minute, MaxLifetime: 3 * time.Hour}

// delDue is how long after its exp−TTL a token of delPolicy is due.
const delDue = 6 * time.Minute

// delMesh is a signing service ("auth", ES256, with a session store,
// serving TokenService and its JWKS over TLS) and a verify-only service
// ("svc") on a RemoteKeySet of that JWKS, which delegates its renewals to
// auth, both on one fake clock.
type delMesh struct {
	clock  *fakeClock
	key    *Key // auth's signing key
	auth   *testEnv
	svc    *testEnv
	remote *RemoteKeySet
	svcC   testpb.TestServiceClient
}

// delShared are the options both services of a mesh agree on.
func delShared() []ServerOption {
	return []ServerOption{WithPolicy(delPolicy), WithIssuer("auth"), WithAudience("mesh")}
}

// newDelMesh starts a mesh. authEnv and svcEnv add env options to each
// service; svcOpts come after the svc's WithDelegatedRenewal to auth, so
// that another WithDelegatedRenewal replaces it.
func newDelMesh(t testing.TB, authEnv, svcEnv []envOption, svcOpts ...ServerOption) *delMesh {
	t.Helper()
	m := &delMesh{clock: newFakeClock(t0), key: remES256(t, "auth-1")}
	m.auth = newEnv(t, append([]envOption{
		withKeys(keysSet(t, m.key)), withClock(m.clock), withMemStore(), withServerOptions(delShared()...),
	}, authEnv...)...)
	h, err := m.auth.server.JWKSHandler()
	if err != nil {
		t.Fatal(err)
	}
	m.remote = remSet(t, newRemJWKS(t, h), m.clock)
	opts := append(append(delShared(), WithDelegatedRenewal(m.auth.dial(t))), svcOpts...)
	m.svc = newEnv(t, append([]envOption{
		withKeys(m.remote.KeySet()), withClock(m.clock), withServerOptions(opts...),
	}, svcEnv...)...)
	m.svcC = srvClient(t, m.svc)
	return m
}

// renews returns how many Renew calls reached auth.
func (m *delMesh) renews() int {
	n, _ := m.auth.calls.get(renewMethod)
	return n
}

// forge signs c, a session's claims, as an access token under k.
func delForge(t testing.TB, k *Key, c *Claims) string {
	t.Helper()
	tok, err := signCompact(k, c, accessTokenType)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// renewalClaims are the claims a genuine renewal of tok at now has.
func (m *delMesh) renewalClaims(t testing.TB, tok string) *Claims {
	t.Helper()
	c := decodeToken(t, tok).claims
	now := m.clock.Now()
	c.IssuedAt = jwt.NewNumericDate(now)
	c.ExpiresAt = jwt.NewNumericDate(delPolicy.AccessExpiry(now, c.AuthTime.Time))
	c.ID = randomID()
	c.Fresh = false
	return c
}

// delGate holds the Renew calls that reach the service it guards until it
// is opened; entered gets a value per held call.
type delGate struct {
	open    chan struct{}
	once    sync.Once
	entered chan struct{}
}

func newDelGate(t testing.TB) *delGate {
	g := &delGate{open: make(chan struct{}), entered: make(chan struct{}, 100)}
	t.Cleanup(g.release)
	return g
}

func (g *delGate) release() { g.once.Do(func() { close(g.open) }) }

func (g *delGate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod == renewMethod {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		select {
		case <-g.open:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return handler(ctx, req)
}

// delFailures returns the Errs of the svc's EventRenewalFailed events,
// failing the test if one does not wrap ErrDelegatedRenewal or quotes a
// token.
func delFailures(t testing.TB, e *testEnv, toks ...string) []error {
	t.Helper()
	var errs []error
	for _, ev := range e.events.kinds(EventRenewalFailed) {
		if !errors.Is(ev.Err, ErrDelegatedRenewal) {
			t.Errorf("renewal-failed Err = %v, want ErrDelegatedRenewal", ev.Err)
		}
		for _, tok := range toks {
			if strings.Contains(ev.Err.Error(), tok) || strings.Contains(ev.Err.Error(), strings.Split(tok, ".")[1]) {
				t.Error("an event's error quotes a token")
			}
		}
		errs = append(errs, ev.Err)
	}
	return errs
}

// delWaitEvents waits until e has n events of kind.
func delWaitEvents(t testing.TB, e *testEnv, kind EventKind, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); e.events.count(kind, "") < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d %v events, want %d", e.events.count(kind, ""), kind, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestDelegated_SessionSlides: a client that only ever calls the
// verify-only service, once every 6 minutes, keeps its 10-minute session
// alive for its whole 3 hours: every call is renewed through one Renew at
// auth, and the client never refreshes although it could. Without
// delegation the same client is logged out at its second call.
func TestDelegated_SessionSlides(t *testing.T) {
	m := newDelMesh(t, nil, nil)
	s := m.auth.startSession(t, map[string]any{"role": "admin"})
	var refreshes atomic.Int64
	client, h := m.svc.holderClient(t, s.AccessToken,
		WithRefreshToken(s.RefreshToken), WithTokenService(m.auth.dial(t)), WithSessionEnd(s.End),
		WithClientEventHook(func(_ context.Context, ev Event) {
			if ev.Kind == EventClientRefreshed {
				refreshes.Add(1)
			}
		}))
	calls := 0
	for m.clock.Now().Add(delDue).Before(s.End) {
		m.clock.Advance(delDue)
		before := h.Token()
		if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call at +%v: %v", m.clock.Now().Sub(t0), err)
		}
		calls++
		got := h.Token()
		if got == before {
			t.Fatalf("call at +%v: the client holds the same token, want a renewed one", m.clock.Now().Sub(t0))
		}
		c, aerr := m.auth.server.ver.Load().verify(got)
		if aerr != nil {
			t.Fatalf("the renewed token does not verify at auth: %v", aerr)
		}
		var role string
		if c.SessionID != s.SessionID || !c.AuthTime.Equal(s.AuthTime) || c.Fresh {
			t.Fatal("the renewed token is not a renewal of the session")
		}
		if _, err := c.Lookup("role", &role); err != nil || role != "admin" {
			t.Fatalf("custom claim role = %q, %v; want admin", role, err)
		}
	}
	if windows := int(delPolicy.MaxLifetime / delPolicy.TTL); calls < windows {
		t.Fatalf("%d calls, want at least %d idle windows", calls, windows)
	}
	if got := m.renews(); got != calls {
		t.Errorf("auth served %d Renew calls for %d renewed calls, want one each", got, calls)
	}
	if n, _ := m.auth.calls.get(refreshUnaryMethod); n != 0 || refreshes.Load() != 0 {
		t.Errorf("the client refreshed (%d calls at auth, %d events), want never", n, refreshes.Load())
	}
	if got := m.svc.events.count(EventRenewed, srvUnaryMethod); got != calls {
		t.Errorf("svc renewed-events = %d, want %d", got, calls)
	}
	// The session still ends at its maximum lifetime.
	m.clock.Set(s.End.Add(DefaultLeeway))
	_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	wantReason(t, err, ReasonSessionExpired)

	t.Run("without delegation", func(t *testing.T) {
		svc := newEnv(t, withKeys(m.remote.KeySet()), withClock(m.clock), withServerOptions(delShared()...))
		m.clock.Set(t0)
		s := m.auth.startSession(t, nil)
		client, _ := svc.holderClient(t, s.AccessToken)
		m.clock.Advance(delDue)
		if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		m.clock.Advance(delDue)
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		wantReason(t, err, ReasonTokenExpired)
	})
}

// TestDelegated_OneRenewPerWindow counts the Renew calls at auth: 32
// concurrent calls presenting one due token, all held at the verify-only
// service until the last has reached its handler, share one; the same
// token presented again within the window gets the same renewal without
// another; the renewed token is not due until its own window, which costs
// one more.
func TestDelegated_OneRenewPerWindow(t *testing.T) {
	const n = 32
	gate := newDelGate(t)
	entered := make(chan struct{}, n)
	m := newDelMesh(t,
		[]envOption{withBefore(gate.unary, nil)},
		[]envOption{withDelay(func() { entered <- struct{}{} })},
		WithDelegatedRenewalTimeout(time.Minute))
	s := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)

	renewed := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			renewed[i], errs[i] = unaryCall(t, m.svcC, s.AccessToken)
		}()
	}
	for range n {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the handlers did not run while auth held the renewal")
		}
	}
	gate.release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil || renewed[i] == "" || renewed[i] != renewed[0] {
			t.Fatalf("call %d: err %v, renewed %t, same as the first %t; want the one renewal", i, errs[i], renewed[i] != "", renewed[i] == renewed[0])
		}
	}
	if got := m.renews(); got != 1 {
		t.Fatalf("%d concurrent calls made %d Renew calls, want 1", n, got)
	}

	for range 4 { // the same token again, within its window
		m.clock.Advance(time.Minute)
		got, err := unaryCall(t, m.svcC, s.AccessToken)
		if err != nil || got != renewed[0] {
			t.Fatalf("repeat: err %v, same renewal %t; want the same one", err, got == renewed[0])
		}
	}
	if got := m.renews(); got != 1 {
		t.Fatalf("repeated calls made %d Renew calls in all, want 1", got)
	}
	if got := m.svc.events.count(EventDelegatedRenewal, ""); got != 1 {
		t.Errorf("%d delegated-renewal events, want 1", got)
	}

	next := renewed[0] // exp: t0 + delDue + TTL
	if got, err := unaryCall(t, m.svcC, next); err != nil || got != "" {
		t.Fatalf("the renewed token before its window: err %v, renewed %t; want no renewal", err, got != "")
	}
	m.clock.Set(t0.Add(2 * delDue))
	third, err := unaryCall(t, m.svcC, next)
	if err != nil || third == "" {
		t.Fatalf("the renewed token in its window: err %v, renewed %t; want a renewal", err, third != "")
	}
	if got := m.renews(); got != 2 {
		t.Errorf("%d Renew calls after two windows, want 2", got)
	}
}

// TestDelegated_NewVerifierAsksAgain: a renewal got under one verifier
// is not handed out under the next (its answer was checked against keys
// the server may no longer trust): after RotateKeys the same token's
// renewal is asked for again. The delegation left in the cache does not
// keep the old verifier, and its caches, alive.
func TestDelegated_NewVerifierAsksAgain(t *testing.T) {
	m := newDelMesh(t, nil, nil)
	s := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)
	first, err := unaryCall(t, m.svcC, s.AccessToken)
	if err != nil || first == "" || m.renews() != 1 {
		t.Fatalf("first call: err %v, renewed %t, %d Renew calls; want a renewal from one", err, first != "", m.renews())
	}

	cleaned := make(chan struct{})
	runtime.AddCleanup(m.svc.server.ver.Load(), func(ch chan struct{}) { close(ch) }, cleaned)
	if err := m.svc.server.RotateKeys(m.remote.KeySet()); err != nil {
		t.Fatal(err)
	}
	// The delegation for the token is still in the cache, unlooked-up.
	for deadline := time.Now().Add(5 * time.Second); ; {
		runtime.GC()
		select {
		case <-cleaned:
		case <-time.After(10 * time.Millisecond):
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("the verifier replaced by RotateKeys is still reachable")
		}
		break
	}

	m.clock.Advance(time.Second)
	again, err := unaryCall(t, m.svcC, s.AccessToken)
	if err != nil || again == "" {
		t.Fatalf("after RotateKeys: err %v, renewed %t; want a renewal", err, again != "")
	}
	if got := m.renews(); got != 2 {
		t.Fatalf("%d Renew calls after RotateKeys, want 2 (asked again)", got)
	}
}

// TestDelegated_AuthDown: with the renewal service unreachable, or
// answering Unavailable, every call still succeeds and its handler runs,
// with no renewal and an EventRenewalFailed; the service is asked once per
// retry interval, not once per call, and renewals resume when it is back.
func TestDelegated_AuthDown(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		lis := bufconn.Listen(1 << 10)
		_ = lis.Close()
		m := newDelMesh(t, nil, nil, WithDelegatedRenewal(dialBufconn(t, lis)))
		s := m.auth.startSession(t, nil)
		m.clock.Advance(delDue)
		for i := range 3 {
			got, err := unaryCall(t, m.svcC, s.AccessToken)
			if err != nil || got != "" {
				t.Fatalf("call %d: err %v, renewed %t; want success without a renewal", i, err, got != "")
			}
		}
		if got := m.svc.svc.calls.Load(); got != 3 {
			t.Errorf("handler ran %d times, want 3", got)
		}
		if errs := delFailures(t, m.svc, s.AccessToken); len(errs) != 3 {
			t.Errorf("%d renewal-failed events, want 3", len(errs))
		}
		if got := m.svc.events.count(EventDelegatedRenewal, ""); got != 1 {
			t.Errorf("%d internal calls within the retry interval, want 1", got)
		}
		m.clock.Advance(DefaultDelegatedRenewalRetry)
		if _, err := unaryCall(t, m.svcC, s.AccessToken); err != nil {
			t.Fatal(err)
		}
		if got := m.svc.events.count(EventDelegatedRenewal, ""); got != 2 {
			t.Errorf("%d internal calls after the retry interval, want 2", got)
		}
	})
	t.Run("unavailable, then back", func(t *testing.T) {
		var down atomic.Bool
		down.Store(true)
		failing := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if info.FullMethod == renewMethod && down.Load() {
				return nil, status.Error(codes.Unavailable, "auth is down: Bearer eyJ")
			}
			return handler(ctx, req)
		}
		m := newDelMesh(t, []envOption{withBefore(failing, nil)}, nil)
		s := m.auth.startSession(t, nil)
		m.clock.Advance(delDue)
		for i := range 3 {
			if got, err := unaryCall(t, m.svcC, s.AccessToken); err != nil || got != "" {
				t.Fatalf("call %d: err %v, renewed %t; want success without a renewal", i, err, got != "")
			}
		}
		errs := delFailures(t, m.svc, s.AccessToken)
		if len(errs) != 3 || !strings.Contains(errs[0].Error(), "Unavailable") || strings.Contains(errs[0].Error(), "eyJ") {
			t.Errorf("renewal-failed errors = %v; want 3 naming the code and not the service's message", errs)
		}
		if got := m.renews(); got != 1 {
			t.Errorf("%d Renew calls within the retry interval, want 1", got)
		}
		down.Store(false)
		m.clock.Advance(DefaultDelegatedRenewalRetry - time.Second)
		if got, err := unaryCall(t, m.svcC, s.AccessToken); err != nil || got != "" {
			t.Fatalf("within the retry interval: err %v, renewed %t; want no renewal", err, got != "")
		}
		m.clock.Advance(time.Second)
		got, err := unaryCall(t, m.svcC, s.AccessToken)
		if err != nil || got == "" {
			t.Fatalf("after the retry interval: err %v, renewed %t; want a renewal", err, got != "")
		}
		if got := m.renews(); got != 2 {
			t.Errorf("%d Renew calls in all, want 2", got)
		}
	})
}

// TestDelegated_AuthSlow: a renewal service that does not answer costs a
// call at most the timeout, or half of what its deadline left; the
// handler runs while the renewal is asked for, and the call succeeds
// without a renewal.
func TestDelegated_AuthSlow(t *testing.T) {
	const timeout = 100 * time.Millisecond
	gate := newDelGate(t)
	// The handler waits until auth holds the Renew: it runs while the
	// renewal is asked for.
	var ranWhileAsked atomic.Bool
	m := newDelMesh(t, []envOption{withBefore(gate.unary, nil)},
		[]envOption{withDelay(func() {
			select {
			case <-gate.entered:
				ranWhileAsked.Store(true)
			case <-time.After(5 * time.Second):
			}
		})},
		WithDelegatedRenewalTimeout(timeout))
	s := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)

	start := time.Now()
	got, err := unaryCall(t, m.svcC, s.AccessToken)
	took := time.Since(start)
	if err != nil || got != "" {
		t.Fatalf("err %v, renewed %t; want success without a renewal", err, got != "")
	}
	if took > timeout+2*time.Second {
		t.Errorf("the call took %v with a renewal timeout of %v", took, timeout)
	}
	if m.svc.svc.calls.Load() != 1 || !ranWhileAsked.Load() {
		t.Fatal("the handler did not run while auth held the renewal")
	}
	// The request's wait and the internal call end at about the same
	// time: the error is either's.
	if errs := delFailures(t, m.svc); len(errs) != 1 {
		t.Fatalf("renewal-failed errors = %v, want one", errs)
	}
	// The internal call ends by its own timeout, although auth still
	// holds it.
	delWaitEvents(t, m.svc, EventDelegatedRenewal, 1)
	if ev := m.svc.events.kinds(EventDelegatedRenewal)[0]; !errors.Is(ev.Err, ErrDelegatedRenewal) {
		t.Errorf("delegated-renewal Err = %v, want ErrDelegatedRenewal", ev.Err)
	}

	t.Run("deadline", func(t *testing.T) {
		m := newDelMesh(t, []envOption{withBefore(newDelGate(t).unary, nil)}, nil,
			WithDelegatedRenewalTimeout(time.Minute))
		s := m.auth.startSession(t, nil)
		m.clock.Advance(delDue)
		ctx, cancel := context.WithTimeout(bearerCtx(s.AccessToken), 2*time.Second)
		defer cancel()
		start := time.Now()
		var tr metadata.MD
		_, err := m.svcC.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&tr))
		if err != nil {
			t.Fatalf("a call whose deadline outlasts its half: %v", err)
		}
		if took := time.Since(start); took >= 2*time.Second {
			t.Errorf("the call took %v, want it within its deadline", took)
		}
		if renewedToken(t, tr) != "" {
			t.Error("renewed token sent, want none")
		}
	})
}

// delFakeAuth is a TokenService whose Renew answers what answer returns
// for the presented token.
type delFakeAuth struct {
	slidejwtv1.UnimplementedTokenServiceServer
	answer func(tok string) string
}

func (f *delFakeAuth) Renew(ctx context.Context, _ *slidejwtv1.RenewRequest) (*slidejwtv1.RenewResponse, error) {
	return &slidejwtv1.RenewResponse{AccessToken: f.answer(presentedToken(ctx))}, nil
}

// TestDelegated_RefusesForeignAnswers: the verify-only service relays a
// renewal service's answer only if it is a later token of the presented
// token's session, under its own keys. Whatever else the service answers,
// the call succeeds with no renewal and an EventRenewalFailed.
func TestDelegated_RefusesForeignAnswers(t *testing.T) {
	fake := &delFakeAuth{}
	srv := grpc.NewServer()
	slidejwtv1.RegisterTokenServiceServer(srv, fake)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	m := newDelMesh(t, nil, nil, WithDelegatedRenewal(dialBufconn(t, lis)))
	rogue := remES256(t, "rogue")
	impostor := remES256(t, "auth-1") // the trusted kid, another key
	sign := func(c *Claims) string { return delForge(t, m.key, c) }

	for _, tc := range []struct {
		name   string
		answer func(c *Claims, presented string) string
		relay  bool
	}{
		{"genuine", func(c *Claims, _ string) string { return sign(c) }, true},
		{"another session", func(c *Claims, _ string) string { c.SessionID = randomID(); return sign(c) }, false},
		{"another subject", func(c *Claims, _ string) string { c.Subject = "mallory"; return sign(c) }, false},
		{"another login time", func(c *Claims, _ string) string {
			c.AuthTime = jwt.NewNumericDate(c.AuthTime.Add(time.Second))
			return sign(c)
		}, false},
		{"another audience", func(c *Claims, _ string) string { c.Audience = append(c.Audience, "other"); return sign(c) }, false},
		{"another issuer", func(c *Claims, _ string) string { c.Issuer = "evil"; return sign(c) }, false},
		{"unknown key", func(c *Claims, _ string) string { return delForge(t, rogue, c) }, false},
		{"trusted kid, other key", func(c *Claims, _ string) string { return delForge(t, impostor, c) }, false},
		{"the presented token", func(_ *Claims, p string) string { return p }, false},
		{"earlier", func(c *Claims, p string) string {
			c.ExpiresAt = jwt.NewNumericDate(decodeToken(t, p).claims.ExpiresAt.Add(-time.Second))
			return sign(c)
		}, false},
		{"past the session's end", func(c *Claims, _ string) string {
			c.ExpiresAt = jwt.NewNumericDate(c.AuthTime.Add(delPolicy.MaxLifetime + time.Second))
			return sign(c)
		}, false},
		{"fresh", func(c *Claims, _ string) string { c.Fresh = true; return sign(c) }, false},
		{"a session_exp added", func(c *Claims, _ string) string {
			c.SessionExpiry = jwt.NewNumericDate(c.AuthTime.Add(delPolicy.MaxLifetime / 2))
			return sign(c)
		}, false},
		{"refresh token", func(c *Claims, _ string) string {
			tok, err := signCompact(m.key, c, refreshTokenType)
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}, false},
		{"garbage", func(*Claims, string) string { return "not a token" }, false},
		{"huge", func(*Claims, string) string { return strings.Repeat("a", DefaultMaxTokenSize+1) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.clock.Set(t0)
			s := m.auth.startSession(t, nil)
			m.clock.Advance(delDue)
			fake.answer = func(p string) string { return tc.answer(m.renewalClaims(t, p), p) }
			failed := len(m.svc.events.kinds(EventRenewalFailed))
			got, err := unaryCall(t, m.svcC, s.AccessToken)
			if err != nil {
				t.Fatalf("the call failed: %v", err)
			}
			if tc.relay {
				if got == "" {
					t.Fatal("a genuine renewal was not relayed")
				}
				return
			}
			if got != "" {
				t.Fatal("a foreign answer was relayed")
			}
			evs := m.svc.events.kinds(EventRenewalFailed)[failed:]
			if len(evs) != 1 || !errors.Is(evs[0].Err, ErrDelegatedRenewal) || !strings.Contains(evs[0].Err.Error(), "answer refused") {
				t.Fatalf("renewal-failed events = %v, want one refusing the answer", evs)
			}
		})
	}
}

// TestStream_DelegatedRenewal: a stream on the verify-only service gets
// the renewal in its header, with its first message, and in its trailer,
// as from a signing server, although auth answered only once the handler
// had started; a second stream with the same token gets the same one
// without another Renew.
func TestStream_DelegatedRenewal(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			gate := newDelGate(t)
			m := newDelMesh(t, []envOption{withBefore(gate.unary, nil)}, []envOption{withDelay(gate.release)})
			s := m.auth.startSession(t, nil)
			m.clock.Advance(delDue)
			want := m.clock.Now().Add(delPolicy.TTL)
			var first string
			for i := range 2 {
				header, trailer, err := k.call(bearerCtx(s.AccessToken), m.svcC)
				if err != nil {
					t.Fatal(err)
				}
				inHeader, inTrailer := renewedToken(t, header), renewedToken(t, trailer)
				srvCheckRenewed(t, m.auth, s, inHeader, want)
				if inHeader != inTrailer {
					t.Fatal("header and trailer carry different renewed tokens, want the same one")
				}
				if i == 0 {
					first = inHeader
				} else if inHeader != first {
					t.Error("the second stream got another renewal")
				}
			}
			if got := m.renews(); got != 1 {
				t.Errorf("%d Renew calls for two streams, want 1", got)
			}
			if got := m.svc.events.count(EventRenewed, k.method); got != 2 {
				t.Errorf("%d renewed-events, want 2", got)
			}
		})
	}
}

// TestStream_DelegatedRenewalDown: a stream whose renewal service fails
// carries no renewal and runs as usual.
func TestStream_DelegatedRenewalDown(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			lis := bufconn.Listen(1 << 10)
			_ = lis.Close()
			m := newDelMesh(t, nil, nil, WithDelegatedRenewal(dialBufconn(t, lis)))
			s := m.auth.startSession(t, nil)
			m.clock.Advance(delDue)
			header, trailer, err := k.call(bearerCtx(s.AccessToken), m.svcC)
			if err != nil {
				t.Fatal(err)
			}
			if renewedToken(t, header) != "" || renewedToken(t, trailer) != "" {
				t.Error("renewed token sent, want none")
			}
			if errs := delFailures(t, m.svc, s.AccessToken); len(errs) != 1 {
				t.Errorf("%d renewal-failed events, want 1", len(errs))
			}
		})
	}
}

// TestUnary_DelegatedAuthFunc: behind an AuthFunc, which cannot wait
// after the handler, the renewal is waited for before it and sent in the
// header and the trailer.
func TestUnary_DelegatedAuthFunc(t *testing.T) {
	m := newDelMesh(t, nil, []envOption{withGRPC(func(s *Server) []grpc.ServerOption {
		return []grpc.ServerOption{grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(s.AuthFunc()))}
	})})
	s := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)
	var header, trailer metadata.MD
	if _, err := m.svcC.UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	want := m.clock.Now().Add(delPolicy.TTL)
	srvCheckRenewed(t, m.auth, s, renewedToken(t, header), want)
	srvCheckRenewed(t, m.auth, s, renewedToken(t, trailer), want)
}

// TestDelegated_RejectionsUnchanged: the verify-only service refuses
// tokens as before delegation, before its handler and without asking
// auth; a logout through it asks for no renewal either.
func TestDelegated_RejectionsUnchanged(t *testing.T) {
	m := newDelMesh(t, nil, nil)
	s := m.auth.startSession(t, nil)
	for _, tc := range []struct {
		name string
		tok  string
		at   time.Duration
		want Reason
	}{
		{"expired", s.AccessToken, delPolicy.TTL + DefaultLeeway, ReasonTokenExpired},
		{"past the session", s.AccessToken, delPolicy.MaxLifetime + DefaultLeeway, ReasonSessionExpired},
		{"unknown key", delForge(t, remES256(t, "rogue"), decodeToken(t, s.AccessToken).claims), delDue, ReasonTokenInvalid},
		{"malformed", "a.b", delDue, ReasonTokenInvalid},
		{"missing", "", delDue, ReasonTokenMissing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.clock.Set(t0.Add(tc.at))
			got, err := unaryCall(t, m.svcC, tc.tok)
			wantReason(t, err, tc.want)
			if ran, ok := errsHandlerRan(err); !ok || ran != "false" {
				t.Errorf("handler_ran = %q, %v; want \"false\"", ran, ok)
			}
			if got != "" {
				t.Error("a rejected call carries a renewed token")
			}
		})
	}
	if m.svc.svc.calls.Load() != 0 || m.renews() != 0 {
		t.Errorf("handler calls %d, Renew calls %d; want 0, 0", m.svc.svc.calls.Load(), m.renews())
	}

	m.clock.Set(t0.Add(delDue))
	_, tokens := m.svc.clients(t)
	_, err := tokens.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{})
	if status.Code(err) != codes.FailedPrecondition { // svc has no store to revoke in
		t.Fatalf("Revoke at svc: %v, want FailedPrecondition", err)
	}
	if m.renews() != 0 {
		t.Error("a logout asked auth for a renewal")
	}
}

// TestRenew_SigningServer calls TokenService/Renew at the signing service
// directly: it renews exactly as any call does, and refuses what any call
// refuses, before its handler.
func TestRenew_SigningServer(t *testing.T) {
	m := newDelMesh(t, nil, nil)
	_, tokens := m.auth.clients(t)
	renew := func(tok string) (*slidejwtv1.RenewResponse, string, error) {
		var tr metadata.MD
		resp, err := tokens.Renew(bearerCtx(tok), &slidejwtv1.RenewRequest{}, grpc.Trailer(&tr))
		return resp, renewedToken(t, tr), err
	}
	var signs atomic.Int64
	m.auth.server.signHook = func() { signs.Add(1) }
	s := m.auth.startSession(t, map[string]any{"role": "admin"})
	signs.Store(0)

	t.Run("not due", func(t *testing.T) {
		resp, tr, err := renew(s.AccessToken)
		if err != nil || resp.GetAccessToken() != "" || resp.GetAccessTokenExpiresAt() != nil || tr != "" {
			t.Fatalf("Renew before the window = %v, trailer %t, %v; want an empty answer", resp, tr != "", err)
		}
	})
	t.Run("due", func(t *testing.T) {
		m.clock.Set(t0.Add(delDue))
		resp, tr, err := renew(s.AccessToken)
		if err != nil {
			t.Fatal(err)
		}
		want := t0.Add(delDue + delPolicy.TTL)
		srvCheckRenewed(t, m.auth, s, resp.GetAccessToken(), want)
		if tr != resp.GetAccessToken() {
			t.Error("the trailer and the body carry different tokens")
		}
		if got := resp.GetAccessTokenExpiresAt().AsTime(); !got.Equal(want) {
			t.Errorf("access_token_expires_at = %v, want %v", got, want)
		}
		if got := resp.GetSessionEndsAt().AsTime(); !got.Equal(s.End) {
			t.Errorf("session_ends_at = %v, want %v", got, s.End)
		}
		c := decodeToken(t, resp.GetAccessToken()).claims
		var role string
		if _, err := c.Lookup("role", &role); err != nil || role != "admin" || c.Fresh || c.ID == decodeToken(t, s.AccessToken).claims.ID {
			t.Error("the renewed token does not copy the custom claims, or keeps fresh or jti")
		}
		again, _, err := renew(s.AccessToken)
		if err != nil || again.GetAccessToken() != resp.GetAccessToken() {
			t.Fatalf("Renew again = %v; want the same token", err)
		}
		if got := signs.Load(); got != 1 {
			t.Errorf("%d signatures for two Renews of one token, want 1", got)
		}
	})
	t.Run("at the session's end", func(t *testing.T) {
		m.clock.Set(s.End.Add(-3 * time.Minute))
		c := m.renewalClaims(t, s.AccessToken)
		c.ExpiresAt = jwt.NewNumericDate(s.End.Add(-time.Minute))
		resp, _, err := renew(delForge(t, m.key, c))
		if err != nil || !resp.GetAccessTokenExpiresAt().AsTime().Equal(s.End) {
			t.Fatalf("Renew near the end = %v, %v; want exp at the session's end %v", resp.GetAccessTokenExpiresAt().AsTime(), err, s.End)
		}
		m.clock.Set(s.End.Add(DefaultLeeway / 2))
		resp, _, err = renew(resp.GetAccessToken())
		if err != nil || resp.GetAccessToken() != "" {
			t.Fatalf("Renew at the end = %v, %v; want an empty answer", resp, err)
		}
	})

	m.clock.Set(t0.Add(delDue))
	unknown := m.renewalClaims(t, s.AccessToken)
	unknown.SessionID = randomID()
	revoked := m.auth.startSession(t, nil)
	if err := m.auth.server.RevokeSession(context.Background(), revoked.SessionID); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tok  string
		at   time.Duration
		want Reason
	}{
		{"missing", "", delDue, ReasonTokenMissing},
		{"garbage", "not-a-token", delDue, ReasonTokenInvalid},
		{"unknown key", delForge(t, remES256(t, "rogue"), decodeToken(t, s.AccessToken).claims), delDue, ReasonTokenInvalid},
		{"expired", s.AccessToken, delPolicy.TTL + DefaultLeeway, ReasonTokenExpired},
		{"revoked", revoked.AccessToken, delDue, ReasonSessionRevoked},
		{"unknown to the store", delForge(t, m.key, unknown), delDue, ReasonSessionRevoked},
		{"past the session", s.AccessToken, delPolicy.MaxLifetime + DefaultLeeway, ReasonSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.clock.Set(t0.Add(tc.at))
			resp, tr, err := renew(tc.tok)
			wantReason(t, err, tc.want)
			if ran, ok := errsHandlerRan(err); !ok || ran != "false" {
				t.Errorf("handler_ran = %q, %v; want \"false\"", ran, ok)
			}
			if resp != nil || tr != "" {
				t.Error("a refused Renew carries a token")
			}
		})
	}
}

// TestRenew_VerifyOnly: at a verify-only service, Renew answers
// FailedPrecondition without delegation, and with it the renewal that
// auth gave.
func TestRenew_VerifyOnly(t *testing.T) {
	m := newDelMesh(t, nil, nil)
	s := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)
	_, tokens := m.svc.clients(t)
	resp, err := tokens.Renew(bearerCtx(s.AccessToken), &slidejwtv1.RenewRequest{})
	if err != nil {
		t.Fatal(err)
	}
	srvCheckRenewed(t, m.auth, s, resp.GetAccessToken(), m.clock.Now().Add(delPolicy.TTL))
	if m.renews() != 1 {
		t.Errorf("%d Renew calls at auth, want 1", m.renews())
	}

	plain := newEnv(t, withKeys(m.remote.KeySet()), withClock(m.clock), withServerOptions(delShared()...))
	_, tokens = plain.clients(t)
	_, err = tokens.Renew(bearerCtx(s.AccessToken), &slidejwtv1.RenewRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Renew at a verify-only service without delegation: %v, want FailedPrecondition", err)
	}
}

// TestDelegated_Options: the options refuse what cannot work, and a
// signing server with a renewal service renews by itself.
func TestDelegated_Options(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{
		{"nil connection", []ServerOption{WithDelegatedRenewal(nil)}},
		{"zero timeout", []ServerOption{WithDelegatedRenewalTimeout(0)}},
		{"negative timeout", []ServerOption{WithDelegatedRenewal(dialBufconn(t, bufconn.Listen(1))), WithDelegatedRenewalTimeout(-time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewServer(testKeySet(t), tc.opts...); !errors.Is(err, ErrInvalidOption) {
				t.Errorf("NewServer err = %v, want ErrInvalidOption", err)
			}
		})
	}
	if got := EventDelegatedRenewal.String(); got != "delegated-renewal" {
		t.Errorf("EventDelegatedRenewal.String() = %q", got)
	}

	lis := bufconn.Listen(1 << 10)
	_ = lis.Close()
	e := newEnv(t, withServerOptions(WithDelegatedRenewal(dialBufconn(t, lis))))
	s := e.startSession(t, nil)
	e.clock.Advance(srvDueAfter)
	if got, err := unaryCall(t, srvClient(t, e), s.AccessToken); err != nil || got == "" {
		t.Fatalf("a signing server with a renewal service: err %v, renewed %t; want its own renewal", err, got != "")
	}
}
