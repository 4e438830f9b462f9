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
// within the margin, and reactive, after a call was rejected with
// TOKEN_EXPIRED before its handler ran, which is then retried once. The
// token must be a refresh token (typ rt+jwt) of the access token's session.
//
// The refresh token is the session's longest-lived credential, so the
// holder sends it only where it is told to: it needs [WithTokenService] or
// [WithRefresher], or else [BindTarget], in which case it calls
// TokenService.Refresh on the bound connection. [NewTokenHolder] fails
// with [ErrInvalidOption] otherwise: never does a refresh go to whichever
// server just rejected a call.
func WithRefreshToken(refreshToken string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.refreshToken = refreshToken })
}

// WithRefresher sets how the holder refreshes, for a token service that
// is not a gRPC connection the holder can call itself. It needs
// [WithRefreshToken] and excludes [WithTokenService]. The refresh token is
// a long-lived credential: r must send it only to the session's token
// service, and only over a secure transport (the holder's own refresh
// call lets gRPC enforce that, as for the access token).
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
// [DefaultRefreshTimeout]. The refresh runs for every caller waiting for
// it, so it does not take the deadline of the call that started it; each
// caller still stops waiting when its own context ends.
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

// beforeCall refreshes proactively when due and returns the tokens the
// call of method is to send. A failed proactive refresh is not an error:
// the call goes out with the token held, which is still valid for a
// moment.
func (h *TokenHolder) beforeCall(ctx context.Context, cc *grpc.ClientConn, method string) *heldToken {
	held := h.cur.Load()
	if !h.canRefresh() || h.cfg.refreshMargin <= 0 || held.exp.Sub(h.cfg.now()) >= h.cfg.refreshMargin {
		return held
	}
	if h.failedBefore(held) != nil {
		return held // this generation already failed to refresh; don't hammer the server
	}
	if end := held.knownEnd(); !end.IsZero() && !held.exp.Before(end) {
		return held // at the session's end: no refresh can extend it
	}
	_ = h.refreshFrom(ctx, cc, method, 0, held)
	return h.cur.Load()
}

// refreshFlight is one refresh in progress (see flight): a Refresher's
// panic is raised again, never swallowed.
type refreshFlight = flight[struct{}]

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
// callers share one refresh (single flight). Each caller waits for it
// until its own ctx ends, and then returns ctx's error as a gRPC status
// (codes.DeadlineExceeded or codes.Canceled); the refresh goes on for the
// others, bounded by the refresh timeout. method and reason are the call
// that needs the refresh and, for a reactive one, the rejection that
// prompted it, for the event hook.
func (h *TokenHolder) refreshFrom(ctx context.Context, cc *grpc.ClientConn, method string, reason Reason, seen *heldToken) error {
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
	f, leader := h.flight, false
	if f == nil {
		f, leader = newFlight[struct{}](errRefreshPanicked), true
		h.flight = f
		go h.fly(context.WithoutCancel(ctx), cc, method, reason, seen, f)
	}
	h.fmu.Unlock()
	_, err := f.wait(ctx, leader)
	return err
}

// fly runs flight f. A Refresher's panic is raised again on the goroutine
// of the caller that started the flight if it still waits, or else here:
// it is never swallowed. Waiters are released either way.
func (h *TokenHolder) fly(ctx context.Context, cc *grpc.ClientConn, method string, reason Reason, seen *heldToken, f *refreshFlight) {
	defer func() {
		p := recover()
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
		f.land(p)
	}()
	var start time.Time
	if h.cfg.onEvent != nil {
		start = time.Now()
	}
	f.err = h.doRefresh(ctx, cc, seen)
	// Before the waiters are released, so that a call that needed the
	// refresh returns after its event.
	if h.cfg.onEvent != nil {
		h.emit(ctx, Event{Kind: EventClientRefreshed, Method: method, Reason: reason, Err: f.err,
			Expiry: h.cur.Load().exp, Duration: time.Since(start)})
	}
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

// doRefresh makes one refresh call, with the refresh timeout, to the
// configured token service: the Refresher, the WithTokenService
// connection, or else cc, which is then the bound target (NewTokenHolder
// allows nothing else).
func (h *TokenHolder) doRefresh(ctx context.Context, cc *grpc.ClientConn, seen *heldToken) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.refreshTimeout)
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
		var conn grpc.ClientConnInterface = h.cfg.tokenService
		if conn == nil {
			if cc == nil || h.checkTarget(cc) != nil || h.cfg.target == "" {
				return status.Error(codes.Internal, "slidejwt: no token service to refresh with")
			}
			conn = cc
		}
		// The refresh token is the longest-lived credential: the same
		// transport-security rule as for the access token applies. The
		// guard attaches nothing; it only makes gRPC check the transport.
		resp, err := slidejwtv1.NewTokenServiceClient(conn).Refresh(ctx,
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

// install swaps in a refreshed token pair. It checks the pair as offer
// checks a renewal: both tokens decode, as an access token (at+jwt) and a
// refresh token (rt+jwt), of the held session (identical iss, aud, sub,
// sid and auth_time), and neither expires past the session's end. The
// pair's session end must not be later than a known one. An access token
// that expires before the held one is not swapped in, but the refresh
// token is taken: the old one is retired. Its errors are codes.Internal
// statuses: the token service misbehaved.
func (h *TokenHolder) install(pair *slidejwtv1.TokenPair) error {
	ac, err := decodeSession(pair.GetAccessToken(), accessTokenType, h.cfg.maxTokenSize)
	if err != nil {
		return &installError{"an access token that does not decode as one"}
	}
	if pair.GetRefreshToken() == "" {
		return &installError{"no refresh token"}
	}
	rc, err := decodeSession(pair.GetRefreshToken(), refreshTokenType, h.cfg.maxTokenSize)
	if err != nil {
		return &installError{"a refresh token that does not decode as one"}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.cur.Load()
	if !old.sameSession(&ac) || !old.sameSession(&rc) {
		return &installError{"a token of another session"}
	}
	end := old.end
	if ts := pair.GetSessionEndsAt(); ts != nil {
		if !ts.IsValid() {
			return &installError{"an invalid session end"}
		}
		e := ts.AsTime()
		if !end.IsZero() && e.After(end) {
			return &installError{"a session end later than the known one"}
		}
		end = e
	}
	bound := (&heldToken{sessionClaims: old.sessionClaims, end: end}).bound()
	if ac.exp.After(bound) || rc.exp.After(bound) {
		return &installError{"a token that expires after the session's end"}
	}
	var t *heldToken
	if ac.exp.Before(old.exp) {
		// A renewal that arrived meanwhile is newer; keep it, but take the
		// new refresh token: the old one is retired.
		t = h.newHeld(old.raw, old.sessionClaims)
	} else {
		t = h.newHeld(pair.GetAccessToken(), ac)
	}
	t.refresh, t.end = pair.GetRefreshToken(), end
	h.cur.Store(t)
	if h.cfg.onSwap != nil && t.raw != old.raw {
		h.cfg.onSwap(t.raw, t.exp)
	}
	if h.cfg.onRefresh != nil {
		h.cfg.onRefresh(pair)
	}
	return nil
}
