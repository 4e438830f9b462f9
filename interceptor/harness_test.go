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
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
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

// testKeySet returns a one-key HS256 set with kid "k1" and a fresh secret.
func testKeySet(t testing.TB) *KeySet {
	t.Helper()
	return keysSet(t, keysMust(t, "k1", jwt.SigningMethodHS256, testSecret(t)))
}

// keysMust is NewKey that fails the test on an error.
func keysMust(t testing.TB, id string, m jwt.SigningMethod, key any) *Key {
	t.Helper()
	k, err := NewKey(id, m, key)
	if err != nil {
		t.Fatalf("NewKey(%q, %s): %v", id, m.Alg(), err)
	}
	return k
}

// keysSet is NewKeySet that fails the test on an error.
func keysSet(t testing.TB, active *Key, verifyOnly ...*Key) *KeySet {
	t.Helper()
	ks, err := NewKeySet(active, verifyOnly...)
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
	// lastShared is the interceptor's own claims of the last call, of
	// which lastClaims is a copy: the cache tests tell a hit by its
	// pointer identity.
	lastShared atomic.Pointer[verifiedClaims]
	// delay, if set, is called at the start of every handler (for
	// reordering responses in concurrency tests).
	delay func()
}

func (s *testService) enter(ctx context.Context) {
	s.calls.Add(1)
	// The interceptor's own claims, not the copy ClaimsFromContext hands
	// out: the cache tests tell a hit by pointer identity. Read only.
	if c := sharedClaims(ctx); c != nil {
		s.lastShared.Store(c)
		s.lastClaims.Store(c.claims())
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

// testEnv is an in-process gRPC server (bufconn) running a TestService and
// the Server's TokenService behind the interceptors under test. A
// recording interceptor in front of everything else logs every call that
// reaches the server, before authentication; the Server's events go to
// events.
type testEnv struct {
	clock  *fakeClock // nil with withRealClock
	keys   *KeySet
	server *Server
	svc    *testService // the default service, even when withService replaced it
	store  store.SessionStore
	events *eventLog
	calls  *callLog
	lis    *bufconn.Listener
}

// envConfig is what the envOptions of newEnv set.
type envConfig struct {
	serverOpts []ServerOption
	keys       *KeySet
	store      store.SessionStore
	service    testpb.TestServiceServer
	start      time.Time
	clock      *fakeClock
	realClock  bool
	onEvent    func(Event)
	delay      func()
	// grpcOpts, if set, replaces the default interceptor chain; it gets
	// the Server so that it can place its interceptors itself.
	grpcOpts func(*Server) []grpc.ServerOption
	// Extra interceptors, before (outside) and after (inside) the Server's.
	before, after interceptorChain
}

// interceptorChain is a list of extra server interceptors of each kind.
type interceptorChain struct {
	unary  []grpc.UnaryServerInterceptor
	stream []grpc.StreamServerInterceptor
}

// add appends u and s, either of which may be nil.
func (ch *interceptorChain) add(u grpc.UnaryServerInterceptor, s grpc.StreamServerInterceptor) {
	if u != nil {
		ch.unary = append(ch.unary, u)
	}
	if s != nil {
		ch.stream = append(ch.stream, s)
	}
}

// envOption configures newEnv.
type envOption func(*envConfig)

// withServerOptions adds options to the Server, after the env's clock and
// event hook (so a WithEventHook here replaces the env's recorder).
func withServerOptions(opts ...ServerOption) envOption {
	return func(c *envConfig) { c.serverOpts = append(c.serverOpts, opts...) }
}

// withKeys replaces the harness's one-key HS256 set.
func withKeys(ks *KeySet) envOption { return func(c *envConfig) { c.keys = ks } }

// withStore gives the Server the session store s (e.store).
func withStore(s store.SessionStore) envOption { return func(c *envConfig) { c.store = s } }

// withMemStore gives the Server a fresh memstore.SessionStore.
func withMemStore() envOption { return withStore(&memstore.SessionStore{}) }

// withService serves svc instead of the env's testService.
func withService(svc testpb.TestServiceServer) envOption {
	return func(c *envConfig) { c.service = svc }
}

// withStart starts the fake clock at t instead of t0.
func withStart(t time.Time) envOption { return func(c *envConfig) { c.start = t } }

// withClock puts the Server on c instead of a clock of its own, so that
// several envs can share one (e.clock is c).
func withClock(c *fakeClock) envOption { return func(cfg *envConfig) { cfg.clock = c } }

// withRealClock leaves the Server on time.Now; e.clock is nil.
func withRealClock() envOption { return func(c *envConfig) { c.realClock = true } }

// withEventHook calls f with every event of the Server after it is
// recorded in e.events.
func withEventHook(f func(Event)) envOption { return func(c *envConfig) { c.onEvent = f } }

// withDelay makes every handler of the env's testService call f first.
func withDelay(f func()) envOption { return func(c *envConfig) { c.delay = f } }

// withGRPC replaces the default interceptor chain by the options f returns
// for the env's Server; the env's call recorder stays in front.
func withGRPC(f func(*Server) []grpc.ServerOption) envOption {
	return func(c *envConfig) { c.grpcOpts = f }
}

// withBefore chains interceptors between the call recorder and the
// Server's (either may be nil).
func withBefore(u grpc.UnaryServerInterceptor, s grpc.StreamServerInterceptor) envOption {
	return func(c *envConfig) { c.before.add(u, s) }
}

// withAfter chains interceptors between the Server's and the handler
// (either may be nil).
func withAfter(u grpc.UnaryServerInterceptor, s grpc.StreamServerInterceptor) envOption {
	return func(c *envConfig) { c.after.add(u, s) }
}

// newEnv starts a server whose clock starts at t0. It is stopped when the
// test ends.
func newEnv(t testing.TB, opts ...envOption) *testEnv {
	t.Helper()
	var cfg envConfig
	for _, o := range opts {
		o(&cfg)
	}
	e := &testEnv{keys: cfg.keys, svc: &testService{delay: cfg.delay}, store: cfg.store, calls: &callLog{}}
	if e.keys == nil {
		e.keys = testKeySet(t)
	}
	e.events = &eventLog{onEvent: cfg.onEvent}
	sopts := []ServerOption{WithEventHook(e.events.hook)}
	if !cfg.realClock {
		start := t0
		if !cfg.start.IsZero() {
			start = cfg.start
		}
		e.clock = cfg.clock
		if e.clock == nil {
			e.clock = newFakeClock(start)
		}
		sopts = append(sopts, WithClock(e.clock.Now))
	}
	if cfg.store != nil {
		sopts = append(sopts, WithSessionStore(cfg.store))
	}
	var err error
	if e.server, err = NewServer(e.keys, append(sopts, cfg.serverOpts...)...); err != nil {
		t.Fatal(err)
	}
	grpcOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(e.calls.unary),
		grpc.ChainStreamInterceptor(e.calls.stream),
	}
	if cfg.grpcOpts != nil {
		grpcOpts = append(grpcOpts, cfg.grpcOpts(e.server)...)
	} else {
		unary := append(append(cfg.before.unary, e.server.UnaryServerInterceptor()), cfg.after.unary...)
		stream := append(append(cfg.before.stream, e.server.StreamServerInterceptor()), cfg.after.stream...)
		grpcOpts = append(grpcOpts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	}
	srv := grpc.NewServer(grpcOpts...)
	var svc testpb.TestServiceServer = e.svc
	if cfg.service != nil {
		svc = cfg.service
	}
	testpb.RegisterTestServiceServer(srv, svc)
	slidejwtv1.RegisterTokenServiceServer(srv, e.server.TokenService())
	e.lis = bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(e.lis) }()
	t.Cleanup(srv.Stop)
	return e
}

// clients returns plain TestService and TokenService clients on one new
// connection: no holder, the test sets the token.
func (e *testEnv) clients(t testing.TB) (testpb.TestServiceClient, slidejwtv1.TokenServiceClient) {
	t.Helper()
	conn := e.dial(t)
	return testpb.NewTestServiceClient(conn), slidejwtv1.NewTokenServiceClient(conn)
}

// eventLog records a Server's events; safe for concurrent use.
type eventLog struct {
	onEvent func(Event) // called after each event is recorded

	mu     sync.Mutex
	events []Event
	taken  int // events before this index were returned by take
}

func (l *eventLog) hook(_ context.Context, ev Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
	if l.onEvent != nil {
		l.onEvent(ev)
	}
}

// all returns every event so far.
func (l *eventLog) all() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// take returns the events since the last take.
func (l *eventLog) take() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := append([]Event(nil), l.events[l.taken:]...)
	l.taken = len(l.events)
	return got
}

