// Command server is slidejwt's example server: it serves demo.v1.DemoService
// and slidejwt.v1.TokenService behind the session interceptors, plus the
// standard gRPC health and reflection services, on a loopback address.
//
//	go run ./examples/server --ttl 3s --max-lifetime 8s
//
// Login, health and reflection are exempt from authentication. Every other
// call needs "authorization: Bearer <access token>" and may get a renewed
// token back in the "renewed-token" response metadata. The server logs one
// line per login, renewal, refresh, rejection and ended stream, and never
// a token.
//
// Each process keeps its sessions in memory unless --redis names a Redis
// server: then refresh rotation and revocation live in Redis
// (providers/redisstore), shared by every replica started with the same
// --redis, --secret-file, --issuer and --audience. A session revoked on
// one replica is refused by all of them.
//
//	go run ./examples/server --addr 127.0.0.1:50051 --secret-file key --redis 127.0.0.1:6379
//	go run ./examples/server --addr 127.0.0.1:50052 --secret-file key --redis 127.0.0.1:6379
//
// --redis takes host:port or a redis:// or rediss:// URL, which may carry a
// user name and password; the server never logs the URL. With Redis
// unreachable at start-up the server exits with status 1 and one line
// naming --redis; later outages fail the calls that need the store with
// codes.Unavailable, and the server recovers when Redis is back.
//
// With --metrics-addr it also serves its OpenTelemetry metrics
// (providers/otelslidejwt, through OpenTelemetry's Prometheus exporter) in
// the Prometheus format at http://<address>/metrics, and the "listening"
// line names that URL; without it no metrics server starts. Its log lines
// name their attributes as the metrics do (rpc.method, slidejwt.reason,
// slidejwt.refresh.outcome).
//
//	go run ./examples/server --ttl 1m --renew-before 1m --metrics-addr 127.0.0.1:9464
//	curl -s 127.0.0.1:9464/metrics | grep ^slidejwt_
//
// It serves plaintext gRPC, which is only fit for loopback: put TLS in
// front of it (or add grpc.Creds) anywhere else.
package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/providers/redisstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "server:", err)
		var fe *flagError
		if errors.As(err, &fe) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	addr         string
	policy       interceptor.Policy
	refreshTTL   time.Duration
	refreshGrace time.Duration
	leeway       time.Duration
	secret       []byte // nil: generate one
	issuer       string
	audience     string
	users        map[string]string
	redis        *rueidis.ClientOption // nil: the in-memory store; may hold a password, never print it
	metricsAddr  string                // "": no metrics server
}

// flagError is a bad flag value; its message names the flag.
type flagError struct {
	flag string
	msg  string
}

func (e *flagError) Error() string {
	if e.flag == "" {
		return e.msg
	}
	return "--" + e.flag + ": " + e.msg
}

