package interceptor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	srvEmptyMethod  = testpb.TestService_EmptyCall_FullMethodName
	srvUnaryMethod  = testpb.TestService_UnaryCall_FullMethodName
	srvOutputMethod = testpb.TestService_StreamingOutputCall_FullMethodName
	srvInputMethod  = testpb.TestService_StreamingInputCall_FullMethodName
	srvDuplexMethod = testpb.TestService_FullDuplexCall_FullMethodName

	// srvDueAfter is how long after login a renewal is due under the
	// default policy: the remaining 11 h are below RenewBefore (12 h).
	srvDueAfter = 13 * time.Hour
)

// srvClient is a TestService client on a plain connection: no holder, the
// test puts the token into the request metadata itself.
func srvClient(t testing.TB, e *testEnv) testpb.TestServiceClient {
	t.Helper()
	return testpb.NewTestServiceClient(e.dial(t))
}

// srvCheckRenewed verifies tok with the env's server at its current time and
// checks that it renews session s with exp wantExp.
func srvCheckRenewed(t testing.TB, e *testEnv, s Session, tok string, wantExp time.Time) {
	t.Helper()
	if tok == "" {
		t.Fatal("no renewed token, want one")
	}
	c, aerr := e.server.ver.Load().verify(tok)
	if aerr != nil {
		t.Fatalf("renewed token does not verify: %v", aerr)
	}
	if c.Subject != "alice" || c.SessionID != s.SessionID {
		t.Errorf("renewed token sub, sid = %q, %q; want %q, %q", c.Subject, c.SessionID, "alice", s.SessionID)
	}
	if got := c.ExpiresAt.Time; !got.Equal(wantExp) {
		t.Errorf("renewed exp = %v, want %v", got, wantExp)
	}
	if !c.AuthTime.Time.Equal(s.AuthTime) {
		t.Errorf("renewed auth_time = %v, want %v", c.AuthTime.Time, s.AuthTime)
	}
	if c.Fresh {
		t.Error("renewed token is fresh, want not fresh")
	}
}

// srvCheckClaims fails unless the last handler saw the claims of session s.
func srvCheckClaims(t testing.TB, e *testEnv, s Session) {
	t.Helper()
	c := e.svc.lastClaims.Load()
	if c == nil {
		t.Fatal("handler saw no claims")
	}
	if c.Subject != "alice" || c.SessionID != s.SessionID {
		t.Errorf("handler claims sub, sid = %q, %q; want %q, %q", c.Subject, c.SessionID, "alice", s.SessionID)
	}
}

func TestUnary_RenewedTokenInTrailer(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, map[string]any{"role": "admin"})
	client := srvClient(t, e)

	e.clock.Advance(srvDueAfter)
	renewed, err := unaryCall(t, client, s.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	srvCheckRenewed(t, e, s, renewed, t0.Add(srvDueAfter+DefaultTTL))

	// The custom claim survives the renewal.
	c, _ := e.server.ver.Load().verify(renewed)
	var role string
	if ok, err := c.Lookup("role", &role); !ok || err != nil || role != "admin" {
		t.Errorf("renewed role = %q, %v, %v; want %q, true, nil", role, ok, err, "admin")
	}

	// After the original token's idle window (and leeway) it is expired;
	// the renewed one still works and carries the custom claim.
	e.clock.Advance(DefaultTTL - srvDueAfter + DefaultLeeway)
	_, err = client.UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{})
	wantReason(t, err, ReasonTokenExpired)
	if _, err := client.UnaryCall(bearerCtx(renewed), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("call with renewed token: %v", err)
	}
	role = ""
	if ok, err := e.svc.lastClaims.Load().Lookup("role", &role); !ok || err != nil || role != "admin" {
		t.Errorf("handler role = %q, %v, %v; want %q, true, nil", role, ok, err, "admin")
	}

	// A gap longer than the renewed token's idle window ends the session.
	e.clock.Advance(DefaultTTL)
	_, err = client.UnaryCall(bearerCtx(renewed), &testpb.SimpleRequest{})
	wantReason(t, err, ReasonTokenExpired)
}

