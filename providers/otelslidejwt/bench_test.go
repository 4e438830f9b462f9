package otelslidejwt_test

import (
	"context"
	"net"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// BenchmarkServerHook measures the hook alone on an SDK MeterProvider
// with a ManualReader, for the events of a steady call: the store call
// and the call's own event.
func BenchmarkServerHook(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	hook := otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(mp))
	ctx := context.Background()
	store := interceptor.Event{Kind: interceptor.EventStoreCall, StoreOp: interceptor.StoreIsRevoked, Duration: 300 * time.Nanosecond}
	call := interceptor.Event{Kind: interceptor.EventAuthenticated, Method: echoMethod, Cache: interceptor.CacheHit, Duration: 2 * time.Microsecond}
	b.Run("steady-call", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			hook(ctx, store)
			hook(ctx, call)
		}
	})
	b.Run("steady-call-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				hook(ctx, store)
				hook(ctx, call)
			}
		})
	})
}

// BenchmarkUnary is a whole unary call over bufconn with a session store,
// no renewal due, without metrics and with both hooks on an SDK
// MeterProvider: the in-process version of bench/'s steady and
// steady-otel.
func BenchmarkUnary(b *testing.B) {
	for _, tc := range []struct {
		name string
		otel bool
	}{{"steady", false}, {"steady-otel", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var sopts []interceptor.ServerOption
			var copts []interceptor.ClientOption
			if tc.otel {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
				sopts = append(sopts, interceptor.WithEventHook(otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(mp))))
				copts = append(copts, interceptor.WithClientEventHook(otelslidejwt.ClientHook(otelslidejwt.WithMeterProvider(mp))))
			}
			sessions, err := interceptor.NewServer(newKeySet(b, newKey(b, "k1")),
				append(sopts, interceptor.WithSessionStore(&memstore.SessionStore{}))...)
			if err != nil {
				b.Fatal(err)
			}
			srv := grpc.NewServer(grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()))
			demov1.RegisterDemoServiceServer(srv, demoService{})
			lis := bufconn.Listen(1 << 20)
			go func() { _ = srv.Serve(lis) }()
			b.Cleanup(srv.Stop)
			s, err := sessions.StartSession(context.Background(), "alice", nil)
			if err != nil {
				b.Fatal(err)
			}
			h, err := interceptor.NewTokenHolder(s.AccessToken, append(copts, interceptor.AllowInsecureTransport())...)
			if err != nil {
				b.Fatal(err)
			}
			conn, err := grpc.NewClient(target,
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = conn.Close() })
			c := demov1.NewDemoServiceClient(conn)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Echo(ctx, &demov1.EchoRequest{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
