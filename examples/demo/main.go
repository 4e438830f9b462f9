// Command demo runs a slidejwt server and client in one process, on a
// simulated clock, and prints the timeline of a sliding session:
//
//   - calls every 10 hours keep sliding the token's expiry forward;
//   - steady activity still ends at the 168 h absolute maximum
//     (SESSION_EXPIRED);
//   - a gap longer than the 24 h idle window ends a session (TOKEN_EXPIRED);
//   - with a refresh token, such a lapsed session is restored by one
//     transparent refresh and retry;
//   - a revoked session is rejected (SESSION_REVOKED).
//
// It exits 0 when every step behaved as described, and 1 otherwise.
//
// Run it with: go run ./examples/demo
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// clock is the simulated time shared by server and client.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// service is the demo's gRPC service: a unary echo and a server stream,
// both reporting the caller from the verified claims.
type service struct {
	testpb.UnimplementedTestServiceServer
}

func (service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	claims, _ := interceptor.ClaimsFromContext(ctx)
	return &testpb.SimpleResponse{Username: claims.Subject}, nil
}

func (service) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
	return nil
}

// demoTarget is the target of the demo's in-memory connections.
const demoTarget = "passthrough:///demo"

func run(out io.Writer) error {
	login := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	clk := &clock{now: login}

	// Server: one HS256 key, the default policy (24 h idle, 168 h cap,
	// renewal in the last 12 h), and an in-memory session store for refresh
	// tokens and revocation.
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	key, err := interceptor.NewKey("demo-1", jwt.SigningMethodHS256, secret)
	if err != nil {
		return err
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		return err
	}
	sessions, err := interceptor.NewServer(keys,
		interceptor.WithIssuer("slidejwt-demo"),
		interceptor.WithAudience("demo"),
		interceptor.WithSessionStore(&memstore.SessionStore{}),
		interceptor.WithClock(clk.Now),
	)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	testpb.RegisterTestServiceServer(srv, service{})
	slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	p := sessions.Policy()
	fmt.Fprintf(out, "slidejwt demo — simulated clock; idle window %v, renewal in the last %v, absolute maximum %v\n",
		hours(p.TTL), hours(p.RenewBefore), hours(p.MaxLifetime))

	// A client for one session: a TokenHolder whose interceptors attach the
	// token and swap in renewals. The demo's in-memory pipe has no TLS,
	// hence AllowInsecureTransport; a real client omits it.
	type client struct {
		api       testpb.TestServiceClient
		holder    *interceptor.TokenHolder
		start     time.Time
		swaps     int
		refreshes int
	}
	// connect builds a client for session s; withRefresh gives it the
	// session's refresh token.
	connect := func(s interceptor.Session, withRefresh bool) (*client, func(), error) {
		c := &client{start: s.AuthTime}
		opts := []interceptor.ClientOption{
			interceptor.AllowInsecureTransport(),
			interceptor.WithClock(clk.Now),
			interceptor.OnSwap(func(_ string, _ time.Time) { c.swaps++ }),
			interceptor.OnRefresh(func(*slidejwtv1.TokenPair) { c.refreshes++ }),
		}
		if withRefresh {
			// The holder refreshes on the one connection it may use:
			// bound to the demo's target, its tokens reach no other.
			opts = append(opts, interceptor.WithRefreshToken(s.RefreshToken), interceptor.BindTarget(demoTarget))
		}
		holder, err := interceptor.NewTokenHolder(s.AccessToken, opts...)
		if err != nil {
			return nil, nil, err
		}
		conn, err := grpc.NewClient(demoTarget,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()),
			grpc.WithChainStreamInterceptor(holder.StreamClientInterceptor()),
		)
		if err != nil {
			return nil, nil, err
		}
		c.api, c.holder = testpb.NewTestServiceClient(conn), holder
		return c, func() { _ = conn.Close() }, nil
	}

	ctx := context.Background()
	var failures []string
	// step makes one call at login+at and prints a timeline line; want is
	// ok for success or the reason the call must fail with.
	const ok interceptor.Reason = 0
	step := func(c *client, at time.Duration, stream bool, want interceptor.Reason) {
		clk.Set(c.start.Add(at))
		before, refreshesBefore := c.swaps, c.refreshes
		kind := "unary "
		var err error
		if stream {
			kind = "stream"
			err = streamCall(ctx, c.api)
		} else {
			_, err = c.api.UnaryCall(ctx, &testpb.SimpleRequest{})
		}
		line := fmt.Sprintf("  %-8s %s call  ", "+"+hours(at), kind)
		reason, rejected := interceptor.ReasonOf(err)
		switch {
		case err == nil && c.refreshes > refreshesBefore:
			line += fmt.Sprintf("ok  after a transparent refresh and retry: expires at +%s", hours(c.holder.Expiry().Sub(c.start)))
		case err == nil && c.swaps > before:
			line += fmt.Sprintf("ok  renewed: expires at +%s", hours(c.holder.Expiry().Sub(c.start)))
		case err == nil:
			line += fmt.Sprintf("ok  no renewal due (expires at +%s)", hours(c.holder.Expiry().Sub(c.start)))
		case rejected:
			line += "rejected: " + interceptor.WireReason(reason)
		default:
			line += "error: " + err.Error()
		}
		fmt.Fprintln(out, line)
		if (err == nil) != (want == ok) || reason != want {
			failures = append(failures, fmt.Sprintf("%s at +%s: want %q, got %v", kind, hours(at), want, err))
		}
	}
	newSession := func(title string, withRefresh bool) (*client, func(), error) {
		fmt.Fprintf(out, "\n%s\n", title)
		start := clk.Now()
		s, err := sessions.StartSession(ctx, "alice", map[string]any{"plan": "pro"})
		if err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(out, "  %-8s login            session started: expires at +%s, ends by +%s at the latest\n",
			"+0h", hours(s.Expiry.Sub(start)), hours(s.End.Sub(start)))
		return connect(s, withRefresh)
	}

	// 1. Steady activity: a call every 10 hours slides the expiry forward
	// until the absolute maximum ends the session.
	c, closeConn, err := newSession("1. Steady activity every 10 h: the session slides, then ends at the 168 h maximum", false)
	if err != nil {
		return err
	}
	for at := 10 * time.Hour; at <= 160*time.Hour; at += 10 * time.Hour {
		step(c, at, at == 40*time.Hour, ok)
	}
	step(c, 170*time.Hour, false, interceptor.ReasonSessionExpired)
	fmt.Fprintf(out, "  the client swapped in %d renewed tokens and never made a refresh call\n", c.swaps)
	closeConn()

	// 2. Idle longer than the 24 h window.
	clk.Set(login.Add(200 * time.Hour))
	if c, closeConn, err = newSession("2. A gap longer than the 24 h idle window ends the session", false); err != nil {
		return err
	}
	step(c, 5*time.Hour, false, ok)
	step(c, 30*time.Hour, false, interceptor.ReasonTokenExpired)
	closeConn()

	// 3. The same gap, but the client holds the session's refresh token.
	clk.Set(login.Add(300 * time.Hour))
	if c, closeConn, err = newSession("3. The same gap with a refresh token: one transparent refresh and retry", true); err != nil {
		return err
	}
	step(c, 5*time.Hour, false, ok)
	step(c, 30*time.Hour, false, ok)
	step(c, 40*time.Hour, true, ok)
	fmt.Fprintf(out, "  the client refreshed %d time(s) inside its interceptor; the caller made no refresh call\n", c.refreshes)
	closeConn()

	// 4. Revocation (a logout, or a stolen token reported).
	clk.Set(login.Add(500 * time.Hour))
	if c, closeConn, err = newSession("4. A revoked session is rejected at once, refresh token or not", true); err != nil {
		return err
	}
	step(c, 1*time.Hour, false, ok)
	if err := sessions.RevokeSession(ctx, c.holder.SessionID()); err != nil {
		return err
	}
	fmt.Fprintf(out, "  %-8s the session is revoked\n", "+1h")
	step(c, 2*time.Hour, false, interceptor.ReasonSessionRevoked)
	step(c, 30*time.Hour, false, interceptor.ReasonSessionRevoked)
	closeConn()

	if len(failures) > 0 {
		return errors.New(fmt.Sprint(failures))
	}
	fmt.Fprintln(out, "\nall steps behaved as expected")
	return nil
}

// streamCall opens a server stream and reads it to the end.
func streamCall(ctx context.Context, api testpb.TestServiceClient) error {
	stream, err := api.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}, {}},
	})
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// hours formats d in hours and minutes: "38h", "12h30m".
func hours(d time.Duration) string {
	h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
	if m == 0 {
		return fmt.Sprintf("%dh", h)
	}
	return fmt.Sprintf("%dh%02dm", h, m)
}
