package interceptor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// Defaults of a [ServiceHolder].
const (
	// DefaultLoginTimeout bounds one call of a ServiceHolder's login
	// function. A login runs on behalf of every call waiting for it, so it
	// does not take the deadline of the call that started it.
	DefaultLoginTimeout = 10 * time.Second
	// DefaultLoginBackoff is how long a ServiceHolder waits before it logs
	// in again after a failed login (or a session that was rejected before
	// any call succeeded with it). It doubles with each failure in a row,
	// up to DefaultMaxLoginBackoff.
	DefaultLoginBackoff = time.Second
	// DefaultMaxLoginBackoff bounds the wait between failed logins.
	DefaultMaxLoginBackoff = time.Minute
)

// A Login starts a new session for a service: it presents the service's
// own credentials (client credentials, a workload certificate, ...) to
// the auth service and returns the new session's tokens, as a login RPC
// or [Session].TokenPair do. Login must be safe for concurrent use by
// multiple goroutines; a [ServiceHolder] calls it at most once at a time.
// Its error reaches the callers whose calls needed the session, wrapped
// in [ErrServiceLogin].
type Login interface {
	Login(ctx context.Context) (*slidejwtv1.TokenPair, error)
}

// LoginFunc adapts a function to a [Login].
type LoginFunc func(ctx context.Context) (*slidejwtv1.TokenPair, error)

// Login calls f.
func (f LoginFunc) Login(ctx context.Context) (*slidejwtv1.TokenPair, error) { return f(ctx) }

// serviceOption is an option of a ServiceHolder only. It is a
// ClientOption so that it can be given beside the others; NewTokenHolder
// and NewForwarder refuse it.
type serviceOption func(*serviceConfig)

func (serviceOption) applyClient(*clientConfig) {}

type serviceConfig struct {
	loginTimeout           time.Duration
	minBackoff, maxBackoff time.Duration
}

// WithLoginTimeout bounds each call of a [ServiceHolder]'s login
// function. Default [DefaultLoginTimeout]. It is an option of
// [NewServiceHolder] only.
func WithLoginTimeout(d time.Duration) ClientOption {
	return serviceOption(func(c *serviceConfig) { c.loginTimeout = d })
}

// WithLoginBackoff sets how long a [ServiceHolder] waits before it logs
// in again after a failure: first, doubling with each failure in a row,
// up to most, plus up to a quarter of random jitter. A failure is a login
// that failed or gave unusable tokens, or a session that a server rejected
// before any call succeeded with it. Meanwhile, calls that have no usable
// session fail at once with the last error. Defaults
// [DefaultLoginBackoff] and [DefaultMaxLoginBackoff]. It is an option of
// [NewServiceHolder] only.
func WithLoginBackoff(first, most time.Duration) ClientOption {
	return serviceOption(func(c *serviceConfig) { c.minBackoff, c.maxBackoff = first, most })
}

// ServiceHolder holds a service's own session: the identity a service
// calls other services with when it does not act for a caller (see
// [Forwarder] for that). It is a [TokenHolder] that logs in by itself,
// in the spirit of x/oauth2's TokenSource:
//
//   - it logs in with its [Login] on first use; concurrent callers share
//     one login;
//   - each session is held by a TokenHolder with the options given to
//     [NewServiceHolder]: its interceptors attach the token, swap in
//     renewals of that session only, refresh it when a refresh token and
//     a token service ([WithTokenService] or [WithRefresher]) are at hand,
//     and fall back from a refused renewal;
//   - it logs in again when the session cannot go on: before a call, when
//     the token expires within the refresh margin ([WithRefreshMargin];
//     with a margin of 0, once it has expired) and no refresh can extend
//     it (no refresh token, or the session's end is reached); after
//     a server rejected the session (SESSION_REVOKED, SESSION_EXPIRED, or
//     TOKEN_EXPIRED, TOKEN_INVALID or TOKEN_MISSING that its holder could
//     not cure). A unary call rejected before its handler ran is then
//     made once more with the new session; a stream is not reopened, and
//     the next one uses the new session.
//
// A new session comes only from the login function, never from a
// response: each session's holder refuses any token of another session.
// A failed login backs off ([WithLoginBackoff]), so that a broken auth
// service is not hammered.
//
// The ServiceHolder's errors name the right principal. A downstream
// rejection of the service's token that is left after all of the above
// is returned as [ErrServiceRejected], and a failed login as
// [ErrServiceLogin]: codes.Unavailable statuses without a slidejwt reason,
// so that a handler that passes them on does not tell its own caller that
// the caller's session expired or was revoked.
//
// A ServiceHolder is safe for concurrent use by multiple goroutines.
type ServiceHolder struct {
	login   Login
	cfg     clientConfig // each session's holder's, before its refresh token and end
	svc     serviceConfig
	refresh bool // a token service to refresh with is configured

	cur atomic.Pointer[serviceSession]

	mu       sync.Mutex // guards the fields below
	flight   *loginFlight
	failures int       // failures in a row (see WithLoginBackoff)
	retryAt  time.Time // no login before then
	lastErr  error     // the last failure, returned while backing off
}

