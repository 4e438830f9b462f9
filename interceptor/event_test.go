package interceptor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// evStep is the part of an Event that the sequence tests compare.
type evStep struct {
	kind    EventKind
	op      StoreOp
	outcome store.Outcome
	failed  bool // Err != nil
}

func (s evStep) String() string {
	str := s.kind.String()
	if s.op != 0 {
		str += " " + s.op.String()
	}
	if s.outcome != 0 {
		str += " " + s.outcome.String()
	}
	if s.failed {
		str += " (failed)"
	}
	return str
}

func evSteps(evs []Event) []evStep {
	out := make([]evStep, len(evs))
	for i, ev := range evs {
		out[i] = evStep{ev.Kind, ev.StoreOp, ev.Outcome, ev.Err != nil}
	}
	return out
}

// evWantSteps fails unless evs are exactly want, in order.
func evWantSteps(t testing.TB, what string, evs []Event, want ...evStep) {
	t.Helper()
	got := evSteps(evs)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: events %v, want %v", what, got, want)
	}
}

// slowList is a revocation list that takes at least d to answer and
// revokes nothing, or fails with err.
type slowList struct {
	d   time.Duration
	err error
}

func (l slowList) IsRevoked(context.Context, string, time.Time) (bool, error) {
	time.Sleep(l.d)
	return false, l.err
}

// TestEvents_Duration: a call's events, and the store calls under them,
// report how long they took on the monotonic clock, not on the server's
// clock: a clock that jumps an hour at every reading, or stands still,
// changes nothing.
func TestEvents_Duration(t *testing.T) {
	const slow = 2 * time.Millisecond
	for _, tc := range []struct {
		name string
		opt  envOption
	}{
		{"real clock", withRealClock()},
		{"jumping clock", nil},
		{"still clock", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []envOption{withServerOptions(WithRevocationList(slowList{d: slow}))}
			if tc.opt != nil {
				opts = append(opts, tc.opt)
			}
			e := newEnv(t, opts...)
			s := e.startSession(t, nil)
			if tc.name == "jumping clock" {
				clock := e.clock
				// Replace the server's clock by one that jumps; the
				// renewal policy sees one reading per call.
				e.server.cfg.now = func() time.Time { clock.Advance(time.Hour); return clock.Now() }
			}
			c, _ := e.clients(t)
			e.events.take()
			if _, err := unaryCall(t, c, s.AccessToken); err != nil {
				t.Fatal(err)
			}
			evs := e.events.take()
			evWantSteps(t, "call", evs, evStep{kind: EventStoreCall, op: StoreIsRevoked}, evStep{kind: EventAuthenticated})
			for _, ev := range evs {
				if ev.Duration < slow || ev.Duration > time.Minute {
					t.Errorf("%v: Duration %v, want at least %v (the store's time) and well under a minute", ev.Kind, ev.Duration, slow)
				}
			}
			if evs[1].Duration < evs[0].Duration {
				t.Errorf("call took %v, less than its store call (%v)", evs[1].Duration, evs[0].Duration)
			}

			// A rejection before the store is asked is timed too.
			if _, err := unaryCall(t, c, ""); err == nil {
				t.Fatal("call without a token succeeded")
			}
			evs = e.events.take()
			evWantSteps(t, "rejection", evs, evStep{kind: EventRejected, failed: true})
			if d := evs[0].Duration; d < 0 || d > time.Minute {
				t.Errorf("rejection: Duration %v, want under a minute", d)
			}
		})
	}
}

