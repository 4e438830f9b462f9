package otelslidejwt_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

var (
	grpcSystem = attribute.String("rpc.system.name", "grpc")
	onEcho     = attribute.String("rpc.method", echoName)
	onWatch    = attribute.String("rpc.method", watchName)
	onRefresh  = attribute.String("rpc.method", refreshName)
	hit        = otelslidejwt.CacheResultKey.String("hit")
	miss       = otelslidejwt.CacheResultKey.String("miss")
)

func reason(r string) attribute.KeyValue  { return otelslidejwt.ReasonKey.String(r) }
func outcome(o string) attribute.KeyValue { return otelslidejwt.RefreshOutcomeKey.String(o) }
func decision(d string) attribute.KeyValue {
	return otelslidejwt.DecisionKey.String(d)
}
func op(o string) attribute.KeyValue { return otelslidejwt.StoreOperationKey.String(o) }

// TestServer_Metrics drives a server through a login, calls served from
// the cache and verified, a renewal, rejections, refreshes with every
// outcome, a revocation and a stream ended by it, and checks every count
// after each step.
func TestServer_Metrics(t *testing.T) {
	e := newEnv(t, withServerOptions(interceptor.WithPolicy(interceptor.Policy{TTL: 24 * time.Hour, RenewBefore: 12 * time.Hour})))

	// A login.
	alice := e.login(t, "alice")
	rm := e.metrics(t)
	wantCounts(t, "login", rm,
		want{"slidejwt.server.session.starts", nil, 1},
		want{"slidejwt.server.store.duration", []attribute.KeyValue{op("create")}, 1},
		want{"slidejwt.server.calls", nil, 0},
	)
	if _, ok := find(rm, "slidejwt.server.calls"); ok {
		t.Error("slidejwt.server.calls exported before any call")
	}

	// Two calls: the first verifies the token, the second finds it in the
	// cache. No renewal is due.
	c, _ := e.holder(t, alice)
	for range 2 {
		if err := e.echo(t, c); err != nil {
			t.Fatal(err)
		}
	}
	wantCounts(t, "two calls", e.metrics(t),
		want{"slidejwt.server.calls", []attribute.KeyValue{grpcSystem, onEcho}, 2},
		want{"slidejwt.server.renewals", nil, 0},
		want{"slidejwt.server.cache.lookups", []attribute.KeyValue{miss}, 1},
		want{"slidejwt.server.cache.lookups", []attribute.KeyValue{hit}, 1},
		want{"slidejwt.server.auth.duration", []attribute.KeyValue{decision("authenticated"), miss}, 1},
		want{"slidejwt.server.auth.duration", []attribute.KeyValue{decision("authenticated"), hit}, 1},
		want{"slidejwt.server.store.duration", []attribute.KeyValue{op("is_revoked")}, 2},
		want{"slidejwt.client.swaps", nil, 0},
	)

	// 13 hours later a renewal is due: the server sends one, the client
	// swaps it in.
	e.clock.Advance(13 * time.Hour)
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, "renewal", e.metrics(t),
		want{"slidejwt.server.calls", []attribute.KeyValue{onEcho}, 3},
		want{"slidejwt.server.renewals", []attribute.KeyValue{grpcSystem, onEcho}, 1},
		want{"slidejwt.server.auth.duration", []attribute.KeyValue{decision("renewed"), hit}, 1},
		want{"slidejwt.client.swaps", []attribute.KeyValue{grpcSystem, onEcho}, 1},
		want{"slidejwt.server.renewal.failures", nil, 0},
	)

	// Rejections: no token, a malformed one, a tampered one.
	plain := demov1.NewDemoServiceClient(e.dial(t, nil))
	tampered := alice.AccessToken[:len(alice.AccessToken)-4] + "AAAA"
	for _, tok := range []string{"", "not a jwt", tampered} {
		if _, err := plain.Echo(bearer(t, tok), &demov1.EchoRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call with %d-byte token: %v, want Unauthenticated", len(tok), err)
		}
	}
	wantCounts(t, "rejections", e.metrics(t),
		want{"slidejwt.server.rejections", nil, 3},
		want{"slidejwt.server.rejections", []attribute.KeyValue{grpcSystem, onEcho, reason("TOKEN_MISSING")}, 1},
		want{"slidejwt.server.rejections", []attribute.KeyValue{onEcho, reason("TOKEN_INVALID")}, 2},
		want{"slidejwt.server.calls", nil, 3},
		want{"slidejwt.server.auth.duration", []attribute.KeyValue{decision("rejected")}, 3},
		want{"slidejwt.server.auth.duration", []attribute.KeyValue{decision("rejected"), miss}, 1}, // the tampered copy
		want{"slidejwt.server.cache.lookups", []attribute.KeyValue{miss}, 2},
	)

	// Refreshes of another session: ok, a replay within the grace
	// period, a reuse after it (which revokes the session), then the
	// revoked session's token again.
	bob := e.login(t, "bob")
	tokens := slidejwtv1.NewTokenServiceClient(e.dial(t, nil))
	refresh := func(rt string) error {
		_, err := tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: rt})
		return err
	}
	e.clock.Advance(time.Minute)
	for i, wantErr := range []bool{false, false} {
		if err := refresh(bob.RefreshToken); (err != nil) != wantErr {
			t.Fatalf("refresh %d: %v", i, err)
		}
	}
	e.clock.Advance(interceptor.DefaultRefreshGrace + time.Second)
	for range 2 {
		if err := refresh(bob.RefreshToken); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("refresh of a reused token: %v, want Unauthenticated", err)
		}
	}
	if err := refresh("garbage"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("refresh of garbage: %v, want Unauthenticated", err)
	}
	wantCounts(t, "refreshes", e.metrics(t),
		want{"slidejwt.server.refreshes", nil, 5},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("ok")}, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("replay")}, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("reused")}, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("revoked")}, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("rejected")}, 1},
		want{"slidejwt.server.refresh.duration", []attribute.KeyValue{outcome("ok")}, 1},
		want{"slidejwt.server.rejections", []attribute.KeyValue{onRefresh, reason("SESSION_REVOKED")}, 2},
		want{"slidejwt.server.rejections", []attribute.KeyValue{onRefresh, reason("TOKEN_INVALID")}, 1},
		want{"slidejwt.server.store.duration", []attribute.KeyValue{op("rotate")}, 3},
		want{"slidejwt.server.session.starts", nil, 2},
		// The refreshes are no calls of the interceptor's.
		want{"slidejwt.server.auth.duration", nil, 6},
	)

	// The store loses a session between the look and the rotation.
	carol := e.login(t, "carol")
	e.store.unknown.Store(true)
	if err := refresh(carol.RefreshToken); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("refresh of a session the store lost: %v", err)
	}
	e.store.unknown.Store(false)
	wantCounts(t, "unknown", e.metrics(t),
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("unknown")}, 1},
	)

	// A stream, open while its session is revoked: the server ends it.
	dave := e.login(t, "dave")
	dc, dh := e.holder(t, dave)
	done := make(chan error, 1)
	go func() { done <- e.watch(t, dc, 0) }()
	// Wait for the stream to be authenticated before revoking.
	deadline := time.Now().Add(wait)
	for count(t, e.metrics(t), "slidejwt.server.calls", onWatch) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream was never authenticated")
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.server.RevokeSession(ctx(t), dh.SessionID()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if r, _ := interceptor.ReasonOf(err); r != interceptor.ReasonSessionRevoked {
			t.Fatalf("stream ended with %v, want SESSION_REVOKED", err)
		}
	case <-time.After(wait):
		t.Fatal("the stream of a revoked session is still open")
	}
	wantCounts(t, "revocation", e.metrics(t),
		want{"slidejwt.server.session.revocations", nil, 1},
		want{"slidejwt.server.store.duration", []attribute.KeyValue{op("revoke")}, 1},
		want{"slidejwt.server.stream.ends", []attribute.KeyValue{grpcSystem, onWatch, reason("SESSION_REVOKED")}, 1},
		want{"slidejwt.server.calls", []attribute.KeyValue{onWatch}, 1},
	)
}

