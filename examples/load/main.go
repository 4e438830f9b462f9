// Command load puts slidejwt under concurrent load and checks that sliding
// sessions hold up. It starts an in-process server on a loopback TCP port
// (127.0.0.1, a port the system picks) with the session interceptors and a
// short idle window, so that every session's token is renewed once a
// second (the resolution of JWT times), and runs concurrent clients
// against it. Each client logs in with its own session and makes Echo
// calls back to back through its own TokenHolder.
//
//	go run ./examples/load --clients 8 --duration 5s
//
// With --redis it starts two server replicas instead, A and B, on two
// loopback ports, with the same signing key and each with a rueidis client
// and a Redis session store of its own, sharing one Redis; every call then
// also asks the store whether its session is live (answered from the
// client-side cache in steady state). Client i makes its calls on replica
// i mod 2, and its session is started on the other one. Every
// --refresh-every, each client also refreshes its session through
// TokenService.Refresh on the other replica (rotating its refresh token in
// Redis) and makes one Echo call presenting the new access token to its own
// replica: the refresh of a client that comes back, beside the holder's
// renewals. The sessions' keys in Redis start with "slidejwt-load" and
// expire by themselves an hour and 30 s (the session lifetime and the
// leeway) after the run started.
//
//	go run ./examples/load --redis 127.0.0.1:6379
//
// Flags:
//
//	--clients     concurrent clients, each with its own session and connection (default 8, at most 1024)
//	--inflight    calls each client keeps in flight on its one token holder (default 2, at most 64)
//	--duration    how long to run (default 5s, at most 1m)
//	--max-calls   stop after this many calls in all (default 1000000)
//	--ttl         the sessions' idle window; renewal is always due (default 2s, at least 1s)
//	--alg         signing algorithm: HS256, ES256 or EdDSA (default HS256)
//	--cache-size  the server's verified-token cache and renewal de-duplication size (default 10000; 0 turns them off)
//	--redis       run two replicas sharing this Redis: host:port, or a redis:// or rediss:// URL (default: one replica, no session store)
//	--refresh-every  with --redis, how often each client refreshes its session (default 1s; 0 turns refreshes off)
//
// It prints the calls made, calls per second, p50/p99/max latency, the
// renewals the servers sent and those the clients swapped in, the
// refreshes (with --redis), the failed calls and the token downgrades (a
// holder whose expiry went backwards). A failed refresh, or a failed call
// with a refreshed token, counts as a failure too. It exits 1 if any call
// failed or any token was downgraded, 2 on a bad flag. It stops by itself
// at --duration or --max-calls, whichever comes first, or on an interrupt.
// It sends no traffic beyond 127.0.0.1, but for Redis's address with --redis.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	res, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	if !res.OK() {
		stop()
		os.Exit(1)
	}
}

// Bounds of the flags: the run is bounded in time, calls and goroutines.
const (
	maxClients  = 1024
	maxInflight = 64
	maxDuration = time.Minute
	maxMaxCalls = 1_000_000_000
	// callTimeout bounds one call, so that a stuck call cannot hold the run.
	callTimeout = 10 * time.Second
	// redisKeyPrefix starts the name of every key the replicas write, so
	// that the load's sessions are told apart from a real deployment's.
	redisKeyPrefix = "slidejwt-load"
)

// config is the parsed command line.
type config struct {
	clients   int
	inflight  int
	duration  time.Duration
	maxCalls  int64
	ttl       time.Duration
	alg       string
	cacheSize int
	// redis is the Redis of the two replicas (host:port or a URL); ""
	// runs one replica with no session store.
	redis        string
	refreshEvery time.Duration
}

func defaultConfig() config {
	return config{
		clients:   8,
		inflight:  2,
		duration:  5 * time.Second,
		maxCalls:  1_000_000,
		ttl:       2 * time.Second,
		alg:       "HS256",
		cacheSize: interceptor.DefaultCacheSize,
		// refreshEvery applies with redis only.
		refreshEvery: time.Second,
	}
}

