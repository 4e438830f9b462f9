package interceptor

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
)

// streamWait bounds every wait of these tests for something that must
// happen; a silent stream must end well within it at a 20 ms check
// interval.
const streamWait = 2 * time.Second

// streamFast is the check interval of tests in which a silent stream
// must end; streamNever that of tests in which only messages may end it.
const (
	streamFast  = 20 * time.Millisecond
	streamNever = time.Hour
)

// The stream kinds of these tests.
const (
	streamBidi   = "bidi"
	streamServer = "server-stream"
	streamClient = "client-stream"
)

var streamMethods = map[string]string{
	streamBidi:   testpb.TestService_FullDuplexCall_FullMethodName,
	streamServer: testpb.TestService_StreamingOutputCall_FullMethodName,
	streamClient: testpb.TestService_StreamingInputCall_FullMethodName,
}

// streamEnd is how a handler of streamSvc returned: its error and its
// context's cause at that moment.
type streamEnd struct{ err, cause error }

// streamSvc is a TestService whose streams the test drives: its handlers
// send when told to (push) and report what they receive (got) and how
// they end (ended).
type streamSvc struct {
	testpb.UnimplementedTestServiceServer
	calls  atomic.Int64
	push   chan struct{}  // each value makes a server-streaming or bidi handler send one message
	pushed chan error     // the result of each such send
	got    chan struct{}  // a value per message a client-streaming handler received
	ended  chan streamEnd // a value per handler return
}

func newStreamSvc() *streamSvc {
	return &streamSvc{
		push:   make(chan struct{}, 1),
		pushed: make(chan error, 16),
		got:    make(chan struct{}, 64),
		ended:  make(chan streamEnd, 16),
	}
}

func (s *streamSvc) finish(ctx context.Context, err error) error {
	s.ended <- streamEnd{err: err, cause: context.Cause(ctx)}
	return err
}

// FullDuplexCall echoes every message, sends one more per push, and
// panics on a message whose body is "panic".
func (s *streamSvc) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	ctx := stream.Context()
	type received struct {
		req *testpb.StreamingOutputCallRequest
		err error
	}
	in := make(chan received)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case in <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		select {
		case r := <-in:
			if errors.Is(r.err, io.EOF) {
				return s.finish(ctx, nil)
			}
			if r.err != nil {
				return s.finish(ctx, r.err)
			}
			if string(r.req.GetPayload().GetBody()) == "panic" {
				panic("streamSvc: handler panic")
			}
			if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: r.req.GetPayload()}); err != nil {
				return s.finish(ctx, err)
			}
		case <-s.push:
			err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("push")}})
			s.pushed <- err
			if err != nil {
				return s.finish(ctx, err)
			}
		case <-ctx.Done():
			return s.finish(ctx, context.Cause(ctx))
		}
	}
}

// StreamingOutputCall sends one message per push until its context ends.
// A request whose payload is "panic" makes it panic instead.
func (s *streamSvc) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	if string(req.GetPayload().GetBody()) == "panic" {
		panic("streamSvc: handler panic")
	}
	ctx := stream.Context()
	for {
		select {
		case <-s.push:
			err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("push")}})
			s.pushed <- err
			if err != nil {
				return s.finish(ctx, err)
			}
		case <-ctx.Done():
			return s.finish(ctx, context.Cause(ctx))
		}
	}
}

// StreamingInputCall reports every message it receives and answers the
// half-close with the number of bytes received.
func (s *streamSvc) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	s.calls.Add(1)
	ctx := stream.Context()
	var n int32
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return s.finish(ctx, stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: n}))
		}
		if err != nil {
			return s.finish(ctx, err)
		}
		n += int32(len(req.GetPayload().GetBody()))
		s.got <- struct{}{}
	}
}

// handlerEnd returns how the handler ended.
func (s *streamSvc) handlerEnd(t testing.TB) streamEnd {
	t.Helper()
	select {
	case end := <-s.ended:
		return end
	case <-time.After(streamWait):
		t.Fatalf("handler still running %v after its stream ended", streamWait)
		return streamEnd{}
	}
}

// streamStore is a memstore.SessionStore that counts the liveness checks
// it answers and can be made to fail them.
type streamStore struct {
	*memstore.SessionStore
	checks atomic.Int64
	fail   atomic.Bool
}

