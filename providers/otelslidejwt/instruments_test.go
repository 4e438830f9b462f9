package otelslidejwt

import (
	"errors"
	"testing"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// failingMeter creates no instrument: each constructor returns nil and an
// error.
type failingMeter struct{ noop.Meter }

var errNoInstrument = errors.New("no instrument")

func (failingMeter) Int64Counter(string, ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return nil, errNoInstrument
}

func (failingMeter) Int64ObservableCounter(string, ...metric.Int64ObservableCounterOption) (metric.Int64ObservableCounter, error) {
	return nil, errNoInstrument
}

func (failingMeter) Float64Histogram(string, ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	return nil, errNoInstrument
}

// TestInstruments_FailingMeter: an instrument the meter cannot create is
// reported once and replaced by one that records nothing, which is safe to
// use.
func TestInstruments_FailingMeter(t *testing.T) {
	var errs []error
	in := instruments{m: failingMeter{}, errs: func(err error) { errs = append(errs, err) }}
	c := in.counter("c", "1", "d")
	oc := in.observableCounter("oc", "1", "d")
	h := in.histogram("h", "d")
	if c == nil || oc == nil || h == nil {
		t.Fatalf("instruments %v, %v, %v; want no nil", c, oc, h)
	}
	c.Add(t.Context(), 1)
	h.Record(t.Context(), 1)
	if len(errs) != 3 {
		t.Fatalf("%d errors reported, want 3: %v", len(errs), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, errNoInstrument) {
			t.Errorf("reported %v, want the meter's error", err)
		}
	}
}