// TestEvents_Cache: the events of a call say whether the verified-token
// cache held its token.
func TestEvents_Cache(t *testing.T) {
	t.Run("cache on", func(t *testing.T) {
		e := newEnv(t)
		s := e.startSession(t, nil)
		c, _ := e.clients(t)
		e.events.take()
		tampered := s.AccessToken[:len(s.AccessToken)-2] + "AA"
		for i, step := range []struct {
			tok    string
			kind   EventKind
			result CacheResult
		}{
			{s.AccessToken, EventAuthenticated, CacheMiss},
			{s.AccessToken, EventAuthenticated, CacheHit},
			{s.AccessToken, EventAuthenticated, CacheHit},
			{tampered, EventRejected, CacheMiss}, // verified on its own, and refused
			{tampered, EventRejected, CacheMiss}, // failures are never cached
			{"", EventRejected, CacheNone},
			{"not a jwt!", EventRejected, CacheNone},
		} {
			_, _ = unaryCall(t, c, step.tok)
			evs := e.events.take()
			if len(evs) != 1 || evs[0].Kind != step.kind || evs[0].Cache != step.result {
				t.Fatalf("call %d: events %v, want one %v with cache %v", i, evSteps(evs), step.kind, step.result)
			}
		}
	})
	t.Run("cache off", func(t *testing.T) {
		e := newEnv(t, withServerOptions(WithCacheSize(0)))
		s := e.startSession(t, nil)
		c, _ := e.clients(t)
		e.events.take()
		for range 2 {
			if _, err := unaryCall(t, c, s.AccessToken); err != nil {
				t.Fatal(err)
			}
			if evs := e.events.take(); len(evs) != 1 || evs[0].Cache != CacheNone {
				t.Fatalf("events %v with cache %v, want one with cache none", evSteps(evs), evs[0].Cache)
			}
		}
	})
}

// TestEvents_StoreCalls: every call to the session store is an
// EventStoreCall, before the event of the step that made it.
func TestEvents_StoreCalls(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	evWantSteps(t, "StartSession", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreCreate}, evStep{kind: EventSessionStarted})
	c, tc := e.clients(t)

	if _, err := unaryCall(t, c, s.AccessToken); err != nil {
		t.Fatal(err)
	}
	evs := e.events.take()
	evWantSteps(t, "call", evs, evStep{kind: EventStoreCall, op: StoreIsRevoked}, evStep{kind: EventAuthenticated})
	if evs[0].SessionID != s.SessionID || evs[0].Method != "" {
		t.Errorf("store call: sid %q, method %q; want %q and none", evs[0].SessionID, evs[0].Method, s.SessionID)
	}

	e.clock.Advance(time.Hour)
	refreshMust(t, tc, s.RefreshToken)
	evWantSteps(t, "Refresh", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreIsRevoked},
		evStep{kind: EventStoreCall, op: StoreRotate, outcome: store.OK},
		evStep{kind: EventRefreshed, outcome: store.OK})
	refreshMust(t, tc, s.RefreshToken) // again, within the grace period
	evWantSteps(t, "Refresh again", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreIsRevoked},
		evStep{kind: EventStoreCall, op: StoreRotate, outcome: store.Replay},
		evStep{kind: EventRefreshed, outcome: store.Replay})
	e.clock.Advance(DefaultRefreshGrace)
	_, err := refreshCall(tc, s.RefreshToken) // after it: reuse
	wantReason(t, err, ReasonSessionRevoked)
	evWantSteps(t, "reuse", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreIsRevoked},
		evStep{kind: EventStoreCall, op: StoreRotate, outcome: store.Reused},
		evStep{kind: EventRejected, outcome: store.Reused, failed: true})
	_, err = refreshCall(tc, s.RefreshToken) // the session is revoked now
	wantReason(t, err, ReasonSessionRevoked)
	evWantSteps(t, "revoked", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreIsRevoked},
		evStep{kind: EventRejected, outcome: store.Revoked, failed: true})

	s2 := e.startSession(t, nil)
	e.events.take()
	if _, err := tc.Revoke(bearerCtx(s2.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatal(err)
	}
	evWantSteps(t, "Revoke", e.events.take(),
		evStep{kind: EventStoreCall, op: StoreIsRevoked},
		evStep{kind: EventAuthenticated},
		evStep{kind: EventStoreCall, op: StoreRevoke},
		evStep{kind: EventRevoked})
}

// TestEvents_StoreFailure: a store call that fails is reported with its
// error, before the rejection it causes.
func TestEvents_StoreFailure(t *testing.T) {
	down := errors.New("store down")
	e := newEnv(t, withServerOptions(WithRevocationList(slowList{err: down})))
	s := e.startSession(t, nil)
	c, _ := e.clients(t)
	e.events.take()
	_, err := unaryCall(t, c, s.AccessToken)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	evs := e.events.take()
	evWantSteps(t, "call", evs,
		evStep{kind: EventStoreCall, op: StoreIsRevoked, failed: true},
		evStep{kind: EventRejected, failed: true})
	if !errors.Is(evs[0].Err, down) {
		t.Fatalf("store call Err = %v, want the store's error", evs[0].Err)
	}
}