// parseFlags parses and checks args. Every error names the flag at fault.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by the caller
	addr := fs.String("addr", "127.0.0.1:50051", "listen address (127.0.0.1:0 picks a free loopback port)")
	ttl := fs.Duration("ttl", interceptor.DefaultTTL, "idle window: an access token expires this long after it was minted")
	maxLifetime := fs.Duration("max-lifetime", interceptor.DefaultMaxLifetime, "absolute session lifetime after login")
	renewBefore := fs.Duration("renew-before", 0, "renew when the remaining lifetime is below this (default half of --ttl)")
	refreshTTL := fs.Duration("refresh-ttl", interceptor.DefaultRefreshTTL, "idle lifetime of a refresh token")
	refreshGrace := fs.Duration("refresh-grace", interceptor.DefaultRefreshGrace, "how long a retired refresh token still gets its successor (at most --refresh-ttl)")
	secretFile := fs.String("secret-file", "", "file holding the HS256 key (a trailing newline is stripped); replicas need the same --secret-file, --issuer and --audience; default: a random key")
	issuer := fs.String("issuer", "slidejwt-demo", "token issuer (iss); the same on every replica")
	audience := fs.String("audience", "demo", "token audience (aud); the same on every replica")
	redisAddr := fs.String("redis", "", "`address` of the Redis that keeps the sessions, shared by replicas: host:port, or a redis:// or rediss:// URL (credentials may go in the URL; it is never logged); default: a store in this process's memory")
	metricsAddr := fs.String("metrics-addr", "", "`address` (host:port) of an HTTP server for /metrics in the Prometheus format (OpenTelemetry metrics of the sessions); default: none")
	users := fs.String("users", "alice:alice-password", "comma-separated user:password pairs")
	leeway := fs.Duration("leeway", interceptor.DefaultLeeway, "clock-skew allowance")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return config{}, err
		}
		return config{}, &flagError{"", err.Error()}
	}
	if fs.NArg() > 0 {
		return config{}, &flagError{"", fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	type durationFlag struct {
		name string
		d    time.Duration
	}
	for _, f := range []durationFlag{{"ttl", *ttl}, {"max-lifetime", *maxLifetime}, {"refresh-ttl", *refreshTTL}} {
		if f.d < time.Second {
			return config{}, &flagError{f.name, fmt.Sprintf("must be at least 1s, got %v", f.d)}
		}
	}
	for _, f := range []durationFlag{{"renew-before", *renewBefore}, {"refresh-grace", *refreshGrace}, {"leeway", *leeway}} {
		if f.d < 0 {
			return config{}, &flagError{f.name, fmt.Sprintf("must not be negative, got %v", f.d)}
		}
	}
	if !set["renew-before"] {
		*renewBefore = *ttl / 2
	}
	if !set["refresh-grace"] {
		*refreshGrace = min(*refreshGrace, *refreshTTL)
	}
	switch {
	case *renewBefore == 0:
		return config{}, &flagError{"renew-before", "must be positive"}
	case *renewBefore > *ttl:
		return config{}, &flagError{"renew-before", fmt.Sprintf("%v is longer than --ttl %v", *renewBefore, *ttl)}
	case *maxLifetime < *ttl:
		return config{}, &flagError{"max-lifetime", fmt.Sprintf("%v is shorter than --ttl %v", *maxLifetime, *ttl)}
	case *refreshGrace > *refreshTTL:
		return config{}, &flagError{"refresh-grace", fmt.Sprintf("%v is longer than --refresh-ttl %v", *refreshGrace, *refreshTTL)}
	case *leeway > 5*time.Minute:
		return config{}, &flagError{"leeway", fmt.Sprintf("%v is more than 5m", *leeway)}
	}

	cfg := config{
		addr:         *addr,
		policy:       interceptor.Policy{TTL: *ttl, MaxLifetime: *maxLifetime, RenewBefore: *renewBefore},
		refreshTTL:   *refreshTTL,
		refreshGrace: *refreshGrace,
		leeway:       *leeway,
		issuer:       *issuer,
		audience:     *audience,
		users:        map[string]string{},
	}
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			return config{}, &flagError{"secret-file", err.Error()}
		}
		b = []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
		if _, err := interceptor.NewKey("k", jwt.SigningMethodHS256, b); err != nil {
			return config{}, &flagError{"secret-file", fmt.Sprintf("key has %d bytes, need at least 32", len(b))}
		}
		cfg.secret = b
	}
	if set["metrics-addr"] {
		if err := checkMetricsAddr(*metricsAddr); err != nil {
			return config{}, err
		}
		cfg.metricsAddr = *metricsAddr
	}
	if set["redis"] {
		opt, err := parseRedis(*redisAddr)
		if err != nil {
			return config{}, err
		}
		cfg.redis = &opt
	}
	for _, pair := range strings.Split(*users, ",") {
		user, pass, ok := strings.Cut(pair, ":")
		if !ok || user == "" || pass == "" {
			return config{}, &flagError{"users", "want comma-separated user:password pairs"}
		}
		cfg.users[user] = pass
	}
	return cfg, nil
}

// parseRedis turns the --redis value into a client option: host:port, or a
// URL that rueidis.ParseURL understands (redis://, rediss://, and the
// forms it also takes). Its errors never quote the value, which may
// carry a password.
func parseRedis(v string) (rueidis.ClientOption, error) {
	if v == "" {
		return rueidis.ClientOption{}, &flagError{"redis", "must not be empty"}
	}
	if !strings.Contains(v, "://") {
		host, port, err := net.SplitHostPort(v)
		if err != nil || host == "" || port == "" || strings.ContainsAny(v, "@/") {
			return rueidis.ClientOption{}, &flagError{"redis", "want host:port, or a redis:// or rediss:// URL"}
		}
		return rueidis.ClientOption{InitAddress: []string{v}}, nil
	}
	opt, err := rueidis.ParseURL(v)
	if err != nil {
		// url.Parse quotes the whole URL, password included, and its
		// inner errors may quote part of it; rueidis's own errors name
		// the scheme, path or a query value, never the user info.
		if _, isURL := errors.AsType[*url.Error](err); isURL {
			return rueidis.ClientOption{}, &flagError{"redis", "not a valid URL"}
		}
		return rueidis.ClientOption{}, &flagError{"redis", oneLine(strings.TrimPrefix(err.Error(), "redis: "))}
	}
	return opt, nil
}