func (s *streamStore) IsRevoked(ctx context.Context, sid string, now time.Time) (bool, error) {
	s.checks.Add(1)
	if s.fail.Load() {
		return false, errors.New("store: connection reset")
	}
	return s.SessionStore.IsRevoked(ctx, sid, now)
}

// waitChecks waits until the store has been asked n more times. With a
// silent stream the guard's checks are sequential, so after three more the
// second of them has read the clock after waitChecks began, and has
// finished.
func (s *streamStore) waitChecks(t testing.TB, n int) {
	t.Helper()
	want := s.checks.Load() + int64(n)
	deadline := time.Now().Add(streamWait)
	for s.checks.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("the stream guard made %d of %d checks within %v", n-int(want-s.checks.Load()), n, streamWait)
		}
		time.Sleep(time.Millisecond)
	}
}

// streamEnv is the test env serving a streamSvc, with a streamStore and
// plain clients (the test sets the token).
type streamEnv struct {
	*testEnv
	store  *streamStore
	svc    *streamSvc
	client testpb.TestServiceClient
	tokens slidejwtv1.TokenServiceClient
}

// newStreamEnv is newEnv with a streamSvc and a streamStore, and opts.
func newStreamEnv(t testing.TB, opts ...envOption) *streamEnv {
	t.Helper()
	e := &streamEnv{store: &streamStore{SessionStore: &memstore.SessionStore{}}, svc: newStreamSvc()}
	e.testEnv = newEnv(t, append([]envOption{withStore(e.store), withService(e.svc)}, opts...)...)
	e.client, e.tokens = e.clients(t)
	return e
}

// ended returns the EventStreamEnded events so far.
func (e *streamEnv) ended() []Event {
	var out []Event
	for _, ev := range e.events.take() {
		if ev.Kind == EventStreamEnded {
			out = append(out, ev)
		}
	}
	return out
}

// streamCall is an open stream of one kind, driven from the client.
type streamCall struct {
	t    testing.TB
	kind string
	svc  *streamSvc
	send func(body string) error // nil for server streaming
	recv chan error              // nil per message received, then the stream's error
	// pushErr is what the handler's Send returned for the last serverMsg.
	pushErr error
}

// streamOpen opens a stream of kind on c with ctx's metadata.
func streamOpen(t testing.TB, ctx context.Context, c testpb.TestServiceClient, svc *streamSvc, kind string) *streamCall {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	sc := &streamCall{t: t, kind: kind, svc: svc, recv: make(chan error, 64)}
	pump := func(recv func() error) {
		go func() {
			for {
				err := recv()
				sc.recv <- err
				if err != nil {
					return
				}
			}
		}()
	}
	switch kind {
	case streamBidi:
		st, err := c.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc.send = func(body string) error {
			return st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(body)}})
		}
		pump(func() error { _, err := st.Recv(); return err })
	case streamServer:
		st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
		if err != nil {
			t.Fatal(err)
		}
		pump(func() error { _, err := st.Recv(); return err })
	case streamClient:
		st, err := c.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc.send = func(body string) error {
			return st.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte(body)}})
		}
		pump(func() error { return st.RecvMsg(new(testpb.StreamingInputCallResponse)) })
	default:
		t.Fatalf("unknown stream kind %q", kind)
	}
	return sc
}

// clientMsg sends a message and returns nil once the server took it (bidi:
// its echo arrived; client streaming: the handler got it), or else the
// stream's error.
func (c *streamCall) clientMsg(body string) error {
	c.t.Helper()
	if err := c.send(body); err != nil && !errors.Is(err, io.EOF) {
		return err // io.EOF: the stream is gone, recv says why
	}
	var took <-chan struct{}
	if c.kind == streamClient {
		took = c.svc.got
	}
	select {
	case err := <-c.recv:
		if err == nil && c.kind == streamClient {
			c.t.Fatal("client stream answered before its half-close")
		}
		return err
	case <-took:
		return nil
	case <-time.After(streamWait):
		c.t.Fatalf("%s: no answer to a message within %v", c.kind, streamWait)
		return nil
	}
}