func TestUnary_RenewedTokenInTrailerOnHandlerError(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	client := srvClient(t, e)

	e.clock.Advance(srvDueAfter)
	var trailer metadata.MD
	req := &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "no such order"}}
	_, err := client.UnaryCall(bearerCtx(s.AccessToken), req, grpc.Trailer(&trailer))
	if got := status.Code(err); got != codes.NotFound {
		t.Fatalf("code = %v (err %v), want %v", got, err, codes.NotFound)
	}
	if got := e.svc.calls.Load(); got != 1 {
		t.Errorf("handler calls = %d, want 1", got)
	}
	srvCheckRenewed(t, e, s, renewedToken(t, trailer), t0.Add(srvDueAfter+DefaultTTL))
}

// TestUnary_RenewalThreshold checks the default RenewBefore (TTL/2) at the
// boundary and one second either side: renewal only when exp − now < 12 h.
func TestUnary_RenewalThreshold(t *testing.T) {
	for _, tc := range []struct {
		after time.Duration
		renew bool
	}{
		{0, false},
		{12*time.Hour - time.Second, false},
		{12 * time.Hour, false},
		{12*time.Hour + time.Second, true},
	} {
		t.Run(tc.after.String(), func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			e.clock.Advance(tc.after)
			var header, trailer metadata.MD
			_, err := srvClient(t, e).UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
			if err != nil {
				t.Fatal(err)
			}
			if got := renewedToken(t, header); got != "" {
				t.Errorf("unary header carries a renewed token, want none there")
			}
			got := renewedToken(t, trailer)
			if !tc.renew {
				if got != "" {
					t.Errorf("renewed token sent %v after login, want none", tc.after)
				}
				return
			}
			srvCheckRenewed(t, e, s, got, t0.Add(tc.after+DefaultTTL))
		})
	}
}

func TestUnary_HandlerSeesClaims(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, map[string]any{"tenant": "acme"})
	if _, err := srvClient(t, e).UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	srvCheckClaims(t, e, s)
	c := e.svc.lastClaims.Load()
	if !c.Fresh {
		t.Error("login token's claims not fresh, want fresh")
	}
	if !c.ExpiresAt.Time.Equal(s.Expiry) {
		t.Errorf("handler exp = %v, want %v", c.ExpiresAt.Time, s.Expiry)
	}
	var tenant string
	if ok, err := c.Lookup("tenant", &tenant); !ok || err != nil || tenant != "acme" {
		t.Errorf("tenant = %q, %v, %v; want %q, true, nil", tenant, ok, err, "acme")
	}
}

// srvRejection is a request the interceptors must reject before the
// handler runs: md is its request metadata; expire says the test must first
// move the env's clock past the token's exp.
type srvRejection struct {
	name   string
	md     []string
	expire bool
	want   Reason
}

// srvRejections returns the rejection cases for a new session of e.
func srvRejections(t testing.TB, e *testEnv) []srvRejection {
	s := e.startSession(t, nil)
	return []srvRejection{
		{"missing", nil, false, ReasonTokenMissing},
		{"basic scheme", []string{"authorization", "Basic " + s.AccessToken}, false, ReasonTokenMissing},
		{"garbage", []string{"authorization", "Bearer not.a.token"}, false, ReasonTokenInvalid},
		{"two values", []string{"authorization", "Bearer " + s.AccessToken, "authorization", "Bearer " + s.AccessToken}, false, ReasonTokenInvalid},
		{"expired", []string{"authorization", "Bearer " + s.AccessToken}, true, ReasonTokenExpired},
	}
}

