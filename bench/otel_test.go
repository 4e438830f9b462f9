package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// The case with OpenTelemetry metrics (providers/otelslidejwt), in
// BenchmarkUnary only:
//
//   - steady-otel: steady with otelslidejwt's hooks on the server and the
//     client, recording with an OpenTelemetry SDK MeterProvider whose
//     reader is a ManualReader (nothing exports during the loop; a
//     Prometheus scrape or an OTLP push would collect on their own
//     schedule). Each call costs the server's hook two counter increments
//     and one histogram sample. Its target is steady's, 1.10× floor.
//     After the loop the reader collects, and the benchmark fails unless
//     slidejwt.server.calls counted every call made.
const caseSteadyOtel = "steady-otel"

// allCasesOf returns the cases of family: casesOf's, with steady-otel
// beside steady in BenchmarkUnary.
func allCasesOf(family string) []string {
	cs := casesOf(family)
	if family != familyUnary {
		return cs
	}
	i := slices.Index(cs, caseSteady)
	return slices.Insert(slices.Clone(cs), i+1, caseSteadyOtel)
}

// benchOtel is steady-otel's MeterProvider, its reader, and the hooks
// that record with it.
type benchOtel struct {
	reader *sdkmetric.ManualReader
	server interceptor.ServerOption
	client interceptor.ClientOption
}

// newBenchOtel returns the hooks on a new SDK MeterProvider, shut down at
// tb's cleanup.
func newBenchOtel(tb testing.TB) *benchOtel {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tb.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return &benchOtel{
		reader: reader,
		server: interceptor.WithEventHook(otelslidejwt.ServerHook(otelslidejwt.WithMeterProvider(mp))),
		client: interceptor.WithClientEventHook(otelslidejwt.ClientHook(otelslidejwt.WithMeterProvider(mp))),
	}
}

// check collects the metrics and reports whether slidejwt.server.calls
// counted calls calls, and no renewal was sent.
func (o *benchOtel) check(name string, calls int64) error {
	var rm metricdata.ResourceMetrics
	if err := o.reader.Collect(context.Background(), &rm); err != nil {
		return fmt.Errorf("%s: collect: %w", name, err)
	}
	counted := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range sum.DataPoints {
					counted[m.Name] += dp.Value
				}
			}
		}
	}
	if got := counted["slidejwt.server.calls"]; got != calls {
		return fmt.Errorf("%s: slidejwt.server.calls = %d, want %d (the calls made)", name, got, calls)
	}
	if got := counted["slidejwt.server.renewals"]; got != 0 {
		return fmt.Errorf("%s: slidejwt.server.renewals = %d, want 0", name, got)
	}
	return nil
}