// serverMsg makes the handler send a message and returns nil once it
// arrived, or else the stream's error. It keeps the handler's Send result
// in pushErr.
func (c *streamCall) serverMsg() error {
	c.t.Helper()
	c.svc.push <- struct{}{}
	select {
	case c.pushErr = <-c.svc.pushed:
	case <-time.After(streamWait):
		c.t.Fatalf("%s: handler did not send within %v", c.kind, streamWait)
	}
	select {
	case err := <-c.recv:
		return err
	case <-time.After(streamWait):
		c.t.Fatalf("%s: pushed message did not arrive within %v", c.kind, streamWait)
		return nil
	}
}

// msg exchanges one message in the kind's natural direction.
func (c *streamCall) msg() error {
	c.t.Helper()
	if c.kind == streamServer {
		return c.serverMsg()
	}
	return c.clientMsg("ping")
}

// ping fails the test unless a message goes through.
func (c *streamCall) ping(what string) {
	c.t.Helper()
	if err := c.msg(); err != nil {
		c.t.Fatalf("%s: %s stream failed: %v", what, c.kind, err)
	}
}

// end waits, silent, up to d for the stream to end and returns its error.
func (c *streamCall) end(d time.Duration) error {
	c.t.Helper()
	select {
	case err := <-c.recv:
		if err == nil {
			c.t.Fatalf("%s: unexpected message on a silent stream", c.kind)
		}
		return err
	case <-time.After(d):
		c.t.Fatalf("%s: silent stream still open after %v", c.kind, d)
		return nil
	}
}

// streamWantEnded checks the client's error, the handler's context cause
// and the event of a stream that the server ended with reason.
func streamWantEnded(t testing.TB, e *streamEnv, s Session, kind string, err error, reason Reason) {
	t.Helper()
	wantReason(t, err, reason)
	if ran, ok := errsHandlerRan(err); !ok || ran != "true" {
		t.Errorf("%s = %q (present %v), want \"true\"", MetadataHandlerRan, ran, ok)
	}
	end := e.svc.handlerEnd(t)
	if got, ok := ReasonOf(end.cause); !ok || got != reason {
		t.Errorf("handler context cause = %v, want the %v rejection", end.cause, reason)
	}
	if n := e.svc.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	evs := e.ended()
	if len(evs) != 1 {
		t.Fatalf("%d %v events, want 1: %v", len(evs), EventStreamEnded, evs)
	}
	ev := evs[0]
	if ev.Reason != reason || ev.Method != streamMethods[kind] || ev.SessionID != s.SessionID || ev.Subject != "alice" || ev.Err == nil {
		t.Errorf("event = {%v %q %s sid %q sub %q err %v}, want {%v %q %s sid %q sub alice, an error}",
			ev.Kind, ev.Reason, ev.Method, ev.SessionID, ev.Subject, ev.Err, EventStreamEnded, reason, streamMethods[kind], s.SessionID)
	}
	srvCheckNoToken(t, ev, s.AccessToken, s.RefreshToken)
}

// TestStream_RevokedSessionEnds: a stream opened before its session is
// revoked ends with SESSION_REVOKED at its next message either way, or
// within the check interval when silent.
func TestStream_RevokedSessionEnds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		kind     string
		interval time.Duration
		logout   bool // TokenService.Revoke rather than Server.RevokeSession
		// act makes the stream notice; it returns the stream's error.
		act func(c *streamCall) error
		// serverSend: act made the handler send, which must fail too.
		serverSend bool
	}{
		{"bidi, client sends", streamBidi, streamNever, true, func(c *streamCall) error { return c.clientMsg("after") }, false},
		{"bidi, server sends", streamBidi, streamNever, false, (*streamCall).serverMsg, true},
		{"bidi, silent", streamBidi, streamFast, true, func(c *streamCall) error { return c.end(streamWait) }, false},
		{"server-stream, server sends", streamServer, streamNever, true, (*streamCall).serverMsg, true},
		{"server-stream, silent", streamServer, streamFast, false, func(c *streamCall) error { return c.end(streamWait) }, false},
		{"client-stream, client sends", streamClient, streamNever, false, func(c *streamCall) error { return c.clientMsg("after") }, false},
		{"client-stream, silent", streamClient, streamFast, true, func(c *streamCall) error { return c.end(streamWait) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(tc.interval)))
			s := e.startSession(t, nil)
			other := e.startSession(t, nil)
			sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, tc.kind)
			sc.ping("before the revocation")

			if tc.logout {
				if _, err := e.tokens.Revoke(bearerCtx(s.AccessToken), &slidejwtv1.RevokeRequest{}); err != nil {
					t.Fatalf("Revoke: %v", err)
				}
			} else if err := e.server.RevokeSession(context.Background(), s.SessionID); err != nil {
				t.Fatalf("RevokeSession: %v", err)
			}
			began := time.Now()
			err := tc.act(sc)
			if d := time.Since(began); d >= streamWait {
				t.Errorf("stream ended %v after the revocation, want < %v", d, streamWait)
			}
			streamWantEnded(t, e, s, tc.kind, err, ReasonSessionRevoked)
			if got, _ := ReasonOf(sc.pushErr); tc.serverSend && got != ReasonSessionRevoked {
				t.Errorf("handler's Send after the revocation = %v, want SESSION_REVOKED", sc.pushErr)
			}

			// The other session's streams are untouched.
			e.svc.calls.Store(0)
			streamOpen(t, bearerCtx(other.AccessToken), e.client, e.svc, tc.kind).ping("other session")
		})
	}
}