// TestServer_StoreFailure: a store that fails shows as a store call with
// error.type and a rejection by UNAVAILABLE.
func TestServer_StoreFailure(t *testing.T) {
	e := newEnv(t, withoutStore(), withServerOptions(interceptor.WithRevocationList(failingList{errors.New("store down")})))
	tok := e.login(t, "alice").AccessToken
	plain := demov1.NewDemoServiceClient(e.dial(t, nil))
	if _, err := plain.Echo(bearer(t, tok), &demov1.EchoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	wantCounts(t, "store down", e.metrics(t),
		want{"slidejwt.server.rejections", []attribute.KeyValue{onEcho, reason("UNAVAILABLE")}, 1},
		want{"slidejwt.server.store.duration", []attribute.KeyValue{op("is_revoked"), attribute.String("error.type", "_OTHER")}, 1},
		want{"slidejwt.server.store.duration", nil, 1},
	)
}

// TestClient_Metrics drives a holder through a reactive refresh and retry,
// a reopened stream, a proactive refresh, a failed refresh, and a
// fallback from a renewal the server no longer trusts.
func TestClient_Metrics(t *testing.T) {
	k1, k2 := newKey(t, "k1"), newKey(t, "k2")
	e := newEnv(t, withKeys(newKeySet(t, k1)),
		withServerOptions(interceptor.WithPolicy(interceptor.Policy{TTL: time.Hour, RenewBefore: time.Hour})))
	alice := e.login(t, "alice")
	c, h := e.holder(t, alice, interceptor.WithRefreshMargin(0))

	// The access token lapses: the call is rejected, the holder
	// refreshes and retries it.
	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.echo(t, c); err != nil {
		t.Fatal(err)
	}
	reactive := otelslidejwt.RefreshTriggerKey.String("reactive")
	wantCounts(t, "reactive unary", e.metrics(t),
		want{"slidejwt.client.refreshes", []attribute.KeyValue{reactive}, 1},
		want{"slidejwt.client.refresh.duration", []attribute.KeyValue{reactive}, 1},
		want{"slidejwt.client.retries", []attribute.KeyValue{grpcSystem, onEcho, reason("TOKEN_EXPIRED")}, 1},
		want{"slidejwt.client.stream.reopens", nil, 0},
		want{"slidejwt.server.rejections", []attribute.KeyValue{onEcho, reason("TOKEN_EXPIRED")}, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("ok")}, 1},
	)

	// Again, on a stream: the holder reopens it.
	e.clock.Set(h.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.watch(t, c, 2); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, "reactive stream", e.metrics(t),
		want{"slidejwt.client.refreshes", []attribute.KeyValue{reactive}, 2},
		want{"slidejwt.client.stream.reopens", []attribute.KeyValue{grpcSystem, onWatch, reason("TOKEN_EXPIRED")}, 1},
		want{"slidejwt.client.retries", nil, 1},
	)

	// A holder with a margin longer than the token's life refreshes
	// before every call.
	bob := e.login(t, "bob")
	bc, _ := e.holder(t, bob, interceptor.WithRefreshMargin(2*time.Hour))
	e.clock.Advance(time.Second)
	if err := e.echo(t, bc); err != nil {
		t.Fatal(err)
	}
	wantCounts(t, "proactive", e.metrics(t),
		want{"slidejwt.client.refreshes", []attribute.KeyValue{otelslidejwt.RefreshTriggerKey.String("proactive")}, 1},
		want{"slidejwt.client.refreshes", nil, 3},
	)

	// A refresh that fails: the holder's refresh token was used
	// elsewhere, and presenting it again after the grace period revokes
	// the session.
	carol := e.login(t, "carol")
	cc, ch := e.holder(t, carol, interceptor.WithRefreshMargin(0))
	tokens := slidejwtv1.NewTokenServiceClient(e.dial(t, nil))
	if _, err := tokens.Refresh(ctx(t), &slidejwtv1.RefreshRequest{RefreshToken: carol.RefreshToken}); err != nil {
		t.Fatal(err)
	}
	e.clock.Set(ch.Expiry().Add(interceptor.DefaultLeeway + time.Second))
	if err := e.echo(t, cc); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call after a failed refresh: %v", err)
	}
	wantCounts(t, "failed refresh", e.metrics(t),
		want{"slidejwt.client.refreshes", []attribute.KeyValue{reactive, attribute.String("error.type", "SESSION_REVOKED")}, 1},
		want{"slidejwt.client.refreshes", nil, 4},
		want{"slidejwt.client.retries", nil, 1},
		want{"slidejwt.server.refreshes", []attribute.KeyValue{outcome("reused")}, 1},
	)

	// Keys rotate: a renewal signed with k2 is swapped in, then the server
	// drops k2 and refuses it; the holder falls back to the token it
	// replaced and retries.
	dave := e.login(t, "dave")
	dc, dh := e.holder(t, dave, interceptor.WithRefreshMargin(0))
	if err := e.server.RotateKeys(newKeySet(t, k2, k1)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	swaps := count(t, e.metrics(t), "slidejwt.client.swaps")
	if err := e.echo(t, dc); err != nil {
		t.Fatal(err)
	}
	if got := count(t, e.metrics(t), "slidejwt.client.swaps"); got != swaps+1 {
		t.Fatalf("swaps %d, want %d", got, swaps+1)
	}
	if err := e.server.RotateKeys(newKeySet(t, k1)); err != nil {
		t.Fatal(err)
	}
	before := dh.Token()
	if err := e.echo(t, dc); err != nil {
		t.Fatal(err)
	}
	if dh.Token() == before {
		t.Fatal("the holder did not fall back")
	}
	wantCounts(t, "fallback", e.metrics(t),
		want{"slidejwt.client.fallbacks", []attribute.KeyValue{grpcSystem, onEcho}, 1},
		want{"slidejwt.client.retries", []attribute.KeyValue{onEcho, reason("TOKEN_INVALID")}, 1},
		want{"slidejwt.client.retries", nil, 2},
	)
}

