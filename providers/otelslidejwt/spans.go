package otelslidejwt

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// The names of the span events.
const (
	SpanEventAuthenticated  = "slidejwt.authenticated"
	SpanEventRenewed        = "slidejwt.renewed"
	SpanEventRenewalFailed  = "slidejwt.renewal_failed"
	SpanEventRejected       = "slidejwt.rejected"
	SpanEventRefreshed      = "slidejwt.refreshed"
	SpanEventSessionStarted = "slidejwt.session_started"
	SpanEventRevoked        = "slidejwt.revoked"
	SpanEventStreamEnded    = "slidejwt.stream_ended"
	SpanEventTokenSwapped   = "slidejwt.token_swapped"
	SpanEventFellBack       = "slidejwt.fell_back"
	SpanEventTokenRefreshed = "slidejwt.token_refreshed"
	SpanEventRetried        = "slidejwt.retried"
	SpanEventStreamReopened = "slidejwt.stream_reopened"
)

// spanRecorder adds span events for the decisions of a server or a
// client to the span of the call's context, if it is recording.
type spanRecorder struct {
	on, subject, session bool
}

func newSpanRecorder(c config) spanRecorder {
	return spanRecorder{on: c.spanEvents, subject: c.spanSubject, session: c.spanSession}
}

// span returns the recording span of ctx, if there is one and span
// events are on.
func (s spanRecorder) span(ctx context.Context) (trace.Span, bool) {
	if !s.on {
		return nil, false
	}
	sp := trace.SpanFromContext(ctx)
	return sp, sp.IsRecording()
}

// server adds the span event of a server's event.
func (s spanRecorder) server(ctx context.Context, e interceptor.Event) {
	sp, ok := s.span(ctx)
	if !ok {
		return
	}
	var name string
	kvs := make([]attribute.KeyValue, 0, 6)
	switch e.Kind {
	case interceptor.EventAuthenticated:
		name = SpanEventAuthenticated
	case interceptor.EventRenewed:
		name = SpanEventRenewed
	case interceptor.EventRenewalFailed:
		name = SpanEventRenewalFailed
		kvs = append(kvs, errorTypeKey.String(errorType(e.Err)))
	case interceptor.EventRejected:
		name = SpanEventRejected
		kvs = append(kvs, ReasonKey.String(reasonName(e.Reason, e.Err)))
	case interceptor.EventRefreshed:
		name = SpanEventRefreshed
	case interceptor.EventSessionStarted:
		name = SpanEventSessionStarted
	case interceptor.EventRevoked:
		name = SpanEventRevoked
	case interceptor.EventStreamEnded:
		name = SpanEventStreamEnded
		kvs = append(kvs, ReasonKey.String(reasonName(e.Reason, e.Err)))
	default:
		return
	}
	if e.Cache == interceptor.CacheHit || e.Cache == interceptor.CacheMiss {
		kvs = append(kvs, CacheResultKey.String(e.Cache.String()))
	}
	if e.Outcome >= store.OK && e.Outcome <= store.Unknown {
		kvs = append(kvs, RefreshOutcomeKey.String(e.Outcome.String()))
	} else if e.Method == refreshMethod {
		kvs = append(kvs, RefreshOutcomeKey.String("rejected"))
	}
	s.add(sp, name, e, kvs)
}

// client adds the span event of a client's event.
func (s spanRecorder) client(ctx context.Context, e interceptor.Event) {
	sp, ok := s.span(ctx)
	if !ok {
		return
	}
	var name string
	kvs := make([]attribute.KeyValue, 0, 6)
	switch e.Kind {
	case interceptor.EventSwapped:
		name = SpanEventTokenSwapped
	case interceptor.EventFellBack:
		name = SpanEventFellBack
		kvs = append(kvs, ReasonKey.String(reasonName(e.Reason, nil)))
	case interceptor.EventClientRefreshed:
		name = SpanEventTokenRefreshed
		kvs = append(kvs, RefreshTriggerKey.String(triggerNames[trigger(e)]))
		if e.Err != nil {
			kvs = append(kvs, errorTypeKey.String(errorType(e.Err)))
		}
	case interceptor.EventRetried:
		name = SpanEventRetried
		kvs = append(kvs, ReasonKey.String(reasonName(e.Reason, nil)))
	case interceptor.EventStreamReopened:
		name = SpanEventStreamReopened
		kvs = append(kvs, ReasonKey.String(reasonName(e.Reason, nil)))
	default:
		return
	}
	s.add(sp, name, e, kvs)
}

// add adds the event name with kvs, the method and, when asked for, the
// subject and session id.
func (s spanRecorder) add(sp trace.Span, name string, e interceptor.Event, kvs []attribute.KeyValue) {
	if e.Method != "" {
		kvs = append(kvs, semconv.RPCMethod(strings.TrimPrefix(e.Method, "/")))
	}
	if s.subject && e.Subject != "" {
		kvs = append(kvs, semconv.EnduserID(e.Subject))
	}
	if s.session && e.SessionID != "" {
		kvs = append(kvs, semconv.SessionID(e.SessionID))
	}
	sp.AddEvent(name, trace.WithAttributes(kvs...))
}
