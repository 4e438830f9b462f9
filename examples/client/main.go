// Command client is the example client of slidejwt. It logs in to the
// example server (examples/server), hands the session's tokens to an
// interceptor.TokenHolder and makes calls through it, printing each time
// the holder swapped in a new access token and each refresh it made on its
// own. It never calls TokenService.Refresh itself: renewals arrive in
// response metadata, and the holder refreshes transparently when needed.
//
// Run the server with an idle window short enough for renewals to show,
// then the client:
//
//	go run ./examples/server --ttl 1m --renew-before 1m
//	go run ./examples/client --addr 127.0.0.1:50051 --user alice --password alice-password --calls 5 --interval 1s
//
// Flags:
//
//	--addr            server address, host:port (default 127.0.0.1:50051); must be loopback unless --insecure
//	--user            user name (default alice)
//	--password        password (default alice-password)
//	--calls           number of Echo calls, or of Watch messages with --stream (default 5)
//	--interval        time between calls (default 1s)
//	--stream          use one server-streaming Watch call instead of Echo calls
//	--refresh-margin  refresh before a call when the access token expires within this margin
//	                  (default 30s, the library's; 0 turns proactive refresh off). Against a
//	                  server whose --ttl is not well above it, every call refreshes first.
//	--timeout         deadline of each call (default 10s)
//	--insecure        allow a non-loopback --addr over the plaintext connection
//
// It prints one line per event on standard output, never a token, and
// exits 1 with a one-line error on standard error when something fails.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "client:", oneLine(err.Error()))
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	addr          string
	user          string
	password      string
	calls         int
	interval      time.Duration
	stream        bool
	refreshMargin time.Duration
	timeout       time.Duration
	insecure      bool
}

// parseFlags parses and checks the command line. Its errors name the flag.
func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by main
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "server address, host:port; must be loopback unless --insecure")
	fs.StringVar(&c.user, "user", "alice", "user name")
	fs.StringVar(&c.password, "password", "alice-password", "password")
	fs.IntVar(&c.calls, "calls", 5, "number of Echo calls, or of Watch messages with --stream")
	fs.DurationVar(&c.interval, "interval", time.Second, "time between calls")
	fs.BoolVar(&c.stream, "stream", false, "use one server-streaming Watch call instead of Echo calls")
	fs.DurationVar(&c.refreshMargin, "refresh-margin", interceptor.DefaultRefreshMargin,
		"refresh before a call when the access token expires within this margin; 0 turns proactive refresh off")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline of each call")
	fs.BoolVar(&c.insecure, "insecure", false, "allow a non-loopback --addr over the plaintext connection")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.user == "":
		return c, errors.New("--user must not be empty")
	case c.calls < 1:
		return c, fmt.Errorf("--calls %d: must be at least 1", c.calls)
	case c.interval < 0:
		return c, fmt.Errorf("--interval %v: must not be negative", c.interval)
	case c.refreshMargin < 0:
		return c, fmt.Errorf("--refresh-margin %v: must not be negative", c.refreshMargin)
	case c.timeout <= 0:
		return c, fmt.Errorf("--timeout %v: must be positive", c.timeout)
	}
	if !c.insecure {
		if err := checkLoopback(c.addr); err != nil {
			return c, err
		}
	}
	return c, nil
}

// checkLoopback accepts a host:port whose host is "localhost" or a
// loopback IP address.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--addr %q: %v", addr, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--addr %s is not a loopback address: this client connects without TLS and would send its tokens in the clear; pass --insecure to do so anyway", addr)
}

func run(ctx context.Context, args []string, out io.Writer) error {
	cfg, err := parseFlags(args)
	if err != nil {
		return err
	}
	p := &printer{out: out}

	// The example server listens in plaintext (it has no certificate), so
	// this client connects without transport security. That is only
	// acceptable on loopback, which parseFlags enforces unless --insecure
	// is given. A real client uses credentials.NewTLS here.
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())

	// authConn carries Login and the holder's refreshes; neither sends an
	// access token, so it has no holder interceptors.
	authConn, err := grpc.NewClient(cfg.addr, creds)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.addr, err)
	}
	defer authConn.Close()

	lctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	login, err := demov1.NewDemoServiceClient(authConn).Login(lctx, &demov1.LoginRequest{Username: cfg.user, Password: cfg.password})
	cancel()
	if err != nil {
		return fmt.Errorf("login as %s: %s", cfg.user, describe(err))
	}
	pair := login.GetTokens()
	p.printf("logged in as %s: access token expires %s, refresh token expires %s, session ends %s",
		cfg.user, clock(pair.GetAccessTokenExpiresAt().AsTime()),
		clock(pair.GetRefreshTokenExpiresAt().AsTime()), clock(pair.GetSessionEndsAt().AsTime()))

	opts := []interceptor.ClientOption{
		// The holder refuses to send its token over a connection without
		// transport security unless told to: the plaintext loopback
		// connection above is deliberate. A real client omits this.
		interceptor.AllowInsecureTransport(),
		// The holder is meant for this one server: bound to its address,
		// it refuses to send its token on a connection to any other.
		interceptor.BindTarget(cfg.addr),
		interceptor.WithRefreshToken(pair.GetRefreshToken()),
		// Refreshes go to the token service on authConn, and nowhere else.
		interceptor.WithTokenService(authConn),
		interceptor.WithRefreshMargin(cfg.refreshMargin),
		interceptor.OnSwap(p.swapped),
		interceptor.OnRefresh(p.refreshed),
	}
	if end := pair.GetSessionEndsAt(); end != nil {
		// Renewals and refreshes never outlive the session's end.
		opts = append(opts, interceptor.WithSessionEnd(end.AsTime()))
	}
	holder, err := interceptor.NewTokenHolder(pair.GetAccessToken(), opts...)
	if err != nil {
		return fmt.Errorf("token holder: %w", err)
	}

	conn, err := grpc.NewClient(cfg.addr, creds,
		grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(holder.StreamClientInterceptor()),
	)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", cfg.addr, err)
	}
	defer conn.Close()
	demo := demov1.NewDemoServiceClient(conn)

	if cfg.stream {
		err = watch(ctx, demo, cfg, p)
	} else {
		err = echo(ctx, demo, cfg, p)
	}
	if err != nil {
		return err
	}
	p.summary()
	return nil
}

