package interceptor

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// Defaults of the client's refresh.
const (
	// DefaultRefreshMargin: with a refresh token, the client refreshes
	// before a call when its access token expires within this margin.
	DefaultRefreshMargin = 30 * time.Second
	// DefaultRefreshTimeout bounds one refresh call. A refresh runs on
	// behalf of every call waiting for it, so it does not take the deadline
	// of the call that started it.
	DefaultRefreshTimeout = 10 * time.Second
)

// A Refresher exchanges a refresh token for a session's next token pair,
// as slidejwt.v1.TokenService.Refresh does. Refresh must be safe for
// concurrent use by multiple goroutines; the holder calls it at most once
// at a time. Its error goes to the callers whose calls needed the refresh,
// so it should be a gRPC status error.
type Refresher interface {
	Refresh(ctx context.Context, refreshToken string) (*slidejwtv1.TokenPair, error)
}

// RefreshFunc adapts a function to a [Refresher].
type RefreshFunc func(ctx context.Context, refreshToken string) (*slidejwtv1.TokenPair, error)

// Refresh calls f.
func (f RefreshFunc) Refresh(ctx context.Context, refreshToken string) (*slidejwtv1.TokenPair, error) {
	return f(ctx, refreshToken)
}

// TokenServiceRefresher returns a [Refresher] that calls
// TokenService.Refresh through client.
func TokenServiceRefresher(client slidejwtv1.TokenServiceClient) Refresher {
	return RefreshFunc(func(ctx context.Context, refreshToken string) (*slidejwtv1.TokenPair, error) {
		resp, err := client.Refresh(ctx, &slidejwtv1.RefreshRequest{RefreshToken: refreshToken})
		if err != nil {
			return nil, err
		}
		return resp.GetTokens(), nil
	})
}

// WithRefreshToken gives the holder the session's refresh token, which
// turns on refresh: proactive, before a call when the access token expires
// within the margin, and reactive, after a call failed with TOKEN_EXPIRED,
// which is then retried once. Unless [WithRefresher] says otherwise, the
// holder calls TokenService.Refresh on the connection of the call that
// needs it.
func WithRefreshToken(refreshToken string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.refreshToken = refreshToken })
}

// WithRefresher sets how the holder refreshes, for a token service on
// another connection or a non-gRPC one. It needs [WithRefreshToken]. The
// refresh token is a long-lived credential: r must send it only over a
// secure transport (the default refresher lets gRPC enforce that, as for
// the access token).
func WithRefresher(r Refresher) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.refresher = r })
}

// WithRefreshMargin sets how close to its expiry the access token is
// refreshed before a call: when exp − now is below d. Default
// [DefaultRefreshMargin]; 0 turns proactive refresh off. Keep it well below
// the server's idle window: with a margin near the TTL, every call
// refreshes (and rotates the refresh token) before renewal gets a chance.
func WithRefreshMargin(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.refreshMargin = d })
}

// WithRefreshTimeout bounds each refresh call. Default
// [DefaultRefreshTimeout].
func WithRefreshTimeout(d time.Duration) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.refreshTimeout = d })
}

// OnRefresh sets a function called after each successful refresh with the
// new token pair, for example to persist the new refresh token (the old
// one is retired). Calls are serialized and in order, like [OnSwap]'s, and
// the same rule holds: no call through the same holder from inside it.
func OnRefresh(f func(*slidejwtv1.TokenPair)) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.onRefresh = f })
}

// RefreshToken returns the current refresh token, or "" without one.
func (h *TokenHolder) RefreshToken() string { return h.cur.Load().refresh }

func (h *TokenHolder) canRefresh() bool { return h.cfg.refreshToken != "" }

// shouldRefresh reports whether a call that failed with err can be cured by
// a refresh: only TOKEN_EXPIRED can.
func (h *TokenHolder) shouldRefresh(err error) bool {
	if err == nil || !h.canRefresh() {
		return false
	}
	r, ok := ReasonOf(err)
	return ok && r == ReasonTokenExpired
}

// beforeCall refreshes proactively when due and returns the tokens the
// call is to send. A failed proactive refresh is not an error: the call
// goes out with the token held, which is still valid for a moment.
func (h *TokenHolder) beforeCall(ctx context.Context, cc *grpc.ClientConn) *heldToken {
	held := h.cur.Load()
	if !h.canRefresh() || h.cfg.refreshMargin <= 0 || held.exp.Sub(h.cfg.now()) >= h.cfg.refreshMargin {
		return held
	}
	if h.failedBefore(held) != nil {
		return held // this generation already failed to refresh; don't hammer the server
	}
	if !held.end.IsZero() && !held.exp.Before(held.end) {
		return held // at the session's end: no refresh can extend it
	}
	_ = h.refreshFrom(ctx, cc, held)
	return h.cur.Load()
}

// refreshFlight is one refresh in progress, shared by every caller that
// needs it.
type refreshFlight struct {
	done chan struct{}
	err  error
}