// TestStream_SilentRevokedWithinDefaultInterval: at the default check
// interval (1 s) a silent stream of a revoked session ends within about
// one interval.
func TestStream_SilentRevokedWithinDefaultInterval(t *testing.T) {
	const bound = 1500 * time.Millisecond
	e := newStreamEnv(t)
	if got := e.server.cfg.streamCheck; got != DefaultStreamCheckInterval {
		t.Fatalf("stream check interval = %v, want the default %v", got, DefaultStreamCheckInterval)
	}
	s := e.startSession(t, nil)
	sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
	sc.ping("before the revocation")
	if err := e.server.RevokeSession(context.Background(), s.SessionID); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	err := sc.end(streamWait)
	if d := time.Since(began); d > bound {
		t.Errorf("silent stream ended %v after the revocation, want within %v", d, bound)
	}
	streamWantEnded(t, e, s, streamBidi, err, ReasonSessionRevoked)
}

// TestStream_EndsAtSessionEnd: under a fake clock a stream works one tick
// before auth_time + MaxLifetime + leeway and ends with SESSION_EXPIRED at
// it, at its next message or, when silent, at the next check.
func TestStream_EndsAtSessionEnd(t *testing.T) {
	policy := Policy{TTL: time.Hour, MaxLifetime: 2 * time.Hour}
	for _, kind := range []string{streamBidi, streamServer, streamClient} {
		for _, silent := range []bool{false, true} {
			name := kind + ", next message"
			if silent {
				name = kind + ", silent"
			}
			t.Run(name, func(t *testing.T) {
				interval := streamNever
				if silent {
					interval = streamFast
				}
				e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(interval), WithPolicy(policy)))
				s := e.startSession(t, nil)
				until := e.server.Policy().AcceptUntil(s.AuthTime)
				if want := t0.Add(2*time.Hour + DefaultLeeway); !until.Equal(want) {
					t.Fatalf("AcceptUntil = %v, want %v", until, want)
				}
				sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, kind)
				sc.ping("at login")

				e.clock.Set(until.Add(-time.Nanosecond))
				if silent {
					e.store.waitChecks(t, 3)
				}
				sc.ping("one tick before the session's end + leeway")
				if kind == streamBidi {
					if err := sc.serverMsg(); err != nil {
						t.Fatalf("server send one tick before the end: %v", err)
					}
				}
				if evs := e.ended(); len(evs) != 0 {
					t.Fatalf("stream ended before its session: %v", evs)
				}

				e.clock.Set(until)
				var err error
				if silent {
					err = sc.end(streamWait)
				} else {
					err = sc.msg()
				}
				streamWantEnded(t, e, s, kind, err, ReasonSessionExpired)
			})
		}
	}
}

