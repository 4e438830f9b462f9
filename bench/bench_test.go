package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

// The benchmark matrix. The names are part of the benchmarks' contract:
// runs from different commits compare by name. BenchmarkUnary also runs
// the Redis cases (redis_test.go; casesOf). The mesh cases, steady-jwks
// and renew-delegated (mesh_test.go), skip HS256.
var (
	algs     = []string{"HS256", "ES256", "EdDSA"}
	cases    = []string{caseFloor, caseMiddleware, caseSteady, caseSteadyJWKS, caseRenew, caseRenewEvery, caseRenewDelegated, caseRefreshRPC}
	families = []string{familyUnary, familyStreamOpen}
)

const (
	caseFloor      = "floor"
	caseMiddleware = "middleware-verify"
	caseSteady     = "steady"
	caseRenew      = "renew"
	caseRenewEvery = "renew-every"
	caseRefreshRPC = "refresh-rpc"

	familyUnary      = "Unary"
	familyStreamOpen = "StreamOpen"

	benchSubject = "bench-user"
	echoMessage  = "ping"
)

// renewPolicy makes renewal due on every call: a token minted even a
// second ago has less than RenewBefore left.
var renewPolicy = interceptor.Policy{TTL: 24 * time.Hour, RenewBefore: 24 * time.Hour}

func BenchmarkUnary(b *testing.B) {
	benchFamily(b, familyUnary, (*fixture).unary)
}

func BenchmarkStreamOpen(b *testing.B) {
	benchFamily(b, familyStreamOpen, (*fixture).streamOpen)
}

