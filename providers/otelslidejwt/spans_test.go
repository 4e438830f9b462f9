package otelslidejwt_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// attrOf returns the value of key in ev, or "" when absent.
func attrOf(ev sdktrace.Event, key string) string {
	for _, kv := range ev.Attributes {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// wantSpanEvents fails unless the spans named span hold exactly the
// events names, in order, and resets the recorder.
func (e *env) wantSpanEvents(t testing.TB, step, span string, names ...string) []sdktrace.Event {
	t.Helper()
	got, evs := e.spanEvents(span)
	if !slices.Equal(got, names) {
		t.Fatalf("%s: events of span %q = %v, want %v", step, span, got, names)
	}
	e.spans.Reset()
	return evs
}

// wantAttrs fails unless ev has each key with its value ("" for absent).
func wantAttrs(t testing.TB, step string, ev sdktrace.Event, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if got := attrOf(ev, kv[i]); got != kv[i+1] {
			t.Errorf("%s: %s %s = %q, want %q", step, ev.Name, kv[i], got, kv[i+1])
		}
	}
}

// TestSpans_Server: each call's server span gets one event for the
// server's decision, with the reason of a rejection, and no subject or
// session id unless asked for.
func TestSpans_Server(t *testing.T) {
	e := newEnv(t)
	sctx, login := e.tracer.Start(ctx(t), "login")
	alice, err := e.server.StartSession(sctx, "alice", nil)
	login.End()
	if err != nil {
		t.Fatal(err)
	}
	e.wantSpanEvents(t, "login", "login", otelslidejwt.SpanEventSessionStarted)

	c, _ := e.holder(t, alice)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	ev := e.wantSpanEvents(t, "call", echoMethod, otelslidejwt.SpanEventAuthenticated)[0]
	wantAttrs(t, "call", ev, "slidejwt.cache.result", "miss", "rpc.method", echoName, "slidejwt.reason", "",
		"enduser.id", "", "session.id", "")

	e.clock.Advance(13 * time.Hour)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	ev = e.wantSpanEvents(t, "renewal", echoMethod, otelslidejwt.SpanEventRenewed)[0]
	wantAttrs(t, "renewal", ev, "slidejwt.cache.result", "hit")

	plain := demov1.NewDemoServiceClient(e.dial(t, nil))
	if _, err := plain.Echo(bearer(t, ""), &demov1.EchoRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	ev = e.wantSpanEvents(t, "rejection", echoMethod, otelslidejwt.SpanEventRejected)[0]
	wantAttrs(t, "rejection", ev, "slidejwt.reason", "TOKEN_MISSING", "slidejwt.cache.result", "")

	tokens := slidejwtv1.NewTokenServiceClient(e.dial(t, nil))
	if _, err := tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: alice.RefreshToken}); err != nil {
		t.Fatal(err)
	}
	ev = e.wantSpanEvents(t, "refresh", slidejwtv1.TokenService_Refresh_FullMethodName, otelslidejwt.SpanEventRefreshed)[0]
	wantAttrs(t, "refresh", ev, "slidejwt.refresh.outcome", "ok", "rpc.method", refreshName)
	if _, err := tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: alice.AccessToken}); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	ev = e.wantSpanEvents(t, "refused refresh", slidejwtv1.TokenService_Refresh_FullMethodName, otelslidejwt.SpanEventRejected)[0]
	wantAttrs(t, "refused refresh", ev, "slidejwt.reason", "TOKEN_INVALID", "slidejwt.refresh.outcome", "rejected")

	bob := e.login(t, "bob")
	if _, err := tokens.Revoke(bearer(t, bob.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatal(err)
	}
	e.wantSpanEvents(t, "revoke", slidejwtv1.TokenService_Revoke_FullMethodName,
		otelslidejwt.SpanEventAuthenticated, otelslidejwt.SpanEventRevoked)
}

// TestSpans_Client: the caller's span gets an event for each step the
// holder took on the call's behalf.
func TestSpans_Client(t *testing.T) {
	e := newEnv(t, withServerOptions(interceptor.WithPolicy(interceptor.Policy{TTL: time.Hour, RenewBefore: time.Hour})))
	alice := e.login(t, "alice")
	c, h := e.holder(t, alice, interceptor.WithRefreshMargin(0))
	client := "client " + echoMethod

	e.clock.Advance(time.Second)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	ev := e.wantSpanEvents(t, "renewal", client, otelslidejwt.SpanEventTokenSwapped)[0]
	wantAttrs(t, "renewal", ev, "rpc.method", echoName, "enduser.id", "", "session.id", "")

	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	evs := e.wantSpanEvents(t, "lapsed", client, otelslidejwt.SpanEventTokenRefreshed, otelslidejwt.SpanEventRetried)
	wantAttrs(t, "lapsed", evs[0], "slidejwt.refresh.trigger", "reactive", "error.type", "")
	wantAttrs(t, "lapsed", evs[1], "slidejwt.reason", "TOKEN_EXPIRED", "rpc.method", echoName)

	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.watch(t, c, 1); err != nil {
		t.Fatal(err)
	}
	evs = e.wantSpanEvents(t, "stream", "client "+watchMethod, otelslidejwt.SpanEventTokenRefreshed, otelslidejwt.SpanEventStreamReopened)
	wantAttrs(t, "stream", evs[1], "slidejwt.reason", "TOKEN_EXPIRED", "rpc.method", watchName)
}

