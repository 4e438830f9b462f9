package otelslidejwt

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/slidejwt/slidejwt/interceptor"
)

// The attributes of slidejwt's own. The others follow the OpenTelemetry
// semantic conventions: rpc.system.name ("grpc") and rpc.method (the full
// method without its leading slash, "demo.v1.DemoService/Echo"),
// error.type, and in span events only, and only when asked for,
// enduser.id and session.id.
const (
	// ReasonKey is why a call was rejected, a stream ended, or a client
	// retried: the reason a client sees in the google.rpc.ErrorInfo
	// ("TOKEN_EXPIRED", "SESSION_REVOKED", ...; see
	// [interceptor.WireReason]), or, for a refusal without one, the gRPC
	// status code's name ("UNAVAILABLE" when the session store failed).
	ReasonKey = attribute.Key("slidejwt.reason")
	// DecisionKey is what the server decided about a call:
	// "authenticated", "renewed", "renewal_failed" or "rejected".
	DecisionKey = attribute.Key("slidejwt.decision")
	// CacheResultKey says whether the verified-token cache held the
	// call's token: "hit" or "miss"; absent when the cache was not asked
	// (a missing or malformed token, or the cache is off).
	CacheResultKey = attribute.Key("slidejwt.cache.result")
	// RefreshOutcomeKey is what the session store did with a refresh:
	// "ok", "replay", "reused", "revoked", "unknown" (see
	// [store.Outcome]), or "rejected" when the refresh was refused before
	// the store decided (an invalid or lapsed refresh token, a store that
	// failed).
	RefreshOutcomeKey = attribute.Key("slidejwt.refresh.outcome")
	// RefreshTriggerKey says why a client refreshed: "proactive" (its
	// token was about to expire) or "reactive" (a call was rejected with
	// TOKEN_EXPIRED).
	RefreshTriggerKey = attribute.Key("slidejwt.refresh.trigger")
	// StoreOperationKey is the session-store method called: "is_revoked",
	// "create", "rotate" or "revoke".
	StoreOperationKey = attribute.Key("slidejwt.store.operation")
)

// otherMethod stands for the methods past the WithMaxMethods bound.
const otherMethod = "_OTHER"

var grpcSystem = semconv.RPCSystemNameGRPC

// measure is a precomputed attribute set as the options of every kind of
// measurement, so that recording allocates nothing, and the count of an
// observable counter under that set (the server's calls, or its cache
// lookups), kept by the hook and read at collection.
type measure struct {
	add   []metric.AddOption
	rec   []metric.RecordOption
	obs   []metric.ObserveOption
	count atomic.Int64
}

func newMeasure(kvs ...attribute.KeyValue) *measure {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &measure{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}, obs: []metric.ObserveOption{o}}
}

// each calls f with every set held, method-only and with a reason.
func (c *attrCache) each(f func(attrKey, *measure)) {
	if m := c.m.Load(); m != nil {
		for k, v := range *m {
			f(k, v)
		}
	}
}

// attrKey names one attribute set of the sets that depend on a call:
// its method and, for some instruments, a reason.
type attrKey struct {
	method string // the gRPC full method, as the event has it
	reason string // "" for the method alone
}

// attrCache holds the attribute sets of methods and reasons, built once
// each. Reads take no lock and allocate nothing: the map is replaced,
// never changed, when a set is added. It names at most max methods; the
// others share the "_OTHER" sets.
type attrCache struct {
	max int
	m   atomic.Pointer[map[attrKey]*measure]

	mu    sync.Mutex          // serializes writers
	names map[string]struct{} // the methods named, under mu
}

// get returns the set of rpc.system.name, rpc.method and, when reason is
// not "", slidejwt.reason.
func (c *attrCache) get(method, reason string) *measure {
	k := attrKey{method, reason}
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.add(k)
}

func (c *attrCache) add(k attrKey) *measure {
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[attrKey]*measure
	if m := c.m.Load(); m != nil {
		old = *m
	}
	if v, ok := old[k]; ok {
		return v
	}
	name := strings.TrimPrefix(k.method, "/")
	if _, known := c.names[k.method]; !known {
		if len(c.names) >= c.max {
			// Past the bound: the shared set, under a key that no gRPC
			// method has (they begin with a slash).
			k, name = attrKey{otherMethod, k.reason}, otherMethod
			if v, ok := old[k]; ok {
				return v
			}
		} else {
			if c.names == nil {
				c.names = make(map[string]struct{})
			}
			c.names[k.method] = struct{}{}
		}
	}
	kvs := []attribute.KeyValue{grpcSystem, semconv.RPCMethod(name)}
	if k.reason != "" {
		kvs = append(kvs, ReasonKey.String(k.reason))
	}
	v := newMeasure(kvs...)
	n := make(map[attrKey]*measure, len(old)+1)
	for kk, vv := range old {
		n[kk] = vv
	}
	n[k] = v
	c.m.Store(&n)
	return v
}

// reasonName is the slidejwt.reason of a refusal: its slidejwt reason,
// or else the name of its gRPC status code.
func reasonName(r interceptor.Reason, err error) string {
	if r != 0 {
		return interceptor.WireReason(r)
	}
	return errorType(err)
}

// errorType is the error.type of err: a slidejwt reason, a gRPC status
// code's name, or "_OTHER". It is never the error's text, which could
// come from a store or a refresher written by anyone.
func errorType(err error) string {
	if err == nil {
		return ""
	}
	if r, ok := interceptor.ReasonOf(err); ok {
		return interceptor.WireReason(r)
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codeName(codes.DeadlineExceeded)
	case errors.Is(err, context.Canceled):
		return codeName(codes.Canceled)
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return codeName(s.Code())
	}
	return "_OTHER"
}

// codeNames are the gRPC status codes as the protocol spells them.
var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "_OTHER"
}
