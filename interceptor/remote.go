package interceptor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of a [RemoteKeySet].
const (
	// DefaultJWKSRefreshMin and DefaultJWKSRefreshMax bound how long a
	// RemoteKeySet uses a fetched JWKS before it fetches it again: the
	// response's Cache-Control max-age, or [DefaultJWKSMaxAge] without one,
	// clamped to these bounds.
	DefaultJWKSRefreshMin = time.Minute
	DefaultJWKSRefreshMax = time.Hour
	// DefaultJWKSRefetchInterval is the least time between two fetches of
	// a RemoteKeySet: tokens naming unknown kids cost at most one fetch
	// per interval, however many arrive.
	DefaultJWKSRefetchInterval = 10 * time.Second
	// DefaultJWKSMaxStale is how long after its last successful fetch a
	// RemoteKeySet still uses its keys while fetches fail. From then on
	// verification fails closed with codes.Unavailable.
	DefaultJWKSMaxStale = 24 * time.Hour
	// DefaultJWKSTimeout bounds one fetch, from the request to the end of
	// the body.
	DefaultJWKSTimeout = 5 * time.Second
	// DefaultJWKSMaxSize bounds the body of a JWKS response, in bytes.
	DefaultJWKSMaxSize = 256 << 10
)

// errKeysUnavailable is returned by RemoteKeySet.key when it has no keys
// it may use: none fetched yet, or the last good set is past its maximum
// staleness, or fetches fail and the kid is unknown. The server answers
// codes.Unavailable: the token may be fine.
var errKeysUnavailable = errors.New("signing keys unavailable")

// remoteAlgs are the algorithms a JWKS key can be bound to (see parseJWK).
var remoteAlgs = []string{"ES256", "ES384", "EdDSA", "RS256", "PS256"}

// A RemoteKeySet is a key set read from a JWKS URL, for a service that
// verifies tokens signed elsewhere: give [RemoteKeySet.KeySet] to
// [NewServer]. It reads the document that [Server.JWKSHandler] serves,
// as Envoy's remote_jwks and Istio's jwksUri do.
//
// It fetches only when a lookup needs it, each fetch on a goroutine that
// ends within [WithJWKSTimeout], and never starts more than one per
// [WithJWKSRefetchInterval] however many lookups ask; concurrent lookups
// share one fetch:
//
//   - A token whose kid it does not know makes it fetch, then decide. A
//     kid still unknown after a good fetch is TOKEN_INVALID; one unknown
//     while fetches fail is codes.Unavailable.
//   - Once the set is older than the response's Cache-Control max-age
//     (clamped to [WithJWKSRefreshBounds]), the next call starts a
//     refresh in the background and goes on with the keys it has. A
//     refresh sends the response's ETag in If-None-Match.
//   - While fetches fail, it keeps the last good set for
//     [WithJWKSMaxStale] after the fetch that got it. From then on every
//     call, even of a token it verified before, fails closed with
//     codes.Unavailable, and the handler does not run: an unreachable
//     JWKS is the server's problem, not the token's, so no client is told
//     to log in again.
//   - When a fetch drops a kid, or gives it another key, the servers using
//     the set empty their verified-token caches, as [Server.RotateKeys]
//     does, so no token of a withdrawn key is served from a cache.
//
// Each key is bound to one algorithm, from its "alg" or from its kty and
// crv (EC P-256 is ES256, P-384 ES384, OKP Ed25519 EdDSA; RSA needs "alg"
// RS256 or PS256). An entry is refused if it is an HMAC secret (kty
// "oct"), has alg none or HS256, carries a private member ("d", ...), is
// for a "use" other than "sig", has an alg that does not fit its key, a
// point off its curve, or a kid another entry shares; PROTOCOL.md §9
// lists every rule. Refusals are reported to [OnJWKSError].
//
// A RemoteKeySet is safe for concurrent use. It keeps no goroutine
// between fetches, so it needs no Close. A server's cache hit reads its
// current keys through one atomic pointer and takes no lock.
type RemoteKeySet struct {
	url string
	cfg remoteConfig
	ks  *KeySet

	cur atomic.Pointer[remoteSnapshot]
	// nextTry is the earliest time at which a fetch may start unless one
	// is forced; the cache-hit path reads it without the lock.
	nextTry atomic.Pointer[time.Time]
	// failing is true while the last fetch failed.
	failing atomic.Bool

	mu       sync.Mutex
	inflight *remoteFetch // the fetch in progress, or nil
}