func TestUnary_RejectedHandlerNotRun(t *testing.T) {
	e := newEnv(t)
	client := srvClient(t, e)
	for _, tc := range srvRejections(t, e) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.expire {
				e.clock.Set(t0.Add(DefaultTTL + DefaultLeeway))
				defer e.clock.Set(t0)
			}
			ctx := metadata.AppendToOutgoingContext(context.Background(), tc.md...)
			var trailer metadata.MD
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
			wantReason(t, err, tc.want)
			if got := e.svc.calls.Load(); got != 0 {
				t.Errorf("handler calls = %d, want 0", got)
			}
			if got := renewedToken(t, trailer); got != "" {
				t.Error("rejected call carries a renewed token")
			}
		})
	}
}

// srvStreamKind runs one call of a streaming method on a TestService
// client and returns the response header, read once the first message has
// arrived (or via stream.Header() when there is no message before the end),
// the trailer and the final error.
type srvStreamKind struct {
	name   string
	method string
	call   func(ctx context.Context, c testpb.TestServiceClient) (header, trailer metadata.MD, err error)
}

var srvStreamKinds = []srvStreamKind{
	{"server streaming", srvOutputMethod, func(ctx context.Context, c testpb.TestServiceClient) (metadata.MD, metadata.MD, error) {
		req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}, {}, {}}}
		stream, err := c.StreamingOutputCall(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		if _, err := stream.Recv(); err != nil {
			return nil, stream.Trailer(), err
		}
		// The first message has arrived, and so has the header.
		header, err := stream.Header()
		if err != nil {
			return nil, nil, err
		}
		n := 1
		for {
			_, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return header, stream.Trailer(), err
			}
			n++
		}
		if n != 3 {
			return header, stream.Trailer(), fmt.Errorf("got %d messages, want 3", n)
		}
		return header, stream.Trailer(), nil
	}},
	{"client streaming", srvInputMethod, func(ctx context.Context, c testpb.TestServiceClient) (metadata.MD, metadata.MD, error) {
		stream, err := c.StreamingInputCall(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, body := range []string{"ab", "cde"} {
			if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(body)}}); err != nil {
				break // the status comes from CloseAndRecv
			}
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			return nil, stream.Trailer(), err
		}
		header, err := stream.Header()
		if err != nil {
			return nil, nil, err
		}
		if got := resp.GetAggregatedPayloadSize(); got != 5 {
			return header, stream.Trailer(), fmt.Errorf("aggregated size %d, want 5", got)
		}
		return header, stream.Trailer(), nil
	}},
	{"bidi streaming", srvDuplexMethod, func(ctx context.Context, c testpb.TestServiceClient) (metadata.MD, metadata.MD, error) {
		stream, err := c.FullDuplexCall(ctx)
		if err != nil {
			return nil, nil, err
		}
		req := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("ping")}}
		if err := stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
			return nil, nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, stream.Trailer(), err
		}
		header, err := stream.Header()
		if err != nil {
			return nil, nil, err
		}
		if got := string(resp.GetPayload().GetBody()); got != "ping" {
			return header, nil, fmt.Errorf("echo %q, want %q", got, "ping")
		}
		if err := stream.CloseSend(); err != nil {
			return header, nil, err
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			return header, stream.Trailer(), fmt.Errorf("second Recv: %v, want io.EOF", err)
		}
		return header, stream.Trailer(), nil
	}},
}

func TestStream_RenewedTokenInHeaderAndTrailer(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			e.clock.Advance(srvDueAfter)
			header, trailer, err := k.call(bearerCtx(s.AccessToken), srvClient(t, e))
			if err != nil {
				t.Fatal(err)
			}
			want := t0.Add(srvDueAfter + DefaultTTL)
			inHeader, inTrailer := renewedToken(t, header), renewedToken(t, trailer)
			srvCheckRenewed(t, e, s, inHeader, want)
			srvCheckRenewed(t, e, s, inTrailer, want)
			if inHeader != inTrailer {
				t.Error("header and trailer carry different renewed tokens, want the same one")
			}
			srvCheckClaims(t, e, s)
		})
	}
}