// benchFamily runs every alg × case of one family. Each case gets its own
// server and client, set up and checked with one call before the timed
// loop and torn down after it.
func benchFamily(b *testing.B, family string, op func(*fixture) error) {
	keys := mustKeys(b)
	for _, alg := range algs {
		b.Run(alg, func(b *testing.B) {
			for _, c := range allCasesOf(family) {
				b.Run(c, func(b *testing.B) {
					f := newFixture(b, context.Background(), keys[alg], c)
					if err := f.check(family); err != nil {
						b.Fatal(err)
					}
					var cmds commandStats
					if f.redis != nil {
						cmds = f.redis.mustCommands(b)
					}
					b.ReportAllocs()
					for b.Loop() {
						if err := op(f); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					if err := f.checkEvery(); err != nil {
						b.Fatal(err)
					}
					if f.redis != nil {
						n := f.redis.mustCommands(b).roundTrips() - cmds.roundTrips()
						b.ReportMetric(float64(n)/float64(b.N), "redis-rt/op")
					}
				})
			}
		})
	}
}

// TestBenchSetup runs every benchmark case's check once, so that `go test`
// without -bench keeps the benchmarks honest: every call succeeds with the
// same response, steady gets no renewed token and renew gets one (the same
// one on every call), refresh-rpc rotates its refresh token. The Redis
// cases are skipped without redis-server, as in the benchmarks.
func TestBenchSetup(t *testing.T) {
	keys := mustKeys(t)
	for _, family := range families {
		for _, alg := range algs {
			for _, c := range allCasesOf(family) {
				t.Run(family+"/"+alg+"/"+c, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
					defer cancel()
					f := newFixture(t, ctx, keys[alg], c)
					if err := f.check(family); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}

// TestBenchSetup_ForgedToken checks that every case but floor really
// authenticates: a token with another token's signature is refused, and
// floor lets it through.
func TestBenchSetup_ForgedToken(t *testing.T) {
	keys := mustKeys(t)
	for _, alg := range algs {
		for _, c := range allCasesOf(familyUnary) {
			t.Run(alg+"/"+c, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				f := newFixture(t, ctx, keys[alg], c)
				forged := forge(t, keys[alg])
				conn := dial(t, f.addr)
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+forged)
				_, err := demov1.NewDemoServiceClient(conn).Echo(ctx, &demov1.EchoRequest{Message: echoMessage})
				want := codes.Unauthenticated
				if c == caseFloor {
					want = codes.OK
				}
				if got := status.Code(err); got != want {
					t.Errorf("Echo with a forged token: got code %v, want %v (err %v)", got, want, err)
				}
			})
		}
	}
}

// forge returns a session token whose signature belongs to another token.
func forge(t *testing.T, k *algKeys) string {
	t.Helper()
	s, err := interceptor.NewServer(k.set)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.StartSession(t.Context(), benchSubject, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.StartSession(t.Context(), benchSubject, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a.AccessToken[:strings.LastIndexByte(a.AccessToken, '.')] + b.AccessToken[strings.LastIndexByte(b.AccessToken, '.'):]
}

// algKeys is one algorithm's key set, and the key that golang-jwt verifies
// with in the middleware-verify case.
type algKeys struct {
	alg    string
	set    *interceptor.KeySet
	verify any
}

// mustKeys returns the key sets of every algorithm, generated once per
// test binary run.
func mustKeys(tb testing.TB) map[string]*algKeys {
	tb.Helper()
	keys, err := benchKeys()
	if err != nil {
		tb.Fatal(err)
	}
	return keys
}

var benchKeys = sync.OnceValues(func() (map[string]*algKeys, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	keys := map[string]*algKeys{}
	for _, k := range []struct {
		alg          string
		method       jwt.SigningMethod
		sign, verify any
	}{
		{"HS256", jwt.SigningMethodHS256, secret, secret},
		{"ES256", jwt.SigningMethodES256, ec, &ec.PublicKey},
		{"EdDSA", jwt.SigningMethodEdDSA, ed, ed.Public()},
	} {
		key, err := interceptor.NewKey("bench-"+strings.ToLower(k.alg), k.method, k.sign)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k.alg, err)
		}
		set, err := interceptor.NewKeySet(key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k.alg, err)
		}
		keys[k.alg] = &algKeys{alg: k.alg, set: set, verify: k.verify}
	}
	return keys, nil
})

// fixture is one case's server and client.
type fixture struct {
	name   string
	addr   string
	demo   demov1.DemoServiceClient
	ctx    context.Context // each call's context; carries the fixed header where the client sends one
	holder *interceptor.TokenHolder

	// refresh-rpc only: the token service and the current refresh token.
	tokens       slidejwtv1.TokenServiceClient
	refreshToken string

	// The Redis cases only: the case's redis-server.
	redis *benchRedis
	// steady-otel only: its MeterProvider's reader and hooks.
	otel *benchOtel
	// The mesh cases only: the signer and the verify-only server.
	mesh *benchMesh

	presented   string // the access token the client starts with
	wantRenewal bool   // whether every call gets a renewed token back

	// renew-every and renew-delegated only: the fake clock of server and
	// client, advanced one second before every call; the calls made (also
	// steady-otel's), the renewals the server reported and the tokens the
	// holder swapped in.
	clock           *benchClock
	calls           int64
	renewals, swaps atomic.Int64

	echoReq  *demov1.EchoRequest
	watchReq *demov1.WatchRequest
}

// newFixture starts case c's server on a loopback TCP port and dials it.
// Both are stopped by tb's cleanup. ctx is the parent of every call. opts
// apply to a Redis case's client.
func newFixture(tb testing.TB, ctx context.Context, k *algKeys, c string, opts ...fixtureOption) *fixture {
	tb.Helper()
	f := &fixture{
		name:     c,
		ctx:      ctx,
		echoReq:  &demov1.EchoRequest{Message: echoMessage},
		watchReq: &demov1.WatchRequest{Count: 1},
	}
	mustServer := func(opts ...interceptor.ServerOption) *interceptor.Server {
		s, err := interceptor.NewServer(k.set, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
	ours := func(s *interceptor.Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
			grpc.ChainStreamInterceptor(s.StreamServerInterceptor()),
		}
	}
	var (
		svc      demoService
		srvOpts  []grpc.ServerOption
		dialOpts []grpc.DialOption
		minter   *interceptor.Server // mints the session's first token
		sessions *interceptor.Server // the server's interceptors, if ours
		fixed    = true              // the client sends a fixed header
	)
	switch c {
	case caseFloor:
		minter = mustServer()
		svc.anonymous = benchSubject
	case caseMiddleware:
		minter = mustServer()
		fn := middlewareAuth(k)
		srvOpts = []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(fn)),
			grpc.ChainStreamInterceptor(auth.StreamServerInterceptor(fn)),
		}
	case caseSteady:
		sessions = mustServer()
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
	case caseSteadyOtel:
		f.otel = newBenchOtel(tb)
		sessions = mustServer(f.otel.server)
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
	case caseSteadyRedis:
		var rs *redisstore.Store
		f.redis, rs = newRedisStore(tb, opts...)
		sessions = mustServer(interceptor.WithSessionStore(rs))
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
	case caseRenew:
		sessions = mustServer(interceptor.WithPolicy(renewPolicy))
		// Minted a minute ago, so that a renewal (whose exp is a whole
		// second later) is due at once.
		minter = mustServer(interceptor.WithPolicy(renewPolicy),
			interceptor.WithClock(func() time.Time { return time.Now().Add(-time.Minute) }))
		srvOpts = ours(sessions)
		f.wantRenewal = true
	case caseRenewEvery:
		// Both sides on one fake clock, one second later at every call:
		// every renewal has a later exp than the token it renews, so the
		// holder swaps it in and presents it on the next call, which
		// misses the cache, verifies and renews again.
		f.clock = newBenchClock()
		sessions = mustServer(interceptor.WithPolicy(renewPolicy), interceptor.WithClock(f.clock.now),
			interceptor.WithEventHook(func(_ context.Context, e interceptor.Event) {
				if e.Kind == interceptor.EventRenewed {
					f.renewals.Add(1)
				}
			}))
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
		f.wantRenewal = true
	case caseSteadyJWKS, caseRenewDelegated:
		f.mesh = newBenchMesh(tb, ctx, k, f) // sets f.clock for renew-delegated
		sessions, minter = f.mesh.verifier, f.mesh.signer
		srvOpts = ours(sessions)
		fixed = false
		f.wantRenewal = c == caseRenewDelegated
	case caseRefreshRPC:
		sessions = mustServer(interceptor.WithSessionStore(&memstore.SessionStore{}))
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
	case caseRefreshRPCRedis:
		var rs *redisstore.Store
		f.redis, rs = newRedisStore(tb, opts...)
		sessions = mustServer(interceptor.WithSessionStore(rs))
		minter = sessions
		srvOpts = ours(sessions)
		fixed = false
	default:
		tb.Fatalf("unknown case %q", c)
	}

	sess, err := minter.StartSession(ctx, benchSubject, nil)
	if err != nil {
		tb.Fatal(err)
	}
	f.presented = sess.AccessToken
	if c == caseSteady || c == caseSteadyOtel || c == caseSteadyRedis || c == caseRenewEvery || f.mesh != nil {
		opts := []interceptor.ClientOption{interceptor.AllowInsecureTransport()}
		if f.otel != nil {
			opts = append(opts, f.otel.client)
		}
		if f.clock != nil {
			opts = append(opts, interceptor.WithClock(f.clock.now),
				interceptor.OnSwap(func(string, time.Time) { f.swaps.Add(1) }))
		}
		h, err := interceptor.NewTokenHolder(sess.AccessToken, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		f.holder = h
		dialOpts = []grpc.DialOption{
			grpc.WithUnaryInterceptor(h.UnaryClientInterceptor()),
			grpc.WithStreamInterceptor(h.StreamClientInterceptor()),
		}
	}
	if fixed {
		f.ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+sess.AccessToken))
	}

	refresh := c == caseRefreshRPC || c == caseRefreshRPCRedis
	f.addr = serve(tb, srvOpts, svc, func(s *grpc.Server) {
		if refresh {
			slidejwtv1.RegisterTokenServiceServer(s, sessions.TokenService())
		}
	})
	conn := dial(tb, f.addr, dialOpts...)
	f.demo = demov1.NewDemoServiceClient(conn)
	if refresh {
		f.tokens = slidejwtv1.NewTokenServiceClient(conn)
		f.refreshToken = sess.RefreshToken
		if f.refreshToken == "" {
			tb.Fatalf("%s: StartSession returned no refresh token", c)
		}
	}
	return f
}