// serviceSession is one session of a ServiceHolder.
type serviceSession struct {
	h      *TokenHolder
	unary  grpc.UnaryClientInterceptor
	stream grpc.StreamClientInterceptor
	dead   atomic.Bool // a server rejected the session: log in again
	ok     atomic.Bool // a call succeeded with it
}

// NewServiceHolder returns a holder that logs in with login when it first
// needs a session. opts are [ClientOption]s of the TokenHolder of each
// session, and [WithLoginTimeout] and [WithLoginBackoff]. The login gives
// the refresh token and the session's end, so [WithRefreshToken] and
// [WithSessionEnd] fail with [ErrInvalidOption]. The refresh token is used
// only with [WithTokenService] or [WithRefresher]: never on the
// connection of [BindTarget], which is the service being called, not the
// token service. Without one, the holder logs in again instead of
// refreshing.
func NewServiceHolder(login Login, opts ...ClientOption) (*ServiceHolder, error) {
	if login == nil {
		return nil, fmt.Errorf("%w: nil login", ErrInvalidOption)
	}
	cfg := defaultClientConfig()
	svc := serviceConfig{loginTimeout: DefaultLoginTimeout, minBackoff: DefaultLoginBackoff, maxBackoff: DefaultMaxLoginBackoff}
	for _, o := range opts {
		if so, ok := o.(serviceOption); ok {
			so(&svc)
			continue
		}
		o.applyClient(&cfg)
	}
	if cfg.refreshToken != "" || !cfg.sessionEnd.IsZero() {
		return nil, fmt.Errorf("%w: a ServiceHolder takes its refresh token and session end from each login", ErrInvalidOption)
	}
	refresh := cfg.refresher != nil || cfg.tokenService != nil
	check := cfg
	if refresh {
		// Each login gives a refresh token; validate the rest as if one were given.
		check.refreshToken = "from-login"
	}
	if err := check.validate(); err != nil {
		return nil, err
	}
	if svc.loginTimeout <= 0 || svc.minBackoff <= 0 || svc.maxBackoff < svc.minBackoff {
		return nil, fmt.Errorf("%w: login timeout and backoff must be positive, the first backoff no longer than the most", ErrInvalidOption)
	}
	return &ServiceHolder{login: login, cfg: cfg, svc: svc, refresh: refresh}, nil
}

// SessionID returns the session id (sid) of the service's current
// session, or "" before the first login.
func (s *ServiceHolder) SessionID() string {
	if cur := s.cur.Load(); cur != nil {
		return cur.h.SessionID()
	}
	return ""
}

// session returns the session a call is to use, logging in first when
// there is none or the current one cannot go on. A failed login is an
// error only when the current session, if any, is no longer usable.
func (s *ServiceHolder) session(ctx context.Context) (*serviceSession, error) {
	cur := s.cur.Load()
	if cur != nil && !s.due(cur) {
		return cur, nil
	}
	next, err := s.loginFrom(ctx, cur)
	if err == nil {
		return next, nil
	}
	if cur != nil && !cur.dead.Load() && cur.h.Expiry().After(s.cfg.now()) {
		return cur, nil // a proactive login failed; the token is still good
	}
	return nil, err
}