func TestStream_NoRenewalWhenNotDue(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			e.clock.Advance(12 * time.Hour) // remaining 12 h = RenewBefore: not below it
			header, trailer, err := k.call(bearerCtx(s.AccessToken), srvClient(t, e))
			if err != nil {
				t.Fatal(err)
			}
			if renewedToken(t, header) != "" || renewedToken(t, trailer) != "" {
				t.Error("renewed token sent, want none")
			}
			srvCheckClaims(t, e, s)
		})
	}
}

func TestStream_RejectedHandlerNotRun(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newEnv(t)
			client := srvClient(t, e)
			for _, tc := range srvRejections(t, e) {
				t.Run(tc.name, func(t *testing.T) {
					if tc.expire {
						e.clock.Set(t0.Add(DefaultTTL + DefaultLeeway))
						defer e.clock.Set(t0)
					}
					ctx := metadata.AppendToOutgoingContext(context.Background(), tc.md...)
					_, trailer, err := k.call(ctx, client)
					wantReason(t, err, tc.want)
					if got := e.svc.calls.Load(); got != 0 {
						t.Errorf("handler calls = %d, want 0", got)
					}
					if renewedToken(t, trailer) != "" {
						t.Error("rejected call carries a renewed token")
					}
				})
			}
		})
	}
}

func TestUnary_ExemptMethodOption(t *testing.T) {
	e := newEnv(t, withServerOptions(WithExemptMethods(srvEmptyMethod)))
	s := e.startSession(t, nil)
	client := srvClient(t, e)

	// Without a token, and with one: the handler runs and sees no claims.
	for _, tok := range []string{"", s.AccessToken} {
		if _, err := client.EmptyCall(bearerCtx(tok), &testpb.Empty{}); err != nil {
			t.Fatalf("exempt call (token %v): %v", tok != "", err)
		}
	}
	if got := e.svc.calls.Load(); got != 2 {
		t.Errorf("handler calls = %d, want 2", got)
	}
	if c := e.svc.lastClaims.Load(); c != nil {
		t.Errorf("exempt handler saw claims for sid %q, want none", c.SessionID)
	}

	// The exemption is per method.
	_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	wantReason(t, err, ReasonTokenMissing)
	if got := e.svc.calls.Load(); got != 2 {
		t.Errorf("handler calls = %d after a rejection, want 2", got)
	}
}

// srvChainLog records what the interceptors around ours saw: one entry per
// interceptor run, "name method claims=bool".
type srvChainLog struct {
	mu      sync.Mutex
	entries []string
}

func (l *srvChainLog) add(name, method string, ctx context.Context) {
	_, ok := ClaimsFromContext(ctx)
	l.mu.Lock()
	l.entries = append(l.entries, fmt.Sprintf("%s %s claims=%v", name, method, ok))
	l.mu.Unlock()
}

func (l *srvChainLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := l.entries
	l.entries = nil
	return got
}

func (l *srvChainLog) unary(name string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		l.add(name, info.FullMethod, ctx)
		return handler(ctx, req)
	}
}

func (l *srvChainLog) stream(name string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		l.add(name, info.FullMethod, ss.Context())
		return handler(srv, ss)
	}
}

// srvSelectorEnv wires our interceptors through go-grpc-middleware's
// selector, which skips EmptyCall and StreamingOutputCall, between a
// recovery interceptor plus a recording one before ours and a recording one
// after.
func srvSelectorEnv(t testing.TB, log *srvChainLog) *testEnv {
	public := selector.MatchFunc(func(_ context.Context, cm interceptors.CallMeta) bool {
		m := cm.FullMethod()
		return m != srvEmptyMethod && m != srvOutputMethod
	})
	return newEnv(t, withGRPC(func(s *Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(
				recovery.UnaryServerInterceptor(),
				log.unary("before"),
				selector.UnaryServerInterceptor(s.UnaryServerInterceptor(), public),
				log.unary("after"),
			),
			grpc.ChainStreamInterceptor(
				recovery.StreamServerInterceptor(),
				log.stream("before"),
				selector.StreamServerInterceptor(s.StreamServerInterceptor(), public),
				log.stream("after"),
			),
		}
	}))
}