// openStore returns the session store of cfg: Redis with --redis, and
// then the client to close at exit, or the in-memory store.
func openStore(cfg config) (store.SessionStore, rueidis.Client, error) {
	if cfg.redis == nil {
		return &memstore.SessionStore{}, nil, nil
	}
	client, err := rueidis.NewClient(*cfg.redis)
	if err != nil {
		msg := oneLine(err.Error())
		if pw := cfg.redis.Password; pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx") // rueidis does not echo it; be sure
		}
		return nil, nil, fmt.Errorf("--redis: cannot connect to %s: %s", strings.Join(cfg.redis.InitAddress, ","), msg)
	}
	// Every call to Redis is bounded by the store (redisstore.WithTimeout,
	// default 1 s): with Redis down a call fails with codes.Unavailable
	// rather than waiting on the client's retries.
	return redisstore.New(client), client, nil
}

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// run serves until ctx is done. Start-up errors are returned; the one for
// a bad flag is a *flagError.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	secret, kid := cfg.secret, "file"
	if secret == nil {
		secret, kid = make([]byte, 32), "random"
		if _, err := rand.Read(secret); err != nil {
			return err
		}
	}
	key, err := interceptor.NewKey(kid, jwt.SigningMethodHS256, secret)
	if err != nil {
		return err
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		return err
	}
	sessionStore, client, err := openStore(cfg)
	if err != nil {
		return err
	}
	storeName := "memory"
	if client != nil {
		defer client.Close()
		storeName = "redis"
		if cfg.secret == nil {
			log.Warn("--redis without --secret-file: this replica signs with a random key, and other replicas refuse its tokens")
		}
	}
	// With --metrics-addr, every event goes to otelslidejwt's hook (the
	// metrics) and to the log; without it, to the log alone.
	hook := logEvent(log)
	var m *metrics
	if cfg.metricsAddr != "" {
		if m, err = startMetrics(cfg.metricsAddr); err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			m.shutdown(ctx)
		}()
		logHook := hook
		hook = func(ctx context.Context, e interceptor.Event) {
			m.hook(ctx, e)
			logHook(ctx, e)
		}
		if !isLoopback(m.addr()) {
			log.Warn("--metrics-addr is not a loopback address: anyone who reaches it can read the metrics (method names and counts, no tokens)")
		}
	}
	sessions, err := interceptor.NewServer(keys,
		interceptor.WithPolicy(cfg.policy),
		interceptor.WithIssuer(cfg.issuer),
		interceptor.WithAudience(cfg.audience),
		interceptor.WithLeeway(cfg.leeway),
		interceptor.WithSessionStore(sessionStore),
		interceptor.WithRefreshTTL(cfg.refreshTTL),
		interceptor.WithRefreshGrace(cfg.refreshGrace),
		interceptor.WithExemptMethods(demov1.DemoService_Login_FullMethodName),
		interceptor.WithEventHook(hook),
	)
	if err != nil {
		return err
	}

	// Health and reflection are exempt through go-grpc-middleware's
	// selector; Login through WithExemptMethods above. Either way works.
	authenticated := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service != healthpb.Health_ServiceDesc.ServiceName && !strings.HasPrefix(c.Service, "grpc.reflection.")
	})
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(selector.UnaryServerInterceptor(sessions.UnaryServerInterceptor(), authenticated)),
		grpc.ChainStreamInterceptor(selector.StreamServerInterceptor(sessions.StreamServerInterceptor(), authenticated)),
	)
	demov1.RegisterDemoServiceServer(srv, &demoService{sessions: sessions, users: cfg.users, log: log})
	slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)

	lis, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return &flagError{"addr", err.Error()}
	}
	p := sessions.Policy()
	attrs := []any{"addr", lis.Addr().String(), "store", storeName}
	if cfg.redis != nil {
		// The addresses only: a URL's user info stays out of the log.
		attrs = append(attrs, "redis", strings.Join(cfg.redis.InitAddress, ","))
	}
	attrs = append(attrs, "ttl", p.TTL, "max_lifetime", p.MaxLifetime, "renew_before", p.RenewBefore,
		"refresh_ttl", cfg.refreshTTL, "key", kid)
	if m != nil {
		attrs = append(attrs, "metrics", "http://"+m.addr()+metricsPath)
	}
	log.Info("listening", attrs...)

	done := make(chan error, 2)
	go func() { done <- srv.Serve(lis) }()
	if m != nil {
		go func() {
			if err := m.serve(); err != nil {
				done <- err
			}
		}()
	}
	select {
	case err := <-done:
		srv.Stop()
		return err
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
		log.Info("stopped")
		return nil
	}
}