// kinds returns the events of kind k so far.
func (l *eventLog) kinds(k EventKind) []Event {
	var out []Event
	for _, ev := range l.all() {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// count returns the number of events of kind for method ("" for any).
func (l *eventLog) count(kind EventKind, method string) int {
	n := 0
	for _, ev := range l.kinds(kind) {
		if method == "" || ev.Method == method {
			n++
		}
	}
	return n
}

// callLog counts the calls that reach a server, per full method, and
// those of them that carried an authorization value; safe for concurrent
// use.
type callLog struct {
	mu       sync.Mutex
	attempts map[string]int
	withAuth map[string]int
}

func (l *callLog) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.attempts == nil {
		l.attempts, l.withAuth = map[string]int{}, map[string]int{}
	}
	l.attempts[method]++
	if len(md.Get("authorization")) > 0 {
		l.withAuth[method]++
	}
}

func (l *callLog) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	l.record(ctx, info.FullMethod)
	return handler(ctx, req)
}

func (l *callLog) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	l.record(ss.Context(), info.FullMethod)
	return handler(srv, ss)
}

// get returns how many calls of method reached the server, and how many
// of them carried an authorization value; method "" counts every method.
func (l *callLog) get(method string) (all, authorized int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if method != "" {
		return l.attempts[method], l.withAuth[method]
	}
	for m, n := range l.attempts {
		all += n
		authorized += l.withAuth[m]
	}
	return all, authorized
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

// bearerMD returns metadata carrying tok as a bearer token.
func bearerMD(tok string) metadata.MD { return metadata.Pairs("authorization", "Bearer "+tok) }

// bearerCtx returns a context whose outgoing metadata carries tok as a
// bearer token; an empty tok carries no authorization at all.
func bearerCtx(tok string) context.Context {
	if tok == "" {
		return context.Background()
	}
	return metadata.NewOutgoingContext(context.Background(), bearerMD(tok))
}

// unaryCall makes a UnaryCall on c presenting tok (see bearerCtx) and
// returns the renewed token from the trailer ("" if none) and the call's
// error. It fails the test if the header carries a renewed token (a unary
// renewal belongs in the trailer only) or the trailer more than one. It is
// safe to call from any goroutine.
func unaryCall(t testing.TB, c testpb.TestServiceClient, tok string) (string, error) {
	t.Helper()
	var hdr, tr metadata.MD
	_, err := c.UnaryCall(bearerCtx(tok), &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
	if v := hdr.Get(DefaultRenewalHeader); len(v) > 0 {
		t.Errorf("unary call got %d renewed tokens in the header, want them in the trailer only", len(v))
	}
	switch v := tr.Get(DefaultRenewalHeader); len(v) {
	case 0:
		return "", err
	case 1:
		return v[0], err
	default:
		t.Errorf("trailer has %d renewed tokens, want at most 1", len(v))
		return v[0], err
	}
}

// renewedToken returns the renewed token in md, or "" when there is none.
// It fails the test if md holds more than one.
func renewedToken(t testing.TB, md metadata.MD) string {
	t.Helper()
	switch v := md.Get(DefaultRenewalHeader); len(v) {
	case 0:
		return ""
	case 1:
		return v[0]
	default:
		t.Fatalf("%d renewed tokens in %d metadata keys, want at most 1", len(v), md.Len())
		return ""
	}
}

// decodedToken is a token's JOSE header and claims, not verified.
type decodedToken struct {
	header map[string]any
	claims *Claims
}

// typ returns the token's typ header ("" if absent).
func (d decodedToken) typ() string {
	typ, _ := d.header["typ"].(string)
	return typ
}

// decodeToken decodes tok without verifying it.
func decodeToken(t testing.TB, tok string) decodedToken {
	t.Helper()
	var c Claims
	tk, _, err := jwt.NewParser().ParseUnverified(tok, &c)
	if err != nil {
		t.Fatalf("decode token: %v", err)
	}
	return decodedToken{header: tk.Header, claims: &c}
}