func TestUnary_SelectorExemptionChained(t *testing.T) {
	log := new(srvChainLog)
	e := srvSelectorEnv(t, log)
	s := e.startSession(t, nil)
	client := srvClient(t, e)

	// Authenticated and renewed through the chain.
	e.clock.Advance(srvDueAfter)
	renewed, err := unaryCall(t, client, s.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	srvCheckRenewed(t, e, s, renewed, t0.Add(srvDueAfter+DefaultTTL))
	srvCheckClaims(t, e, s)
	want := []string{"before " + srvUnaryMethod + " claims=false", "after " + srvUnaryMethod + " claims=true"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}

	// Skipped by the selector: passes without a token, and sees no claims.
	e.svc.lastClaims.Store(nil)
	if _, err := client.EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatalf("selector-exempt call: %v", err)
	}
	if c := e.svc.lastClaims.Load(); c != nil {
		t.Error("selector-exempt handler saw claims, want none")
	}
	want = []string{"before " + srvEmptyMethod + " claims=false", "after " + srvEmptyMethod + " claims=false"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}

	// Rejected: the interceptor after ours and the handler do not run.
	calls := e.svc.calls.Load()
	_, err = client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	wantReason(t, err, ReasonTokenMissing)
	want = []string{"before " + srvUnaryMethod + " claims=false"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}
	if got := e.svc.calls.Load(); got != calls {
		t.Errorf("handler calls = %d, want %d", got, calls)
	}
}

func TestStream_SelectorExemptionChained(t *testing.T) {
	log := new(srvChainLog)
	e := srvSelectorEnv(t, log)
	s := e.startSession(t, nil)
	client := srvClient(t, e)
	kind := func(method string) srvStreamKind {
		for _, k := range srvStreamKinds {
			if k.method == method {
				return k
			}
		}
		t.Fatalf("no stream kind for %s", method)
		return srvStreamKind{}
	}

	// Authenticated and renewed through the chain.
	e.clock.Advance(srvDueAfter)
	header, trailer, err := kind(srvDuplexMethod).call(bearerCtx(s.AccessToken), client)
	if err != nil {
		t.Fatal(err)
	}
	srvCheckRenewed(t, e, s, renewedToken(t, header), t0.Add(srvDueAfter+DefaultTTL))
	srvCheckRenewed(t, e, s, renewedToken(t, trailer), t0.Add(srvDueAfter+DefaultTTL))
	srvCheckClaims(t, e, s)
	want := []string{"before " + srvDuplexMethod + " claims=false", "after " + srvDuplexMethod + " claims=true"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}

	// Skipped by the selector: passes without a token.
	e.svc.lastClaims.Store(nil)
	if _, _, err := kind(srvOutputMethod).call(context.Background(), client); err != nil {
		t.Fatalf("selector-exempt stream: %v", err)
	}
	if c := e.svc.lastClaims.Load(); c != nil {
		t.Error("selector-exempt handler saw claims, want none")
	}
	want = []string{"before " + srvOutputMethod + " claims=false", "after " + srvOutputMethod + " claims=false"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}

	// Rejected: the interceptor after ours and the handler do not run.
	calls := e.svc.calls.Load()
	_, _, err = kind(srvInputMethod).call(context.Background(), client)
	wantReason(t, err, ReasonTokenMissing)
	want = []string{"before " + srvInputMethod + " claims=false"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("chain = %q, want %q", got, want)
	}
	if got := e.svc.calls.Load(); got != calls {
		t.Errorf("handler calls = %d, want %d", got, calls)
	}
}

