package interceptor

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// A ServerOption configures a [Server].
type ServerOption interface{ applyServer(*serverConfig) }

// A ClientOption configures a [TokenHolder].
type ClientOption interface{ applyClient(*clientConfig) }

// An Option configures both a [Server] and a [TokenHolder]; both sides of a
// deployment must agree on it.
type Option interface {
	ServerOption
	ClientOption
}

type serverOptionFunc func(*serverConfig)

func (f serverOptionFunc) applyServer(c *serverConfig) { f(c) }

type clientOptionFunc func(*clientConfig)

func (f clientOptionFunc) applyClient(c *clientConfig) { f(c) }

type sharedOption struct {
	serverOptionFunc
	clientOptionFunc
}

type serverConfig struct {
	policy        Policy
	issuer        string
	audience      []string
	leeway        time.Duration
	now           func() time.Time
	revocations   RevocationList
	exempt        map[string]bool
	renewalHeader string
	maxTokenSize  int
	onEvent       func(context.Context, Event)
}

func defaultServerConfig() serverConfig {
	return serverConfig{
		leeway:        DefaultLeeway,
		now:           time.Now,
		renewalHeader: DefaultRenewalHeader,
		maxTokenSize:  DefaultMaxTokenSize,
	}
}

// maxLeeway bounds WithLeeway: a leeway this large is a configuration error,
// not clock skew.
const maxLeeway = 5 * time.Minute

func (c *serverConfig) validate() error {
	var err error
	if c.policy, err = c.policy.withDefaults(); err != nil {
		return err
	}
	if c.leeway < 0 || c.leeway > maxLeeway {
		return fmt.Errorf("%w: leeway %v outside [0, %v]", ErrInvalidOption, c.leeway, maxLeeway)
	}
	if c.now == nil {
		return fmt.Errorf("%w: nil clock", ErrInvalidOption)
	}
	if err := checkHeaderKey(c.renewalHeader); err != nil {
		return err
	}
	if c.maxTokenSize < 256 {
		return fmt.Errorf("%w: max token size %d is below 256 bytes", ErrInvalidOption, c.maxTokenSize)
	}
	return nil
}

type clientConfig struct {
	renewalHeader string
	allowInsecure bool
	onSwap        func(token string, expiry time.Time)
	now           func() time.Time
	maxTokenSize  int
}

func defaultClientConfig() clientConfig {
	return clientConfig{
		renewalHeader: DefaultRenewalHeader,
		now:           time.Now,
		maxTokenSize:  DefaultMaxTokenSize,
	}
}

func (c *clientConfig) validate() error {
	if c.now == nil {
		return fmt.Errorf("%w: nil clock", ErrInvalidOption)
	}
	if c.maxTokenSize < 256 {
		return fmt.Errorf("%w: max token size %d is below 256 bytes", ErrInvalidOption, c.maxTokenSize)
	}
	return checkHeaderKey(c.renewalHeader)
}

// checkHeaderKey accepts a lower-case ASCII metadata key that is not
// binary ("-bin") and not reserved by gRPC ("grpc-").
func checkHeaderKey(k string) error {
	if k == "" || strings.HasPrefix(k, "grpc-") || strings.HasSuffix(k, "-bin") {
		return fmt.Errorf("%w: renewal header %q", ErrInvalidOption, k)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%w: renewal header %q must be lower-case token characters", ErrInvalidOption, k)
		}
	}
	return nil
}

// WithPolicy sets the renewal policy. Default: the zero [Policy], which is
// a 24 h idle window, a 168 h absolute lifetime and renewal in the last 12 h.
func WithPolicy(p Policy) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.policy = p })
}

// WithIssuer sets the "iss" claim of minted tokens and requires it on every
// presented token. Default: none, and "iss" is not checked.
func WithIssuer(iss string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.issuer = iss })
}

// WithAudience sets the "aud" claim of minted tokens and requires a
// presented token to name at least one of aud. Default: none, and "aud" is
// not checked. In a mesh, give every service that accepts a session the
// same audience list.
func WithAudience(aud ...string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.audience = append([]string(nil), aud...) })
}

// WithLeeway sets the clock-skew allowance for exp, iat and the absolute
// session end. Default [DefaultLeeway]; at most 5 minutes.
func WithLeeway(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.leeway = d })
}

// WithRevocationList sets the list checked on every authenticated request.
// Default: none. See [MemoryRevocationList].
func WithRevocationList(r RevocationList) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.revocations = r })
}

// WithExemptMethods names full methods ("/pkg.Service/Method") that skip
// authentication: login, health checks, reflection. Their handlers see no
// claims. Alternatively, wrap the interceptors in go-grpc-middleware's
// selector.
func WithExemptMethods(fullMethods ...string) ServerOption {
	return serverOptionFunc(func(c *serverConfig) {
		if c.exempt == nil {
			c.exempt = make(map[string]bool, len(fullMethods))
		}
		for _, m := range fullMethods {
			c.exempt[m] = true
		}
	})
}

// WithEventHook sets a function called once per authenticated or rejected
// request, and per session start, for logging and metrics. It runs on the
// request's goroutine and must be safe for concurrent use. An [Event]
// never carries a token.
func WithEventHook(f func(context.Context, Event)) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.onEvent = f })
}

// WithClock replaces time.Now, for tests and simulations. Default time.Now.
func WithClock(now func() time.Time) Option {
	return sharedOption{
		func(c *serverConfig) { c.now = now },
		func(c *clientConfig) { c.now = now },
	}
}

// WithRenewalHeader sets the response metadata key that carries a renewed
// token. Default [DefaultRenewalHeader]. Server and client must agree.
func WithRenewalHeader(key string) Option {
	return sharedOption{
		func(c *serverConfig) { c.renewalHeader = key },
		func(c *clientConfig) { c.renewalHeader = key },
	}
}

// WithMaxTokenSize bounds the length of a token in bytes: the server
// rejects a longer presented token before parsing it and mints no longer
// token; the client ignores a longer renewed token. Default
// [DefaultMaxTokenSize].
func WithMaxTokenSize(n int) Option {
	return sharedOption{
		func(c *serverConfig) { c.maxTokenSize = n },
		func(c *clientConfig) { c.maxTokenSize = n },
	}
}

// OnSwap sets a function called after the holder swapped in a renewed
// token, for example to persist it. Calls are serialized and come in the
// order of the swaps, so the last call names the held token. It must not
// block for long: a swap waits for the previous call.
func OnSwap(f func(token string, expiry time.Time)) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.onSwap = f })
}

// AllowInsecureTransport lets the holder send its token over a connection
// without transport security (plaintext, or bufconn in tests). Without it,
// a call on such a connection fails before the token leaves the process.
func AllowInsecureTransport() ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.allowInsecure = true })
}
