// Package otelslidejwt turns the events of slidejwt's interceptors into
// OpenTelemetry metrics and span events.
//
// It is a module of its own, so that slidejwt's core module does not
// depend on OpenTelemetry. It uses only the OpenTelemetry API
// (go.opentelemetry.io/otel/metric and /trace): the application chooses
// the SDK and the exporter (Prometheus, OTLP, ...).
//
// # Wiring
//
// One option on each side:
//
//	sessions, err := interceptor.NewServer(keys,
//		interceptor.WithEventHook(otelslidejwt.ServerHook()),
//		/* ... */)
//	holder, err := interceptor.NewTokenHolder(token,
//		interceptor.WithClientEventHook(otelslidejwt.ClientHook()),
//		/* ... */)
//
// Both record with the global MeterProvider unless given one
// ([WithMeterProvider]). A server that also logs its events calls both
// from its hook:
//
//	metrics := otelslidejwt.ServerHook()
//	interceptor.WithEventHook(func(ctx context.Context, e interceptor.Event) {
//		metrics(ctx, e)
//		logEvent(ctx, e)
//	})
//
// # Server metrics
//
// Counters, with the attributes they carry:
//
//	slidejwt.server.calls                {call}     rpc.system.name, rpc.method
//	slidejwt.server.renewals             {token}    rpc.system.name, rpc.method
//	slidejwt.server.renewal.failures     {call}     rpc.system.name, rpc.method
//	slidejwt.server.rejections           {call}     rpc.system.name, rpc.method, slidejwt.reason
//	slidejwt.server.stream.ends          {stream}   rpc.system.name, rpc.method, slidejwt.reason
//	slidejwt.server.refreshes            {refresh}  slidejwt.refresh.outcome
//	slidejwt.server.session.starts       {session}
//	slidejwt.server.session.revocations  {session}
//	slidejwt.server.cache.lookups        {lookup}   slidejwt.cache.result
//
// calls counts the calls the server let through (their handler ran),
// renewed or not; renewals and renewal.failures are the part of them for
// which a renewal was sent, or was due and could not be minted.
// rejections counts the calls refused before their handler ran, and the
// refused refreshes (rpc.method slidejwt.v1.TokenService/Refresh).
// stream.ends counts the open streams the server ended because their
// session ended or was revoked. refreshes counts every refresh-token
// exchange by what the session store did with it. cache.lookups counts the
// calls whose token was looked up in the verified-token cache: a hit
// skipped the signature check. calls and cache.lookups, counted on every
// call, are observable counters: the hook adds to a count of its own with
// one atomic add, and the SDK reads the counts at each collection, which
// costs a call less than a synchronous Add (that looks for a span in the
// call's context, for exemplars, and up the attribute set's aggregate).
// They carry no exemplars; the other instruments do, where the SDK's
// exemplar filter keeps them.
//
// Histograms, in seconds, with bucket bounds from 1 µs to 1 s:
//
//	slidejwt.server.auth.duration     s  slidejwt.decision, slidejwt.cache.result
//	slidejwt.server.store.duration    s  slidejwt.store.operation, error.type
//	slidejwt.server.refresh.duration  s  slidejwt.refresh.outcome
//
// auth.duration is the time the interceptor spent on a call before its
// handler: reading the token, verifying it or finding it in the cache,
// the session checks (the store call among them) and minting a renewal.
// store.duration is one call to the session store or revocation list;
// error.type is "_OTHER" when it failed (the store's error text is never
// recorded).
//
// # Client metrics
//
//	slidejwt.client.swaps             {token}    rpc.system.name, rpc.method
//	slidejwt.client.fallbacks         {token}    rpc.system.name, rpc.method
//	slidejwt.client.refreshes         {refresh}  slidejwt.refresh.trigger, error.type
//	slidejwt.client.refresh.duration  s          slidejwt.refresh.trigger, error.type
//	slidejwt.client.retries           {call}     rpc.system.name, rpc.method, slidejwt.reason
//	slidejwt.client.stream.reopens    {stream}   rpc.system.name, rpc.method, slidejwt.reason
//
// swaps counts the renewals the holder took from a response of
// rpc.method; fallbacks the renewals a server then refused, for which the
// holder went back to the token they replaced. refreshes counts the
// refresh calls the holder made by itself (concurrent calls share one),
// with error.type set on those that failed: a slidejwt reason or a gRPC
// status code name. retries and stream.reopens count the calls made a
// second time after a rejection before their handler ran.
//
// # Attributes
//
// rpc.system.name is "grpc" and rpc.method the full method without its
// leading slash ("demo.v1.DemoService/Echo"), as the OpenTelemetry
// semantic conventions (v1.43) name them. The slidejwt.* keys are
// [ReasonKey], [DecisionKey], [CacheResultKey], [RefreshOutcomeKey],
// [RefreshTriggerKey] and [StoreOperationKey]; each has a small fixed set
// of values. A hook names at most [DefaultMaxMethods] methods
// ([WithMaxMethods]) and records further ones as "_OTHER".
//
// No metric carries a subject, a session id or anything of a token: each
// user or session would make a time series of its own, and they are
// personal data.
//
// # Traces
//
// When the context of a call holds a recording span (the server span of
// otelgrpc's stats handler, or the caller's span on the client), the hooks
// add one event to it per decision: slidejwt.authenticated,
// slidejwt.renewed, slidejwt.renewal_failed or slidejwt.rejected (with
// slidejwt.reason) for a call; slidejwt.refreshed, slidejwt.revoked,
// slidejwt.session_started and slidejwt.stream_ended on the server;
// slidejwt.token_swapped, slidejwt.fell_back, slidejwt.token_refreshed,
// slidejwt.retried and slidejwt.stream_reopened on the client. They carry
// the attributes of the metrics and rpc.method. The subject (enduser.id)
// and the session id (session.id) are added only with
// [WithSubjectInSpans] and [WithSessionIDInSpans]. [WithoutSpanEvents]
// turns span events off.
//
// # Security
//
// An [interceptor.Event] never holds a token, and the hooks never record
// an error's text, which could come from a store or a refresher written by
// anyone: errors are recorded as a slidejwt reason, a gRPC status code
// name or "_OTHER". A test drives every kind of event with hostile tokens
// and checks every attribute of every metric and span.
//
// # Cost
//
// A hook builds its attribute sets once per method and reason, so that
// recording an event allocates nothing. A steady call (no renewal due)
// costs the server two counter increments and one histogram sample, and
// one more sample with a session store or revocation list: under a
// microsecond with the OpenTelemetry SDK (BenchmarkServerHook), most of
// it the SDK's, against tens of microseconds for the call itself. Span
// events are added only to spans that are recording. Without a hook, the
// interceptors build no event and read no clock for one.
package otelslidejwt
