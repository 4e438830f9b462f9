package interceptor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// Defaults of delegated renewal (see [WithDelegatedRenewal]).
const (
	// DefaultDelegatedRenewalTimeout bounds one call to the renewal
	// service, and how long a request waits for it.
	DefaultDelegatedRenewalTimeout = time.Second
	// DefaultDelegatedRenewalRetry is how long a server remembers that the
	// renewal service failed, or had no renewal due, for a presented
	// token: requests that present it meanwhile go on without a renewal,
	// and without asking again.
	DefaultDelegatedRenewalRetry = 10 * time.Second
)

// ErrDelegatedRenewal is wrapped by the Err of the [EventRenewalFailed]
// and [EventDelegatedRenewal] events of a server whose renewal service
// ([WithDelegatedRenewal]) did not answer in time, failed, or answered
// with a token the server refused. Its messages name a gRPC code, a
// slidejwt reason or a fixed phrase, never the service's own message.
var ErrDelegatedRenewal = errors.New("slidejwt: delegated renewal failed")

// WithDelegatedRenewal makes a server that cannot sign ([NewVerifyKeySet],
// [RemoteKeySet]) slide sessions all the same: when a call's renewal is
// due, it asks the signing service on conn for it, with
// slidejwt.v1.TokenService/Renew authenticated by the presented token, and
// sends the answer in its own response metadata, where a signing server
// sends its renewal (PROTOCOL.md §2, §10). The client cannot tell the two
// kinds of server apart. A server that can sign ignores it.
//
// The server relays an answer only if it verifies under the server's own
// key set and is a later token of the same session: the same iss, aud,
// sub, sid, auth_time, session_exp and cnf as the presented token, a
// later exp no later than the session's end, and no freshness marker.
// Anything else is refused, with an [EventRenewalFailed]. A token bound to
// a certificate ([BindToPeerCertificate]) is not renewed here: the renewal
// service would see this server's certificate, not the token's.
//
// It costs one internal call per presented token per renewal, never one
// per request: requests presenting the same token share the call while it
// is in flight, and its answer until the renewal expires or the presented
// token is no longer accepted, bounded by [WithCacheSize] entries (or
// [DefaultCacheSize] if that is 0, since without it every request would
// make a call). A failure, or an answer without a token, is remembered
// for [DefaultDelegatedRenewalRetry]. Each replica asks on its own.
//
// The call starts before the handler and runs beside it, on a goroutine
// of its own, bounded by [WithDelegatedRenewalTimeout]. A request never
// fails for it: if no answer came in time, or the service failed, the
// call goes on without a renewal and its event is [EventRenewalFailed].
// A unary call waits for the answer after its handler returned, a stream
// before it sends its header (its first message), each at most until the
// timeout since the request arrived, and at most half of the time the
// request had left before its deadline. [Server.AuthFunc] waits before
// the handler. The call carries the presented token and nothing else of
// the request: it is shared, so no request's context values or
// cancellation reach it.
//
// conn must reach the signing service over a secure transport (the call
// carries a user's bearer token) and must not add an "authorization" of
// its own: no [TokenHolder] interceptors or per-RPC credentials on it.
// Give both servers the same [Policy], so that they agree on when a
// renewal is due. Default: none, and a verify-only server never renews.
func WithDelegatedRenewal(conn grpc.ClientConnInterface) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.renewalService, c.renewalServiceSet = conn, true })
}

// WithDelegatedRenewalTimeout bounds a call to the renewal service of
// [WithDelegatedRenewal], and how long a request waits for its answer.
// Default [DefaultDelegatedRenewalTimeout].
func WithDelegatedRenewalTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.renewalTimeout = &d })
}

