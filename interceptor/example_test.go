package interceptor_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/slidejwt/slidejwt/interceptor"
)

// The examples serve grpc's interop TestService in memory. Their clocks are
// fixed so that their output does not depend on the day they run.
var loginTime = time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)

// exampleSecret is an HMAC secret of 32 bytes. Use random bytes from a
// secret store in production.
var exampleSecret = []byte("example-secret-of-32-bytes-long!")

// greeter is the application's service. UnaryCall greets the caller named
// by the verified claims; EmptyCall stands for a login method, which is
// exempt from authentication.
type greeter struct {
	testpb.UnimplementedTestServiceServer
}

func (greeter) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	claims, ok := interceptor.ClaimsFromContext(ctx) // always present behind the interceptor
	if !ok {
		return nil, status.Error(codes.Internal, "no claims")
	}
	var role string
	if _, err := claims.Lookup("role", &role); err != nil {
		return nil, status.Error(codes.Internal, "bad role claim")
	}
	msg := fmt.Sprintf("hello %s, role %s, fresh login %v", claims.Subject, role, claims.Fresh)
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(msg)}}, nil
}

func (greeter) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

// exampleKeys returns a key set with one HS256 key.
func exampleKeys() *interceptor.KeySet {
	key, err := interceptor.NewKey("2026-11", jwt.SigningMethodHS256, exampleSecret)
	if err != nil {
		log.Fatal(err)
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		log.Fatal(err)
	}
	return keys
}

// serve runs greeter behind sessions' interceptors on an in-memory
// listener, as ExampleNewServer shows step by step.
func serve(sessions *interceptor.Server) (lis *bufconn.Listener, stop func()) {
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	testpb.RegisterTestServiceServer(srv, greeter{})
	lis = bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	return lis, srv.Stop
}

// dialer connects a grpc client to lis.
func dialer(lis *bufconn.Listener) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
}