// serve starts a gRPC server with svc (and whatever register adds) on a
// loopback TCP port and returns its address.
func serve(tb testing.TB, opts []grpc.ServerOption, svc demoService, register func(*grpc.Server)) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	demov1.RegisterDemoServiceServer(srv, svc)
	register(srv)
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// dial opens a plaintext client connection to addr.
func dial(tb testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// callContext returns the context of the next call. For refresh-rpc it
// first makes the refresh call, keeps the rotated refresh token, and puts
// the new access token into the context.
func (f *fixture) callContext() (context.Context, error) {
	if f.clock != nil {
		f.clock.advance(time.Second)
	}
	if f.clock != nil || f.otel != nil {
		f.calls++
	}
	if f.tokens == nil {
		return f.ctx, nil
	}
	resp, err := f.tokens.Refresh(f.ctx, &slidejwtv1.RefreshRequest{RefreshToken: f.refreshToken})
	if err != nil {
		return nil, fmt.Errorf("refresh: %w", err)
	}
	p := resp.GetTokens()
	f.refreshToken = p.GetRefreshToken()
	return metadata.AppendToOutgoingContext(f.ctx, "authorization", "Bearer "+p.GetAccessToken()), nil
}

// unary is BenchmarkUnary's operation: one Echo call.
func (f *fixture) unary() error {
	_, err := f.echo()
	return err
}

func (f *fixture) echo(opts ...grpc.CallOption) (*demov1.EchoResponse, error) {
	ctx, err := f.callContext()
	if err != nil {
		return nil, err
	}
	return f.demo.Echo(ctx, f.echoReq, opts...)
}

// streamOpen is BenchmarkStreamOpen's operation: open Watch(count 1),
// read the first message, then read to the end of the stream.
func (f *fixture) streamOpen() error {
	_, _, err := f.watch(false)
	return err
}

// watch opens Watch and returns its first message and, if withMD, its
// response header and trailer, joined.
func (f *fixture) watch(withMD bool) (*demov1.WatchResponse, metadata.MD, error) {
	ctx, err := f.callContext()
	if err != nil {
		return nil, nil, err
	}
	stream, err := f.demo.Watch(ctx, f.watchReq)
	if err != nil {
		return nil, nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, nil, err
		}
	}
	if !withMD {
		return first, nil, nil
	}
	// Header does not block once a message has arrived; both are there.
	header, err := stream.Header()
	if err != nil {
		return nil, nil, err
	}
	return first, metadata.Join(header, stream.Trailer()), nil
}

