package interceptor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// t0 is the simulated login time of most tests: a whole second, so that
// JWT NumericDate truncation does not shift boundaries.
//
// The environment variable SLIDEJWT_TEST_EPOCH (RFC 3339) moves it, so
// that a test which compares a fake-clock time with the wall clock fails
// on every run instead of on some future date: .ci/run runs this package
// again with epochs decades before and after today.
var t0 = testEpoch()

const epochEnv = "SLIDEJWT_TEST_EPOCH"

func testEpoch() time.Time {
	v := os.Getenv(epochEnv)
	if v == "" {
		return time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil || t.Unix() <= 0 {
		panic(fmt.Sprintf("%s=%q: want an RFC 3339 time after 1970", epochEnv, v))
	}
	return t.Truncate(time.Second).UTC()
}

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testSecret returns a fresh 32-byte HMAC secret.
func testSecret(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// testKeySet returns a one-key HS256 set with kid "k1".
func testKeySet(t testing.TB) *KeySet {
	t.Helper()
	k, err := NewKey("k1", jwt.SigningMethodHS256, testSecret(t))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKeySet(k)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// testService implements grpc.testing.TestService with one method of each
// kind, and records whether its handlers ran and with which claims.
type testService struct {
	testpb.UnimplementedTestServiceServer
	calls      atomic.Int64
	lastClaims atomic.Pointer[Claims]
	// delay, if set, is called at the start of every handler (for
	// reordering responses in concurrency tests).
	delay func()
}

func (s *testService) enter(ctx context.Context) {
	s.calls.Add(1)
	// The interceptor's own claims, not the copy ClaimsFromContext hands
	// out: the cache tests tell a hit by pointer identity. Read only.
	if c := sharedClaims(ctx); c != nil {
		s.lastClaims.Store(c)
	}
	if s.delay != nil {
		s.delay()
	}
}

// UnaryCall echoes the payload; a ResponseStatus makes it fail with that code.
func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.enter(ctx)
	if st := req.GetResponseStatus(); st != nil && st.GetCode() != 0 {
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// EmptyCall is used as the exempt method in tests.
func (s *testService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	s.enter(ctx)
	return &testpb.Empty{}, nil
}

// StreamingOutputCall sends one response per ResponseParameters entry.
func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	for range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}

// StreamingInputCall sums the payload sizes it receives.
func (s *testService) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	s.enter(stream.Context())
	var n int32
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		n += int32(len(req.GetPayload().GetBody()))
	}
}

// FullDuplexCall echoes each request's payload.
func (s *testService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.enter(stream.Context())
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// testEnv is an in-process gRPC server (bufconn) running testService
// behind the interceptors under test.
type testEnv struct {
	clock  *fakeClock
	keys   *KeySet
	server *Server
	svc    *testService
	lis    *bufconn.Listener
}

// envConfig lets a test replace the default server wiring.
type envConfig struct {
	serverOpts []ServerOption
	// grpcOpts, if set, replaces the default interceptor chain; it gets
	// the Server so that it can place its interceptors itself.
	grpcOpts func(*Server) []grpc.ServerOption
	delay    func()
}

// newEnv starts a server whose clock starts at t0. It is stopped when the
// test ends.
func newEnv(t testing.TB, cfg envConfig) *testEnv {
	t.Helper()
	e := &testEnv{clock: newFakeClock(t0), keys: testKeySet(t), svc: &testService{delay: cfg.delay}}
	opts := append([]ServerOption{WithClock(e.clock.Now)}, cfg.serverOpts...)
	var err error
	if e.server, err = NewServer(e.keys, opts...); err != nil {
		t.Fatal(err)
	}
	grpcOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(e.server.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(e.server.StreamServerInterceptor()),
	}
	if cfg.grpcOpts != nil {
		grpcOpts = cfg.grpcOpts(e.server)
	}
	srv := grpc.NewServer(grpcOpts...)
	testpb.RegisterTestServiceServer(srv, e.svc)
	e.lis = bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(e.lis) }()
	t.Cleanup(srv.Stop)
	return e
}

// dial returns a plaintext connection to the env's server with opts. It is
// closed when the test ends.
func (e *testEnv) dial(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return dialBufconn(t, e.lis, opts...)
}

// dialBufconn returns a plaintext connection to lis with opts. It is
// closed when the test ends.
func dialBufconn(t testing.TB, lis *bufconn.Listener, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, opts...)
	conn, err := grpc.NewClient("passthrough:///bufnet", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// startSession mints a session's first token at the env's current time.
func (e *testEnv) startSession(t testing.TB, custom map[string]any) Session {
	t.Helper()
	s, err := e.server.StartSession(context.Background(), "alice", custom)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// holderClient returns a TestService client whose calls go through a
// TokenHolder for tok.
func (e *testEnv) holderClient(t testing.TB, tok string, opts ...ClientOption) (testpb.TestServiceClient, *TokenHolder) {
	t.Helper()
	h, err := NewTokenHolder(tok, append([]ClientOption{AllowInsecureTransport(), WithClock(e.clock.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	conn := e.dial(t,
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
	return testpb.NewTestServiceClient(conn), h
}

// wantReason fails the test unless err is codes.Unauthenticated (or
// PermissionDenied for ReasonFreshTokenRequired) carrying reason.
func wantReason(t testing.TB, err error, want Reason) {
	t.Helper()
	wantCode := codes.Unauthenticated
	if want == ReasonFreshTokenRequired {
		wantCode = codes.PermissionDenied
	}
	if got := status.Code(err); got != wantCode {
		t.Fatalf("code = %v (err %v), want %v", got, err, wantCode)
	}
	if got, ok := ReasonOf(err); !ok || got != want {
		t.Fatalf("reason = %q, %v (err %v), want %q", got, ok, err, want)
	}
}

// noReason stands for "no rejection" in tables of expected reasons.
const noReason Reason = 0

// drain receives from a server stream until it ends, and returns nil at
// io.EOF or the stream's error.
func drain[T any](st interface{ Recv() (T, error) }) error {
	for {
		if _, err := st.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