// remoteFetch is one fetch, which concurrent lookups share.
type remoteFetch struct {
	done chan struct{} // closed when the fetch ended
	err  error         // set before done is closed
}

// remoteSnapshot is one good JWKS, immutable once stored.
type remoteSnapshot struct {
	list []*Key
	byID map[string]*Key
	etag string
	// fetched is when the fetch that got it started; refreshAt is when it
	// is due for a refresh, and expires when it may no longer be used.
	fetched, refreshAt, expires time.Time
	// gen counts the fetches that dropped a kid or changed its key.
	gen uint64
}

func (s *remoteSnapshot) usable(now time.Time) bool { return s != nil && now.Before(s.expires) }

// A RemoteKeySetOption configures a [RemoteKeySet].
type RemoteKeySetOption interface{ applyRemote(*remoteConfig) }

type remoteOptionFunc func(*remoteConfig)

func (f remoteOptionFunc) applyRemote(c *remoteConfig) { f(c) }

type remoteConfig struct {
	client                 *http.Client
	now                    func() time.Time
	timeout, refetch       time.Duration
	refreshMin, refreshMax time.Duration
	maxStale               time.Duration
	maxSize                int
	onError                func(error)
	allowHTTP              bool
}

// WithHTTPClient sets the client that fetches the JWKS, for mTLS or a
// proxy. Its transport must honour the request's context, which carries
// the fetch timeout. Redirects to a plain-http URL are refused whatever
// its CheckRedirect says (unless [AllowInsecureJWKS]). Default: a client
// on http.DefaultTransport.
func WithHTTPClient(c *http.Client) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.client = c })
}

// WithJWKSTimeout bounds one fetch. A lookup that needs a fetch waits for
// it at most this long. Default [DefaultJWKSTimeout].
func WithJWKSTimeout(d time.Duration) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.timeout = d })
}

// WithJWKSRefetchInterval sets the least time between the starts of two
// fetches (an explicit [RemoteKeySet.Refresh] excepted), so that a flood
// of tokens naming unknown kids costs at most one fetch per interval.
// Default [DefaultJWKSRefetchInterval].
func WithJWKSRefetchInterval(d time.Duration) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.refetch = d })
}

// WithJWKSRefreshBounds bounds the Cache-Control max-age that the set
// honours: a JWKS is refreshed no sooner than min and no later than max
// after it was fetched. Defaults [DefaultJWKSRefreshMin] and
// [DefaultJWKSRefreshMax].
func WithJWKSRefreshBounds(min, max time.Duration) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.refreshMin, cfg.refreshMax = min, max })
}

// WithJWKSMaxStale sets how long after its last good fetch the set keeps
// using its keys while fetches fail; it must be at least the refresh
// bound's max. Default [DefaultJWKSMaxStale]. A shorter one stops
// trusting a withdrawn key sooner when the JWKS cannot be reached, at
// the price of failing closed sooner.
func WithJWKSMaxStale(d time.Duration) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.maxStale = d })
}

// WithJWKSMaxSize bounds the JWKS response body in bytes; a larger one
// fails the fetch. Default [DefaultJWKSMaxSize].
func WithJWKSMaxSize(n int) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.maxSize = n })
}

// WithRemoteClock replaces time.Now, for tests. Give the [Server] using
// the set the same clock ([WithClock]): a cache hit compares the
// server's reading with the set's times. Default time.Now.
func WithRemoteClock(now func() time.Time) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.now = now })
}

// OnJWKSError sets a function called with each failed fetch and with each
// JWKS entry a fetch refused (wrapping [ErrInvalidJWKS]), for logging. It
// runs on the fetch's goroutine before the lookups waiting for the fetch
// resume, so it must not block. Its errors name JWKS members and kids,
// never a token. Default: none.
func OnJWKSError(f func(error)) RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.onError = f })
}

// AllowInsecureJWKS lets the set fetch an http:// URL, and follow
// redirects to one. Without it only https:// is accepted: whoever can
// change the JWKS in transit can sign any token.
func AllowInsecureJWKS() RemoteKeySetOption {
	return remoteOptionFunc(func(cfg *remoteConfig) { cfg.allowHTTP = true })
}