// check makes two calls of family through the fixture, as the benchmark
// would, and reports the first way in which they fall short of the case.
func (f *fixture) check(family string) error {
	var renewed string
	for i := range 2 { // twice: refresh-rpc rotates, renew de-duplicates
		before := f.refreshToken
		presented := f.presented
		if f.clock != nil {
			presented = f.holder.Token()
		}
		var (
			subject string
			md      metadata.MD
		)
		switch family {
		case familyUnary:
			var header, trailer metadata.MD
			resp, err := f.echo(grpc.Header(&header), grpc.Trailer(&trailer))
			if err != nil {
				return fmt.Errorf("%s: Echo: %w", f.name, err)
			}
			if resp.GetMessage() != echoMessage {
				return fmt.Errorf("%s: Echo message: got %q, want %q", f.name, resp.GetMessage(), echoMessage)
			}
			subject, md = resp.GetSubject(), metadata.Join(header, trailer)
		case familyStreamOpen:
			first, joined, err := f.watch(true)
			if err != nil {
				return fmt.Errorf("%s: Watch: %w", f.name, err)
			}
			if first.GetSequence() != 1 {
				return fmt.Errorf("%s: Watch sequence: got %d, want 1", f.name, first.GetSequence())
			}
			subject, md = first.GetSubject(), joined
		default:
			return fmt.Errorf("unknown family %q", family)
		}
		if subject != benchSubject {
			return fmt.Errorf("%s: response subject: got %q, want %q", f.name, subject, benchSubject)
		}
		got := distinct(md.Get(interceptor.DefaultRenewalHeader))
		switch {
		case !f.wantRenewal && len(got) != 0:
			return fmt.Errorf("%s: call %d got a renewed token (%d bytes), want none", f.name, i+1, len(got[0]))
		case f.wantRenewal && len(got) != 1:
			return fmt.Errorf("%s: call %d got %d distinct renewed tokens, want 1", f.name, i+1, len(got))
		case f.wantRenewal && got[0] == presented:
			return fmt.Errorf("%s: call %d: the renewed token is the presented one", f.name, i+1)
		case f.clock != nil && f.holder.Token() != got[0]:
			return fmt.Errorf("%s: call %d: the holder did not swap in the renewed token", f.name, i+1)
		case f.clock != nil && got[0] == renewed:
			return fmt.Errorf("%s: call %d got the same renewed token as call 1 for another presented token", f.name, i+1)
		case f.wantRenewal && f.clock == nil && i > 0 && got[0] != renewed:
			return fmt.Errorf("%s: call %d got another renewed token than call 1 for the same presented token", f.name, i+1)
		case f.wantRenewal:
			renewed = got[0]
		}
		if f.tokens != nil && (f.refreshToken == "" || f.refreshToken == before) {
			return fmt.Errorf("%s: call %d: the refresh did not rotate the refresh token", f.name, i+1)
		}
	}
	if !f.wantRenewal && f.holder != nil && f.holder.Token() != f.presented {
		return fmt.Errorf("%s: the holder swapped its token; steady must not renew", f.name)
	}
	return f.checkEvery()
}