// TestSpans_Identity: the subject and the session id reach span events
// only when asked for, and metrics never.
func TestSpans_Identity(t *testing.T) {
	e := newEnv(t, withHookOptions(otelslidejwt.WithSubjectInSpans(), otelslidejwt.WithSessionIDInSpans()))
	alice := e.login(t, "alice")
	c, _ := e.holder(t, alice)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	ev := e.wantSpanEvents(t, "call", echoMethod, otelslidejwt.SpanEventAuthenticated)[0]
	wantAttrs(t, "call", ev, "enduser.id", "alice", "session.id", alice.SessionID)
	for _, leak := range metricText(e.metrics(t)) {
		if strings.Contains(leak, "alice") || strings.Contains(leak, alice.SessionID) {
			t.Errorf("a metric names the session: %s", leak)
		}
	}
}

// TestSpans_Off: WithoutSpanEvents adds nothing to spans; the metrics are
// still recorded.
func TestSpans_Off(t *testing.T) {
	e := newEnv(t, withHookOptions(otelslidejwt.WithoutSpanEvents()))
	alice := e.login(t, "alice")
	c, _ := e.holder(t, alice)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	e.wantSpanEvents(t, "call", echoMethod)
	e.wantSpanEvents(t, "call", "client "+echoMethod)
	wantCounts(t, "call", e.metrics(t), want{"slidejwt.server.calls", nil, 1})
}

// metricText returns every attribute of every point of rm, and of its
// resource and scopes, as "key=value".
func metricText(rm metricdata.ResourceMetrics) []string {
	var out []string
	addSet := func(where string, s attribute.Set) {
		for _, kv := range s.ToSlice() {
			out = append(out, fmt.Sprintf("%s: %s=%s", where, kv.Key, kv.Value.String()))
		}
	}
	addSet("resource", *rm.Resource.Set())
	for _, sm := range rm.ScopeMetrics {
		out = append(out, "scope: "+sm.Scope.Name+" "+sm.Scope.Version)
		addSet("scope", sm.Scope.Attributes)
		for _, m := range sm.Metrics {
			out = append(out, "metric: "+m.Name+" "+m.Description+" "+m.Unit)
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					addSet(m.Name, p.Attributes)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					addSet(m.Name, p.Attributes)
				}
			default:
				out = append(out, fmt.Sprintf("%s: unexpected %T", m.Name, m.Data))
			}
		}
	}
	return out
}

// spanText returns the name, attributes, status, events and links of
// every span, as text.
func spanText(spans []sdktrace.ReadOnlySpan) []string {
	var out []string
	kvs := func(where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			out = append(out, fmt.Sprintf("%s: %s=%s", where, kv.Key, kv.Value.String()))
		}
	}
	for _, s := range spans {
		out = append(out, "span: "+s.Name()+" "+s.Status().Description)
		kvs(s.Name(), s.Attributes())
		for _, ev := range s.Events() {
			out = append(out, "event: "+ev.Name)
			kvs(s.Name()+" "+ev.Name, ev.Attributes)
		}
		for _, l := range s.Links() {
			kvs(s.Name()+" link", l.Attributes)
		}
	}
	return out
}

// leaks returns the lines of text that hold a token, or any segment of
// one (its header, its claims or its signature).
func leaks(text []string, tokens []string) []string {
	var out []string
	for _, line := range text {
		for _, tok := range tokens {
			for _, part := range append([]string{tok}, strings.Split(tok, ".")...) {
				if len(part) >= 8 && strings.Contains(line, part) {
					out = append(out, line)
				}
			}
		}
	}
	return out
}

