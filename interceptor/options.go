package interceptor

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/store"
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
	policy        Policy // normalized by validate
	issuer        string
	audience      []string
	now           func() time.Time
	revocations   store.RevocationList
	revoker       store.Revoker
	exempt        map[string]bool
	renewalHeader string
	maxTokenSize  int
	onEvent       func(context.Context, Event)
	store         store.SessionStore
	cacheSize     int
	streamCheck   time.Duration
	clockSet      bool // WithClock was given: now is not the wall clock
	// WithDelegatedRenewal and WithDelegatedRenewalTimeout, from which
	// validate builds delegation (see delegate.go).
	renewalService    grpc.ClientConnInterface
	renewalServiceSet bool
	renewalTimeout    *time.Duration
	delegation        *delegator
	// Overrides of policy fields by WithLeeway, WithRefreshTTL and
	// WithRefreshGrace, applied after every option, in whatever order the
	// options came.
	leeway, refreshTTL, refreshGrace *time.Duration
}

func defaultServerConfig() serverConfig {
	return serverConfig{
		now:           time.Now,
		renewalHeader: DefaultRenewalHeader,
		maxTokenSize:  DefaultMaxTokenSize,
		cacheSize:     DefaultCacheSize,
		streamCheck:   DefaultStreamCheckInterval,
	}
}

func (c *serverConfig) validate() error {
	if c.leeway != nil {
		if *c.leeway < 0 || *c.leeway > maxLeeway {
			return fmt.Errorf("%w: leeway %v outside [0, %v]", ErrInvalidOption, *c.leeway, maxLeeway)
		}
		c.policy.Leeway = offIfZero(*c.leeway)
	}
	if c.refreshTTL != nil {
		if *c.refreshTTL < time.Second {
			return fmt.Errorf("%w: refresh TTL %v is below one second", ErrInvalidOption, *c.refreshTTL)
		}
		c.policy.RefreshTTL = *c.refreshTTL
	}
	if c.refreshGrace != nil {
		if *c.refreshGrace < 0 {
			return fmt.Errorf("%w: refresh grace period %v is negative", ErrInvalidOption, *c.refreshGrace)
		}
		c.policy.RefreshGrace = offIfZero(*c.refreshGrace)
	}
	if err := c.policy.Validate(); err != nil {
		return err
	}
	c.policy = c.policy.norm()
	if c.now == nil {
		return fmt.Errorf("%w: nil clock", ErrInvalidOption)
	}
	if err := checkHeaderKey(c.renewalHeader); err != nil {
		return err
	}
	if c.maxTokenSize < 256 {
		return fmt.Errorf("%w: max token size %d is below 256 bytes", ErrInvalidOption, c.maxTokenSize)
	}
	if c.cacheSize < 0 {
		return fmt.Errorf("%w: cache size %d is negative", ErrInvalidOption, c.cacheSize)
	}
	if c.streamCheck <= 0 {
		return fmt.Errorf("%w: stream check interval %v is not positive", ErrInvalidOption, c.streamCheck)
	}
	if err := c.validateDelegation(); err != nil {
		return err
	}
	if c.store != nil {
		if c.revocations != nil {
			return fmt.Errorf("%w: WithSessionStore already serves as the revocation list; drop WithRevocationList", ErrInvalidOption)
		}
		c.revocations, c.revoker = c.store, c.store
	} else if r, ok := c.revocations.(store.Revoker); ok {
		c.revoker = r
	}
	return nil
}

// offIfZero maps an option's "none" (zero) to the Policy's "off"
// (negative).
func offIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

type clientConfig struct {
	renewalHeader  string
	allowInsecure  bool
	onSwap         func(token string, expiry time.Time)
	onEvent        func(context.Context, Event) // WithClientEventHook
	now            func() time.Time
	maxTokenSize   int
	refreshToken   string
	refresher      Refresher
	refreshMargin  time.Duration
	refreshTimeout time.Duration
	onRefresh      func(*slidejwtv1.TokenPair)
	tokenService   grpc.ClientConnInterface // WithTokenService
	target         string                   // BindTarget; "" when unbound
	targetSet      bool                     // BindTarget was given
	sessionEnd     time.Time                // WithSessionEnd; zero when unknown
}

func defaultClientConfig() clientConfig {
	return clientConfig{
		renewalHeader:  DefaultRenewalHeader,
		now:            time.Now,
		maxTokenSize:   DefaultMaxTokenSize,
		refreshMargin:  DefaultRefreshMargin,
		refreshTimeout: DefaultRefreshTimeout,
	}
}

func (c *clientConfig) validate() error {
	if c.now == nil {
		return fmt.Errorf("%w: nil clock", ErrInvalidOption)
	}
	if c.refresher != nil && c.refreshToken == "" {
		return fmt.Errorf("%w: WithRefresher needs WithRefreshToken", ErrInvalidOption)
	}
	if c.tokenService != nil && c.refreshToken == "" {
		return fmt.Errorf("%w: WithTokenService needs WithRefreshToken", ErrInvalidOption)
	}
	if c.tokenService != nil && c.refresher != nil {
		return fmt.Errorf("%w: WithTokenService and WithRefresher both say where to refresh; give one", ErrInvalidOption)
	}
	if c.targetSet && c.target == "" {
		return fmt.Errorf("%w: BindTarget needs a target", ErrInvalidOption)
	}
	if c.refreshToken != "" && c.refresher == nil && c.tokenService == nil && c.target == "" {
		return fmt.Errorf("%w: a refresh token needs a token service: add WithTokenService(conn) or WithRefresher(r), "+
			"or BindTarget(target) to refresh on the one connection the holder may use", ErrInvalidOption)
	}
	if c.refreshMargin < 0 || c.refreshTimeout <= 0 {
		return fmt.Errorf("%w: refresh margin must not be negative, refresh timeout must be positive", ErrInvalidOption)
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

// WithPolicy sets the session [Policy]. Default: the zero Policy, which
// is a 24 h idle window, a 168 h absolute lifetime, renewal in the last
// 12 h, 7-day refresh tokens with a 30 s grace period, and a 30 s leeway.
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
// session end ([Policy].Leeway), whatever the order of the options; 0
// allows none. Default [DefaultLeeway]; at most 5 minutes.
func WithLeeway(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.leeway = &d })
}