// failingList is a revocation list that cannot answer.
type failingList struct{ err error }

func (l failingList) IsRevoked(context.Context, string, time.Time) (bool, error) {
	return false, l.err
}

// TestHooks_MaxMethods: past WithMaxMethods distinct methods, further
// methods are recorded as "_OTHER", for the server and the client.
func TestHooks_MaxMethods(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	server := otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(mp), otelslidejwt.WithMaxMethods(2))
	client := otelslidejwt.ClientHook(otelslidejwt.WithMeterProvider(mp), otelslidejwt.WithMaxMethods(2))
	for _, m := range []string{"/a.S/One", "/a.S/Two", "/a.S/Three", "/a.S/Four", "/a.S/One"} {
		server(context.Background(), interceptor.Event{Kind: interceptor.EventAuthenticated, Method: m})
		server(context.Background(), interceptor.Event{Kind: interceptor.EventRejected, Method: m, Reason: interceptor.ReasonTokenExpired})
		client(context.Background(), interceptor.Event{Kind: interceptor.EventSwapped, Method: m})
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"slidejwt.server.calls", "slidejwt.server.rejections", "slidejwt.client.swaps"} {
		got := map[string]int64{}
		m, _ := find(rm, name)
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			v, _ := p.Attributes.Value("rpc.method")
			got[v.AsString()] += p.Value
		}
		if len(got) != 3 || got["a.S/One"] != 2 || got["a.S/Two"] != 1 || got["_OTHER"] != 2 {
			t.Errorf("%s by method = %v, want a.S/One 2, a.S/Two 1, _OTHER 2", name, got)
		}
	}
}