// due reports whether cur cannot go on without a new login: a server
// rejected it, or its token expires within the refresh margin and its
// holder cannot refresh it.
func (s *ServiceHolder) due(cur *serviceSession) bool {
	if cur.dead.Load() {
		return true
	}
	held := cur.h.cur.Load()
	if cur.h.canRefresh() && cur.h.failedBefore(held) == nil {
		if end := held.knownEnd(); end.IsZero() || held.exp.Before(end) {
			return false // its holder refreshes it, before a call or when it is rejected
		}
	}
	rem := held.exp.Sub(s.cfg.now())
	return rem <= 0 || rem < s.cfg.refreshMargin
}

// loginFlight is one login in progress (see flight): the login
// function's panic is raised again, never swallowed.
type loginFlight = flight[*serviceSession]

// loginFrom logs in unless the session has moved on from seen meanwhile,
// or returns the last failure while backing off. Concurrent callers share
// one login; each waits until its own ctx ends.
func (s *ServiceHolder) loginFrom(ctx context.Context, seen *serviceSession) (*serviceSession, error) {
	s.mu.Lock()
	if cur := s.cur.Load(); cur != seen {
		s.mu.Unlock()
		return cur, nil
	}
	f, leader := s.flight, false
	if f == nil {
		if s.cfg.now().Before(s.retryAt) {
			err := s.lastErr
			s.mu.Unlock()
			return nil, err
		}
		f, leader = newFlight[*serviceSession](errLoginPanicked), true
		s.flight = f
		// The login is the service's own call: it keeps the values of the
		// caller's context (tracing, say) but not its outgoing metadata.
		go s.fly(metadata.NewOutgoingContext(context.WithoutCancel(ctx), nil), f)
	}
	s.mu.Unlock()
	return f.wait(ctx, leader)
}

var errLoginPanicked error = &loginError{msg: "the login function panicked"}

// fly runs flight f. A panic of the login function is raised again on the
// goroutine of the caller that started the flight if it still waits, or
// else here: it is never swallowed.
func (s *ServiceHolder) fly(ctx context.Context, f *loginFlight) {
	defer func() {
		p := recover()
		s.mu.Lock()
		s.flight = nil
		if f.err != nil {
			s.failLocked(f.err)
		} else {
			s.cur.Store(f.val)
		}
		s.mu.Unlock()
		f.land(p)
	}()
	ctx, cancel := context.WithTimeout(ctx, s.svc.loginTimeout)
	defer cancel()
	pair, err := s.login.Login(ctx)
	if err != nil {
		f.err = &loginError{msg: "the login function failed", cause: err}
		return
	}
	f.val, f.err = s.newSession(pair)
}

// failLocked records a failure: the next login waits for the backoff.
func (s *ServiceHolder) failLocked(err error) {
	s.failures++
	d := s.svc.minBackoff
	for i := 1; i < s.failures && d < s.svc.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.svc.maxBackoff)
	d += rand.N(d/4 + 1) // jitter, so that replicas do not log in in step
	s.retryAt = s.cfg.now().Add(d)
	s.lastErr = err
}

// newSession returns the session of the token pair a login gave.
func (s *ServiceHolder) newSession(pair *slidejwtv1.TokenPair) (*serviceSession, error) {
	if pair == nil {
		return nil, &loginError{msg: "the login returned no tokens"}
	}
	cfg := s.cfg
	if s.refresh {
		cfg.refreshToken = pair.GetRefreshToken()
	}
	if ts := pair.GetSessionEndsAt(); ts != nil {
		if !ts.IsValid() {
			return nil, &loginError{msg: "the login returned an invalid session end"}
		}
		cfg.sessionEnd = ts.AsTime()
	}
	h, err := newTokenHolder(pair.GetAccessToken(), cfg)
	if err != nil {
		return nil, &loginError{msg: "the login returned tokens the holder cannot use", cause: errors.Unwrap(err)}
	}
	if !h.Expiry().After(s.cfg.now()) {
		return nil, &loginError{msg: "the login returned an expired token"}
	}
	return &serviceSession{h: h, unary: h.UnaryClientInterceptor(), stream: h.StreamClientInterceptor()}, nil
}

