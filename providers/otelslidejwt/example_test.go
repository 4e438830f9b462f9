package otelslidejwt_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"sort"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// A server and a client, each with one line of wiring, and what their
// metrics say after a login, a call verified, a call served from the
// cache with a renewal, and a call without a token. A real program
// passes an SDK MeterProvider with a Prometheus or OTLP exporter, or
// nothing, for the global one.
func Example() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	// A clock that the example moves; omit WithClock in production.
	var now atomic.Int64
	now.Store(time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC).Unix())
	clock := func() time.Time { return time.Unix(now.Load(), 0) }

	key, err := interceptor.NewKey("2026-11", jwt.SigningMethodHS256, []byte("example-secret-of-32-bytes-long!"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		log.Fatal(err)
	}
	sessions, err := interceptor.NewServer(keys,
		interceptor.WithEventHook(otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(mp))),
		interceptor.WithClock(clock),
	)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	demov1.RegisterDemoServiceServer(srv, demoService{})
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	s, err := sessions.StartSession(context.Background(), "alice", nil)
	if err != nil {
		log.Fatal(err)
	}
	holder, err := interceptor.NewTokenHolder(s.AccessToken,
		interceptor.WithClientEventHook(otelslidejwt.ClientHook(otelslidejwt.WithMeterProvider(mp))),
		interceptor.AllowInsecureTransport(), // bufconn; use TLS in production
	)
	if err != nil {
		log.Fatal(err)
	}
	dial := func(opts ...grpc.DialOption) *grpc.ClientConn {
		conn, err := grpc.NewClient("passthrough:///bufnet", append(opts,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			log.Fatal(err)
		}
		return conn
	}
	conn := dial(
		grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(holder.StreamClientInterceptor()),
	)
	defer conn.Close()
	client := demov1.NewDemoServiceClient(conn)
	anonymous := dial() // no holder: no token
	defer anonymous.Close()

	ctx := context.Background()
	if _, err := client.Echo(ctx, &demov1.EchoRequest{}); err != nil { // verified
		log.Fatal(err)
	}
	now.Add(13 * 3600)                                                 // the token is in its last 12 hours
	if _, err := client.Echo(ctx, &demov1.EchoRequest{}); err != nil { // cached, renewed
		log.Fatal(err)
	}
	_, _ = demov1.NewDemoServiceClient(anonymous).Echo(ctx, &demov1.EchoRequest{}) // rejected

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	printCounters(rm)
	// Output:
	// slidejwt.client.swaps{rpc.method=demo.v1.DemoService/Echo,rpc.system.name=grpc} 1
	// slidejwt.server.cache.lookups{slidejwt.cache.result=hit} 1
	// slidejwt.server.cache.lookups{slidejwt.cache.result=miss} 1
	// slidejwt.server.calls{rpc.method=demo.v1.DemoService/Echo,rpc.system.name=grpc} 2
	// slidejwt.server.rejections{rpc.method=demo.v1.DemoService/Echo,rpc.system.name=grpc,slidejwt.reason=TOKEN_MISSING} 1
	// slidejwt.server.renewals{rpc.method=demo.v1.DemoService/Echo,rpc.system.name=grpc} 1
	// slidejwt.server.session.starts 1
}

// printCounters prints every counter point of rm, sorted.
func printCounters(rm metricdata.ResourceMetrics) {
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, p := range sum.DataPoints {
				attrs := ""
				if p.Attributes.Len() > 0 {
					attrs = "{" + p.Attributes.Encoded(attribute.DefaultEncoder()) + "}"
				}
				lines = append(lines, fmt.Sprintf("%s%s %d", m.Name, attrs, p.Value))
			}
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
}