// TestHooks_InstrumentNames: the instruments have the names, units and
// kinds the package documents.
func TestHooks_InstrumentNames(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	server, client := otelslidejwt.ServerHook(e.hook...), otelslidejwt.ClientHook(e.hook...)
	for _, k := range []interceptor.EventKind{
		interceptor.EventAuthenticated, interceptor.EventRenewed, interceptor.EventRenewalFailed,
		interceptor.EventRejected, interceptor.EventSessionStarted, interceptor.EventRefreshed,
		interceptor.EventRevoked, interceptor.EventStreamEnded,
	} {
		server(ctx, interceptor.Event{Kind: k, Method: echoMethod, Cache: interceptor.CacheHit})
	}
	server(ctx, interceptor.Event{Kind: interceptor.EventStoreCall, StoreOp: interceptor.StoreRotate})
	for _, k := range []interceptor.EventKind{
		interceptor.EventSwapped, interceptor.EventFellBack, interceptor.EventClientRefreshed,
		interceptor.EventRetried, interceptor.EventStreamReopened,
	} {
		client(ctx, interceptor.Event{Kind: k, Method: echoMethod})
	}
	wantUnits := map[string]string{
		"slidejwt.server.calls":               "{call}",
		"slidejwt.server.renewals":            "{token}",
		"slidejwt.server.renewal.failures":    "{call}",
		"slidejwt.server.rejections":          "{call}",
		"slidejwt.server.stream.ends":         "{stream}",
		"slidejwt.server.refreshes":           "{refresh}",
		"slidejwt.server.session.starts":      "{session}",
		"slidejwt.server.session.revocations": "{session}",
		"slidejwt.server.cache.lookups":       "{lookup}",
		"slidejwt.server.auth.duration":       "s",
		"slidejwt.server.store.duration":      "s",
		"slidejwt.server.refresh.duration":    "s",
		"slidejwt.client.swaps":               "{token}",
		"slidejwt.client.fallbacks":           "{token}",
		"slidejwt.client.refreshes":           "{refresh}",
		"slidejwt.client.refresh.duration":    "s",
		"slidejwt.client.retries":             "{call}",
		"slidejwt.client.stream.reopens":      "{stream}",
	}
	rm := e.metrics(t)
	n := 0
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otelslidejwt.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, otelslidejwt.ScopeName)
		}
		for _, m := range sm.Metrics {
			n++
			unit, ok := wantUnits[m.Name]
			if !ok {
				t.Errorf("undocumented instrument %s", m.Name)
				continue
			}
			if m.Unit != unit || m.Description == "" {
				t.Errorf("%s: unit %q, description %q; want unit %q and a description", m.Name, m.Unit, m.Description, unit)
			}
			if _, isHist := m.Data.(metricdata.Histogram[float64]); isHist != (unit == "s") {
				t.Errorf("%s is %T", m.Name, m.Data)
			}
		}
	}
	if n != len(wantUnits) {
		t.Errorf("%d instruments recorded, want %d", n, len(wantUnits))
	}
}