// parseFlags parses and checks args; every error names the flag at fault.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	c := defaultConfig()
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&c.clients, "clients", c.clients, "concurrent clients, each with its own session and connection")
	fs.IntVar(&c.inflight, "inflight", c.inflight, "calls each client keeps in flight on its one token holder")
	fs.DurationVar(&c.duration, "duration", c.duration, "how long to run (at most 1m)")
	fs.Int64Var(&c.maxCalls, "max-calls", c.maxCalls, "stop after this many calls in all")
	fs.DurationVar(&c.ttl, "ttl", c.ttl, "the sessions' idle window; renewal is always due")
	fs.StringVar(&c.alg, "alg", c.alg, "signing algorithm: HS256, ES256 or EdDSA")
	fs.IntVar(&c.cacheSize, "cache-size", c.cacheSize, "verified-token cache and renewal de-duplication size; 0 turns them off")
	fs.StringVar(&c.redis, "redis", c.redis, "run two replicas sharing this Redis (host:port or a redis:// URL)")
	fs.DurationVar(&c.refreshEvery, "refresh-every", c.refreshEvery, "with --redis, how often each client refreshes its session; 0 turns refreshes off")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
		}
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	refreshSet := false
	fs.Visit(func(f *flag.Flag) { refreshSet = refreshSet || f.Name == "refresh-every" })
	if refreshSet && c.redis == "" {
		return config{}, errors.New("--refresh-every needs --redis: refresh tokens need the session store")
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch {
	case c.clients < 1 || c.clients > maxClients:
		return fmt.Errorf("--clients: %d outside [1, %d]", c.clients, maxClients)
	case c.inflight < 1 || c.inflight > maxInflight:
		return fmt.Errorf("--inflight: %d outside [1, %d]", c.inflight, maxInflight)
	case c.duration <= 0 || c.duration > maxDuration:
		return fmt.Errorf("--duration: %v outside (0, %v]", c.duration, maxDuration)
	case c.maxCalls < 1 || c.maxCalls > maxMaxCalls:
		return fmt.Errorf("--max-calls: %d outside [1, %d]", c.maxCalls, maxMaxCalls)
	case c.ttl < time.Second || c.ttl > time.Hour:
		return fmt.Errorf("--ttl: %v outside [1s, 1h]", c.ttl)
	case c.cacheSize < 0:
		return fmt.Errorf("--cache-size: %d is negative", c.cacheSize)
	case c.refreshEvery < 0 || c.refreshEvery > time.Hour:
		return fmt.Errorf("--refresh-every: %v outside [0, 1h]", c.refreshEvery)
	}
	if c.redis != "" {
		if _, err := redisOption(c.redis); err != nil {
			return fmt.Errorf("--redis: %w", err)
		}
	}
	if _, err := newKey(c.alg); err != nil {
		return fmt.Errorf("--alg: %w", err)
	}
	return nil
}

// newKey returns a fresh signing key for alg.
func newKey(alg string) (*interceptor.Key, error) {
	switch alg {
	case "HS256":
		secret := make([]byte, 32)
		_, _ = rand.Read(secret) // crypto/rand.Read never fails (Go 1.24+).
		return interceptor.NewKey("load", jwt.SigningMethodHS256, secret)
	case "ES256":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return interceptor.NewKey("load", jwt.SigningMethodES256, k)
	case "EdDSA":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return interceptor.NewKey("load", jwt.SigningMethodEdDSA, k)
	}
	return nil, fmt.Errorf("%q is not HS256, ES256 or EdDSA", alg)
}

// result is what one run measured.
type result struct {
	Calls         int64
	Elapsed       time.Duration
	P50, P99, Max time.Duration
	RenewalsSent  int64 // EventRenewed on the servers: calls that carried a renewed token back
	Swaps         int64 // OnSwap on the clients: renewed tokens swapped in
	AuthFailures  int64 // calls or refreshes failed with Unauthenticated or PermissionDenied
	OtherFailures int64 // calls or refreshes failed otherwise, or answered for the wrong subject
	Downgrades    int64 // a holder's expiry went backwards
	StoppedBy     string
	HeapAfter     uint64 // live heap after the run, after a GC

	// With --redis: the calls each replica served (A, B), and the
	// refreshes that succeeded, each with its call with the new access
	// token, and their latency (both calls).
	ReplicaCalls           []int64
	Refreshes              int64
	RefreshP50, RefreshP99 time.Duration
}

// OK reports whether the run made calls and none failed or downgraded.
func (r result) OK() bool {
	return r.Calls > 0 && r.AuthFailures == 0 && r.OtherFailures == 0 && r.Downgrades == 0
}