// NewRemoteKeySet returns a key set read from the JWKS at rawURL, an
// https:// URL (http:// with [AllowInsecureJWKS]). It does not fetch: the
// first lookup does, or [RemoteKeySet.Refresh], which a service can call
// at start-up to fail fast. It fails with [ErrInvalidOption] for a bad URL
// or option.
func NewRemoteKeySet(rawURL string, opts ...RemoteKeySetOption) (*RemoteKeySet, error) {
	cfg := remoteConfig{
		client:     &http.Client{},
		now:        time.Now,
		timeout:    DefaultJWKSTimeout,
		refetch:    DefaultJWKSRefetchInterval,
		refreshMin: DefaultJWKSRefreshMin,
		refreshMax: DefaultJWKSRefreshMax,
		maxStale:   DefaultJWKSMaxStale,
		maxSize:    DefaultJWKSMaxSize,
	}
	for _, o := range opts {
		o.applyRemote(&cfg)
	}
	u, err := url.Parse(rawURL)
	switch {
	case err != nil || u.Host == "" || u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("%w: JWKS URL must be an absolute http(s) URL", ErrInvalidOption)
	case u.Scheme == "http" && !cfg.allowHTTP:
		return nil, fmt.Errorf("%w: JWKS URL is plain http; whoever can change it in transit can sign any token (AllowInsecureJWKS to allow)", ErrInvalidOption)
	case cfg.client == nil || cfg.now == nil:
		return nil, fmt.Errorf("%w: nil HTTP client or clock", ErrInvalidOption)
	case cfg.timeout <= 0 || cfg.refetch <= 0:
		return nil, fmt.Errorf("%w: JWKS timeout and refetch interval must be positive", ErrInvalidOption)
	case cfg.refreshMin <= 0 || cfg.refreshMax < cfg.refreshMin:
		return nil, fmt.Errorf("%w: JWKS refresh bounds %v, %v", ErrInvalidOption, cfg.refreshMin, cfg.refreshMax)
	case cfg.maxStale < cfg.refreshMax:
		return nil, fmt.Errorf("%w: JWKS max staleness %v is below the refresh bound %v", ErrInvalidOption, cfg.maxStale, cfg.refreshMax)
	case cfg.maxSize < 1<<10:
		return nil, fmt.Errorf("%w: JWKS size limit %d is below 1 KiB", ErrInvalidOption, cfg.maxSize)
	}
	cfg.client = guardRedirects(cfg.client, cfg.allowHTTP)
	r := &RemoteKeySet{url: u.String(), cfg: cfg}
	r.ks = &KeySet{byID: map[string]*Key{}, algs: remoteAlgs, remote: r}
	return r, nil
}

// guardRedirects returns a copy of c that refuses a redirect to any URL
// but https (and http if allowHTTP), then applies c's own policy.
func guardRedirects(c *http.Client, allowHTTP bool) *http.Client {
	cc := *c
	next := c.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if s := req.URL.Scheme; s != "https" && (s != "http" || !allowHTTP) {
			return fmt.Errorf("slidejwt: JWKS redirect to a %q URL refused", s)
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("slidejwt: JWKS stopped after 10 redirects")
		}
		return nil
	}
	return &cc
}

// KeySet returns the set to give [NewServer] (or [Server.RotateKeys]): it
// verifies with the keys of the JWKS and cannot sign.
func (r *RemoteKeySet) KeySet() *KeySet { return r.ks }

// Refresh fetches the JWKS now, whatever the refetch interval, or joins a
// fetch in progress, and returns its error. It waits at most until ctx is
// done; the fetch itself ends within [WithJWKSTimeout]. A failed fetch
// keeps the keys the set had.
func (r *RemoteKeySet) Refresh(ctx context.Context) error {
	f := r.start(ctx, r.cfg.now(), true)
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// key returns the key named kid, fetching first if the set does not hold
// it or has no usable keys. See [RemoteKeySet] for the rules.
func (r *RemoteKeySet) key(kid string) (*Key, error) {
	now := r.cfg.now()
	s := r.cur.Load()
	if s.usable(now) {
		if k := s.byID[kid]; k != nil {
			if !now.Before(s.refreshAt) {
				r.start(context.Background(), now, false) // in the background
			}
			return k, nil
		}
	}
	if f := r.start(context.Background(), now, false); f != nil {
		<-f.done // ends within the fetch timeout
	}
	s = r.cur.Load()
	switch {
	case !s.usable(r.cfg.now()):
		return nil, errKeysUnavailable
	case s.byID[kid] != nil:
		return s.byID[kid], nil
	case r.failing.Load():
		return nil, errKeysUnavailable
	}
	return nil, errUnknownKey
}

// hitOK reports whether a token that verified under the set may be served
// from a verified-token cache at now: while the keys are within their
// maximum staleness. When they are due for a refresh, it starts one in
// the background, at most one per refetch interval: the hit path reads
// two atomic pointers and takes no lock in between.
func (r *RemoteKeySet) hitOK(now time.Time) bool {
	s := r.cur.Load()
	if s == nil {
		return false
	}
	if !now.Before(s.refreshAt) {
		if t := r.nextTry.Load(); t == nil || !now.Before(*t) {
			r.start(context.Background(), r.cfg.now(), false)
		}
	}
	return now.Before(s.expires)
}

// gen returns the generation of the current keys (see remoteSnapshot.gen).
func (r *RemoteKeySet) gen() uint64 {
	if s := r.cur.Load(); s != nil {
		return s.gen
	}
	return 0
}

// start returns the fetch in progress, or starts one at now unless the
// last one started within the refetch interval and force is false, in
// which case it returns nil. The fetch runs on its own goroutine with
// ctx's values, not its cancellation: lookups share it.
func (r *RemoteKeySet) start(ctx context.Context, now time.Time, force bool) *remoteFetch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight != nil {
		return r.inflight
	}
	if t := r.nextTry.Load(); !force && t != nil && now.Before(*t) {
		return nil
	}
	next := now.Add(r.cfg.refetch)
	r.nextTry.Store(&next)
	f := &remoteFetch{done: make(chan struct{})}
	r.inflight = f
	go r.run(ctx, f, now)
	return f
}

