package otelslidejwt

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

var errorTypeKey = semconv.ErrorTypeKey

// durationBuckets are the bucket bounds, in seconds, of the duration
// histograms: from a microsecond (a cache hit, an in-memory store) to a
// second (a store that is far away or struggling). OpenTelemetry's
// default bounds start at 5 and would put every call in the first bucket.
var durationBuckets = []float64{
	1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
	1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1,
}

// instruments creates a hook's instruments on one meter. An instrument
// that cannot be created is reported to errs and replaced by one that
// records nothing, so that a hook never fails a call.
type instruments struct {
	m    metric.Meter
	errs func(error)
}

func (in instruments) counter(name, unit, desc string) metric.Int64Counter {
	c, err := in.m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	return made(in, c, err, metric.Int64Counter(noop.Int64Counter{}))
}

// observableCounter is counter for a count the hook keeps itself and the
// SDK reads at each collection.
func (in instruments) observableCounter(name, unit, desc string) metric.Int64ObservableCounter {
	c, err := in.m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	return made(in, c, err, metric.Int64ObservableCounter(noop.Int64ObservableCounter{}))
}

func (in instruments) histogram(name, desc string) metric.Float64Histogram {
	h, err := in.m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	return made(in, h, err, metric.Float64Histogram(noop.Float64Histogram{}))
}

// made reports err, if any, and returns the instrument inst, or none if
// the meter gave none.
func made[T comparable](in instruments, inst T, err error, none T) T {
	if err != nil {
		in.errs(err)
	}
	var zero T
	if inst == zero {
		return none
	}
	return inst
}