// validateDelegation checks the delegation options and builds the
// delegator.
func (c *serverConfig) validateDelegation() error {
	timeout := DefaultDelegatedRenewalTimeout
	if c.renewalTimeout != nil {
		if timeout = *c.renewalTimeout; timeout <= 0 {
			return fmt.Errorf("%w: delegated renewal timeout %v is not positive", ErrInvalidOption, timeout)
		}
	}
	if !c.renewalServiceSet {
		return nil
	}
	if c.renewalService == nil {
		return fmt.Errorf("%w: WithDelegatedRenewal needs a connection", ErrInvalidOption)
	}
	size := c.cacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	c.delegation = &delegator{
		client:  slidejwtv1.NewTokenServiceClient(c.renewalService),
		timeout: timeout,
		cache:   newTokenCache[*delegation](size, c.now),
	}
	return nil
}

// delegator asks the renewal service for renewals.
type delegator struct {
	client  slidejwtv1.TokenServiceClient
	timeout time.Duration
	// cache maps a presented token's digest to its delegation.
	cache tokenCache[*delegation]
}

// delegation is one call to the renewal service for one presented token,
// which every request presenting the token shares while it is in flight,
// and its outcome, which the requests that follow share.
type delegation struct {
	// v is the verifier that verified the presented token, held weakly:
	// it only tells whether a later request was verified by the same one
	// (an entry can outlive its verifier's key set; it must not keep that
	// verifier's caches alive).
	v     weak.Pointer[verifier]
	until time.Time // when the entry dies, unless the outcome shortens it
	done  chan struct{}
	// out is set before done is closed: the renewal to send; one with
	// err set when the service failed or its answer was refused; nil when
	// the service had no renewal due.
	out *renewal
}

// delegate is renew for a server that cannot sign: when the policy says
// a renewal of the token with claims c and cache key key (zero with the
// caches off) is due at now, it returns the renewal got from the renewal
// service for it, or a failed one, or, while the call is in flight, a
// renewal whose call the request waits on. It returns nil when no renewal
// is due or the server has no renewal service, and for a token bound to a
// certificate: the renewal service would see this server's certificate on
// the Renew call, not the token's, and refuse it (PROTOCOL.md §12).
func (s *Server) delegate(ctx context.Context, v *verifier, c *verifiedClaims, key tokenKey, now time.Time) *renewal {
	dg := s.cfg.delegation
	if dg == nil || c.bound {
		return nil
	}
	d := s.cfg.policy.Decide(now, c.exp(), c.authTime())
	if !d.Renew {
		return nil
	}
	var raw string
	if key == (tokenKey{}) {
		if raw = presentedToken(ctx); raw == "" {
			return nil
		}
		key = keyOf(raw)
	}
	until := earliest(s.cfg.policy.AcceptExpiryUntil(c.exp()), d.Expiry)
	var mine *delegation
	e := dg.cache.getOrPut(key, now, func() (*delegation, time.Time) {
		mine = &delegation{v: weak.Make(v), until: until, done: make(chan struct{})}
		return mine, until
	})
	if e != mine && e.v != weak.Make(v) {
		// Asked under a key set the server no longer uses: its answer
		// was checked against keys that may be gone. Ask again.
		mine = &delegation{v: weak.Make(v), until: until, done: make(chan struct{})}
		dg.cache.put(key, mine, until)
		e = mine
	}
	if e == mine {
		if raw == "" {
			raw = presentedToken(ctx)
		}
		go s.runDelegation(dg, e, v, key, c, raw)
	}
	select {
	case <-e.done:
		return e.out
	default:
	}
	arrived := time.Now()
	wait := arrived.Add(dg.timeout)
	if dl, ok := ctx.Deadline(); ok {
		wait = earliest(wait, arrived.Add(dl.Sub(arrived)/2))
	}
	return &renewal{call: &delegatedCall{s: s, e: e, wait: wait}}
}

// earliest returns the earlier of a and b.
func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// presentedToken returns the bearer token of the request, which the
// server has verified, or "".
func presentedToken(ctx context.Context) string {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) != 1 {
		return ""
	}
	_, raw, _ := strings.Cut(vals[0], " ")
	return raw
}