// TestNoTokenInTelemetry drives everything that makes an event (logins,
// calls served from the cache and verified, renewals, rejections of
// missing, malformed, tampered and misplaced tokens, refreshes ok,
// replayed and reused, a refresher whose error quotes the refresh token,
// retries, a reopened stream, a fallback, revocations) with every
// attribute option on, and then checks every attribute of every metric
// and every span: none holds a token or a part of one.
func TestNoTokenInTelemetry(t *testing.T) {
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	e := newEnv(t, withKeys(newKeySet(t, k1)),
		withHookOptions(otelslidejwt.WithSubjectInSpans(), otelslidejwt.WithSessionIDInSpans()),
		withServerOptions(interceptor.WithPolicy(interceptor.Policy{TTL: time.Hour, RenewBefore: time.Hour})))
	plain := demov1.NewDemoServiceClient(e.dial(t, nil))
	tokens := slidejwtv1.NewTokenServiceClient(e.dial(t, nil))

	alice := e.login(t, "alice")
	c, h := e.holder(t, alice, interceptor.WithRefreshMargin(0))
	for range 3 {
		e.clock.Advance(time.Second)
		if err := e.echo(t, c); err != nil {
			t.Fatal(err)
		}
		if err := e.watch(t, c, 2); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.watch(t, c, 1); err != nil {
		t.Fatal(err)
	}

	// Hostile and broken tokens, in the header and at the token service.
	tok := h.Token()
	for _, bad := range []string{"", "garbage", tok[:len(tok)-4] + "AAAA", h.RefreshToken(), tok + "." + tok, strings.Repeat("A", 9000)} {
		_, _ = plain.Echo(bearer(t, bad), &demov1.EchoRequest{})
		_, _ = tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: bad})
	}
	rt := h.RefreshToken()
	for range 2 { // ok, then a replay
		if _, err := tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: rt}); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Advance(time.Minute)
	_, _ = tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: rt}) // reused: revokes alice

	// A refresher that fails with the refresh token in its message.
	bob := e.login(t, "bob")
	quoting := interceptor.RefreshFunc(func(_ context.Context, rt string) (*slidejwtv1.TokenPair, error) {
		return nil, status.Error(codes.Unavailable, "cannot refresh "+rt)
	})
	bc, bh := e.holder(t, bob, interceptor.WithRefreshMargin(0), interceptor.WithRefresher(quoting))
	e.clock.Set(bh.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.echo(t, bc); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with a failing refresher: %v", err)
	}

	// A fallback from a renewal under a key the server dropped.
	carol := e.login(t, "carol")
	cc, _ := e.holder(t, carol, interceptor.WithRefreshMargin(0))
	if err := e.server.RotateKeys(newKeySet(t, k2, k1)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	if err := e.echo(t, cc); err != nil {
		t.Fatal(err)
	}
	if err := e.server.RotateKeys(newKeySet(t, k1)); err != nil {
		t.Fatal(err)
	}
	if err := e.echo(t, cc); err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Revoke(bearer(t, e.login(t, "dave").AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatal(err)
	}

	// Everything above happened.
	rm := e.metrics(t)
	for _, w := range []want{
		{"slidejwt.server.renewals", nil, 0},
		{"slidejwt.server.cache.lookups", []attribute.KeyValue{hit}, 0},
		{"slidejwt.server.rejections", []attribute.KeyValue{reason("TOKEN_INVALID")}, 0},
		{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("replay")}, 0},
		{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("reused")}, 0},
		{"slidejwt.client.swaps", nil, 0},
		{"slidejwt.client.stream.reopens", nil, 0},
		{"slidejwt.client.fallbacks", nil, 0},
		{"slidejwt.client.refreshes", []attribute.KeyValue{attribute.String("error.type", "UNAVAILABLE")}, 0},
		{"slidejwt.server.session.revocations", nil, 0},
	} {
		if n := count(t, rm, w.name, w.kvs...); n <= w.n {
			t.Errorf("%v = %d, want more than %d", w, n, w.n)
		}
	}
	seen := e.tokens.all()
	if len(seen) < 15 {
		t.Fatalf("only %d tokens seen; the scenario is too small to prove anything", len(seen))
	}
	text := append(metricText(rm), spanText(e.spans.Ended())...)
	for _, leak := range leaks(text, seen) {
		where, _, _ := strings.Cut(leak, "=") // never print the value
		t.Errorf("token text in telemetry, at %s", where)
	}
	// The check reaches span event attributes: the subject, asked for,
	// is there.
	if !slices.ContainsFunc(text, func(s string) bool { return strings.HasSuffix(s, "enduser.id=alice") }) {
		t.Fatal("no span event names alice: the check does not see span event attributes")
	}
	// And it would see a token there.
	planted := spanTextOf(t, attribute.String("x", "Bearer "+strings.Split(seen[0], ".")[2]))
	if len(leaks(planted, seen)) == 0 {
		t.Fatal("the check misses a token's signature in an attribute")
	}
}

// spanTextOf returns spanText of one span with one event carrying kv.
func spanTextOf(t testing.TB, kv attribute.KeyValue) []string {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	_, span := tp.Tracer("test").Start(context.Background(), "planted")
	span.AddEvent("planted", trace.WithAttributes(kv))
	span.End()
	return spanText(sr.Ended())
}