// checkEvery reports, for renew-every and renew-delegated, whether every
// call so far was renewed by the server and its renewal swapped in by the
// holder; the holder swaps only a token with a later exp, so each call
// presented a token that no call had presented before. For the mesh
// cases, it first reports whether the JWKS was fetched once and the
// signer got one Renew call per call (renew-delegated) or none
// (steady-jwks; see benchMesh.check). For steady-otel, it reports whether
// the metrics counted every call so far. It is nil for the other cases.
func (f *fixture) checkEvery() error {
	if f.mesh != nil {
		if err := f.mesh.check(f.name, f.calls); err != nil {
			return err
		}
	}
	if f.otel != nil {
		return f.otel.check(f.name, f.calls)
	}
	if f.clock == nil {
		return nil
	}
	if r, s := f.renewals.Load(), f.swaps.Load(); r != f.calls || s != f.calls {
		return fmt.Errorf("%s: %d calls, %d renewed, %d swapped in; want every call renewed and swapped", f.name, f.calls, r, s)
	}
	return nil
}

// benchClock is the fake clock of renew-every, safe for concurrent use.
// It starts at SLIDEJWT_TEST_EPOCH (RFC 3339) if set, else at the wall
// clock's current second.
type benchClock struct{ ns atomic.Int64 }

func newBenchClock() *benchClock {
	t := time.Now()
	if v := os.Getenv("SLIDEJWT_TEST_EPOCH"); v != "" {
		if e, err := time.Parse(time.RFC3339, v); err == nil {
			t = e
		}
	}
	c := new(benchClock)
	c.ns.Store(t.Truncate(time.Second).UnixNano())
	return c
}

func (c *benchClock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *benchClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// distinct returns vs without repeats (a stream sends a renewed token in
// its header and its trailer).
func distinct(vs []string) []string {
	var out []string
	for _, v := range vs {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// middlewareAuth is the middleware-verify case's auth.AuthFunc: what a
// user of go-grpc-middleware writes today, a golang-jwt verify on every
// call.
func middlewareAuth(k *algKeys) auth.AuthFunc {
	keyfunc := func(*jwt.Token) (any, error) { return k.verify, nil }
	return func(ctx context.Context) (context.Context, error) {
		raw, err := auth.AuthFromMD(ctx, "bearer")
		if err != nil {
			return nil, err
		}
		tok, err := jwt.Parse(raw, keyfunc, jwt.WithValidMethods([]string{k.alg}), jwt.WithExpirationRequired())
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "invalid token")
		}
		return context.WithValue(ctx, middlewareClaimsKey{}, tok.Claims), nil
	}
}

type middlewareClaimsKey struct{}

// demoService is a trivial DemoService: Echo returns the message and the
// caller's subject, Watch sends count messages at once.
type demoService struct {
	demov1.UnimplementedDemoServiceServer
	// anonymous is the subject reported when no auth interceptor put
	// claims into the context. The floor sets it to benchSubject, so that
	// its responses are the same size as every other case's.
	anonymous string
}

func (d demoService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	return &demov1.EchoResponse{Message: req.GetMessage(), Subject: d.subjectOf(ctx)}, nil
}

func (d demoService) Watch(req *demov1.WatchRequest, stream grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	sub := d.subjectOf(stream.Context())
	for i := int32(1); i <= req.GetCount(); i++ {
		if err := stream.Send(&demov1.WatchResponse{Sequence: i, Subject: sub}); err != nil {
			return err
		}
	}
	return nil
}

// subjectOf returns the subject that either auth interceptor put into ctx,
// or d.anonymous without one.
func (d demoService) subjectOf(ctx context.Context) string {
	if c, ok := interceptor.ClaimsFromContext(ctx); ok {
		return c.Subject
	}
	if c, ok := ctx.Value(middlewareClaimsKey{}).(jwt.Claims); ok {
		sub, _ := c.GetSubject()
		return sub
	}
	return d.anonymous
}