// runDelegation makes e's call to the renewal service for the presented
// token raw, whose verified claims are c (verified by v), and records its
// outcome.
func (s *Server) runDelegation(dg *delegator, e *delegation, v *verifier, key tokenKey, c *verifiedClaims, raw string) {
	start := s.startTimer()
	ctx, cancel := context.WithTimeout(context.Background(), dg.timeout)
	ctx = metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+raw))
	resp, err := dg.client.Renew(ctx, &slidejwtv1.RenewRequest{})
	cancel()
	var out *renewal
	switch {
	case err != nil:
		out = &renewal{err: serviceError(err)}
	case resp.GetAccessToken() != "":
		out = s.acceptDelegated(v, c, resp.GetAccessToken())
	}
	e.out = out
	switch now := s.cfg.now(); {
	case out == nil || out.err != nil:
		dg.cache.put(key, e, earliest(e.until, now.Add(DefaultDelegatedRenewalRetry)))
	case out.exp.Before(e.until):
		dg.cache.put(key, e, out.exp) // never hand out an expired renewal
	}
	// The internal call's event comes before the events of the requests
	// that waited for it.
	ev := Event{Kind: EventDelegatedRenewal, Method: renewMethod, Subject: c.sub(), SessionID: c.sid()}
	if out != nil {
		ev.Expiry, ev.Err = out.exp, out.err
	}
	s.emitTimed(context.Background(), ev, start)
	close(e.done)
}

// serviceError describes a failed call to the renewal service without
// its message, which the server does not control.
func serviceError(err error) error {
	if r, ok := ReasonOf(err); ok {
		return fmt.Errorf("%w: renewal service refused the token: %s", ErrDelegatedRenewal, WireReason(r))
	}
	return fmt.Errorf("%w: renewal service answered %s", ErrDelegatedRenewal, status.Code(err))
}

// acceptDelegated returns the renewal to relay for the token tok that the
// renewal service answered for the presented token with claims c, or a
// failed renewal if tok is not a renewal of it: tok must verify under v,
// the key set that verified the presented token, and be a later token of
// the same session (PROTOCOL.md §10).
func (s *Server) acceptDelegated(v *verifier, c *verifiedClaims, tok string) *renewal {
	refuse := func(why string) *renewal {
		return &renewal{err: fmt.Errorf("%w: answer refused: %s", ErrDelegatedRenewal, why)}
	}
	if len(tok) > s.cfg.maxTokenSize || !isCompactJWS(tok) {
		return refuse("malformed token")
	}
	n, aerr := v.verify(tok)
	switch {
	case aerr != nil && aerr.keysDown:
		return refuse("signing keys unavailable")
	case aerr != nil:
		return refuse("token does not verify: " + reasonPhrase(aerr.reason))
	case n.Issuer != c.iss(), n.Subject != c.sub(), n.SessionID != c.sid(),
		!n.AuthTime.Equal(c.authTime()), !slices.Equal(n.Audience, c.claims().Audience):
		return refuse("token of another session")
	case !sameSessionExp(n, c):
		return refuse("token of another session")
	case !c.sameCnf(n.Confirmation):
		return refuse("token bound otherwise than the presented one")
	case n.Fresh:
		return refuse("token claims a fresh login")
	case !n.ExpiresAt.After(c.exp()):
		return refuse("token does not expire later than the presented one")
	case n.ExpiresAt.After(s.policyFor(c).SessionEnd(c.authTime())):
		return refuse("token outlives the session")
	}
	return &renewal{tok: tok, exp: n.ExpiresAt.Time, md: metadata.Pairs(s.cfg.renewalHeader, tok)}
}

// delegatedCall is one request's wait for a delegation in flight.
type delegatedCall struct {
	s    *Server
	e    *delegation
	wait time.Time // on the wall clock: the request waits no longer
	ev   Event     // the request's event, emitted once the outcome is known

	once sync.Once
	out  *renewal // the request's outcome, as delegation.out, or a failed one
}

