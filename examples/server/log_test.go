package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// sharedKeys are the attributes that a log line and a metric both carry.
var sharedKeys = []string{methodKey, reasonKey, outcomeKey}

// TestLogEvent_MatchesMetrics: for each kind of event, the log line names
// rpc.method, slidejwt.reason and slidejwt.refresh.outcome exactly as
// otelslidejwt's counters do, with the same values: a line has such an
// attribute if and only if a counter recorded the event with it.
func TestLogEvent_MatchesMetrics(t *testing.T) {
	echo, refresh := demov1.DemoService_Echo_FullMethodName, slidejwtv1.TokenService_Refresh_FullMethodName
	storeDown := status.Error(codes.Unavailable, "slidejwt: revocation list unavailable")
	tests := []struct {
		name string
		e    interceptor.Event
	}{
		{"renewed", interceptor.Event{Kind: interceptor.EventRenewed, Method: echo}},
		{"renewal failed", interceptor.Event{Kind: interceptor.EventRenewalFailed, Method: echo, Err: errors.New("sign: no key")}},
		{"rejected, token invalid", interceptor.Event{Kind: interceptor.EventRejected, Method: echo, Reason: interceptor.ReasonTokenInvalid}},
		{"rejected, session revoked", interceptor.Event{Kind: interceptor.EventRejected, Method: echo, Reason: interceptor.ReasonSessionRevoked}},
		{"rejected, store down", interceptor.Event{Kind: interceptor.EventRejected, Method: echo, Err: storeDown}},
		{"rejected, deadline", interceptor.Event{Kind: interceptor.EventRejected, Method: echo, Err: context.DeadlineExceeded}},
		{"rejected, other error", interceptor.Event{Kind: interceptor.EventRejected, Method: echo, Err: errors.New("store: boom")}},
		{"refresh rejected, reused", interceptor.Event{Kind: interceptor.EventRejected, Method: refresh, Reason: interceptor.ReasonSessionRevoked, Outcome: store.Reused}},
		{"refresh rejected, invalid", interceptor.Event{Kind: interceptor.EventRejected, Method: refresh, Reason: interceptor.ReasonTokenInvalid}},
		{"refresh rejected, store down", interceptor.Event{Kind: interceptor.EventRejected, Method: refresh, Err: status.Error(codes.Unavailable, "x")}},
		{"refreshed", interceptor.Event{Kind: interceptor.EventRefreshed, Method: refresh, Outcome: store.OK}},
		{"refreshed, replay", interceptor.Event{Kind: interceptor.EventRefreshed, Method: refresh, Outcome: store.Replay}},
		{"stream ended, expired", interceptor.Event{Kind: interceptor.EventStreamEnded, Method: demov1.DemoService_Watch_FullMethodName, Reason: interceptor.ReasonSessionExpired}},
		{"stream ended, store down", interceptor.Event{Kind: interceptor.EventStreamEnded, Method: demov1.DemoService_Chat_FullMethodName, Err: storeDown}},
		{"login", interceptor.Event{Kind: interceptor.EventSessionStarted, Subject: "alice", SessionID: "s1"}},
		{"revoked", interceptor.Event{Kind: interceptor.EventRevoked, SessionID: "s1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			logEvent(slog.New(slog.NewTextHandler(&buf, nil)))(context.Background(), tt.e)
			if n := strings.Count(buf.String(), "\n"); n != 1 {
				t.Fatalf("logged %d lines, want 1: %q", n, buf.String())
			}
			logged := map[string]string{}
			for _, a := range slogAttrs(t, buf.String()) {
				logged[a[0]] = a[1]
			}

			reader := sdkmetric.NewManualReader()
			hook := otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
			hook(context.Background(), tt.e)
			recorded := counterAttrs(t, reader)

			for _, k := range sharedKeys {
				lv, inLog := logged[k]
				mv, inMetric := recorded[k]
				switch {
				case inLog != inMetric:
					t.Errorf("%s: in the log line %t (%q), in a counter %t (%q); want both or neither", k, inLog, lv, inMetric, mv)
				case lv != mv:
					t.Errorf("%s: log %q, counter %q", k, lv, mv)
				}
			}
		})
	}
}

// counterAttrs returns the attributes of the counters that reader has
// seen move, key by key. It fails the test if two counters disagree on a
// key's value.
func counterAttrs(t *testing.T, reader *sdkmetric.ManualReader) map[string]string {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				for _, kv := range dp.Attributes.ToSlice() {
					k, v := string(kv.Key), kv.Value.String()
					if old, seen := out[k]; seen && old != v {
						t.Fatalf("%s: %s says %q, another counter %q", m.Name, k, v, old)
					}
					out[k] = v
				}
			}
		}
	}
	return out
}

// revocationDown is a session store whose IsRevoked fails, as Redis's
// does while it is unreachable.
type revocationDown struct{ memstore.SessionStore }

func (*revocationDown) IsRevoked(context.Context, string, time.Time) (bool, error) {
	return false, errors.New("redisstore: is revoked: dial tcp 127.0.0.1:6379: connect: connection refused")
}

// TestLogEvent_StoreDown: a call refused because the session store cannot
// answer is logged with slidejwt.reason=UNAVAILABLE (the code the client
// gets), the metric's value, not UNSPECIFIED.
func TestLogEvent_StoreDown(t *testing.T) {
	key, err := interceptor.NewKey("k", jwt.SigningMethodHS256, []byte(strings.Repeat("s", 32)))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	minter, err := interceptor.NewServer(keys)
	if err != nil {
		t.Fatal(err)
	}
	s, err := minter.StartSession(context.Background(), "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sessions, err := interceptor.NewServer(keys, interceptor.WithSessionStore(&revocationDown{}),
		interceptor.WithEventHook(logEvent(slog.New(slog.NewTextHandler(&buf, nil)))))
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+s.AccessToken))
	info := &grpc.UnaryServerInfo{FullMethod: demov1.DemoService_Echo_FullMethodName}
	_, err = sessions.UnaryServerInterceptor()(ctx, nil, info, func(context.Context, any) (any, error) {
		t.Error("the handler ran")
		return nil, nil
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call: %v, want Unavailable", err)
	}
	attrs := map[string]string{}
	for _, a := range slogAttrs(t, buf.String()) {
		attrs[a[0]] = a[1]
	}
	if attrs["msg"] != "rejected" || attrs[reasonKey] != "UNAVAILABLE" || attrs[methodKey] != "demo.v1.DemoService/Echo" {
		t.Errorf("log %q: want msg=rejected %s=UNAVAILABLE %s=demo.v1.DemoService/Echo", buf.String(), reasonKey, methodKey)
	}
	if strings.Contains(buf.String(), s.AccessToken[strings.LastIndexByte(s.AccessToken, '.')+1:]) {
		t.Errorf("log contains the token's signature")
	}
}