// echoService answers Echo with the caller's subject.
type echoService struct {
	demov1.UnimplementedDemoServiceServer
}

func (echoService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	c, ok := interceptor.ClaimsFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "no claims")
	}
	return &demov1.EchoResponse{Message: req.GetMessage(), Subject: c.Subject}, nil
}

// client is one session: its holder, connection and the expiry its OnSwap
// hook saw last.
type client struct {
	subject string
	replica int // the index of the replica its calls go to
	holder  *interceptor.TokenHolder
	conn    *grpc.ClientConn
	demo    demov1.DemoServiceClient
	lastExp time.Time // touched only by OnSwap, which the holder serializes

	// With --redis: the session's refresh token (touched only by the
	// client's refresh loop), the token service of the other replica and
	// the client's own replica without the holder, for the call with a
	// refreshed token.
	refreshToken string
	tokens       slidejwtv1.TokenServiceClient
	direct       demov1.DemoServiceClient
	extra        []*grpc.ClientConn
}

// close closes the client's connections.
func (c *client) close() {
	if c.conn != nil {
		_ = c.conn.Close()
	}
	for _, cc := range c.extra {
		_ = cc.Close()
	}
}

// counters are shared by all workers.
type counters struct {
	issued, calls, renewed, swaps     atomic.Int64
	authFailures, otherFailures, down atomic.Int64
	refreshes                         atomic.Int64
	replicaCalls                      [2]atomic.Int64
}

// failed counts err, or a response for another subject than want, as a
// failure, and reports whether there was one.
func (n *counters) failed(err error, got, want string) bool {
	switch code := status.Code(err); {
	case code == codes.Unauthenticated || code == codes.PermissionDenied:
		n.authFailures.Add(1)
	case err != nil || got != want:
		n.otherFailures.Add(1)
	default:
		return false
	}
	return true
}

// replica is one in-process server.
type replica struct {
	name     string
	sessions *interceptor.Server
	addr     string
}

// startReplicas starts the servers of cfg on loopback ports: one without a
// session store, or, with cfg.redis, two with the same keys, each with a
// Redis client and store of its own. stop stops the servers and closes
// the Redis clients.
func startReplicas(cfg config, keys *interceptor.KeySet, n *counters) (reps []*replica, stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	count := 1
	if cfg.redis != "" {
		count = 2
	}
	for i := range count {
		opts := []interceptor.ServerOption{
			// RenewBefore = TTL: a renewal is due on every call, and minted
			// once a second per session, when the new exp moves.
			interceptor.WithPolicy(interceptor.Policy{TTL: cfg.ttl, RenewBefore: cfg.ttl, MaxLifetime: time.Hour}),
			interceptor.WithCacheSize(cfg.cacheSize),
			interceptor.WithEventHook(func(_ context.Context, e interceptor.Event) {
				if e.Kind == interceptor.EventRenewed {
					n.renewed.Add(1)
				}
			}),
		}
		if cfg.redis != "" {
			ro, err := redisOption(cfg.redis)
			if err != nil {
				return nil, stop, err
			}
			rc, err := rueidis.NewClient(ro)
			if err != nil {
				return nil, stop, fmt.Errorf("redis at %s: %w", strings.Join(ro.InitAddress, ","), err)
			}
			stops = append(stops, rc.Close)
			opts = append(opts, interceptor.WithSessionStore(redisstore.New(rc, redisstore.WithKeyPrefix(redisKeyPrefix))))
		}
		sessions, err := interceptor.NewServer(keys, opts...)
		if err != nil {
			return nil, stop, err
		}
		srv := grpc.NewServer(
			grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
			grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
		)
		demov1.RegisterDemoServiceServer(srv, echoService{})
		if cfg.redis != "" {
			slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, stop, err
		}
		served := make(chan struct{})
		go func() { _ = srv.Serve(lis); close(served) }()
		stops = append(stops, func() {
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				srv.Stop()
			}
			<-served
		})
		reps = append(reps, &replica{name: string(rune('A' + i)), sessions: sessions, addr: lis.Addr().String()})
	}
	return reps, stop, nil
}