// echo makes cfg.calls Echo calls, cfg.interval apart.
func echo(ctx context.Context, demo demov1.DemoServiceClient, cfg config, p *printer) error {
	for i := 1; i <= cfg.calls; i++ {
		if i > 1 {
			if err := sleep(ctx, cfg.interval); err != nil {
				return err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		resp, err := demo.Echo(cctx, &demov1.EchoRequest{Message: fmt.Sprintf("hello %d", i)})
		cancel()
		if err != nil {
			return fmt.Errorf("echo call %d: %s", i, describe(err))
		}
		p.printf("call %d: echo %q for %s", i, resp.GetMessage(), resp.GetSubject())
	}
	return nil
}

// watch opens one Watch stream of cfg.calls messages, cfg.interval apart.
func watch(ctx context.Context, demo demov1.DemoServiceClient, cfg config, p *printer) error {
	sctx, cancel := context.WithTimeout(ctx, cfg.timeout+time.Duration(cfg.calls)*cfg.interval)
	defer cancel()
	stream, err := demo.Watch(sctx, &demov1.WatchRequest{Count: int32(cfg.calls), Interval: durationpb.New(cfg.interval)})
	if err != nil {
		return fmt.Errorf("watch: %s", describe(err))
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch: %s", describe(err))
		}
		p.printf("watch message %d for %s", msg.GetSequence(), msg.GetSubject())
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// printer writes the timeline and counts what the holder did. It keeps
// the last swapped-in token only to tell a refresh's swap from a
// renewal's; it never prints a token.
type printer struct {
	out io.Writer

	mu          sync.Mutex
	swaps       int
	refreshes   int
	refreshSwap int // swaps that came from a refresh, not a renewal
	lastSwapped string
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.printfLocked(format, args...)
}

func (p *printer) printfLocked(format string, args ...any) {
	fmt.Fprintf(p.out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// swapped is the holder's OnSwap hook.
func (p *printer) swapped(token string, exp time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.swaps++
	p.lastSwapped = token
	p.printfLocked("token swapped in: new access token expires %s", clock(exp))
}

// refreshed is the holder's OnRefresh hook. The holder calls OnSwap for
// the refreshed access token just before, under the same lock.
func (p *printer) refreshed(pair *slidejwtv1.TokenPair) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refreshes++
	if pair.GetAccessToken() == p.lastSwapped {
		p.refreshSwap++
	}
	p.printfLocked("holder refreshed the session on its own: access token expires %s, refresh token expires %s",
		clock(pair.GetAccessTokenExpiresAt().AsTime()), clock(pair.GetRefreshTokenExpiresAt().AsTime()))
}

func (p *printer) summary() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, "renewals swapped in: %d\n", p.swaps-p.refreshSwap)
	fmt.Fprintf(p.out, "transparent refreshes: %d\n", p.refreshes)
	fmt.Fprintln(p.out, "refresh calls made by this program itself: 0 (renewals and refreshes were the holder's)")
}

// describe renders a call's error in one line, with the slidejwt reason
// when the server sent one.
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	if r, ok := interceptor.ReasonOf(err); ok {
		return fmt.Sprintf("%s (%s): %s", interceptor.WireReason(r), st.Code(), st.Message())
	}
	return fmt.Sprintf("%s: %s", st.Code(), st.Message())
}

// clock renders t as a time of day, with the date when it is not today.
// clock formats t for the log: the time of day when t falls on the local
// date of now, and the date too otherwise.
func clock(t time.Time) string { return clockAt(t, time.Now()) }

func clockAt(t, now time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return "(none)"
	}
	t, now = t.Local(), now.Local()
	if y, m, d := t.Date(); y != now.Year() || m != now.Month() || d != now.Day() {
		return t.Format("2006-01-02 15:04:05")
	}
	return t.Format("15:04:05")
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
