package interceptor_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// orders is a service whose handler calls inventory.
type orders struct {
	testpb.UnimplementedTestServiceServer
	inventory testpb.TestServiceClient
}

func (o orders) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	// The handler's own context: the Forwarder takes the caller's token
	// from it. A downstream rejection of that token goes back as it is.
	return o.inventory.UnaryCall(ctx, req)
}

func ExampleServer_NewForwarder() {
	keys := exampleKeys()
	clock := interceptor.WithClock(func() time.Time { return loginTime }) // omit in production

	// inventory greets its callers (see serve).
	inventory, err := interceptor.NewServer(keys, clock)
	if err != nil {
		log.Fatal(err)
	}
	invLis, stopInv := serve(inventory)
	defer stopInv()

	// orders forwards its callers' tokens on its connection to inventory.
	sessions, err := interceptor.NewServer(keys, clock)
	if err != nil {
		log.Fatal(err)
	}
	fwd, err := sessions.NewForwarder(
		interceptor.AllowInsecureTransport(), // bufconn; over a network use TLS and drop this
	)
	if err != nil {
		log.Fatal(err)
	}
	invConn, err := grpc.NewClient("passthrough:///bufnet", dialer(invLis),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(fwd.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(fwd.StreamClientInterceptor()),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer invConn.Close()
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	testpb.RegisterTestServiceServer(srv, orders{inventory: testpb.NewTestServiceClient(invConn)})
	ordLis, stopOrd := listen(srv)
	defer stopOrd()

	// alice calls orders, which calls inventory as alice.
	s, err := sessions.StartSession(context.Background(), "alice", map[string]any{"role": "buyer"})
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///bufnet", dialer(ordLis),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AccessToken)
	resp, err := testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("inventory says:", string(resp.GetPayload().GetBody()))
	// Output:
	// inventory says: hello alice, role buyer, fresh login true
}

func ExampleNewServiceHolder() {
	keys := exampleKeys()
	clock := interceptor.WithClock(func() time.Time { return loginTime }) // omit in production

	// The auth service starts the service's sessions; an hour is enough,
	// since the holder logs in again by itself.
	auth, err := interceptor.NewServer(keys, clock)
	if err != nil {
		log.Fatal(err)
	}
	login := interceptor.LoginFunc(func(ctx context.Context) (*slidejwtv1.TokenPair, error) {
		// In production: a login RPC to the auth service with the service's
		// own credentials (client credentials, a workload certificate).
		s, err := auth.StartSession(ctx, "orders", map[string]any{"role": "service"}, interceptor.WithMaxLifetime(time.Hour))
		if err != nil {
			return nil, err
		}
		fmt.Println("orders logged in; its session ends", s.End.Format(time.RFC3339))
		return s.TokenPair(), nil
	})
	identity, err := interceptor.NewServiceHolder(login,
		interceptor.AllowInsecureTransport(), // bufconn; over a network use TLS and drop this
		clock,
	)
	if err != nil {
		log.Fatal(err)
	}

	inventory, err := interceptor.NewServer(keys, clock)
	if err != nil {
		log.Fatal(err)
	}
	lis, stop := serve(inventory)
	defer stop()
	conn, err := grpc.NewClient("passthrough:///bufnet", dialer(lis),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(identity.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(identity.StreamClientInterceptor()),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := testpb.NewTestServiceClient(conn)
	for range 2 { // one login for both calls
		resp, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		if err != nil {
			log.Fatal(err) // a rejection of the service's token is ErrServiceRejected, codes.Unavailable
		}
		fmt.Println("inventory says:", string(resp.GetPayload().GetBody()))
	}
	// Output:
	// orders logged in; its session ends 2026-11-28T10:00:00Z
	// inventory says: hello orders, role service, fresh login true
	// inventory says: hello orders, role service, fresh login true
}

// listen serves srv on an in-memory listener.
func listen(srv *grpc.Server) (*bufconn.Listener, func()) {
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	return lis, srv.Stop
}
