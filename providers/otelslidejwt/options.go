package otelslidejwt

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of the meter the hooks record
// with.
const ScopeName = "github.com/slidejwt/slidejwt/providers/otelslidejwt"

// An Option configures [ServerHook] and [ClientHook].
type Option interface{ apply(*config) }

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	provider     metric.MeterProvider
	spanEvents   bool
	spanSubject  bool
	spanSession  bool
	maxMethods   int
	errorHandler func(error)
}

func newConfig(opts []Option) config {
	c := config{spanEvents: true, maxMethods: DefaultMaxMethods, errorHandler: otel.Handle}
	for _, o := range opts {
		o.apply(&c)
	}
	if c.provider == nil {
		c.provider = otel.GetMeterProvider()
	}
	return c
}

// DefaultMaxMethods is how many distinct gRPC methods a hook names in its
// rpc.method attribute by default; see [WithMaxMethods].
const DefaultMaxMethods = 500

// WithMeterProvider sets the MeterProvider the hook creates its
// instruments with. Default: the global one (otel.GetMeterProvider), as
// it is when the hook is built; a global provider set later still
// receives the measurements, through the global delegate.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) { c.provider = mp })
}

// WithoutSpanEvents stops the hook from adding events to the span of the
// call's context. Default: it adds one event per decision to a span that
// is recording (see the package documentation).
func WithoutSpanEvents() Option {
	return optionFunc(func(c *config) { c.spanEvents = false })
}

// WithSubjectInSpans adds the session's subject (the sub claim) to every
// span event, as enduser.id. Default: off. A subject names a user: it is
// personal data, which a trace backend may keep longer, and show to more
// people, than the application's own logs. It never goes into a metric,
// where each user would also make a time series of their own.
func WithSubjectInSpans() Option {
	return optionFunc(func(c *config) { c.spanSubject = true })
}

// WithSessionIDInSpans adds the session id (the sid claim) to every span
// event, as session.id. Default: off, for the reasons of
// [WithSubjectInSpans]: a session id links the calls of one user. It is
// not a credential (a token is; no token ever reaches an event). It never
// goes into a metric.
func WithSessionIDInSpans() Option {
	return optionFunc(func(c *config) { c.spanSession = true })
}

// WithMaxMethods bounds how many distinct method names a hook records in
// rpc.method; the calls of further methods are recorded under "_OTHER",
// as the OpenTelemetry conventions do for methods they do not recognize.
// A gRPC server runs interceptors only for the methods it serves (and for
// any method when it has an unknown-service handler), so the bound only
// guards against a client that names methods at will. Default
// [DefaultMaxMethods].
func WithMaxMethods(n int) Option {
	return optionFunc(func(c *config) { c.maxMethods = n })
}

// WithErrorHandler sets the function that hears about an instrument that
// could not be created; the hook then records nothing with it. Default:
// otel.Handle, the global OpenTelemetry error handler.
func WithErrorHandler(f func(error)) Option {
	return optionFunc(func(c *config) { c.errorHandler = f })
}