// hold keeps the request's event ev, begun at start, until await.
func (dc *delegatedCall) hold(ev Event, start time.Time) {
	if dc.s.cfg.onEvent != nil {
		ev.Duration = time.Since(start)
	}
	dc.ev = ev
}

// await waits, at most until dc.wait or ctx is done, for the renewal
// service's answer, and returns the renewal to send, nil when none is
// due, or the error why there is none. The first await emits the
// request's event; later ones return the same outcome at once.
func (dc *delegatedCall) await(ctx context.Context) (*renewal, error) {
	dc.once.Do(func() {
		select {
		case <-dc.e.done:
			dc.out = dc.e.out
		default:
			t := time.NewTimer(time.Until(dc.wait))
			defer t.Stop()
			select {
			case <-dc.e.done:
				dc.out = dc.e.out
			case <-t.C:
				dc.out = &renewal{err: fmt.Errorf("%w: no answer within the timeout", ErrDelegatedRenewal)}
			case <-ctx.Done():
				dc.out = &renewal{err: fmt.Errorf("%w: the request ended first", ErrDelegatedRenewal)}
			}
		}
		ev := dc.ev
		switch {
		case dc.out == nil:
			ev.Kind = EventAuthenticated
		case dc.out.err != nil:
			ev.Kind, ev.Err = EventRenewalFailed, dc.out.err
		default:
			ev.Kind, ev.Expiry = EventRenewed, dc.out.exp
		}
		dc.s.emit(ctx, ev)
	})
	if dc.out != nil && dc.out.err != nil {
		return nil, dc.out.err
	}
	return dc.out, nil
}

// stream returns ss, whose header waits for the renewal (see
// delegatedStream).
func (dc *delegatedCall) stream(ctx context.Context, ss grpc.ServerStream) *delegatedStream {
	return &delegatedStream{ServerStream: ss, ctx: ctx, call: dc}
}

// delegatedStream is a server stream whose renewal was still in flight at
// the renewal service when its handler started. Its first SendHeader or
// SendMsg waits for the renewal (see delegatedCall.await) and puts it in
// the header; finish puts it in the trailer, and in the header if that was
// not sent. The handler sees it through guardStream's guardedStream.
type delegatedStream struct {
	grpc.ServerStream
	ctx    context.Context
	call   *delegatedCall
	headed atomic.Bool // the header had its chance at the renewal
}

func (w *delegatedStream) header() {
	if w.headed.CompareAndSwap(false, true) {
		if r, _ := w.call.await(w.ctx); r != nil {
			_ = w.ServerStream.SetHeader(r.md) // fails if an earlier interceptor sent it
		}
	}
}

// SendHeader sends the header with the renewal, once it came or the wait
// ended.
func (w *delegatedStream) SendHeader(md metadata.MD) error {
	w.header()
	return w.ServerStream.SendHeader(md)
}

// SendMsg sends m, the first one after the header with the renewal.
func (w *delegatedStream) SendMsg(m any) error {
	w.header()
	return w.ServerStream.SendMsg(m)
}

// finish sets the trailer, and the header if no message was sent, to carry
// the renewal, after the handler returned or the stream ended.
func (w *delegatedStream) finish() {
	r, _ := w.call.await(w.ctx)
	if r == nil {
		return
	}
	if w.headed.CompareAndSwap(false, true) {
		_ = w.ServerStream.SetHeader(r.md)
	}
	w.ServerStream.SetTrailer(r.md)
}

// sameSessionExp reports whether n carries the session_exp of c, or
// neither has one: a renewal never moves a session's own end (PROTOCOL.md
// §6).
func sameSessionExp(n *Claims, c *verifiedClaims) bool {
	if n.SessionExpiry == nil {
		return c.sessionExp().IsZero()
	}
	return n.SessionExpiry.Time.Equal(c.sessionExp())
}