// TestEvents_NoHookNoAllocation: events cost no allocation, with or
// without a hook; without one, the server reads no clock for them (the
// code says so; BenchmarkAuthenticate measures it).
func TestEvents_NoHookNoAllocation(t *testing.T) {
	allocs := func(hook func(context.Context, Event)) float64 {
		e := newEnv(t, withServerOptions(WithRevocationList(&memstore.RevocationList{})))
		s := e.startSession(t, nil)
		e.server.cfg.onEvent = hook
		ctx := metadata.NewIncomingContext(context.Background(), bearerMD(s.AccessToken))
		return testing.AllocsPerRun(200, func() {
			if _, _, _, err := e.server.authenticate(ctx, refreshUnaryMethod); err != nil {
				t.Fatal(err)
			}
		})
	}
	var n int
	without, with := allocs(nil), allocs(func(context.Context, Event) { n++ })
	if with != without {
		t.Fatalf("authenticate allocates %v times with a hook, %v without; want the same", with, without)
	}
	if n == 0 {
		t.Fatal("the hook was never called")
	}
}

// BenchmarkAuthenticate measures a cache hit with a revocation list,
// without a hook and with one that does nothing: the difference is the
// cost of the events (two per call, two readings of the clock each).
func BenchmarkAuthenticate(b *testing.B) {
	for _, tc := range []struct {
		name string
		hook func(context.Context, Event)
	}{
		{"no-hook", nil},
		{"hook", func(context.Context, Event) {}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, withRealClock(), withServerOptions(WithRevocationList(&memstore.RevocationList{})))
			e.server.cfg.onEvent = tc.hook
			s, err := e.server.StartSession(context.Background(), "alice", nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := metadata.NewIncomingContext(context.Background(), bearerMD(s.AccessToken))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, _, err := e.server.authenticate(ctx, refreshUnaryMethod); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// clientEvents returns a hook option recording a holder's events in a new
// log.
func clientEvents() (ClientOption, *eventLog) {
	l := new(eventLog)
	return WithClientEventHook(l.hook), l
}

// evWantClient fails unless evs are exactly the kinds want, each for
// method and alice's session s, with the reason reasons[i].
func evWantClient(t testing.TB, what string, evs []Event, s Session, method string, want []EventKind, reasons []Reason) {
	t.Helper()
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Kind.String()+" "+WireReason(ev.Reason))
	}
	var w []string
	for i, k := range want {
		w = append(w, k.String()+" "+WireReason(reasons[i]))
	}
	if strings.Join(got, ", ") != strings.Join(w, ", ") {
		t.Fatalf("%s: client events [%s], want [%s]", what, strings.Join(got, ", "), strings.Join(w, ", "))
	}
	for _, ev := range evs {
		if ev.Method != method || ev.Subject != "alice" || ev.SessionID != s.SessionID {
			t.Errorf("%s: %v for %q, %q, %q; want %q, alice, %q", what, ev.Kind, ev.Method, ev.Subject, ev.SessionID, method, s.SessionID)
		}
	}
}

// TestClientEvents_Swapped: a renewal swapped in is an EventSwapped for
// the method whose response carried it; a renewal not taken is none.
func TestClientEvents_Swapped(t *testing.T) {
	for _, kind := range []string{"unary", "server-stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, withServerOptions(WithPolicy(Policy{RenewBefore: DefaultTTL})))
			s := e.startSession(t, nil)
			hook, events := clientEvents()
			h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now), hook)
			client := testpb.NewTestServiceClient(cliConn(t, e, h))
			call, method := func() error {
				_, err := client.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
				return err
			}, refreshUnaryMethod
			if kind != "unary" {
				call, method = func() error { return cliServerStream(1)(client, nil) }, refreshOutMethod
			}
			if err := call(); err != nil { // same second as the login: no renewal
				t.Fatal(err)
			}
			if evs := events.take(); len(evs) != 0 {
				t.Fatalf("events %v, want none", evSteps(evs))
			}
			e.clock.Advance(time.Minute)
			if err := call(); err != nil {
				t.Fatal(err)
			}
			evs := events.take()
			evWantClient(t, "renewal", evs, s, method, []EventKind{EventSwapped}, []Reason{noReason})
			if !evs[0].Expiry.Equal(h.Expiry()) || !h.Expiry().After(s.Expiry) {
				t.Fatalf("Expiry = %v, want the renewal's %v", evs[0].Expiry, h.Expiry())
			}
			tokens, _ := swaps.get()
			for _, ev := range events.all() {
				srvCheckNoToken(t, ev, append(tokens, s.AccessToken)...)
			}
		})
	}
}

