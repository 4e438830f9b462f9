package interceptor

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// errsHandlerRan returns the MetadataHandlerRan value of err's slidejwt
// ErrorInfo, and whether err has such an ErrorInfo carrying the key.
func errsHandlerRan(err error) (string, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return "", false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			v, ok := info.GetMetadata()[MetadataHandlerRan]
			return v, ok
		}
	}
	return "", false
}

// errsInfo is an ErrorInfo detail.
func errsInfo(domain, reason string, md map[string]string) *errdetails.ErrorInfo {
	return &errdetails.ErrorInfo{Domain: domain, Reason: reason, Metadata: md}
}

// errsStatus is a status error with details.
func errsStatus(t testing.TB, code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	t.Helper()
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// errsSameStatus fails unless got and want are the same status: code,
// message and details, in order. Details are compared unpacked: an Any
// holding a map does not marshal deterministically.
func errsSameStatus(t testing.TB, got, want error) {
	t.Helper()
	g, w := status.Convert(got), status.Convert(want)
	if g.Code() != w.Code() || g.Message() != w.Message() {
		t.Errorf("status = %v %q, want %v %q", g.Code(), g.Message(), w.Code(), w.Message())
	}
	gd, wd := g.Details(), w.Details()
	if len(gd) != len(wd) {
		t.Fatalf("details = %v, want %v", gd, wd)
	}
	for i := range gd {
		gm, gok := gd[i].(proto.Message)
		wm, wok := wd[i].(proto.Message)
		if !gok || !wok || !proto.Equal(gm, wm) {
			t.Errorf("detail %d = %v, want %v", i, gd[i], wd[i])
		}
	}
}

// TestMarkHandlerRan: a slidejwt rejection that a handler returns keeps
// its reason, marked handler_ran "true", only when it is about the
// caller's token: made in this process, or relayed by a Forwarder. Any
// other slidejwt rejection becomes codes.Unavailable without details;
// errors without a slidejwt ErrorInfo pass unchanged.
func TestMarkHandlerRan(t *testing.T) {
	const msg = "slidejwt: token expired"
	expired := WireReason(ReasonTokenExpired)
	ran := func(v string) map[string]string { return map[string]string{MetadataHandlerRan: v} }
	retry := &errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}
	plain := errors.New("disk full")
	before := reject(ReasonTokenExpired, "")
	before.beforeHandler = true
	forwarded := func(err error) error { return &forwardedError{err} }

	for _, tc := range []struct {
		name string
		in   error
		want error // nil: in is returned as it is
	}{
		{"nil", nil, nil},
		{"not a status", plain, nil},
		{"context error", context.Canceled, nil},
		{"wrapped non-status", fmt.Errorf("relay: %w", plain), nil},
		{"status without details", status.Error(codes.NotFound, "no such row"), nil},
		{"other detail only", errsStatus(t, codes.Unavailable, "busy", retry), nil},
		{"other-domain ErrorInfo saying false",
			errsStatus(t, codes.Unauthenticated, "nope", errsInfo("example.com", "TOKEN_EXPIRED", ran("false"))), nil},
		{"a service's own rejection", &rejectedError{errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("false")))}, nil},

		// Not about the caller: another principal's rejection.
		{"slidejwt ErrorInfo saying false",
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("false"))), errForeignRejection},
		{"slidejwt ErrorInfo already true",
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true"))), errForeignRejection},
		{"slidejwt ErrorInfo with an unknown reason",
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, "NEW_REASON", ran("false"))), errForeignRejection},
		{"slidejwt ErrorInfo among others",
			errsStatus(t, codes.PermissionDenied, msg, retry, errsInfo(ErrorDomain, expired, nil)), errForeignRejection},
		{"wrapped slidejwt status", fmt.Errorf("inventory: %w",
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("false")))), errForeignRejection},

		// About the caller: relayed by a Forwarder.
		{"forwarded, already true",
			forwarded(errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true")))),
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true")))},
		{"forwarded, saying false",
			forwarded(errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("false")))),
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true")))},
		{"forwarded, wrapped by the handler",
			fmt.Errorf("inventory: %w", forwarded(errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("false"))))),
			errsStatus(t, codes.Unauthenticated, "inventory: rpc error: code = Unauthenticated desc = "+msg, errsInfo(ErrorDomain, expired, ran("true")))},
		{"forwarded, without metadata",
			forwarded(errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, nil))),
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true")))},
		{"forwarded, with a garbled marker",
			forwarded(errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("no")))),
			errsStatus(t, codes.Unauthenticated, msg, errsInfo(ErrorDomain, expired, ran("true")))},
		{"forwarded, with other metadata",
			forwarded(errsStatus(t, codes.PermissionDenied, msg, errsInfo(ErrorDomain, expired, map[string]string{"k": "v", MetadataHandlerRan: "false"}))),
			errsStatus(t, codes.PermissionDenied, msg, errsInfo(ErrorDomain, expired, map[string]string{"k": "v", MetadataHandlerRan: "true"}))},
		{"forwarded, mixed details: only slidejwt's changes",
			forwarded(errsStatus(t, codes.Unauthenticated, msg, retry, errsInfo("example.com", "X", ran("false")), errsInfo(ErrorDomain, expired, ran("false")))),
			errsStatus(t, codes.Unauthenticated, msg, retry, errsInfo("example.com", "X", ran("false")), errsInfo(ErrorDomain, expired, ran("true")))},

		// About the caller: made in this process.
		{"this server's rejection before a handler", before,
			errsStatus(t, codes.Unauthenticated, before.Error(), errsInfo(ErrorDomain, expired, ran("true")))},
		{"a rejection without the marker", reject(ReasonSessionRevoked, ""),
			errsStatus(t, codes.Unauthenticated, reject(ReasonSessionRevoked, "").Error(), errsInfo(ErrorDomain, WireReason(ReasonSessionRevoked), ran("true")))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inProto := proto.Clone(status.Convert(tc.in).Proto()).(*spb.Status)
			got := markHandlerRan(tc.in)
			if tc.want == nil {
				if got != tc.in {
					t.Fatalf("markHandlerRan(%v) = %v, want the error unchanged", tc.in, got)
				}
				return
			}
			errsSameStatus(t, got, tc.want)
			if tc.want == errForeignRejection {
				if _, ok := ReasonOf(got); ok {
					t.Errorf("ReasonOf(%v) reports a reason, want none", got)
				}
			} else if v, ok := errsHandlerRan(got); !ok || v != "true" {
				t.Errorf("%s = %q (present %v), want \"true\"", MetadataHandlerRan, v, ok)
			}
			// The input is not modified in place.
			errsSameStatus(t, tc.in, status.ErrorProto(inProto))
		})
	}
}

