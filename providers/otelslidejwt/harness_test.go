package otelslidejwt_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// t0 is the simulated login time. Nothing here compares the simulated
// clock with the wall clock; SLIDEJWT_TEST_EPOCH (RFC 3339) moves it, as
// it does for the interceptor's tests, to show that.
var t0 = func() time.Time {
	if v := os.Getenv("SLIDEJWT_TEST_EPOCH"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			panic(err)
		}
		return t.Truncate(time.Second).UTC()
	}
	return time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
}()

const (
	target      = "passthrough:///bufnet"
	echoMethod  = demov1.DemoService_Echo_FullMethodName
	watchMethod = demov1.DemoService_Watch_FullMethodName
	// The rpc.method values of those methods.
	echoName    = "demo.v1.DemoService/Echo"
	watchName   = "demo.v1.DemoService/Watch"
	refreshName = "slidejwt.v1.TokenService/Refresh"
	revokeName  = "slidejwt.v1.TokenService/Revoke"
	wait        = 10 * time.Second // bounds every wait; never a timing assertion
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// switchStore is a memstore.SessionStore whose Rotate can be told to
// answer store.Unknown, the outcome of a session that the store lost
// between the look before signing and the rotation.
type switchStore struct {
	*memstore.SessionStore
	unknown atomic.Bool
}

func (s *switchStore) Rotate(ctx context.Context, r store.Rotation) (store.Result, error) {
	if s.unknown.Load() {
		return store.Result{Outcome: store.Unknown}, nil
	}
	return s.SessionStore.Rotate(ctx, r)
}

// demoService serves Echo, and Watch, which sends count messages, or,
// with count 0, one message and then waits for the stream to end.
type demoService struct {
	demov1.UnimplementedDemoServiceServer
}

func (demoService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	c, _ := interceptor.ClaimsFromContext(ctx)
	return &demov1.EchoResponse{Message: req.GetMessage(), Subject: c.Subject}, nil
}

func (demoService) Watch(req *demov1.WatchRequest, st grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	n := req.GetCount()
	if n == 0 {
		if err := st.Send(&demov1.WatchResponse{Sequence: 1}); err != nil {
			return err
		}
		<-st.Context().Done()
		return st.Context().Err()
	}
	for i := range n {
		if err := st.Send(&demov1.WatchResponse{Sequence: i + 1}); err != nil {
			return err
		}
	}
	return nil
}

// tokenLog records every token the tests see, for the checks that no
// token reaches a metric or a span.
type tokenLog struct {
	mu     sync.Mutex
	tokens map[string]bool
}

func (l *tokenLog) add(toks ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tokens == nil {
		l.tokens = map[string]bool{}
	}
	for _, t := range toks {
		if t != "" {
			l.tokens[t] = true
		}
	}
}

func (l *tokenLog) addMD(md metadata.MD) { l.add(md.Get(interceptor.DefaultRenewalHeader)...) }

func (l *tokenLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.tokens))
	for t := range l.tokens {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// env is an in-process gRPC server (bufconn) running demo.v1.DemoService
// and slidejwt.v1.TokenService behind a slidejwt Server whose events go to
// a ServerHook, and the clients' holders whose events go to a ClientHook,
// both on one MeterProvider read by a ManualReader. An interceptor in
// front of the Server's starts a server span per call, and every
// holder's call runs inside a client span, both recorded by a
// SpanRecorder.
type env struct {
	clock  *fakeClock
	keys   *interceptor.KeySet
	server *interceptor.Server
	store  *switchStore
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tracer trace.Tracer
	lis    *bufconn.Listener
	tokens *tokenLog
	hook   []otelslidejwt.Option
}

type envConfig struct {
	hook       []otelslidejwt.Option
	serverOpts []interceptor.ServerOption
	keys       *interceptor.KeySet
	noStore    bool
}

type envOption func(*envConfig)

// withHookOptions gives both hooks opts, after WithMeterProvider.
func withHookOptions(opts ...otelslidejwt.Option) envOption {
	return func(c *envConfig) { c.hook = append(c.hook, opts...) }
}

// withServerOptions adds opts to the Server's.
func withServerOptions(opts ...interceptor.ServerOption) envOption {
	return func(c *envConfig) { c.serverOpts = append(c.serverOpts, opts...) }
}

// withoutStore leaves the session store out, for a server with a
// revocation list of its own.
func withoutStore() envOption { return func(c *envConfig) { c.noStore = true } }

// withKeys replaces the one-key set.
func withKeys(ks *interceptor.KeySet) envOption { return func(c *envConfig) { c.keys = ks } }

// newKey returns an HS256 key with a fresh secret.
func newKey(t testing.TB, id string) *interceptor.Key {
	t.Helper()
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	k, err := interceptor.NewKey(id, jwt.SigningMethodHS256, secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newKeySet(t testing.TB, active *interceptor.Key, verifyOnly ...*interceptor.Key) *interceptor.KeySet {
	t.Helper()
	ks, err := interceptor.NewKeySet(active, verifyOnly...)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	var cfg envConfig
	for _, o := range opts {
		o(&cfg)
	}
	e := &env{
		clock:  &fakeClock{t: t0},
		keys:   cfg.keys,
		store:  &switchStore{SessionStore: &memstore.SessionStore{}},
		reader: sdkmetric.NewManualReader(),
		spans:  tracetest.NewSpanRecorder(),
		tokens: &tokenLog{},
	}
	if e.keys == nil {
		e.keys = newKeySet(t, newKey(t, "k1"))
	}
	e.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	t.Cleanup(func() { _ = e.mp.Shutdown(context.Background()); _ = tp.Shutdown(context.Background()) })
	e.tracer = tp.Tracer("test")
	e.hook = append([]otelslidejwt.Option{otelslidejwt.WithMeterProvider(e.mp)}, cfg.hook...)

	sopts := []interceptor.ServerOption{
		interceptor.WithClock(e.clock.Now),
		interceptor.WithStreamCheckInterval(5 * time.Millisecond),
		interceptor.WithEventHook(otelslidejwt.ServerHook(e.hook...)),
	}
	if !cfg.noStore {
		sopts = append(sopts, interceptor.WithSessionStore(e.store))
	}
	sopts = append(sopts, cfg.serverOpts...)
	var err error
	if e.server, err = interceptor.NewServer(e.keys, sopts...); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(e.serverSpan, e.server.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(e.serverStreamSpan, e.server.StreamServerInterceptor()),
	)
	demov1.RegisterDemoServiceServer(srv, demoService{})
	slidejwtv1.RegisterTokenServiceServer(srv, e.server.TokenService())
	e.lis = bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(e.lis) }()
	t.Cleanup(srv.Stop)
	return e
}

// serverSpan runs a unary call in a server span, as otelgrpc's stats
// handler would.
func (e *env) serverSpan(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, span := e.tracer.Start(ctx, info.FullMethod, trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	return handler(ctx, req)
}

type spanStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s spanStream) Context() context.Context { return s.ctx }

func (e *env) serverStreamSpan(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, span := e.tracer.Start(ss.Context(), info.FullMethod, trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	return handler(srv, spanStream{ss, ctx})
}

// recordTokens is a client interceptor that logs the renewed tokens of
// every response, also those the holder does not take.
func (e *env) recordTokens(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var hdr, tr metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&hdr), grpc.Trailer(&tr))...)
	e.tokens.addMD(hdr)
	e.tokens.addMD(tr)
	if r, ok := reply.(*slidejwtv1.RefreshResponse); ok {
		e.tokens.add(r.GetTokens().GetAccessToken(), r.GetTokens().GetRefreshToken())
	}
	return err
}

