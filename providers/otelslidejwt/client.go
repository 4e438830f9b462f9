package otelslidejwt

import (
	"context"

	"go.opentelemetry.io/otel/metric"

	"github.com/slidejwt/slidejwt/interceptor"
)

// ClientHook returns an event hook for [interceptor.WithClientEventHook]
// that records a [interceptor.TokenHolder]'s events as the client's
// metrics (see the package documentation) and, when the call's context
// holds a recording span, as span events. It creates its instruments
// once, here; the hook is safe for concurrent use.
//
//	holder, err := interceptor.NewTokenHolder(token,
//		interceptor.WithClientEventHook(otelslidejwt.ClientHook()),
//	)
//
// It ignores the server's kinds of event.
func ClientHook(opts ...Option) func(context.Context, interceptor.Event) {
	return newClientRecorder(newConfig(opts)).record
}

// clientRecorder holds a client hook's instruments.
type clientRecorder struct {
	spans spanRecorder
	attrs attrCache

	swaps, fallbacks, refreshes, retries, reopens metric.Int64Counter
	refreshDuration                               metric.Float64Histogram

	triggerSets [2]*measure // the refreshes that succeeded, by trigger
}

var triggerNames = [...]string{"proactive", "reactive"}

func newClientRecorder(c config) *clientRecorder {
	in := instruments{m: c.provider.Meter(ScopeName), errs: c.errorHandler}
	r := &clientRecorder{
		spans: newSpanRecorder(c),
		attrs: attrCache{max: c.maxMethods},

		swaps: in.counter("slidejwt.client.swaps", "{token}",
			"Renewed access tokens the client swapped in from a response."),
		fallbacks: in.counter("slidejwt.client.fallbacks", "{token}",
			"Renewals a server refused as invalid, for which the client fell back to the token they replaced."),
		refreshes: in.counter("slidejwt.client.refreshes", "{refresh}",
			"Refresh calls the client made on its own, by trigger; error.type is set on those that failed."),
		retries: in.counter("slidejwt.client.retries", "{call}",
			"Unary calls the client made a second time after a rejection before their handler ran, by reason."),
		reopens: in.counter("slidejwt.client.stream.reopens", "{stream}",
			"Streams the client reopened after a rejection before any response, by reason."),
		refreshDuration: in.histogram("slidejwt.client.refresh.duration",
			"Time spent on a refresh call the client made on its own."),
	}
	for i, name := range triggerNames {
		r.triggerSets[i] = newMeasure(RefreshTriggerKey.String(name))
	}
	return r
}

// trigger is the index in triggerNames of a refresh's trigger.
func trigger(e interceptor.Event) int {
	if e.Reason != 0 {
		return 1
	}
	return 0
}

// record is the hook.
func (r *clientRecorder) record(ctx context.Context, e interceptor.Event) {
	switch e.Kind {
	case interceptor.EventSwapped:
		r.swaps.Add(ctx, 1, r.attrs.get(e.Method, "").add...)
	case interceptor.EventFellBack:
		r.fallbacks.Add(ctx, 1, r.attrs.get(e.Method, "").add...)
	case interceptor.EventClientRefreshed:
		m := r.triggerSets[trigger(e)]
		if e.Err != nil {
			// Not the hot path: a failed refresh.
			m = newMeasure(RefreshTriggerKey.String(triggerNames[trigger(e)]), errorTypeKey.String(errorType(e.Err)))
		}
		r.refreshes.Add(ctx, 1, m.add...)
		r.refreshDuration.Record(ctx, e.Duration.Seconds(), m.rec...)
	case interceptor.EventRetried:
		r.retries.Add(ctx, 1, r.attrs.get(e.Method, reasonName(e.Reason, nil)).add...)
	case interceptor.EventStreamReopened:
		r.reopens.Add(ctx, 1, r.attrs.get(e.Method, reasonName(e.Reason, nil)).add...)
	default:
		return
	}
	r.spans.client(ctx, e)
}