func ExampleNewServer() {
	keys := exampleKeys()
	sessions, err := interceptor.NewServer(keys,
		interceptor.WithIssuer("auth.example.com"),
		interceptor.WithAudience("greeter"),
		interceptor.WithExemptMethods(testpb.TestService_EmptyCall_FullMethodName),
		interceptor.WithClock(func() time.Time { return loginTime }), // omit in production
	)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	testpb.RegisterTestServiceServer(srv, greeter{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	// The login handler, once it has checked the user's password:
	s, err := sessions.StartSession(context.Background(), "alice", map[string]any{"role": "admin"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("token expires:", s.Expiry.Format(time.RFC3339))
	fmt.Println("session ends: ", s.End.Format(time.RFC3339))

	// A client presents the token as "authorization: Bearer <jwt>". (A Go
	// client would rather use a TokenHolder; see ExampleNewTokenHolder.)
	conn, err := grpc.NewClient("passthrough:///bufnet", dialer(lis),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AccessToken)
	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(resp.GetPayload().GetBody()))

	// The exempt method needs no token; the others do.
	_, err = client.EmptyCall(context.Background(), &testpb.Empty{})
	fmt.Println("exempt method without a token:", status.Code(err))
	_, err = client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	reason, _ := interceptor.ReasonOf(err)
	fmt.Println("other method without a token:", status.Code(err), interceptor.WireReason(reason))
	// Output:
	// token expires: 2026-11-29T09:00:00Z
	// session ends:  2026-12-05T09:00:00Z
	// hello alice, role admin, fresh login true
	// exempt method without a token: OK
	// other method without a token: Unauthenticated TOKEN_MISSING
}

func ExampleNewTokenHolder() {
	keys := exampleKeys()

	// The user logged in 13 hours ago...
	login, err := interceptor.NewServer(keys, interceptor.WithClock(func() time.Time { return loginTime }))
	if err != nil {
		log.Fatal(err)
	}
	s, err := login.StartSession(context.Background(), "alice", map[string]any{"role": "reader"})
	if err != nil {
		log.Fatal(err)
	}
	// ...and now calls a replica with the same keys. 11 hours are left on
	// the token, less than the default RenewBefore of 12 hours.
	replica, err := interceptor.NewServer(keys, interceptor.WithClock(func() time.Time { return loginTime.Add(13 * time.Hour) }))
	if err != nil {
		log.Fatal(err)
	}
	lis, stop := serve(replica)
	defer stop()

	holder, err := interceptor.NewTokenHolder(s.AccessToken,
		interceptor.OnSwap(func(token string, expiry time.Time) {
			// Persist token here. Never log it.
			fmt.Println("swapped in a renewed token expiring", expiry.Format(time.RFC3339))
		}),
		interceptor.AllowInsecureTransport(), // bufconn; over a network use TLS and drop this
	)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///bufnet", dialer(lis),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(holder.StreamClientInterceptor()),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)

	fmt.Println("held token expires", holder.Expiry().Format(time.RFC3339))
	resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(resp.GetPayload().GetBody()))
	fmt.Println("held token expires", holder.Expiry().Format(time.RFC3339))

	// The next call presents the renewed token, which is not due yet.
	resp, err = client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(resp.GetPayload().GetBody()))
	// Output:
	// held token expires 2026-11-29T09:00:00Z
	// swapped in a renewed token expiring 2026-11-29T22:00:00Z
	// hello alice, role reader, fresh login true
	// held token expires 2026-11-29T22:00:00Z
	// hello alice, role reader, fresh login false
}

func ExamplePolicy_Decide() {
	p := interceptor.Policy{TTL: 24 * time.Hour, MaxLifetime: 168 * time.Hour, RenewBefore: 12 * time.Hour}
	login := loginTime
	show := func(label string, now, exp time.Time) {
		d := p.Decide(now, exp, login)
		if !d.Renew {
			fmt.Printf("%-25s no renewal\n", label)
			return
		}
		fmt.Printf("%-25s renew to login + %v\n", label, d.Expiry.Sub(login))
	}
	// Now, and the presented token's exp, both counted from login.
	show("at 1 h, exp 24 h:", login.Add(time.Hour), login.Add(24*time.Hour))
	show("at 12 h, exp 24 h:", login.Add(12*time.Hour), login.Add(24*time.Hour))
	show("at 13 h, exp 24 h:", login.Add(13*time.Hour), login.Add(24*time.Hour))
	show("at 160 h, exp 166 h:", login.Add(160*time.Hour), login.Add(166*time.Hour))
	show("at 160 h, exp 168 h cap:", login.Add(160*time.Hour), login.Add(168*time.Hour))
	// Output:
	// at 1 h, exp 24 h:         no renewal
	// at 12 h, exp 24 h:        no renewal
	// at 13 h, exp 24 h:        renew to login + 37h0m0s
	// at 160 h, exp 166 h:      renew to login + 168h0m0s
	// at 160 h, exp 168 h cap:  no renewal
}

func ExampleReasonOf() {
	keys := exampleKeys()
	login, err := interceptor.NewServer(keys, interceptor.WithClock(func() time.Time { return loginTime }))
	if err != nil {
		log.Fatal(err)
	}
	s, err := login.StartSession(context.Background(), "alice", nil)
	if err != nil {
		log.Fatal(err)
	}
	// The client comes back after 30 idle hours: past the 24 h window.
	later, err := interceptor.NewServer(keys, interceptor.WithClock(func() time.Time { return loginTime.Add(30 * time.Hour) }))
	if err != nil {
		log.Fatal(err)
	}
	lis, stop := serve(later)
	defer stop()
	conn, err := grpc.NewClient("passthrough:///bufnet", dialer(lis),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AccessToken)
	_, err = testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{})
	fmt.Println(status.Code(err))
	switch reason, _ := interceptor.ReasonOf(err); reason {
	case interceptor.ReasonTokenExpired:
		fmt.Println("idle too long: use a refresh token or log in again")
	case interceptor.ReasonSessionExpired, interceptor.ReasonSessionRevoked:
		fmt.Println("session over: log in again")
	case interceptor.ReasonTokenMissing, interceptor.ReasonTokenInvalid:
		fmt.Println("no usable token: log in")
	}

	_, ok := interceptor.ReasonOf(status.Error(codes.Unavailable, "connection refused"))
	fmt.Println("reason on another error:", ok)
	// Output:
	// Unauthenticated
	// idle too long: use a refresh token or log in again
	// reason on another error: false
}