// TestStream_EndedStreamNotReplayed: the error that ends an open stream
// says the handler ran, and a holder with a refresh token neither
// refreshes nor reopens the stream.
func TestStream_EndedStreamNotReplayed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(t *testing.T, e *streamEnv, s Session)
		reason Reason
	}{
		{"revoked", func(t *testing.T, e *streamEnv, s Session) {
			if err := e.server.RevokeSession(context.Background(), s.SessionID); err != nil {
				t.Fatal(err)
			}
		}, ReasonSessionRevoked},
		{"session end", func(_ *testing.T, e *streamEnv, s Session) {
			e.clock.Set(e.server.Policy().AcceptUntil(s.AuthTime))
		}, ReasonSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(streamNever)))
			s := e.startSession(t, nil)
			var refreshes atomic.Int64
			next := TokenServiceRefresher(e.tokens)
			h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
				WithRefreshToken(s.RefreshToken),
				WithRefresher(RefreshFunc(func(ctx context.Context, rt string) (*slidejwtv1.TokenPair, error) {
					refreshes.Add(1)
					return next.Refresh(ctx, rt)
				})))
			if err != nil {
				t.Fatal(err)
			}
			conn := dialBufconn(t, e.lis, grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
			sc := streamOpen(t, context.Background(), testpb.NewTestServiceClient(conn), e.svc, streamBidi)
			sc.ping("before the session ended")

			tc.end(t, e, s)
			err = sc.clientMsg("after")
			streamWantEnded(t, e, s, streamBidi, err, tc.reason)
			if n := refreshes.Load(); n != 0 {
				t.Errorf("holder refreshed %d times, want 0", n)
			}
			if n := e.svc.calls.Load(); n != 1 {
				t.Errorf("handler ran %d times, want once (no reopen)", n)
			}
		})
	}
}

// TestStream_StoreFailureEndsStream: a store that stops answering ends an
// open stream with Unavailable (the server fails closed).
func TestStream_StoreFailureEndsStream(t *testing.T) {
	for _, silent := range []bool{false, true} {
		name := "next message"
		if silent {
			name = "silent"
		}
		t.Run(name, func(t *testing.T) {
			interval := streamNever
			if silent {
				interval = streamFast
			}
			e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(interval)))
			s := e.startSession(t, nil)
			sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
			sc.ping("before the store failed")

			e.store.fail.Store(true)
			var err error
			if silent {
				err = sc.end(streamWait)
			} else {
				err = sc.clientMsg("after")
			}
			if got := status.Code(err); got != codes.Unavailable {
				t.Fatalf("code = %v (err %v), want Unavailable", got, err)
			}
			if end := e.svc.handlerEnd(t); !errors.Is(end.cause, errRevocationUnavailable) {
				t.Errorf("handler context cause = %v, want %v", end.cause, errRevocationUnavailable)
			}
			evs := e.ended()
			if len(evs) != 1 || evs[0].Reason != noReason || status.Code(evs[0].Err) != codes.Unavailable || evs[0].SessionID != s.SessionID {
				t.Fatalf("events = %v, want one %v with an Unavailable error and no reason", evs, EventStreamEnded)
			}
		})
	}
}

// TestStream_OutlivesAccessTokenExpiry: the idle expiry of the token that
// opened a stream does not end it; only the session's end does.
func TestStream_OutlivesAccessTokenExpiry(t *testing.T) {
	e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(streamFast)))
	s := e.startSession(t, nil)
	sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
	sc.ping("at login")

	e.clock.Set(s.Expiry.Add(DefaultLeeway + time.Hour))
	if !e.clock.Now().Before(e.server.Policy().AcceptUntil(s.AuthTime)) {
		t.Fatal("test setup: the session has ended")
	}
	// The token itself is dead: a new call with it is refused.
	wantReason(t, refreshStream(e.client, s.AccessToken), ReasonTokenExpired)
	e.store.waitChecks(t, 3)
	sc.ping("past the token's exp + leeway")
	if err := sc.serverMsg(); err != nil {
		t.Fatalf("server send past the token's exp + leeway: %v", err)
	}
	if evs := e.ended(); len(evs) != 0 {
		t.Fatalf("stream ended by the token's expiry: %v", evs)
	}
}