// errsRelaySvc is a TestService whose handlers return the error of relay,
// as a handler that relays a downstream call's error does.
type errsRelaySvc struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int64
	relay func(ctx context.Context) error
}

func (s *errsRelaySvc) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	return nil, s.relay(ctx)
}

func (s *errsRelaySvc) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	return s.relay(stream.Context())
}

func (s *errsRelaySvc) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	return s.relay(stream.Context())
}

// errsCall makes a call of kind and returns its error.
func errsCall(ctx context.Context, c testpb.TestServiceClient, kind string) error {
	switch kind {
	case streamServer:
		st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
		if err != nil {
			return err
		}
		return drain(st)
	case streamBidi:
		st, err := c.FullDuplexCall(ctx)
		if err != nil {
			return err
		}
		_ = st.CloseSend()
		_, err = st.Recv()
		return err
	}
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

// TestRelayedError_HandlerRan: a slidejwt rejection that a handler relays
// from a downstream slidejwt server, of a token that is not the caller's
// (here another session's, sent by hand), reaches the client as
// codes.Unavailable without a reason, never as a reason about the
// client's own session; an error without a slidejwt ErrorInfo passes
// unchanged. (A Forwarder's relay of the caller's own token keeps its
// reason: see TestForward_RejectionKeepsReason.)
func TestRelayedError_HandlerRan(t *testing.T) {
	// The downstream server rejects a lapsed token before its handler.
	down := newEnv(t)
	downTok := down.startSession(t, nil).AccessToken
	down.clock.Advance(DefaultTTL + DefaultLeeway)
	downClient := srvClient(t, down)
	downErr := errsCall(bearerCtx(downTok), downClient, "unary")
	wantReason(t, downErr, ReasonTokenExpired)
	if v, ok := errsHandlerRan(downErr); !ok || v != "false" {
		t.Fatalf("downstream %s = %q (present %v), want \"false\"", MetadataHandlerRan, v, ok)
	}
	wantRelayed := errForeignRejection

	foreign := errsStatus(t, codes.FailedPrecondition, "quota exceeded",
		errsInfo("example.com", "QUOTA", map[string]string{MetadataHandlerRan: "false"}),
		&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Minute)})

	for _, kind := range []string{"unary", streamServer, streamBidi} {
		for _, tc := range []struct {
			name  string
			relay func(ctx context.Context) error
			want  error
		}{
			{"downstream rejection", func(ctx context.Context) error {
				return errsCall(bearerCtx(downTok), downClient, "unary")
			}, wantRelayed},
			{"foreign error with details", func(context.Context) error { return foreign }, foreign},
		} {
			t.Run(kind+", "+tc.name, func(t *testing.T) {
				svc := &errsRelaySvc{relay: tc.relay}
				up := newEnv(t, withService(svc))
				s := up.startSession(t, nil)
				got := errsCall(bearerCtx(s.AccessToken), srvClient(t, up), kind)
				errsSameStatus(t, got, tc.want)
				if n := svc.calls.Load(); n != 1 {
					t.Errorf("handler ran %d times, want 1", n)
				}
			})
		}
	}
}