// srvAuthFuncEnv wires the Server through go-grpc-middleware's auth
// interceptors, with EmptyCall exempt by option.
func srvAuthFuncEnv(t testing.TB) *testEnv {
	return newEnv(t, withServerOptions(WithExemptMethods(srvEmptyMethod)), withGRPC(func(s *Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(s.AuthFunc())),
			grpc.ChainStreamInterceptor(auth.StreamServerInterceptor(s.AuthFunc())),
		}
	}))
}

func TestUnary_AuthFunc(t *testing.T) {
	e := srvAuthFuncEnv(t)
	s := e.startSession(t, nil)
	client := srvClient(t, e)

	// Authenticated, not due.
	var header, trailer metadata.MD
	if _, err := client.UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	srvCheckClaims(t, e, s)
	if renewedToken(t, header) != "" || renewedToken(t, trailer) != "" {
		t.Error("renewed token sent before it was due")
	}

	// Due: renewed in both header and trailer, since an AuthFunc cannot tell
	// a unary call from a stream.
	e.clock.Advance(srvDueAfter)
	if _, err := client.UnaryCall(bearerCtx(s.AccessToken), &testpb.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
		t.Fatal(err)
	}
	want := t0.Add(srvDueAfter + DefaultTTL)
	srvCheckRenewed(t, e, s, renewedToken(t, header), want)
	srvCheckRenewed(t, e, s, renewedToken(t, trailer), want)

	// Exempt method passes without a token.
	e.svc.lastClaims.Store(nil)
	if _, err := client.EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatalf("exempt call: %v", err)
	}
	if e.svc.lastClaims.Load() != nil {
		t.Error("exempt handler saw claims, want none")
	}

	calls := e.svc.calls.Load()
	e.clock.Set(t0)
	for _, tc := range srvRejections(t, e) {
		t.Run(tc.name, func(t *testing.T) {
			if tc.expire {
				e.clock.Set(t0.Add(DefaultTTL + DefaultLeeway))
				defer e.clock.Set(t0)
			}
			ctx := metadata.AppendToOutgoingContext(context.Background(), tc.md...)
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			wantReason(t, err, tc.want)
			if got := e.svc.calls.Load(); got != calls {
				t.Errorf("handler calls = %d, want %d", got, calls)
			}
		})
	}
}

func TestStream_AuthFunc(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			e := srvAuthFuncEnv(t)
			s := e.startSession(t, nil)
			client := srvClient(t, e)

			e.clock.Advance(srvDueAfter)
			header, trailer, err := k.call(bearerCtx(s.AccessToken), client)
			if err != nil {
				t.Fatal(err)
			}
			want := t0.Add(srvDueAfter + DefaultTTL)
			srvCheckRenewed(t, e, s, renewedToken(t, header), want)
			srvCheckRenewed(t, e, s, renewedToken(t, trailer), want)
			srvCheckClaims(t, e, s)

			calls := e.svc.calls.Load()
			_, _, err = k.call(bearerCtx("garbage"), client)
			wantReason(t, err, ReasonTokenInvalid)
			_, _, err = k.call(context.Background(), client)
			wantReason(t, err, ReasonTokenMissing)
			if got := e.svc.calls.Load(); got != calls {
				t.Errorf("handler calls = %d, want %d", got, calls)
			}
		})
	}
}

// srvCheckNoToken fails if any field of ev holds a token or one of its
// payload or signature segments.
func srvCheckNoToken(t testing.TB, ev Event, tokens ...string) {
	t.Helper()
	text := fmt.Sprintf("%#v %v", ev, ev)
	if ev.Err != nil {
		text += " " + ev.Err.Error()
	}
	for _, tok := range tokens {
		parts := strings.Split(tok, ".")
		for _, p := range append([]string{tok}, parts[1:]...) {
			if p != "" && strings.Contains(text, p) {
				t.Errorf("%v event contains token text", ev.Kind)
			}
		}
	}
}