// settle records the outcome err of a call made with sess, and reports
// whether it left the session dead.
func (s *ServiceHolder) settle(sess *serviceSession, err error) bool {
	if err == nil {
		if !sess.ok.Load() && sess.ok.CompareAndSwap(false, true) {
			s.mu.Lock()
			s.failures, s.retryAt = 0, time.Time{}
			s.mu.Unlock()
		}
		return false
	}
	switch r, _ := ReasonOf(err); r {
	case ReasonSessionRevoked, ReasonSessionExpired, ReasonTokenExpired, ReasonTokenInvalid, ReasonTokenMissing:
	default:
		return false
	}
	if sess.dead.CompareAndSwap(false, true) && !sess.ok.Load() {
		// Rejected before it ever worked: logging in again at once could
		// hammer the auth service with logins that will fail the same way.
		s.mu.Lock()
		s.failLocked(&rejectedError{err: err})
		s.mu.Unlock()
	}
	return true
}

// UnaryClientInterceptor attaches the service's token to unary calls,
// logging in first when needed, and makes a call rejected before its
// handler ran once more after a new login. See [ServiceHolder].
func (s *ServiceHolder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if isRefreshCall(ctx) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		sess, err := s.session(ctx)
		if err != nil {
			return err
		}
		err = sess.unary(ctx, method, req, reply, cc, invoker, opts...)
		if !s.settle(sess, err) || !handlerNotRun(err) {
			return principal(err)
		}
		next, lerr := s.session(ctx)
		if lerr != nil {
			return lerr
		}
		if next == sess {
			return principal(err)
		}
		err = next.unary(ctx, method, req, reply, cc, invoker, opts...)
		s.settle(next, err)
		return principal(err)
	}
}

// StreamClientInterceptor attaches the service's token to streams,
// logging in first when needed. A stream whose session a server rejects
// is not reopened; the next call logs in again. See [ServiceHolder].
func (s *ServiceHolder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if isRefreshCall(ctx) {
			return streamer(ctx, desc, cc, method, opts...)
		}
		sess, err := s.session(ctx)
		if err != nil {
			return nil, err
		}
		cs, err := sess.stream(ctx, desc, cc, method, streamer, opts...)
		if err != nil {
			s.settle(sess, err)
			return nil, principal(err)
		}
		return &serviceStream{ClientStream: cs, s: s, sess: sess}, nil
	}
}

// serviceStream records a stream's outcome for its session and keeps its
// rejections from naming the wrong principal.
type serviceStream struct {
	grpc.ClientStream
	s    *ServiceHolder
	sess *serviceSession
}

func (st *serviceStream) Header() (metadata.MD, error) {
	md, err := st.ClientStream.Header()
	if err != nil {
		st.s.settle(st.sess, err)
		return md, principal(err)
	}
	return md, nil
}

func (st *serviceStream) RecvMsg(m any) error {
	err := st.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		st.s.settle(st.sess, nil)
		return err
	}
	st.s.settle(st.sess, err)
	return principal(err)
}

// principal returns err, the outcome of a call made with the service's own
// token, as ErrServiceRejected when it carries a slidejwt reason: the
// reason is about the service's session, not about the caller of the
// handler that made the call.
func principal(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && hasSlidejwtInfo(st) {
		return &rejectedError{err: err}
	}
	return err
}

// rejectedError is an ErrServiceRejected: a codes.Unavailable status with
// a fixed message and no details.
type rejectedError struct{ err error }

func (e *rejectedError) Error() string { return ErrServiceRejected.Error() }

func (e *rejectedError) Is(target error) bool { return target == ErrServiceRejected }

func (e *rejectedError) Unwrap() error { return e.err }

func (e *rejectedError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}

// loginError is an ErrServiceLogin: a codes.Unavailable status whose
// message is a fixed phrase; the login function's own error, which may
// say more than a caller should learn, is only its cause.
type loginError struct {
	msg   string
	cause error
}

func (e *loginError) Error() string { return ErrServiceLogin.Error() + ": " + e.msg }

func (e *loginError) Is(target error) bool { return target == ErrServiceLogin }

func (e *loginError) Unwrap() error { return e.cause }

func (e *loginError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}