// redisOption is the rueidis client option of --redis: a redis:// or
// rediss:// URL, or host:port.
func redisOption(addr string) (rueidis.ClientOption, error) {
	if strings.Contains(addr, "://") {
		return rueidis.ParseURL(addr)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return rueidis.ClientOption{}, fmt.Errorf("%q is neither host:port nor a redis:// URL", addr)
	}
	return rueidis.ClientOption{InitAddress: []string{addr}}, nil
}

// run starts the servers and the clients, runs until cfg.duration has
// passed, cfg.maxCalls calls were made or ctx is done, and prints a
// summary to out.
func run(ctx context.Context, cfg config, out io.Writer) (result, error) {
	if err := cfg.validate(); err != nil {
		return result{}, err
	}
	key, err := newKey(cfg.alg)
	if err != nil {
		return result{}, err
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		return result{}, err
	}
	var n counters
	reps, stop, err := startReplicas(cfg, keys, &n)
	if err != nil {
		return result{}, err
	}
	defer stop()

	clients := make([]*client, cfg.clients)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.close()
			}
		}
	}()
	for i := range clients {
		// The calls go to replica i mod 2; the session starts, and is
		// refreshed, on the other one.
		own, other := reps[i%len(reps)], reps[(i+1)%len(reps)]
		c, err := login(ctx, other.sessions, fmt.Sprintf("user-%d", i), own.addr, &n)
		if err != nil {
			return result{}, err
		}
		clients[i] = c
		c.replica = i % len(reps)
		if cfg.redis != "" {
			if err := c.connectRefresh(other.addr, own.addr); err != nil {
				return result{}, err
			}
		}
	}

	if len(reps) == 1 {
		fmt.Fprintf(out, "load: %d clients × %d in flight, %v or %d calls, %s, TTL %v (renewal due every call, minted once a second per session), cache %d, server %s\n",
			cfg.clients, cfg.inflight, cfg.duration, cfg.maxCalls, cfg.alg, cfg.ttl, cfg.cacheSize, reps[0].addr)
	} else {
		ro, _ := redisOption(cfg.redis) // validated
		refresh := "no refreshes"
		if cfg.refreshEvery > 0 {
			refresh = fmt.Sprintf("a refresh every %v per client", cfg.refreshEvery)
		}
		fmt.Fprintf(out, "load: %d clients × %d in flight, %v or %d calls, %s, TTL %v (renewal due every call, minted once a second per session), cache %d, %s; replicas A %s and B %s sharing Redis at %s\n",
			cfg.clients, cfg.inflight, cfg.duration, cfg.maxCalls, cfg.alg, cfg.ttl, cfg.cacheSize, refresh, reps[0].addr, reps[1].addr, strings.Join(ro.InitAddress, ","))
	}

	start := time.Now()
	deadline := start.Add(cfg.duration)
	hists := make([]*histogram, cfg.clients*cfg.inflight)
	var wg sync.WaitGroup
	for i, c := range clients {
		for j := range cfg.inflight {
			h := new(histogram)
			hists[i*cfg.inflight+j] = h
			wg.Go(func() { work(ctx, c, deadline, cfg.maxCalls, &n, h) })
		}
	}
	// The refreshes stop with the workers.
	refreshCtx, stopRefresh := context.WithCancel(ctx)
	var rwg sync.WaitGroup
	var refreshHists []*histogram
	if cfg.redis != "" && cfg.refreshEvery > 0 {
		for i, c := range clients {
			h := new(histogram)
			refreshHists = append(refreshHists, h)
			// Spread over the interval, so that the clients do not all
			// refresh at the same instant.
			first := start.Add(cfg.refreshEvery * time.Duration(i) / time.Duration(len(clients)))
			rwg.Go(func() { refreshLoop(refreshCtx, c, first, deadline, cfg.refreshEvery, &n, h) })
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopRefresh()
	rwg.Wait()

	var all, refreshes histogram
	for _, h := range hists {
		all.merge(h)
	}
	for _, h := range refreshHists {
		refreshes.merge(h)
	}
	res := result{
		Calls:         n.calls.Load(),
		Elapsed:       elapsed,
		P50:           all.quantile(0.50),
		P99:           all.quantile(0.99),
		Max:           all.max,
		RenewalsSent:  n.renewed.Load(),
		Swaps:         n.swaps.Load(),
		AuthFailures:  n.authFailures.Load(),
		OtherFailures: n.otherFailures.Load(),
		Downgrades:    n.down.Load(),
		Refreshes:     n.refreshes.Load(),
		RefreshP50:    refreshes.quantile(0.50),
		RefreshP99:    refreshes.quantile(0.99),
	}
	if len(reps) > 1 {
		for i := range reps {
			res.ReplicaCalls = append(res.ReplicaCalls, n.replicaCalls[i].Load())
		}
	}
	switch {
	case n.issued.Load() > cfg.maxCalls:
		res.StoppedBy = "max-calls"
	case ctx.Err() != nil:
		res.StoppedBy = "interrupted"
	default:
		res.StoppedBy = "duration"
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapAfter = ms.HeapAlloc
	printSummary(out, res)
	return res, nil
}

// login starts a session for subject and connects a holder for it.
func login(ctx context.Context, sessions *interceptor.Server, subject, addr string, n *counters) (*client, error) {
	s, err := sessions.StartSession(ctx, subject, nil)
	if err != nil {
		return nil, err
	}
	c := &client{subject: subject, lastExp: s.Expiry, refreshToken: s.RefreshToken}
	c.holder, err = interceptor.NewTokenHolder(s.AccessToken,
		// Plaintext is acceptable only because the server is in this
		// process, on 127.0.0.1.
		interceptor.AllowInsecureTransport(),
		interceptor.OnSwap(func(_ string, exp time.Time) {
			n.swaps.Add(1)
			if !exp.After(c.lastExp) {
				n.down.Add(1)
			}
			c.lastExp = exp
		}),
	)
	if err != nil {
		return nil, err
	}
	c.conn, err = grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(c.holder.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(c.holder.StreamClientInterceptor()),
	)
	if err != nil {
		return nil, err
	}
	c.demo = demov1.NewDemoServiceClient(c.conn)
	return c, nil
}

// connectRefresh connects c to the token service at tokensAddr and,
// without its holder, to its own replica at ownAddr.
func (c *client) connectRefresh(tokensAddr, ownAddr string) error {
	if c.refreshToken == "" {
		return errors.New("the session has no refresh token")
	}
	dial := func(addr string) (*grpc.ClientConn, error) {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			c.extra = append(c.extra, cc)
		}
		return cc, err
	}
	tc, err := dial(tokensAddr)
	if err != nil {
		return err
	}
	dc, err := dial(ownAddr)
	if err != nil {
		return err
	}
	c.tokens = slidejwtv1.NewTokenServiceClient(tc)
	c.direct = demov1.NewDemoServiceClient(dc)
	return nil
}

// work makes Echo calls back to back until the deadline, the call budget
// or ctx ends the run. Calls are never cancelled by the end of the run:
// it is checked between calls, so every failure counted is a real one.
func work(ctx context.Context, c *client, deadline time.Time, maxCalls int64, n *counters, h *histogram) {
	req := &demov1.EchoRequest{Message: "ping"}
	seen := c.holder.Expiry()
	for ctx.Err() == nil && time.Now().Before(deadline) && n.issued.Add(1) <= maxCalls {
		cctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		t := time.Now()
		resp, err := c.demo.Echo(cctx, req)
		h.record(time.Since(t))
		cancel()
		n.calls.Add(1)
		n.replicaCalls[c.replica].Add(1)
		n.failed(err, resp.GetSubject(), c.subject)
		if exp := c.holder.Expiry(); exp.Before(seen) {
			n.down.Add(1)
		} else {
			seen = exp
		}
	}
}

// refreshLoop refreshes c's session at first and every interval after it
// until the deadline passes or ctx ends, and records each refresh's
// latency in h.
func refreshLoop(ctx context.Context, c *client, first, deadline time.Time, every time.Duration, n *counters, h *histogram) {
	next := first
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !time.Now().Before(deadline) {
			return
		}
		start := time.Now()
		if refresh(c, n) {
			h.record(time.Since(start))
			n.refreshes.Add(1)
		}
		next = next.Add(every)
		t.Reset(time.Until(next))
	}
}