// srvWantEvent checks that evs is exactly one event of kind for method
// with reason, session s (when non-nil) and expiry exp (when non-zero).
func srvWantEvent(t testing.TB, evs []Event, kind EventKind, method string, reason Reason, s *Session, exp time.Time) {
	t.Helper()
	if len(evs) != 1 {
		t.Fatalf("got %d events, want 1: %v", len(evs), evs)
	}
	ev := evs[0]
	if ev.Kind != kind || ev.Method != method || ev.Reason != reason {
		t.Errorf("event = {%v %s %q}, want {%v %s %q}", ev.Kind, ev.Method, ev.Reason, kind, method, reason)
	}
	if s != nil && (ev.Subject != "alice" || ev.SessionID != s.SessionID) {
		t.Errorf("event sub, sid = %q, %q; want %q, %q", ev.Subject, ev.SessionID, "alice", s.SessionID)
	}
	if s == nil && (ev.Subject != "" || ev.SessionID != "") {
		t.Errorf("event sub, sid = %q, %q; want empty", ev.Subject, ev.SessionID)
	}
	if !exp.IsZero() && !ev.Expiry.Equal(exp) {
		t.Errorf("event expiry = %v, want %v", ev.Expiry, exp)
	}
	if (kind == EventRejected) != (ev.Err != nil) {
		t.Errorf("event err = %v for kind %v", ev.Err, kind)
	}
}