// refreshFailure remembers that refreshing generation held failed with a
// rejection (not a transient error), so that it is not tried again.
type refreshFailure struct {
	held *heldToken
	err  error
}

func (h *TokenHolder) failedBefore(held *heldToken) error {
	h.fmu.Lock()
	defer h.fmu.Unlock()
	if h.failed != nil && h.failed.held == held {
		return h.failed.err
	}
	return nil
}

// refreshFrom refreshes the session unless the held tokens have already
// moved on from seen (another caller refreshed, or a renewal arrived), in
// which case the caller just retries with the tokens held now. Concurrent
// callers share one refresh (single flight).
func (h *TokenHolder) refreshFrom(ctx context.Context, cc *grpc.ClientConn, seen *heldToken) error {
	h.fmu.Lock()
	if h.cur.Load() != seen {
		h.fmu.Unlock()
		return nil
	}
	if h.failed != nil && h.failed.held == seen {
		err := h.failed.err
		h.fmu.Unlock()
		return err
	}
	if f := h.flight; f != nil {
		h.fmu.Unlock()
		select {
		case <-f.done:
			return f.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f := &refreshFlight{done: make(chan struct{}), err: errRefreshPanicked}
	h.flight = f
	h.fmu.Unlock()
	// Deferred, so that waiters are released even if a Refresher panics.
	defer func() {
		h.fmu.Lock()
		h.flight = nil
		// A rejection, or a pair the holder cannot take, will not go
		// better next time: remember it for this generation, so that the
		// retired refresh token is not presented again (which the server
		// would take as theft).
		var ie *installError
		if _, rejected := ReasonOf(f.err); rejected || errors.As(f.err, &ie) {
			h.failed = &refreshFailure{held: seen, err: f.err}
		}
		h.fmu.Unlock()
		close(f.done)
	}()
	f.err = h.doRefresh(ctx, cc, seen)
	return f.err
}

var errRefreshPanicked = status.Error(codes.Internal, "slidejwt: refresher panicked")

// installError is a token pair the holder could not take. It is a
// codes.Internal status: the token service misbehaved.
type installError struct{ msg string }

func (e *installError) Error() string { return "slidejwt: refresh returned " + e.msg }

func (e *installError) GRPCStatus() *status.Status { return status.New(codes.Internal, e.Error()) }

type refreshCallKey struct{}

// isRefreshCall reports whether ctx belongs to the holder's own refresh
// call, which its interceptors pass through untouched.
func isRefreshCall(ctx context.Context) bool { return ctx.Value(refreshCallKey{}) != nil }

func (h *TokenHolder) doRefresh(ctx context.Context, cc *grpc.ClientConn, seen *heldToken) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.refreshTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, refreshCallKey{}, true)
	var pair *slidejwtv1.TokenPair
	if r := h.cfg.refresher; r != nil {
		p, err := r.Refresh(ctx, seen.refresh)
		if err != nil {
			return err
		}
		pair = p
	} else {
		// The refresh token is the longest-lived credential: the same
		// transport-security rule as for the access token applies. The
		// guard attaches nothing; it only makes gRPC check the transport.
		resp, err := slidejwtv1.NewTokenServiceClient(cc).Refresh(ctx,
			&slidejwtv1.RefreshRequest{RefreshToken: seen.refresh}, h.guard)
		if err != nil {
			return err
		}
		pair = resp.GetTokens()
	}
	return h.install(pair)
}

// transportGuard is call credentials that attach nothing and require
// transport security unless insecure.
type transportGuard struct{ insecure bool }

func (transportGuard) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return nil, nil
}

func (g transportGuard) RequireTransportSecurity() bool { return !g.insecure }

// install swaps in a refreshed token pair. The access token must name the
// same session and subject, and must not expire before the one held. Its
// errors are codes.Internal statuses: the token service misbehaved.
func (h *TokenHolder) install(pair *slidejwtv1.TokenPair) error {
	t, err := h.decode(pair.GetAccessToken())
	if err != nil {
		return &installError{"an access token that does not decode"}
	}
	if pair.GetRefreshToken() == "" {
		return &installError{"no refresh token"}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.cur.Load()
	if t.sid != old.sid || t.sub != old.sub {
		return &installError{"a token of another session"}
	}
	if t.exp.Before(old.exp) {
		// A renewal that arrived meanwhile is newer; keep it, but take the
		// new refresh token: the old one is retired.
		t = (&heldToken{raw: old.raw, sid: old.sid, sub: old.sub, exp: old.exp, md: old.md, insecure: old.insecure}).withCallOpt()
	}
	t.refresh = pair.GetRefreshToken()
	if end := pair.GetSessionEndsAt(); end != nil {
		t.end = end.AsTime()
	} else {
		t.end = old.end
	}
	h.cur.Store(t)
	if h.cfg.onSwap != nil && t.raw != old.raw {
		h.cfg.onSwap(t.raw, t.exp)
	}
	if h.cfg.onRefresh != nil {
		h.cfg.onRefresh(pair)
	}
	return nil
}