// TestStream_HandlerPanicReachesRecovery: a panic in a guarded handler,
// on a worker goroutine (bidi) or on the interceptor's own (server
// streaming), reaches a recovery interceptor chained before slidejwt's,
// and the server goes on serving.
func TestStream_HandlerPanicReachesRecovery(t *testing.T) {
	for _, kind := range []string{streamBidi, streamServer} {
		t.Run(kind, func(t *testing.T) {
			recovered := make(chan any, 1)
			rec := recovery.StreamServerInterceptor(recovery.WithRecoveryHandler(func(p any) error {
				recovered <- p
				return status.Error(codes.Internal, "recovered")
			}))
			e := newStreamEnv(t, withServerOptions(WithStreamCheckInterval(streamNever)), withBefore(nil, rec))
			s := e.startSession(t, nil)
			var err error
			switch kind {
			case streamBidi:
				sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
				sc.ping("before the panic")
				err = sc.clientMsg("panic")
			case streamServer:
				var st grpc.ServerStreamingClient[testpb.StreamingOutputCallResponse]
				st, err = e.client.StreamingOutputCall(bearerCtx(s.AccessToken),
					&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("panic")}})
				if err == nil {
					_, err = st.Recv()
				}
			}
			if st := status.Convert(err); st.Code() != codes.Internal || st.Message() != "recovered" {
				t.Fatalf("err = %v, want Internal \"recovered\" from the recovery interceptor", err)
			}
			select {
			case p := <-recovered:
				if p != "streamSvc: handler panic" {
					t.Errorf("recovered %v, want the handler's panic value", p)
				}
			default:
				t.Fatal("recovery handler not called")
			}
			streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, kind).ping("after the panic")
		})
	}
}

// TestStream_TimerEndsStreamAtSessionEnd: with the real clock a timer ends
// an open, silent stream at its session's end (no leeway here), even when
// the periodic check would not come for an hour. This test sleeps about
// two seconds.
func TestStream_TimerEndsStreamAtSessionEnd(t *testing.T) {
	const slack = 1500 * time.Millisecond
	for _, kind := range []string{streamBidi, streamServer} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newStreamEnv(t, withRealClock(), withServerOptions(
				WithStreamCheckInterval(streamNever),
				WithPolicy(Policy{TTL: 2 * time.Second, MaxLifetime: 2 * time.Second, Leeway: -1})))
			s := e.startSession(t, nil)
			if got := e.server.Policy().AcceptUntil(s.AuthTime); !got.Equal(s.End) {
				t.Fatalf("AcceptUntil = %v, want the session end %v (no leeway)", got, s.End)
			}
			sc := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, kind)
			sc.ping("after login")

			err := sc.end(time.Until(s.End) + slack)
			ended := time.Now()
			if ended.Before(s.End) {
				t.Errorf("stream ended %v before its session's end", s.End.Sub(ended))
			}
			streamWantEnded(t, e, s, kind, err, ReasonSessionExpired)
		})
	}
}

// TestStream_EachEndsAtItsSessionEnd: streams of sessions that end at
// different times each end at their own session's end, whichever opened
// first.
func TestStream_EachEndsAtItsSessionEnd(t *testing.T) {
	const slack = 1500 * time.Millisecond
	e := newStreamEnv(t, withRealClock(), withServerOptions(
		WithStreamCheckInterval(streamNever),
		WithPolicy(Policy{TTL: 2 * time.Second, MaxLifetime: 2 * time.Second, Leeway: -1})))
	early := e.startSession(t, nil)
	time.Sleep(time.Until(early.AuthTime.Add(time.Second))) // the next login a second later
	late := e.startSession(t, nil)
	if !late.End.After(early.End) {
		t.Fatalf("sessions end at %v and %v, want the second later", early.End, late.End)
	}
	// The later session's stream opens first.
	lateStream := streamOpen(t, bearerCtx(late.AccessToken), e.client, e.svc, streamBidi)
	lateStream.ping("late")
	earlyStream := streamOpen(t, bearerCtx(early.AccessToken), e.client, e.svc, streamBidi)
	earlyStream.ping("early")

	err := earlyStream.end(time.Until(early.End) + slack)
	if now := time.Now(); now.Before(early.End) || !now.Before(late.End) {
		t.Errorf("first stream ended at end%+v, want in [its end, the other's end %+v)", now.Sub(early.End), late.End.Sub(early.End))
	}
	wantReason(t, err, ReasonSessionExpired)
	lateStream.ping("still open after the other session ended")
	err = lateStream.end(time.Until(late.End) + slack)
	if now := time.Now(); now.Before(late.End) {
		t.Errorf("second stream ended %v before its session's end", late.End.Sub(now))
	}
	wantReason(t, err, ReasonSessionExpired)
}