func TestUnary_EventHook(t *testing.T) {
	e := newEnv(t, withServerOptions(WithExemptMethods(srvEmptyMethod)))
	log := e.events
	s := e.startSession(t, nil)
	client := srvClient(t, e)
	if evs := log.take(); len(evs) != 1 || evs[0].Kind != EventSessionStarted || evs[0].SessionID != s.SessionID {
		t.Fatalf("events after StartSession = %v, want one %v", evs, EventSessionStarted)
	}

	var trailer metadata.MD
	call := func(tok string) error {
		trailer = nil
		_, err := client.UnaryCall(bearerCtx(tok), &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
		return err
	}
	if err := call(s.AccessToken); err != nil {
		t.Fatal(err)
	}
	evs := log.take()
	srvWantEvent(t, evs, EventAuthenticated, srvUnaryMethod, noReason, &s, s.Expiry)
	srvCheckNoToken(t, evs[0], s.AccessToken)

	e.clock.Advance(srvDueAfter)
	if err := call(s.AccessToken); err != nil {
		t.Fatal(err)
	}
	renewed := renewedToken(t, trailer)
	evs = log.take()
	srvWantEvent(t, evs, EventRenewed, srvUnaryMethod, noReason, &s, t0.Add(srvDueAfter+DefaultTTL))
	srvCheckNoToken(t, evs[0], s.AccessToken, renewed)

	if _, err := client.EmptyCall(context.Background(), &testpb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if evs := log.take(); len(evs) != 0 {
		t.Errorf("exempt call produced events %v, want none", evs)
	}

	wantReason(t, call(""), ReasonTokenMissing)
	srvWantEvent(t, log.take(), EventRejected, srvUnaryMethod, ReasonTokenMissing, nil, time.Time{})

	garbage := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJlLWdhcmJhZ2U"
	wantReason(t, call(garbage), ReasonTokenInvalid)
	evs = log.take()
	srvWantEvent(t, evs, EventRejected, srvUnaryMethod, ReasonTokenInvalid, nil, time.Time{})
	srvCheckNoToken(t, evs[0], garbage)

	e.clock.Set(t0.Add(DefaultTTL + DefaultLeeway))
	wantReason(t, call(s.AccessToken), ReasonTokenExpired)
	evs = log.take()
	srvWantEvent(t, evs, EventRejected, srvUnaryMethod, ReasonTokenExpired, &s, time.Time{})
	srvCheckNoToken(t, evs[0], s.AccessToken)
}

func TestStream_EventHook(t *testing.T) {
	for _, k := range srvStreamKinds {
		t.Run(k.name, func(t *testing.T) {
			e := newEnv(t)
			log := e.events
			s := e.startSession(t, nil)
			client := srvClient(t, e)
			log.take()

			if _, _, err := k.call(bearerCtx(s.AccessToken), client); err != nil {
				t.Fatal(err)
			}
			evs := log.take()
			srvWantEvent(t, evs, EventAuthenticated, k.method, noReason, &s, s.Expiry)
			srvCheckNoToken(t, evs[0], s.AccessToken)

			e.clock.Advance(srvDueAfter)
			header, _, err := k.call(bearerCtx(s.AccessToken), client)
			if err != nil {
				t.Fatal(err)
			}
			evs = log.take()
			srvWantEvent(t, evs, EventRenewed, k.method, noReason, &s, t0.Add(srvDueAfter+DefaultTTL))
			srvCheckNoToken(t, evs[0], s.AccessToken, renewedToken(t, header))

			_, _, err = k.call(context.Background(), client)
			wantReason(t, err, ReasonTokenMissing)
			srvWantEvent(t, log.take(), EventRejected, k.method, ReasonTokenMissing, nil, time.Time{})
		})
	}
}

// TestStream_RenewalInTrailerWhenHeaderSent: an earlier interceptor that
// already sent the response header does not stop a stream whose renewal
// is due: the handler runs, messages flow, and the renewed token arrives
// in the trailer.
func TestStream_RenewalInTrailerWhenHeaderSent(t *testing.T) {
	for _, kind := range []string{streamServer, streamBidi} {
		t.Run(kind, func(t *testing.T) {
			requestID := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
				if err := ss.SendHeader(metadata.Pairs("x-request-id", "r1")); err != nil {
					return err
				}
				return handler(srv, ss)
			}
			e := newEnv(t, withGRPC(func(s *Server) []grpc.ServerOption {
				return []grpc.ServerOption{
					grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
					grpc.ChainStreamInterceptor(requestID, s.StreamServerInterceptor()),
				}
			}))
			s := e.startSession(t, nil)
			client := srvClient(t, e)
			e.clock.Advance(srvDueAfter)
			ctx := bearerCtx(s.AccessToken)

			const n = 2
			var got int
			var hdr, tr metadata.MD
			switch kind {
			case streamServer:
				st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
					ResponseParameters: []*testpb.ResponseParameters{{}, {}},
				})
				if err != nil {
					t.Fatal(err)
				}
				for ; ; got++ {
					if _, err := st.Recv(); err != nil {
						if !errors.Is(err, io.EOF) {
							t.Fatalf("after %d messages: %v", got, err)
						}
						break
					}
				}
				hdr, _ = st.Header()
				tr = st.Trailer()
			case streamBidi:
				st, err := client.FullDuplexCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for range n {
					if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
						t.Fatal(err)
					}
					if _, err := st.Recv(); err != nil {
						t.Fatalf("echo %d: %v", got, err)
					}
					got++
				}
				_ = st.CloseSend()
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("end of stream: %v, want io.EOF", err)
				}
				hdr, _ = st.Header()
				tr = st.Trailer()
			}
			if got != n {
				t.Fatalf("%d messages, want %d", got, n)
			}
			if calls := e.svc.calls.Load(); calls != 1 {
				t.Fatalf("handler ran %d times, want 1", calls)
			}
			if v := hdr.Get("x-request-id"); len(v) != 1 || v[0] != "r1" {
				t.Errorf("header x-request-id = %v, want [r1]", v)
			}
			if v := renewedToken(t, hdr); v != "" {
				t.Error("renewal in a header that was sent before slidejwt ran")
			}
			srvCheckRenewed(t, e, s, renewedToken(t, tr), e.clock.Now().Add(DefaultTTL))
		})
	}
}