// TestRelayedError_HolderDoesNotRetry: a TOKEN_EXPIRED of another token
// that a handler relays from a downstream server reaches a holder with a
// refresh token as codes.Unavailable without a reason, so the holder
// neither refreshes nor retries the call or reopens the stream: the
// handler runs once, and the refresh token is not rotated.
func TestRelayedError_HolderDoesNotRetry(t *testing.T) {
	down := newEnv(t)
	downTok := down.startSession(t, nil).AccessToken
	down.clock.Advance(DefaultTTL + DefaultLeeway)
	downClient := srvClient(t, down)

	for _, kind := range []string{"unary", streamServer, streamBidi} {
		t.Run(kind, func(t *testing.T) {
			svc := &errsRelaySvc{relay: func(context.Context) error {
				return errsCall(bearerCtx(downTok), downClient, "unary")
			}}
			up := newEnv(t, withMemStore(), withService(svc))
			s := up.startSession(t, nil)
			var refreshes atomic.Int64
			h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(up.clock.Now),
				WithRefreshToken(s.RefreshToken),
				WithRefresher(RefreshFunc(func(ctx context.Context, rt string) (*slidejwtv1.TokenPair, error) {
					refreshes.Add(1)
					sess, err := up.server.Refresh(ctx, rt)
					return sess.TokenPair(), err
				})))
			if err != nil {
				t.Fatal(err)
			}
			conn := up.dial(t,
				grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
				grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
			err = errsCall(context.Background(), testpb.NewTestServiceClient(conn), kind)
			errsSameStatus(t, err, errForeignRejection)
			if r, ok := ReasonOf(err); ok {
				t.Errorf("client sees reason %v about a token it did not send", r)
			}
			if h.RefreshToken() != s.RefreshToken {
				t.Error("the refresh token was rotated")
			}
			if n := refreshes.Load(); n != 0 {
				t.Errorf("holder refreshed %d times, want 0", n)
			}
			if n := svc.calls.Load(); n != 1 {
				t.Errorf("handler ran %d times, want 1 (no retry)", n)
			}
		})
	}
}
