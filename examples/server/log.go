package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/providers/otelslidejwt"
)

// The attribute names of the log lines. Those that the metrics carry too
// are otelslidejwt's and the OpenTelemetry semantic conventions' (which
// otelslidejwt follows), taken from their packages so that a log line and
// a time series name one thing alike; enduser.id and session.id are what
// otelslidejwt's span events call the subject and the session id when
// asked to record them (never in a metric).
var (
	methodKey  = string(semconv.RPCMethodKey)                                            // "rpc.method": the full method without its leading slash
	reasonKey  = string(otelslidejwt.ReasonKey)                                          // "slidejwt.reason"
	outcomeKey = string(otelslidejwt.RefreshOutcomeKey)                                  // "slidejwt.refresh.outcome"
	subjectKey = string(semconv.EnduserIDKey)                                            // "enduser.id"
	sessionKey = string(semconv.SessionIDKey)                                            // "session.id"
	expiryKey  = "exp"                                                                   // the token's exp (or the minted one's)
	errKey     = "err"                                                                   // an error's text: a fixed phrase of slidejwt's or a store's, never a token
	refreshRPC = strings.TrimPrefix(slidejwtv1.TokenService_Refresh_FullMethodName, "/") // rpc.method of TokenService.Refresh
)

// logEvent logs one line per login, renewal, refresh, revocation,
// rejection and stream ended by the server. Events carry no token, so
// nothing here can print one.
func logEvent(log *slog.Logger) func(context.Context, interceptor.Event) {
	return func(ctx context.Context, e interceptor.Event) {
		switch e.Kind {
		case interceptor.EventSessionStarted:
			log.InfoContext(ctx, "login", subjectKey, e.Subject, sessionKey, e.SessionID, expiryKey, e.Expiry)
		case interceptor.EventRenewed:
			log.InfoContext(ctx, "renewed", methodKey, method(e), subjectKey, e.Subject, sessionKey, e.SessionID, expiryKey, e.Expiry)
		case interceptor.EventRefreshed:
			log.InfoContext(ctx, "refreshed", outcomeKey, refreshOutcome(e), subjectKey, e.Subject, sessionKey, e.SessionID, expiryKey, e.Expiry)
		case interceptor.EventRevoked:
			log.InfoContext(ctx, "revoked", sessionKey, e.SessionID)
		case interceptor.EventRenewalFailed:
			log.WarnContext(ctx, "renewal failed", methodKey, method(e), sessionKey, e.SessionID, errKey, e.Err)
		case interceptor.EventRejected:
			attrs := []any{methodKey, method(e), reasonKey, reason(e)}
			if method(e) == refreshRPC {
				attrs = append(attrs, outcomeKey, refreshOutcome(e))
			}
			log.InfoContext(ctx, "rejected", append(attrs, sessionKey, e.SessionID, errKey, e.Err)...)
		case interceptor.EventStreamEnded:
			log.InfoContext(ctx, "stream ended", methodKey, method(e), reasonKey, reason(e), sessionKey, e.SessionID, errKey, e.Err)
		}
	}
}

// method is the rpc.method of e, as otelslidejwt records it: the full
// method without its leading slash ("demo.v1.DemoService/Echo").
func method(e interceptor.Event) string {
	return strings.TrimPrefix(e.Method, "/")
}

// reason is the slidejwt.reason of a refusal, as otelslidejwt records it:
// the reason a client sees in the google.rpc.ErrorInfo ("TOKEN_INVALID",
// ...), or, for a refusal without one, the name of its gRPC status code
// ("UNAVAILABLE" when the session store failed), or "_OTHER". A test
// checks it against otelslidejwt's metrics event by event.
func reason(e interceptor.Event) string {
	if e.Reason != 0 {
		return interceptor.WireReason(e.Reason)
	}
	err := e.Err
	if err == nil {
		return ""
	}
	if r, ok := interceptor.ReasonOf(err); ok {
		return interceptor.WireReason(r)
	}
	c := codes.Unknown
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		c = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		c = codes.Canceled
	default:
		if s, ok := status.FromError(err); ok {
			c = s.Code()
		}
	}
	if name, ok := code.Code_name[int32(c)]; ok && c != codes.Unknown {
		return name // "UNAVAILABLE", as the protocol spells the codes
	}
	return "_OTHER"
}

// refreshOutcome is the slidejwt.refresh.outcome of a refresh, as
// otelslidejwt records it: what the session store did ("ok", "replay",
// "reused", "revoked", "unknown"), or "rejected" when the refresh was
// refused before the store decided.
func refreshOutcome(e interceptor.Event) string {
	o := e.Outcome
	if o < store.OK || o > store.Unknown || e.Kind == interceptor.EventRejected && o == store.OK {
		return "rejected"
	}
	return o.String()
}