// refresh exchanges c's refresh token for the session's next pair on the
// other replica, keeps the new refresh token, and makes one Echo call with
// the new access token on c's own replica. It reports whether both
// succeeded, and counts a failure otherwise. Like the calls, it is not cut
// short by the end of the run.
func refresh(c *client, n *counters) bool {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := c.tokens.Refresh(ctx, &slidejwtv1.RefreshRequest{RefreshToken: c.refreshToken})
	if err != nil {
		n.failed(err, "", c.subject)
		return false
	}
	pair := resp.GetTokens()
	if pair.GetAccessToken() == "" || pair.GetRefreshToken() == "" {
		n.otherFailures.Add(1)
		return false
	}
	c.refreshToken = pair.GetRefreshToken()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+pair.GetAccessToken())
	echo, err := c.direct.Echo(ctx, &demov1.EchoRequest{Message: "ping"})
	return !n.failed(err, echo.GetSubject(), c.subject)
}

func printSummary(out io.Writer, r result) {
	rps := float64(r.Calls) / r.Elapsed.Seconds()
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "  calls            %d in %v (stopped by %s)\n", r.Calls, r.Elapsed.Round(time.Millisecond), r.StoppedBy)
	fmt.Fprintf(out, "  throughput       %.0f calls/s\n", rps)
	fmt.Fprintf(out, "  latency          p50 %v  p99 %v  max %v\n", round(r.P50), round(r.P99), round(r.Max))
	if len(r.ReplicaCalls) == 2 {
		fmt.Fprintf(out, "  replicas         A %d calls, B %d calls (sharing one Redis)\n", r.ReplicaCalls[0], r.ReplicaCalls[1])
	}
	fmt.Fprintf(out, "  renewals sent    %d (calls that carried a renewed token back)\n", r.RenewalsSent)
	fmt.Fprintf(out, "  renewals swapped %d (new tokens taken by the clients)\n", r.Swaps)
	if len(r.ReplicaCalls) == 2 {
		fmt.Fprintf(out, "  refreshes        %d (on the other replica, each with a call using its new token; p50 %v  p99 %v)\n",
			r.Refreshes, round(r.RefreshP50), round(r.RefreshP99))
	}
	fmt.Fprintf(out, "  auth failures    %d\n", r.AuthFailures)
	fmt.Fprintf(out, "  other failures   %d\n", r.OtherFailures)
	fmt.Fprintf(out, "  downgrades       %d\n", r.Downgrades)
	fmt.Fprintf(out, "  heap after run   %.1f MiB\n", float64(r.HeapAfter)/(1<<20))
	fmt.Fprintf(out, "  result           %s\n", verdict)
}

