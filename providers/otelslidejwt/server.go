package otelslidejwt

import (
	"context"

	"go.opentelemetry.io/otel/metric"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// refreshMethod is the method of the events of Server.Refresh.
const refreshMethod = slidejwtv1.TokenService_Refresh_FullMethodName

// ServerHook returns an event hook for [interceptor.WithEventHook] that
// records a [interceptor.Server]'s events as the server's metrics (see
// the package documentation) and, when the call's context holds a
// recording span, as span events. It creates its instruments once, here;
// the hook is safe for concurrent use and allocates nothing per event,
// except for span events on a recording span.
//
//	sessions, err := interceptor.NewServer(keys,
//		interceptor.WithEventHook(otelslidejwt.ServerHook()),
//	)
//
// It ignores the client's kinds of event.
func ServerHook(opts ...Option) func(context.Context, interceptor.Event) {
	return newServerRecorder(newConfig(opts)).record
}

// serverRecorder holds a server hook's instruments.
type serverRecorder struct {
	spans spanRecorder
	attrs attrCache

	renewals, renewalFailures, rejections, streamEnds metric.Int64Counter
	refreshes, sessionStarts, revocations             metric.Int64Counter
	authDuration, storeDuration, refreshDuration      metric.Float64Histogram
	// Counted on every call: an atomic add into the measure's count, read
	// by the SDK at collection (see observe), instead of a synchronous
	// Add, which asks the context for a span (for exemplars) and looks
	// up the attribute set's aggregate under a lock on every call.
	calls, cacheLookups metric.Int64ObservableCounter

	// Attribute sets that do not depend on the call, built once.
	cacheSets   [3]*measure                 // by CacheResult; [CacheNone] unused
	authSets    [4][3]*measure              // by decision, then CacheResult
	storeSets   [5][2]*measure              // by StoreOp, then failed
	outcomeSets [store.Unknown + 1]*measure // by Outcome; [0] is "rejected"
	none        *measure                    // no attributes
}

// The decisions, as indexes of authSets.
const (
	decAuthenticated = iota
	decRenewed
	decRenewalFailed
	decRejected
)

var decisionNames = [...]string{"authenticated", "renewed", "renewal_failed", "rejected"}

func newServerRecorder(c config) *serverRecorder {
	m := c.provider.Meter(ScopeName)
	in := instruments{m: m, errs: c.errorHandler}
	r := &serverRecorder{
		spans: newSpanRecorder(c),
		attrs: attrCache{max: c.maxMethods},

		calls: in.observableCounter("slidejwt.server.calls", "{call}",
			"Calls the server authenticated: their handler ran, with or without a renewal."),
		renewals: in.counter("slidejwt.server.renewals", "{token}",
			"Renewed access tokens the server sent with a call's response."),
		renewalFailures: in.counter("slidejwt.server.renewal.failures", "{call}",
			"Calls whose renewal was due but could not be minted; the calls went on."),
		rejections: in.counter("slidejwt.server.rejections", "{call}",
			"Calls and refreshes the server refused before their handler ran, by reason."),
		streamEnds: in.counter("slidejwt.server.stream.ends", "{stream}",
			"Open streams the server ended because their session ended or was revoked, or the store failed."),
		refreshes: in.counter("slidejwt.server.refreshes", "{refresh}",
			"Refresh-token exchanges, by what the session store did."),
		sessionStarts: in.counter("slidejwt.server.session.starts", "{session}",
			"Sessions started: first tokens minted by StartSession."),
		revocations: in.counter("slidejwt.server.session.revocations", "{session}",
			"Sessions revoked: logouts and RevokeSession."),
		cacheLookups: in.observableCounter("slidejwt.server.cache.lookups", "{lookup}",
			"Lookups of a call's token in the verified-token cache, by hit or miss."),
		authDuration: in.histogram("slidejwt.server.auth.duration",
			"Time spent authenticating a call: reading its token, verifying it or finding it in the cache, the session checks, and minting a renewal."),
		storeDuration: in.histogram("slidejwt.server.store.duration",
			"Time spent in one call to the session store or revocation list."),
		refreshDuration: in.histogram("slidejwt.server.refresh.duration",
			"Time spent on a refresh-token exchange, store calls and signatures included."),

		none: newMeasure(),
	}
	for _, cr := range []interceptor.CacheResult{interceptor.CacheHit, interceptor.CacheMiss} {
		r.cacheSets[cr] = newMeasure(CacheResultKey.String(cr.String()))
	}
	for d, name := range decisionNames {
		r.authSets[d][interceptor.CacheNone] = newMeasure(DecisionKey.String(name))
		for _, cr := range []interceptor.CacheResult{interceptor.CacheHit, interceptor.CacheMiss} {
			r.authSets[d][cr] = newMeasure(DecisionKey.String(name), CacheResultKey.String(cr.String()))
		}
	}
	for op := interceptor.StoreIsRevoked; op <= interceptor.StoreRevoke; op++ {
		r.storeSets[op][0] = newMeasure(StoreOperationKey.String(op.String()))
		r.storeSets[op][1] = newMeasure(StoreOperationKey.String(op.String()), errorTypeKey.String("_OTHER"))
	}
	r.outcomeSets[0] = newMeasure(RefreshOutcomeKey.String("rejected"))
	for o := store.OK; o <= store.Unknown; o++ {
		r.outcomeSets[o] = newMeasure(RefreshOutcomeKey.String(o.String()))
	}
	if _, err := m.RegisterCallback(r.observe, r.calls, r.cacheLookups); err != nil {
		c.errorHandler(err)
	}
	return r
}

// observe reports the counts of the observable counters: every method's
// calls and the cache's hits and misses, each once it is not zero (a
// count only grows: once reported, it is reported at every collection).
func (r *serverRecorder) observe(_ context.Context, o metric.Observer) error {
	r.attrs.each(func(k attrKey, m *measure) {
		if n := m.count.Load(); k.reason == "" && n > 0 {
			o.ObserveInt64(r.calls, n, m.obs...)
		}
	})
	for _, m := range r.cacheSets {
		if m == nil {
			continue
		}
		if n := m.count.Load(); n > 0 {
			o.ObserveInt64(r.cacheLookups, n, m.obs...)
		}
	}
	return nil
}

// record is the hook.
func (r *serverRecorder) record(ctx context.Context, e interceptor.Event) {
	switch e.Kind {
	case interceptor.EventAuthenticated, interceptor.EventRenewed, interceptor.EventRenewalFailed:
		m := r.attrs.get(e.Method, "")
		m.count.Add(1)
		d := decAuthenticated
		switch e.Kind {
		case interceptor.EventRenewed:
			d = decRenewed
			r.renewals.Add(ctx, 1, m.add...)
		case interceptor.EventRenewalFailed:
			d = decRenewalFailed
			r.renewalFailures.Add(ctx, 1, m.add...)
		}
		r.authenticated(ctx, e, d)
	case interceptor.EventRejected:
		r.rejections.Add(ctx, 1, r.attrs.get(e.Method, reasonName(e.Reason, e.Err)).add...)
		if e.Method == refreshMethod {
			r.refreshed(ctx, e)
		} else {
			r.authenticated(ctx, e, decRejected)
		}
	case interceptor.EventRefreshed:
		r.refreshed(ctx, e)
	case interceptor.EventStreamEnded:
		r.streamEnds.Add(ctx, 1, r.attrs.get(e.Method, reasonName(e.Reason, e.Err)).add...)
	case interceptor.EventSessionStarted:
		r.sessionStarts.Add(ctx, 1, r.none.add...)
	case interceptor.EventRevoked:
		r.revocations.Add(ctx, 1, r.none.add...)
	case interceptor.EventStoreCall:
		if op := e.StoreOp; op >= interceptor.StoreIsRevoked && op <= interceptor.StoreRevoke {
			failed := 0
			if e.Err != nil {
				failed = 1
			}
			r.storeDuration.Record(ctx, e.Duration.Seconds(), r.storeSets[op][failed].rec...)
		}
		return // no span event: the call's own event follows
	default:
		return
	}
	r.spans.server(ctx, e)
}

// authenticated records the cache lookup and the time of a call's
// authentication, decided as d.
func (r *serverRecorder) authenticated(ctx context.Context, e interceptor.Event, d int) {
	cr := e.Cache
	if cr > interceptor.CacheMiss {
		cr = interceptor.CacheNone
	}
	if cr != interceptor.CacheNone {
		r.cacheSets[cr].count.Add(1)
	}
	r.authDuration.Record(ctx, e.Duration.Seconds(), r.authSets[d][cr].rec...)
}

// refreshed records a refresh-token exchange, done or refused.
func (r *serverRecorder) refreshed(ctx context.Context, e interceptor.Event) {
	o := e.Outcome
	if o < 0 || o > store.Unknown || e.Kind == interceptor.EventRejected && o == store.OK {
		o = 0
	}
	m := r.outcomeSets[o]
	r.refreshes.Add(ctx, 1, m.add...)
	r.refreshDuration.Record(ctx, e.Duration.Seconds(), m.rec...)
}