// TestClientEvents_Refresh: a refresh, reactive or proactive, is one
// EventClientRefreshed; a reactive one is followed by the retry or the
// reopen it allows.
func TestClientEvents_Refresh(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		call    func(testing.TB, testpb.TestServiceClient) error
		margin  time.Duration
		lapse   bool
		want    []EventKind
		reasons []Reason
	}{
		{"reactive unary", refreshUnaryMethod, crfUnary, 0, true,
			[]EventKind{EventClientRefreshed, EventRetried}, []Reason{ReasonTokenExpired, ReasonTokenExpired}},
		{"reactive stream", refreshOutMethod, func(t testing.TB, c testpb.TestServiceClient) error {
			_, err := crfServerStream(t, c, 2)
			return err
		}, 0, true, []EventKind{EventClientRefreshed, EventStreamReopened}, []Reason{ReasonTokenExpired, ReasonTokenExpired}},
		{"proactive", refreshUnaryMethod, crfUnary, 25 * time.Hour, false,
			[]EventKind{EventClientRefreshed}, []Reason{noReason}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withMemStore())
			s := e.startSession(t, nil)
			hook, events := clientEvents()
			c, h, hooks := crfHolder(t, e, s, WithRefreshMargin(tc.margin), hook)
			e.clock.Advance(time.Minute)
			if tc.lapse {
				crfLapse(e, s)
			}
			if err := tc.call(t, c); err != nil {
				t.Fatal(err)
			}
			evs := events.take()
			evWantClient(t, tc.name, evs, s, tc.method, tc.want, tc.reasons)
			if ev := evs[0]; ev.Err != nil || !ev.Expiry.Equal(h.Expiry()) || ev.Duration <= 0 || ev.Duration > time.Minute {
				t.Fatalf("refresh event: Err %v, Expiry %v, Duration %v; want nil, %v, a duration", ev.Err, ev.Expiry, ev.Duration, h.Expiry())
			}
			tokens := []string{s.AccessToken, s.RefreshToken, hooks.lastRefresh().GetAccessToken(), hooks.lastRefresh().GetRefreshToken()}
			for _, ev := range evs {
				srvCheckNoToken(t, ev, tokens...)
			}
		})
	}
}

// TestClientEvents_RefreshFailed: a refresh that fails is reported with
// its error, and nothing is retried.
func TestClientEvents_RefreshFailed(t *testing.T) {
	e := newEnv(t, withMemStore())
	s := e.startSession(t, nil)
	r := crfNewRefresher(t, e)
	r.err = status.Error(codes.Unavailable, "token service down")
	hook, events := clientEvents()
	c, _, _ := crfHolder(t, e, s, WithRefreshMargin(0), WithRefresher(r), hook)
	crfLapse(e, s)
	if err := crfUnary(t, c); status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want the refresher's", err)
	}
	evs := events.take()
	evWantClient(t, "failed refresh", evs, s, refreshUnaryMethod, []EventKind{EventClientRefreshed}, []Reason{ReasonTokenExpired})
	if status.Code(evs[0].Err) != codes.Unavailable {
		t.Fatalf("Err = %v, want the refresher's", evs[0].Err)
	}
}

// TestClientEvents_FellBack: a renewal the server refuses makes an
// EventFellBack, then the retry.
func TestClientEvents_FellBack(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	hook, events := clientEvents()
	h, _ := cliHolder(t, s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now), hook)
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	bad := cliRemint(t, s.AccessToken, func(_, c map[string]any) { c["exp"] = cliUnix(s.Expiry.Add(time.Hour)) })
	if !h.offer(bad) {
		t.Fatal("holder refused a renewal that keeps to its rules")
	}
	if _, err := client.UnaryCall(crfCtx(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	evs := events.take()
	evWantClient(t, "fallback", evs, s, refreshUnaryMethod,
		[]EventKind{EventFellBack, EventRetried}, []Reason{ReasonTokenInvalid, ReasonTokenInvalid})
	if !evs[0].Expiry.Equal(s.Expiry) {
		t.Fatalf("fallback Expiry = %v, want the login token's %v", evs[0].Expiry, s.Expiry)
	}
	for _, ev := range evs {
		srvCheckNoToken(t, ev, s.AccessToken, bad)
	}
}