// TestStream_EndsOnTimeAfterAnIdleSpell: the server's stream watcher stops
// at a check that finds no stream open; a stream opened after that still
// ends at its session's end, not at the first check after it.
func TestStream_EndsOnTimeAfterAnIdleSpell(t *testing.T) {
	const (
		interval = 500 * time.Millisecond
		late     = 250 * time.Millisecond // less than the interval
	)
	e := newStreamEnv(t, withRealClock(), withServerOptions(
		WithStreamCheckInterval(interval),
		WithPolicy(Policy{TTL: 3 * time.Second, MaxLifetime: 3 * time.Second, Leeway: -1})))
	s := e.startSession(t, nil)
	ctx, cancel := context.WithCancel(bearerCtx(s.AccessToken))
	first := streamOpen(t, ctx, e.client, e.svc, streamBidi)
	first.ping("first")
	cancel()                          // the first stream closes
	time.Sleep(interval + interval/2) // a check finds no stream open: the watcher stops

	second := streamOpen(t, bearerCtx(s.AccessToken), e.client, e.svc, streamBidi)
	second.ping("second")
	err := second.end(time.Until(s.End) + 3*interval)
	now := time.Now()
	if now.Before(s.End) || now.After(s.End.Add(late)) {
		t.Errorf("stream ended at end%+v, want within [0, %v] of its session's end", now.Sub(s.End), late)
	}
	wantReason(t, err, ReasonSessionExpired)
}

// ctxStore is a session store that fails a lookup whose context is done,
// as a store across a network does (the Redis store, say).
type ctxStore struct{ *memstore.SessionStore }

func (s ctxStore) IsRevoked(ctx context.Context, sid string, now time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return true, err
	}
	return s.SessionStore.IsRevoked(ctx, sid, now)
}

// TestStream_CheckAfterCallerLeft: the check of a stream whose context is
// done (its caller went away, and the handler has not returned yet) does
// not ask the store with that context, which would fail and end the
// stream as if the store were down (Unavailable, an EventStreamEnded, a
// store failure in the metrics): it returns the context's error, and no
// message passes.
func TestStream_CheckAfterCallerLeft(t *testing.T) {
	e := newEnv(t, withStore(ctxStore{&memstore.SessionStore{}}))
	s := e.startSession(t, nil)
	v := e.server.ver.Load()
	c, _, _, aerr := v.verifyCached(s.AccessToken, e.clock.Now())
	if aerr != nil {
		t.Fatalf("verify: %v", aerr)
	}
	caller, cancel := context.WithCancelCause(context.Background())
	g := &guardedStream{ctx: lazyCancelCtx{Context: caller}, s: e.server, c: c, method: "/test/Stream", wake: make(chan struct{}),
		until: e.server.policyFor(c).AcceptUntil(c.authTime())}
	if err := g.check(); err != nil {
		t.Fatalf("check of a live stream: %v", err)
	}
	cancel(context.Canceled)
	err := g.check()
	if got := status.Code(err); got != codes.Canceled {
		t.Fatalf("check after the caller left: code %v (err %v), want Canceled", got, err)
	}
	if g.endErr() != nil {
		t.Fatalf("the stream was ended with %v, want it left to its context", g.endErr())
	}
	for _, ev := range e.events.take() {
		if ev.Kind == EventStreamEnded {
			t.Fatalf("event %v after the caller left, want none", ev)
		}
	}
}

// TestStream_TimerSetOnlyNearTheEnd: a stream's timer is set only once its
// session's end is within the horizon, once, and never after the stream
// finished.
func TestStream_TimerSetOnlyNearTheEnd(t *testing.T) {
	const horizon = 2 * time.Second
	now := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name     string
		left     time.Duration
		finished bool
		want     bool
	}{
		{"far", horizon + time.Nanosecond, false, false},
		{"at the horizon", horizon, false, true},
		{"within", time.Second, false, true},
		{"finished", time.Second, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Every timer set is at least a second away, and stopped at
			// the end of the test: expire would need a whole stream.
			g := &guardedStream{until: now.Add(tc.left), woken: tc.finished}
			g.armBy(now, horizon)
			defer g.disarm()
			if got := g.timer != nil; got != tc.want {
				t.Fatalf("timer set = %v, want %v", got, tc.want)
			}
			if tc.want {
				first := g.timer
				g.armBy(now, horizon)
				if g.timer != first {
					t.Error("a second armBy replaced the timer")
				}
			}
		})
	}
}