// demoService implements demo.v1.DemoService.
type demoService struct {
	demov1.UnimplementedDemoServiceServer
	sessions *interceptor.Server
	users    map[string]string
	log      *slog.Logger
}

// Login checks the password in constant time and starts a session.
func (d *demoService) Login(ctx context.Context, req *demov1.LoginRequest) (*demov1.LoginResponse, error) {
	want, known := d.users[req.GetUsername()]
	if !known {
		want = "\x00" // compare anyway, so that timing does not reveal which users exist
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(req.GetPassword())) != 1 || !known {
		if known {
			d.log.InfoContext(ctx, "login failed", "user", req.GetUsername())
		} else {
			// An unknown name is never logged: it may be a password typed
			// into the wrong field, and it is as long as the client likes.
			d.log.InfoContext(ctx, "login failed", "user", unknownUser, "user_len", lengthBucket(len(req.GetUsername())))
		}
		return nil, status.Error(codes.Unauthenticated, "invalid username or password")
	}
	s, err := d.sessions.StartSession(ctx, req.GetUsername(), nil)
	if errors.Is(err, interceptor.ErrStoreUnavailable) {
		d.log.WarnContext(ctx, "login failed", "user", req.GetUsername(), "err", err)
		return nil, status.Error(codes.Unavailable, "session store unavailable")
	}
	if err != nil {
		return nil, status.Error(codes.Internal, "cannot start session")
	}
	return &demov1.LoginResponse{Tokens: s.TokenPair()}, nil
}

// unknownUser stands in the log for a username that is not configured.
const unknownUser = "(unknown)"

// lengthBucket returns a coarse length class of an unknown username, enough
// to tell a typo from a flood without recording the name or its length.
func lengthBucket(n int) string {
	switch {
	case n == 0:
		return "0"
	case n <= 64:
		return "1-64"
	case n <= 1024:
		return "65-1024"
	default:
		return ">1024"
	}
}

// Echo returns the message and the caller's subject.
func (d *demoService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	return &demov1.EchoResponse{Message: req.GetMessage(), Subject: subject(ctx)}, nil
}

// Limits of Watch, so that one request cannot hold the server forever.
const (
	maxWatchCount    = 1000
	maxWatchInterval = time.Minute
)

// Watch sends count messages, interval apart.
func (d *demoService) Watch(req *demov1.WatchRequest, stream grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	count, interval := req.GetCount(), req.GetInterval().AsDuration()
	if count < 0 || count > maxWatchCount || interval < 0 || interval > maxWatchInterval {
		return status.Errorf(codes.InvalidArgument, "count must be in [0, %d] and interval in [0, %v]", maxWatchCount, maxWatchInterval)
	}
	sub := subject(stream.Context())
	for i := int32(1); i <= count; i++ {
		if i > 1 && interval > 0 {
			select {
			case <-time.After(interval):
			case <-stream.Context().Done():
				return status.FromContextError(stream.Context().Err()).Err()
			}
		}
		if err := stream.Send(&demov1.WatchResponse{Sequence: i, Subject: sub}); err != nil {
			return err
		}
	}
	return nil
}

// Chat echoes every message with the caller's subject.
func (d *demoService) Chat(stream grpc.BidiStreamingServer[demov1.ChatMessage, demov1.ChatMessage]) error {
	sub := subject(stream.Context())
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&demov1.ChatMessage{Text: msg.GetText(), Subject: sub}); err != nil {
			return err
		}
	}
}

func subject(ctx context.Context) string {
	if c, ok := interceptor.ClaimsFromContext(ctx); ok {
		return c.Subject
	}
	return ""
}