type tokenStream struct {
	grpc.ClientStream
	e *env
}

func (s tokenStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if md, herr := s.ClientStream.Header(); herr == nil {
		s.e.tokens.addMD(md)
	}
	if err != nil {
		s.e.tokens.addMD(s.ClientStream.Trailer())
	}
	return err
}

func (e *env) recordStreamTokens(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return tokenStream{cs, e}, nil
}

// dial returns a connection to the env's server, closed when the test
// ends: plain, or through a holder's interceptors when given.
func (e *env) dial(t testing.TB, h *interceptor.TokenHolder) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(e.recordTokens),
		grpc.WithChainStreamInterceptor(e.recordStreamTokens),
	}
	if h != nil {
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
			grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// login starts a session for subject at the env's time.
func (e *env) login(t testing.TB, subject string) interceptor.Session {
	t.Helper()
	s, err := e.server.StartSession(context.Background(), subject, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.tokens.add(s.AccessToken, s.RefreshToken)
	return s
}

// holder returns a demo client whose calls go through a holder of s,
// refreshing on the same connection, with its events going to a
// ClientHook with the env's hook options.
func (e *env) holder(t testing.TB, s interceptor.Session, opts ...interceptor.ClientOption) (demov1.DemoServiceClient, *interceptor.TokenHolder) {
	t.Helper()
	all := append([]interceptor.ClientOption{
		interceptor.AllowInsecureTransport(),
		interceptor.WithClock(e.clock.Now),
		interceptor.BindTarget(target),
		interceptor.WithRefreshToken(s.RefreshToken),
		interceptor.WithSessionEnd(s.End),
		interceptor.OnSwap(func(tok string, _ time.Time) { e.tokens.add(tok) }),
		interceptor.OnRefresh(func(p *slidejwtv1.TokenPair) { e.tokens.add(p.GetAccessToken(), p.GetRefreshToken()) }),
		interceptor.WithClientEventHook(otelslidejwt.ClientHook(e.hook...)),
	}, opts...)
	h, err := interceptor.NewTokenHolder(s.AccessToken, all...)
	if err != nil {
		t.Fatal(err)
	}
	return demov1.NewDemoServiceClient(e.dial(t, h)), h
}

// ctx returns a context bounded by wait.
func ctx(t testing.TB) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return c
}

// echo makes one Echo call through c inside a client span.
func (e *env) echo(t testing.TB, c demov1.DemoServiceClient) error {
	t.Helper()
	cctx, span := e.tracer.Start(ctx(t), "client "+echoMethod, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	_, err := c.Echo(cctx, &demov1.EchoRequest{Message: "hi"})
	return err
}

// watch opens a Watch for n messages through c inside a client span and
// reads it to its end; it returns the stream's error (nil at io.EOF).
func (e *env) watch(t testing.TB, c demov1.DemoServiceClient, n int32) error {
	t.Helper()
	cctx, span := e.tracer.Start(ctx(t), "client "+watchMethod, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	st, err := c.Watch(cctx, &demov1.WatchRequest{Count: n})
	if err != nil {
		return err
	}
	for {
		if _, err := st.Recv(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// bearer returns a context carrying tok as a bearer token ("" for none).
func bearer(t testing.TB, tok string) context.Context {
	t.Helper()
	if tok == "" {
		return ctx(t)
	}
	return metadata.AppendToOutgoingContext(ctx(t), "authorization", "Bearer "+tok)
}

// metrics collects the env's metrics.
func (e *env) metrics(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

// find returns the metric named name, if it was recorded.
func find(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// has reports whether set holds every one of kvs.
func has(set attribute.Set, kvs []attribute.KeyValue) bool {
	for _, kv := range kvs {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// count sums the points of counter name whose attributes include kvs; 0
// when the counter recorded nothing.
func count(t testing.TB, rm metricdata.ResourceMetrics, name string, kvs ...attribute.KeyValue) int64 {
	t.Helper()
	m, ok := find(rm, name)
	if !ok {
		return 0
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
		t.Fatalf("%s is %T, want a cumulative monotonic int64 sum", name, m.Data)
	}
	var n int64
	for _, p := range sum.DataPoints {
		if has(p.Attributes, kvs) {
			n += p.Value
		}
	}
	return n
}

// samples sums the counts of the points of histogram name whose
// attributes include kvs; 0 when it recorded nothing.
func samples(t testing.TB, rm metricdata.ResourceMetrics, name string, kvs ...attribute.KeyValue) uint64 {
	t.Helper()
	m, ok := find(rm, name)
	if !ok {
		return 0
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is %T, want a float64 histogram", name, m.Data)
	}
	var n uint64
	for _, p := range h.DataPoints {
		if has(p.Attributes, kvs) {
			n += p.Count
		}
	}
	return n
}

// want is one expected count of a counter or a histogram.
type want struct {
	name string
	kvs  []attribute.KeyValue
	n    int64
}

func (w want) String() string {
	var b strings.Builder
	b.WriteString(w.name)
	for _, kv := range w.kvs {
		fmt.Fprintf(&b, " %s=%s", kv.Key, kv.Value.String())
	}
	return b.String()
}

// wantCounts checks each of ws in rm: counters (and histograms, by their
// sample counts) hold exactly the counts wanted.
func wantCounts(t testing.TB, step string, rm metricdata.ResourceMetrics, ws ...want) {
	t.Helper()
	for _, w := range ws {
		var got int64
		m, _ := find(rm, w.name)
		if _, isHist := m.Data.(metricdata.Histogram[float64]); isHist {
			got = int64(samples(t, rm, w.name, w.kvs...))
		} else {
			got = count(t, rm, w.name, w.kvs...)
		}
		if got != w.n {
			t.Errorf("%s: %v = %d, want %d", step, w, got, w.n)
		}
	}
}

// spanEvents returns the names of the slidejwt events of the ended
// spans named name, in order, and the events themselves.
func (e *env) spanEvents(name string) ([]string, []sdktrace.Event) {
	var names []string
	var evs []sdktrace.Event
	for _, s := range e.spans.Ended() {
		if s.Name() != name {
			continue
		}
		for _, ev := range s.Events() {
			names = append(names, ev.Name)
			evs = append(evs, ev)
		}
	}
	return names, evs
}