// WithRevocationList sets the list checked on every authenticated call and
// on open streams (see [store.RevocationList]). If it is also a
// [store.Revoker], as [github.com/slidejwt/slidejwt/interceptor/memstore.RevocationList] is, [Server.RevokeSession]
// and TokenService.Revoke revoke through it. Default: none.
func WithRevocationList(r store.RevocationList) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.revocations = r })
}

// WithSessionStore enables refresh tokens: [Server.StartSession] also
// mints a refresh token and records the session in s, and
// [Server.TokenService] rotates refresh tokens and revokes sessions through
// it. The store is also the server's revocation list, as an allow-list: a
// session it does not know is refused. It cannot be combined with
// [WithRevocationList]. Default: none, and sessions have no refresh token.
// See [github.com/slidejwt/slidejwt/interceptor/memstore.SessionStore] for one process; replicas share a networked
// store.
func WithSessionStore(s store.SessionStore) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.store = s })
}

// WithRefreshTTL sets the idle lifetime of refresh tokens: each one expires
// this long after it was minted, and never after the session's absolute
// end ([Policy].RefreshTTL, whatever the order of the options). Default
// [DefaultRefreshTTL].
func WithRefreshTTL(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.refreshTTL = &d })
}

// WithRefreshGrace sets how long a retired refresh token may be presented
// again and get the same successor, for a client that lost the response
// to its refresh. After it, reuse is treated as theft and revokes the
// session ([Policy].RefreshGrace, whatever the order of the options).
// Default [DefaultRefreshGrace], or the refresh TTL if that is shorter; 0
// treats any reuse as theft.
func WithRefreshGrace(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.refreshGrace = &d })
}

// WithStreamCheckInterval sets how often an open stream that exchanges no
// messages checks that its session is still live: not revoked, and not
// past its end. A stream whose session was revoked ends at its next
// message in either direction, or within this interval if it is silent.
// Default [DefaultStreamCheckInterval].
func WithStreamCheckInterval(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.streamCheck = d })
}

// WithCacheSize bounds the verified-token cache and the renewal
// de-duplication, each to about n entries. A token that verified once is
// not verified again while it is valid (its signature is the costly part;
// the session end and the revocation list are still checked on every
// request), and requests presenting the same token while its renewal is
// due share one renewed token. Once the cache holds n tokens, a token
// whose renewal is not due is cached from its second presentation on, so
// that more sessions in turn than n cost no more than verifying each
// call (the hit rate then stays about n over the number of sessions). Default [DefaultCacheSize]; 0 turns both
// off. Each entry holds about two tokens' worth of memory plus the claims,
// so with 1 KiB tokens the default costs some tens of MiB at most.
func WithCacheSize(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.cacheSize = n })
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
// request, per session start, refresh, revocation and stream ended by the
// server, and per call to the session store or revocation list
// ([EventStoreCall]), for logging and metrics. It runs on the request's
// goroutine (a store call of a silent stream's check, on the server's
// stream watcher) and must be safe for concurrent use. An [Event] never
// carries a token. Switch on [Event].Kind and ignore the kinds you do not
// know: kinds may be added. Default: none.
//
// A call whose renewal a verify-only server asks of its renewal service
// ([WithDelegatedRenewal]) reports its one event once the answer came or
// the wait for it ended: after a unary handler returned, when a stream
// sends its header or ends. Each call to the renewal service reports an
// [EventDelegatedRenewal] of its own, on its own goroutine.
//
// Without a hook the server reads no clock and builds no event for it;
// with one, it reads the monotonic clock about twice per event to fill in
// [Event].Duration. The provider module
// github.com/slidejwt/slidejwt/providers/otelslidejwt turns the events
// into OpenTelemetry metrics.
func WithEventHook(f func(context.Context, Event)) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.onEvent = f })
}

// WithClock replaces time.Now, for tests and simulations. Default time.Now.
func WithClock(now func() time.Time) Option {
	return sharedOption{
		func(c *serverConfig) { c.now, c.clockSet = now, true },
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

// OnSwap sets a function called after the holder swapped in a new access
// token, for example to persist it: a renewed or refreshed token, or the
// previous token when the holder falls back from a rejected renewal (see
// [TokenHolder]). Calls are serialized and come in the order of the swaps,
// so the last call names the held token. It must not
// block for long: a swap waits for the previous call. It must not make a
// call through the same holder: that call's renewal would wait for the
// hook to return, which deadlocks.
func OnSwap(f func(token string, expiry time.Time)) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.onSwap = f })
}

// AllowInsecureTransport lets the holder send its token over a connection
// without transport security (plaintext, or bufconn in tests). Without it,
// a call on such a connection fails before the token leaves the process.
func AllowInsecureTransport() ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.allowInsecure = true })
}