// round keeps three significant digits of d.
func round(d time.Duration) time.Duration {
	for m := time.Duration(1); ; m *= 10 {
		if d < 1000*m {
			return d.Round(m)
		}
	}
}

// histogram records durations in logarithmic buckets: values below 2^subBits
// ns exactly, larger ones in 2^subBits buckets per power of two, so a
// quantile is off by at most 1/2^subBits (3 %). Its size is fixed whatever
// the number of calls. It is not safe for concurrent use; each worker has
// its own and they are merged at the end.
type histogram struct {
	counts [(64 - subBits + 1) << subBits]uint64
	n      uint64
	min    time.Duration
	max    time.Duration
}

const subBits = 5

// bucket returns the index of the bucket holding v.
func bucket(v uint64) int {
	if v < 1<<subBits {
		return int(v)
	}
	l := bits.Len64(v)          // v has l ≥ subBits+1 bits
	m := v >> (l - subBits - 1) // the top subBits+1 bits: [2^subBits, 2^(subBits+1))
	return (l-subBits)<<subBits + int(m) - 1<<subBits
}

// bounds returns the smallest and largest value of bucket i.
func bounds(i int) (lo, hi uint64) {
	if i < 1<<subBits {
		return uint64(i), uint64(i)
	}
	g := i >> subBits // l - subBits
	m := uint64(i&(1<<subBits-1)) + 1<<subBits
	shift := g - 1
	return m << shift, (m+1)<<shift - 1
}

func (h *histogram) record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucket(uint64(d))]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.n++
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
}

// quantile returns the q-quantile (0 < q ≤ 1): the middle of the bucket
// holding the ⌈q·n⌉-th smallest value, kept within [min, max].
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if float64(rank) < q*float64(h.n) {
		rank++
	}
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			lo, hi := bounds(i)
			v := time.Duration(lo + (hi-lo)/2)
			return min(max(v, h.min), h.max)
		}
	}
	return h.max
}