func (r *RemoteKeySet) run(ctx context.Context, f *remoteFetch, now time.Time) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.timeout)
	refused, err := r.fetch(ctx, now)
	cancel()
	f.err = err
	r.failing.Store(err != nil)
	if r.cfg.onError != nil {
		for _, e := range refused {
			r.cfg.onError(e)
		}
		if err != nil {
			r.cfg.onError(err)
		}
	}
	r.mu.Lock()
	r.inflight = nil
	r.mu.Unlock()
	close(f.done)
}

// fetch gets the JWKS and, if it is good, makes it the current set. It
// returns the entries it refused. now is when the fetch started: the new
// set's age counts from then.
func (r *RemoteKeySet) fetch(ctx context.Context, now time.Time) ([]error, error) {
	prev := r.cur.Load()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return nil, fmt.Errorf("slidejwt: JWKS request: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	if prev != nil && prev.etag != "" {
		req.Header.Set("If-None-Match", prev.etag)
	}
	resp, err := r.cfg.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("slidejwt: fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && prev != nil && prev.etag != "":
		next := *prev
		r.setTimes(&next, now, resp.Header)
		r.cur.Store(&next)
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%w: HTTP status %d", ErrInvalidJWKS, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(r.cfg.maxSize)+1))
	if err != nil {
		return nil, fmt.Errorf("slidejwt: read JWKS: %w", err)
	}
	if len(body) > r.cfg.maxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidJWKS, r.cfg.maxSize)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, err
	}
	next := &remoteSnapshot{list: keys.list, byID: keys.byID, etag: resp.Header.Get("ETag")}
	if prev != nil {
		next.gen = prev.gen
		if dropsKey(prev, next) {
			next.gen++
		}
	}
	r.setTimes(next, now, resp.Header)
	r.cur.Store(next)
	return keys.refused, nil
}

// setTimes sets s's times for a fetch started at now whose response
// headers are h.
func (r *RemoteKeySet) setTimes(s *remoteSnapshot, now time.Time, h http.Header) {
	age, ok := cacheMaxAge(h)
	if !ok {
		age = DefaultJWKSMaxAge
	}
	age = min(max(age, r.cfg.refreshMin), r.cfg.refreshMax)
	s.fetched, s.refreshAt, s.expires = now, now.Add(age), now.Add(r.cfg.maxStale)
}

// dropsKey reports whether next lacks a kid of prev or names another key
// with it.
func dropsKey(prev, next *remoteSnapshot) bool {
	for _, k := range prev.list {
		if nk := next.byID[k.id]; nk == nil || !sameKey(k, nk) {
			return true
		}
	}
	return false
}

// cacheMaxAge returns the max-age of the Cache-Control header in h: 0 for
// no-cache or no-store, and false when it says nothing usable.
func cacheMaxAge(h http.Header) (time.Duration, bool) {
	for _, v := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-cache", "no-store":
				return 0, true
			case "max-age":
				n, err := strconv.ParseUint(strings.Trim(val, `"`), 10, 64)
				if err != nil {
					continue
				}
				return time.Duration(min(n, 1<<31)) * time.Second, true
			}
		}
	}
	return 0, false
}
