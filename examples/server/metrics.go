package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// serviceName is the service.name of the server's metrics (the
// target_info series of the scrape).
const serviceName = "slidejwt-example-server"

// metricsPath is where the metrics server serves the scrape.
const metricsPath = "/metrics"

// checkMetricsAddr checks the --metrics-addr value: host:port with a
// host named (an empty host would listen on every interface; write
// 0.0.0.0 to mean that) and a port number, 0 for a free one.
func checkMetricsAddr(v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return &flagError{"metrics-addr", fmt.Sprintf("want host:port, such as 127.0.0.1:9464: %v", err)}
	}
	if host == "" {
		return &flagError{"metrics-addr", "name the host, such as 127.0.0.1:9464 (0.0.0.0 for every interface)"}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
		return &flagError{"metrics-addr", fmt.Sprintf("port %q is not a number from 0 to 65535", port)}
	}
	return nil
}

// isLoopback reports whether the host of a checked host:port is
// "localhost" or a loopback IP address.
func isLoopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// metrics serves the server's OpenTelemetry metrics in the Prometheus
// format at http://<addr>/metrics, through OpenTelemetry's Prometheus
// exporter on a registry of its own.
type metrics struct {
	hook     func(context.Context, interceptor.Event) // otelslidejwt's server hook
	provider *sdkmetric.MeterProvider
	lis      net.Listener
	srv      *http.Server
}

// startMetrics listens on addr and returns the metrics, not yet serving
// (see serve). An address it cannot listen on is a *flagError.
func startMetrics(addr string) (*metrics, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		// The exporter's default today, spelled out because it says the
		// default may change: rpc.method becomes rpc_method, and names get
		// their unit (_seconds) and, for counters, _total.
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, err
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(serviceName)))
	if err != nil {
		return nil, err
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter), sdkmetric.WithResource(res))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		_ = provider.Shutdown(context.Background())
		return nil, &flagError{"metrics-addr", err.Error()}
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return &metrics{
		hook:     otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(provider)),
		provider: provider,
		lis:      lis,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
		},
	}, nil
}

// addr is the address the metrics server listens on.
func (m *metrics) addr() string { return m.lis.Addr().String() }

// serve serves the scrape until shutdown; its error is nil after a
// shutdown.
func (m *metrics) serve() error {
	if err := m.srv.Serve(m.lis); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}

// shutdown stops the metrics server, waiting at most until ctx is done
// for scrapes in flight, and the meter provider.
func (m *metrics) shutdown(ctx context.Context) {
	if err := m.srv.Shutdown(ctx); err != nil {
		_ = m.srv.Close()
	}
	_ = m.lis.Close() // in case serve never ran
	_ = m.provider.Shutdown(ctx)
}
