package interceptor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/test/bufconn"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// A verify-only service slides the sessions it sees by asking the
// signing service for their renewals: the client calls only the
// verify-only service, and its session slides all the same.
func ExampleWithDelegatedRenewal() {
	var now atomic.Int64 // the examples' fixed clock; omit in production
	now.Store(loginTime.Unix())
	clock := interceptor.WithClock(func() time.Time { return time.Unix(now.Load(), 0).UTC() })

	// The auth service signs, serves TokenService (Renew included) and
	// publishes its JWKS.
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	key, err := interceptor.NewKey("auth-2026-11", jwt.SigningMethodES256, ecKey)
	if err != nil {
		log.Fatal(err)
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		log.Fatal(err)
	}
	authSessions, err := interceptor.NewServer(keys, interceptor.WithIssuer("auth"), interceptor.WithAudience("mesh"), clock)
	if err != nil {
		log.Fatal(err)
	}
	authSrv := grpc.NewServer(grpc.ChainUnaryInterceptor(authSessions.UnaryServerInterceptor()))
	slidejwtv1.RegisterTokenServiceServer(authSrv, authSessions.TokenService())
	authLis := bufconn.Listen(1 << 20)
	go func() { _ = authSrv.Serve(authLis) }()
	defer authSrv.Stop()
	jwksHandler, err := authSessions.JWKSHandler()
	if err != nil {
		log.Fatal(err)
	}
	jwks := httptest.NewTLSServer(jwksHandler)
	defer jwks.Close()

	// The orders service only verifies, and asks auth for renewals.
	authConn, err := grpc.NewClient("passthrough:///auth", dialer(authLis),
		grpc.WithTransportCredentials(insecure.NewCredentials())) // over a network: TLS
	if err != nil {
		log.Fatal(err)
	}
	defer authConn.Close()
	remote, err := interceptor.NewRemoteKeySet(jwks.URL+interceptor.JWKSPath,
		interceptor.WithHTTPClient(jwks.Client()),
		interceptor.WithRemoteClock(func() time.Time { return time.Unix(now.Load(), 0).UTC() }))
	if err != nil {
		log.Fatal(err)
	}
	orders, err := interceptor.NewServer(remote.KeySet(),
		interceptor.WithIssuer("auth"), interceptor.WithAudience("mesh"), clock,
		interceptor.WithDelegatedRenewal(authConn))
	if err != nil {
		log.Fatal(err)
	}
	ordersLis, stop := serve(orders)
	defer stop()

	// Alice logged in 13 hours ago, and calls orders only.
	s, err := authSessions.StartSession(context.Background(), "alice", map[string]any{"role": "buyer"})
	if err != nil {
		log.Fatal(err)
	}
	now.Store(loginTime.Add(13 * time.Hour).Unix())
	holder, err := interceptor.NewTokenHolder(s.AccessToken,
		interceptor.OnSwap(func(_ string, expiry time.Time) {
			fmt.Println("swapped in a renewed token expiring", expiry.Format(time.RFC3339))
		}),
		interceptor.AllowInsecureTransport()) // bufconn; over a network use TLS and drop this
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///orders", dialer(ordersLis),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	resp, err := testpb.NewTestServiceClient(conn).UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(resp.GetPayload().GetBody()))
	// Output:
	// swapped in a renewed token expiring 2026-11-29T22:00:00Z
	// hello alice, role buyer, fresh login true
}
