package interceptor

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// TokenHolder holds a session's current access token on the client. Its
// interceptors attach the token to every call and swap in the renewed
// tokens that servers send back, so the application never makes a
// "refresh" call while it stays active.
//
// Every server a holder sends its token to is trusted with the session:
// it can replay the token until it expires. The holder does not verify
// signatures (it needs no keys), so it also cannot tell a renewal minted
// by the session's issuer from one made up by the server it called. It
// limits what a renewal can do instead: a renewed token is swapped in
// only if it is a signed access token (typ at+jwt) whose iss, aud, sub,
// sid, auth_time, session_exp and cnf (the certificate a bound session is
// bound to, see [BindToPeerCertificate]) are identical to the held
// token's, and
// whose exp is later than the held one but not past the session's end
// (the earlier of [WithSessionEnd] or the end learnt from a refresh, and
// the token's own session_exp; with neither, auth_time +
// [DefaultMaxLifetime]). A
// response that arrives late never downgrades the token. If a server then
// rejects the swapped-in token as TOKEN_INVALID before its handler ran,
// the holder falls back once to the token it replaced. A holder used with
// more than one backend should be bound to one ([BindTarget]), or use one
// holder per backend.
//
// A TokenHolder is safe for concurrent use by multiple goroutines.
type TokenHolder struct {
	cfg clientConfig
	cur atomic.Pointer[heldToken]
	mu  sync.Mutex // serializes swaps and their OnSwap and OnRefresh calls

	fmu    sync.Mutex // guards flight and failed
	flight *refreshFlight
	failed *refreshFailure
	guard  grpc.CallOption // transport-security check for the holder's own refresh call
}

// heldToken is one immutable generation of the held tokens. It is also the
// call credentials of the calls that send it, so that a call knows exactly
// which generation it sent.
type heldToken struct {
	raw string
	sessionClaims
	md       map[string]string // request metadata, built once per token
	refresh  string            // the refresh token; "" without one
	insecure bool              // AllowInsecureTransport
	callOpt  grpc.CallOption   // grpc.PerRPCCredentials(this), built once
	end      time.Time         // the session's absolute end, when known; else zero

	// prev is the generation a renewal replaced, which the holder falls
	// back to (once) if a server rejects this one as TOKEN_INVALID. It is
	// nil for the login token, a refreshed token, a fallback and a renewal
	// of a fallback (never fall back twice to the same token). Its own
	// prev is nil, so that generations do not chain.
	prev *heldToken
	// refused is the token this generation fell back from; it is never
	// swapped in again.
	refused string
	// fellBack marks a generation the holder fell back to.
	fellBack bool
}

// withCallOpt fills t.callOpt and returns t.
func (t *heldToken) withCallOpt() *heldToken {
	t.callOpt = grpc.PerRPCCredentials(t)
	return t
}

// bound returns the latest exp a token of this session may have: the
// session's end when known (see knownEnd), or else auth_time +
// DefaultMaxLifetime.
func (t *heldToken) bound() time.Time {
	if end := t.knownEnd(); !end.IsZero() {
		return end
	}
	return t.authTime.Add(DefaultMaxLifetime)
}

// knownEnd returns the session's end as far as the holder knows it: the
// earlier of the end it was told or learnt from a refresh, and the
// token's own session_exp; the zero time when it knows neither.
func (t *heldToken) knownEnd() time.Time {
	switch {
	case t.end.IsZero():
		return t.sessionExp
	case t.sessionExp.IsZero() || t.end.Before(t.sessionExp):
		return t.end
	}
	return t.sessionExp
}

// GetRequestMetadata implements [credentials.PerRPCCredentials].
func (t *heldToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return t.md, nil
}

// RequireTransportSecurity implements [credentials.PerRPCCredentials].
func (t *heldToken) RequireTransportSecurity() bool { return !t.insecure }

// NewTokenHolder returns a holder for token, the access token from
// [Server.StartSession] or a login RPC. It fails with [ErrMalformedToken]
// if token does not decode as a session access token, and with
// [ErrInvalidOption] for options that cannot work together, among them a
// refresh token ([WithRefreshToken]) without a place to send it
// ([WithTokenService], [WithRefresher] or [BindTarget]).
func NewTokenHolder(token string, opts ...ClientOption) (*TokenHolder, error) {
	cfg := defaultClientConfig()
	for _, o := range opts {
		if _, ok := o.(serviceOption); ok {
			return nil, fmt.Errorf("%w: a ServiceHolder's option given to NewTokenHolder", ErrInvalidOption)
		}
		o.applyClient(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return newTokenHolder(token, cfg)
}

// newTokenHolder returns a holder for token under cfg, which is valid.
func newTokenHolder(token string, cfg clientConfig) (*TokenHolder, error) {
	c, err := decodeSession(token, accessTokenType, cfg.maxTokenSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformedToken, err.Error())
	}
	h := &TokenHolder{cfg: cfg, guard: grpc.PerRPCCredentials(transportGuard{insecure: cfg.allowInsecure})}
	t := h.newHeld(token, c)
	t.end = cfg.sessionEnd
	if t.exp.After(t.bound()) {
		return nil, fmt.Errorf("%w: the token expires after the session's end (WithSessionEnd, session_exp, or auth_time + DefaultMaxLifetime)", ErrInvalidOption)
	}
	if cfg.refreshToken != "" {
		rc, err := decodeSession(cfg.refreshToken, refreshTokenType, cfg.maxTokenSize)
		if err != nil {
			return nil, fmt.Errorf("%w: refresh token: %s", ErrMalformedToken, err.Error())
		}
		if !t.sameSession(&rc) || rc.exp.After(t.bound()) {
			return nil, fmt.Errorf("%w: the refresh token is not one of the access token's session", ErrInvalidOption)
		}
		t.refresh = cfg.refreshToken
	}
	h.cur.Store(t)
	return h, nil
}

// newHeld returns a generation for raw, which decoded as c, with its
// request metadata and call option built.
func (h *TokenHolder) newHeld(raw string, c sessionClaims) *heldToken {
	t := &heldToken{
		raw:           raw,
		sessionClaims: c,
		md:            map[string]string{"authorization": "Bearer " + raw},
		insecure:      h.cfg.allowInsecure,
	}
	return t.withCallOpt()
}

// Token returns the current access token.
func (h *TokenHolder) Token() string { return h.cur.Load().raw }

// Expiry returns the current access token's exp. It only moves forward,
// except when the holder falls back from a rejected renewal.
func (h *TokenHolder) Expiry() time.Time { return h.cur.Load().exp }

// SessionID returns the session id (sid) of the held token.
func (h *TokenHolder) SessionID() string { return h.cur.Load().sid }

// SessionEnd returns the session's absolute end, or the zero time while
// the holder does not know it (see [WithSessionEnd]): the earlier of the
// end it was told or learnt from a refresh, and the end the token itself
// carries (session_exp, see [WithMaxLifetime]).
func (h *TokenHolder) SessionEnd() time.Time { return h.cur.Load().knownEnd() }

// sessionClaims are the claims of a session token that the holder checks.
type sessionClaims struct {
	iss, sub, sid string
	aud           []string
	authTime      time.Time
	exp           time.Time
	sessionExp    time.Time // the session_exp claim; zero without one
	bound         bool      // the token has a cnf claim, whose thumbprint is cnf
	cnf           Thumbprint
}

// sameSession reports whether c names the same session as s: identical
// iss, aud, sub, sid, auth_time, session_exp and cnf (so that no renewal
// can move the session's own end, or bind it, unbind it or bind it to
// another certificate).
func (s *sessionClaims) sameSession(c *sessionClaims) bool {
	return c.sid == s.sid && c.sub == s.sub && c.iss == s.iss &&
		c.authTime.Equal(s.authTime) && c.sessionExp.Equal(s.sessionExp) &&
		c.bound == s.bound && c.cnf == s.cnf && slices.Equal(c.aud, s.aud)
}

// confirms reports whether s has the cnf claim of the verified claims c,
// or both have none.
func (s *sessionClaims) confirms(c *verifiedClaims) bool {
	t, ok := c.cnf()
	return s.bound == ok && s.cnf == t
}

// maxNumericDate is the latest date the holder decodes: 9999-12-31T23:59:59Z.
const maxNumericDate = 253402300799

// Errors of decodeSession. They are fixed phrases: a token, its claims or
// a golang-jwt message (which can quote claims) never reach an error.
var (
	errTokenTooLong  = errors.New("longer than the maximum token size")
	errNotCompactJWS = errors.New("not a compact JWS")
	errUnsigned      = errors.New("not signed")
	errWrongTokenTyp = errors.New("typ is not that of a session token of the expected kind")
	errNotDecodable  = errors.New("header or claims do not decode")
	errNoSession     = errors.New("sub, sid, exp, auth_time or session_exp missing or out of range")
	errBadCnf        = errors.New("cnf is not one x5t#S256 thumbprint")
)

// decodeSession reads the claims the holder checks from raw, a session
// token of type typ, without verifying its signature, with the server's
// decoders: readHeader, and Claims.unmarshal for the payload, which
// refuses what a server would.
func decodeSession(raw, typ string, maxSize int) (sessionClaims, error) {
	if len(raw) > maxSize {
		return sessionClaims{}, errTokenTooLong
	}
	if !isCompactJWS(raw) {
		return sessionClaims{}, errNotCompactJWS
	}
	hdr, rest, ok1 := strings.Cut(raw, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 || hdr == "" || payload == "" {
		return sessionClaims{}, errNotCompactJWS
	}
	if sig == "" {
		return sessionClaims{}, errUnsigned
	}
	// One copy of the token and one buffer for both decoded segments.
	src := []byte(raw)
	enc := base64.RawURLEncoding.Strict()
	buf := make([]byte, enc.DecodedLen(len(hdr))+enc.DecodedLen(len(payload)))
	hb, pb := buf[:enc.DecodedLen(len(hdr))], buf[enc.DecodedLen(len(hdr)):]
	n, err := enc.Decode(hb, src[:len(hdr)])
	if err != nil {
		return sessionClaims{}, errNotDecodable
	}
	h, err := readHeader(hb[:n])
	if err != nil {
		return sessionClaims{}, errNotDecodable
	}
	if h.alg == "" || strings.EqualFold(h.alg, "none") {
		return sessionClaims{}, errUnsigned
	}
	if !isType(h.typ, typ) {
		return sessionClaims{}, errWrongTokenTyp
	}
	// The payload goes through the server's own one-pass decoder, which
	// refuses what a server refuses (a member named twice at any depth, a
	// session claim's name in another case, a quoted date, a cnf that is
	// not one thumbprint), with the dates read exactly from their JSON
	// numbers.
	n, err = enc.Decode(pb, src[len(hdr)+1:len(hdr)+1+len(payload)])
	if err != nil {
		return sessionClaims{}, errNotDecodable
	}
	var (
		w     Claims
		dates [numDates][]byte
	)
	if err := w.unmarshal(pb[:n], &dates); err != nil {
		if errors.Is(err, errCnf) {
			return sessionClaims{}, errBadCnf
		}
		return sessionClaims{}, errNotDecodable
	}
	exp, okExp := exactDate(dates[dateExp])
	authTime, okAuth := exactDate(dates[dateAuthTime])
	if w.Subject == "" || w.SessionID == "" || !okExp || !okAuth {
		return sessionClaims{}, errNoSession
	}
	c := sessionClaims{
		iss: w.Issuer, sub: w.Subject, sid: w.SessionID, aud: w.Audience,
		authTime: numericDate(authTime),
		exp:      numericDate(exp),
	}
	if dates[dateSessionExp] != nil {
		sessionExp, ok := exactDate(dates[dateSessionExp])
		if !ok || sessionExp <= authTime {
			return sessionClaims{}, errNoSession
		}
		c.sessionExp = numericDate(sessionExp)
	}
	if w.Confirmation != nil {
		c.cnf, c.bound = w.Confirmation.X5tS256, true
	}
	return c, nil
}

// exactDate parses v, a date's JSON number, as encoding/json decodes a
// float64, and reports whether it is a date the holder accepts (see
// validDate); false for a nil v (the date is absent).
func exactDate(v []byte) (float64, bool) {
	if v == nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	return f, err == nil && validDate(f)
}

func validDate(f float64) bool { return f > 0 && f <= maxNumericDate }

// numericDate converts a NumericDate in seconds, possibly fractional, to a
// time.
func numericDate(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC()
}

// offer swaps raw in if it renews the held token, and reports whether it
// did.
func (h *TokenHolder) offer(raw string) bool { return h.swapIn(raw) != nil }

// swapIn swaps raw in if it renews the held token, and returns the new
// generation, or nil if it did not.
func (h *TokenHolder) swapIn(raw string) *heldToken {
	if cur := h.cur.Load(); raw == "" || raw == cur.raw || raw == cur.refused {
		return nil
	}
	c, err := decodeSession(raw, accessTokenType, h.cfg.maxTokenSize)
	if err != nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.cur.Load()
	if raw == old.raw || raw == old.refused || !old.sameSession(&c) ||
		!c.exp.After(old.exp) || c.exp.After(old.bound()) {
		return nil
	}
	t := h.newHeld(raw, c)
	t.refresh, t.end = old.refresh, old.end
	if !old.fellBack {
		prev := *old
		prev.prev, prev.refused = nil, ""
		t.prev = prev.withCallOpt()
	}
	h.cur.Store(t)
	if h.cfg.onSwap != nil {
		h.cfg.onSwap(t.raw, t.exp)
	}
	return t
}

// fallBack handles a TOKEN_INVALID rejection, before the handler ran, of
// a call that sent held. If held is a renewal with a generation to fall
// back to, the holder swaps that one back in (calling OnSwap) and refuses
// held from then on. It reports whether the call is worth one retry with
// the tokens held now: after a fallback, or when another caller has moved
// the holder on from held meanwhile; fell, whether this call fell back.
func (h *TokenHolder) fallBack(held *heldToken) (retry, fell bool) {
	if held.prev == nil {
		return false, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.cur.Load()
	if cur != held {
		return cur.raw != held.raw, false
	}
	back := *held.prev
	back.refresh, back.end = held.refresh, held.end
	back.refused, back.fellBack = held.raw, true
	h.cur.Store(back.withCallOpt())
	if h.cfg.onSwap != nil {
		h.cfg.onSwap(back.raw, back.exp)
	}
	return true, true
}

// pick offers every renewed token found in md, the response metadata of a
// call of method.
func (h *TokenHolder) pick(ctx context.Context, method string, md metadata.MD) {
	for _, v := range md[h.cfg.renewalHeader] { // a lower-case key (checkHeaderKey)
		if t := h.swapIn(v); t != nil && h.cfg.onEvent != nil {
			h.emit(ctx, Event{Kind: EventSwapped, Method: method, Expiry: t.exp})
		}
	}
}

// GetRequestMetadata implements [credentials.PerRPCCredentials]: it attaches
// "authorization: Bearer <token>".
func (h *TokenHolder) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	return h.cur.Load().GetRequestMetadata(ctx, uri...)
}

// RequireTransportSecurity implements [credentials.PerRPCCredentials]. It
// is true unless [AllowInsecureTransport] was given: a bearer token is a
// password for the session and must not cross a plaintext connection.
func (h *TokenHolder) RequireTransportSecurity() bool { return !h.cfg.allowInsecure }

var _ credentials.PerRPCCredentials = (*TokenHolder)(nil)

// PerRPCCredentials returns the holder as call credentials, for
// grpc.WithPerRPCCredentials. It only attaches the token: renewals,
// refreshes, fallbacks and the [BindTarget] check are the interceptors'.
// Give it only to a connection to a server trusted with the token. The
// interceptors attach the token themselves: use one way or the other, not
// both, or every call carries two "authorization" values and is rejected.
func (h *TokenHolder) PerRPCCredentials() credentials.PerRPCCredentials { return h }

// ErrUnboundTarget is the error, wrapped, of a call through a holder's
// interceptors on a connection whose target is not the one the holder is
// bound to ([BindTarget]). It is a codes.FailedPrecondition status: the
// call failed in the client, before any token left the process, and only
// a change of the program can cure it (neither a retry nor a new login).
var ErrUnboundTarget = errors.New("slidejwt: the token holder is bound to another target")

// checkNoAuthorization fails with ErrDuplicateAuthorization when the
// outgoing metadata of ctx already carries an authorization value.
func checkNoAuthorization(ctx context.Context) error {
	if len(metadata.ValueFromOutgoingContext(ctx, "authorization")) > 0 {
		return &conflictError{"the outgoing metadata already carries one"}
	}
	return nil
}

// conflictError is an ErrDuplicateAuthorization for one call; detail is a
// fixed phrase.
type conflictError struct{ detail string }

func (e *conflictError) Error() string { return ErrDuplicateAuthorization.Error() + ": " + e.detail }

func (e *conflictError) Unwrap() error { return ErrDuplicateAuthorization }

func (e *conflictError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// targetError is an ErrUnboundTarget for one call.
type targetError struct{ target string }

func (e *targetError) Error() string {
	return fmt.Sprintf("%v; no token sent to %q", ErrUnboundTarget, e.target)
}

func (e *targetError) Unwrap() error { return ErrUnboundTarget }

func (e *targetError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// checkTarget fails unless the holder is unbound or cc is a connection to
// its bound target, named as given to grpc.NewClient or in canonical form.
func (h *TokenHolder) checkTarget(cc *grpc.ClientConn) error { return checkTarget(h.cfg.target, cc) }

// checkTarget fails unless want is "" (unbound) or cc is a connection to
// want, named as given to grpc.NewClient or in canonical form.
func checkTarget(want string, cc *grpc.ClientConn) error {
	if want == "" {
		return nil
	}
	if cc == nil {
		return &targetError{}
	}
	if got := cc.Target(); got != want && cc.CanonicalTarget() != want {
		return &targetError{target: got}
	}
	return nil
}

// cure decides what to do about a call of method that failed with err
// after sending held: it reports whether one retry with the tokens held
// now is worth making, or else the error to return instead of err, if
// any. Only a rejection that says the handler did not run (ErrorInfo
// handler_ran "false") is ever cured: TOKEN_EXPIRED by a refresh,
// TOKEN_INVALID of a renewal by a fallback to the token it replaced.
func (h *TokenHolder) cure(ctx context.Context, cc *grpc.ClientConn, method string, held *heldToken, err error) (bool, error) {
	if err == nil || !handlerNotRun(err) {
		return false, nil
	}
	switch r, _ := ReasonOf(err); r {
	case ReasonTokenInvalid:
		retry, fell := h.fallBack(held)
		if fell && h.cfg.onEvent != nil {
			h.emit(ctx, Event{Kind: EventFellBack, Method: method, Reason: r, Expiry: held.prev.exp})
		}
		return retry, nil
	case ReasonTokenExpired:
		if !h.canRefresh() {
			return false, nil
		}
		if rerr := h.refreshFrom(ctx, cc, method, r, held); rerr != nil {
			return false, rerr
		}
		return true, nil
	}
	return false, nil
}

// mayRetry reports whether a call that sends held may be retried: with a
// refresh token, or with a generation to fall back to.
func (h *TokenHolder) mayRetry(held *heldToken) bool { return h.canRefresh() || held.prev != nil }

// UnaryClientInterceptor attaches the token to unary calls and swaps in a
// renewed token from the response trailer, where servers put a unary
// call's renewal (PROTOCOL.md §2). It reads the trailer with its own
// grpc.Trailer call option, so the caller's own options still receive the
// metadata.
//
// A call is retried at most once, and only after a rejection that says
// the handler did not run: after TOKEN_EXPIRED when the holder has a
// refresh token, which it refreshes first; after TOKEN_INVALID of a
// swapped-in renewal, which it falls back from. With a refresh token
// ([WithRefreshToken]) it also refreshes before a call when the token
// expires within the margin ([WithRefreshMargin]).
//
// A holder bound to a target ([BindTarget]) fails a call on a connection
// to any other target with [ErrUnboundTarget], before sending anything. A
// call whose outgoing metadata already carries an "authorization" value
// (copied from the incoming metadata by hand, or set by a [Forwarder]
// chained before the holder's interceptors) fails with
// [ErrDuplicateAuthorization], before sending anything: a call has one
// principal, and the holder does not guess which.
func (h *TokenHolder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if isRefreshCall(ctx) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		if err := h.checkTarget(cc); err != nil {
			return err
		}
		if err := checkNoAuthorization(ctx); err != nil {
			return err
		}
		held := h.beforeCall(ctx, cc, method)
		err := h.invoke(ctx, held, method, req, reply, cc, invoker, opts)
		retry, cerr := h.cure(ctx, cc, method, held, err)
		if cerr != nil {
			return cerr
		}
		if !retry {
			return err
		}
		h.emitRejection(ctx, EventRetried, method, err)
		return h.invoke(ctx, h.cur.Load(), method, req, reply, cc, invoker, opts)
	}
}

// invoke makes one attempt of a unary call with the tokens held.
//
// It asks only for the trailer, where a server puts a unary call's
// renewal (PROTOCOL.md §2): the header would cost gRPC a copy of it on
// every call, for nothing.
func (h *TokenHolder) invoke(ctx context.Context, held *heldToken, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	a := new(unaryAttempt) // the trailer escapes through its option
	all := a.opts[:0]
	if len(opts)+2 > len(a.opts) {
		all = make([]grpc.CallOption, 0, len(opts)+2)
	}
	all = append(all, opts...) // never append into the caller's slice
	all = append(all, held.callOpt, grpc.Trailer(&a.trailer))
	err := invoker(ctx, method, req, reply, cc, all...)
	h.pick(ctx, method, a.trailer)
	return err
}

// unaryAttempt is the state of one unary attempt: its trailer, and room
// for its call options, so that one allocation holds both for the usual
// call (generated stubs pass one option, grpc.StaticMethod).
type unaryAttempt struct {
	trailer metadata.MD
	opts    [4]grpc.CallOption
}

// StreamClientInterceptor attaches the token to streams and swaps in a
// renewed token from the response header (read once the first message has
// arrived, or when the caller asks for it) and the trailer (read once the
// stream has ended). It never blocks the caller.
//
// It refreshes before opening a stream as the unary interceptor does before
// a call, and reopens a stream at most once, on the same rejections as the
// unary interceptor retries on, and only before any response message
// arrived. It then replays the messages sent so far: the rejection says
// that no handler consumed them. A stream that has received a message or
// header is never replayed. [BindTarget] and [ErrDuplicateAuthorization]
// apply as for unary calls.
func (h *TokenHolder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if isRefreshCall(ctx) {
			return streamer(ctx, desc, cc, method, opts...)
		}
		if err := h.checkTarget(cc); err != nil {
			return nil, err
		}
		if err := checkNoAuthorization(ctx); err != nil {
			return nil, err
		}
		held := h.beforeCall(ctx, cc, method)
		s := &clientStream{h: h, ctx: ctx, desc: desc, cc: cc, method: method, streamer: streamer, opts: opts, held: held}
		cs, err := s.open(held)
		if err != nil {
			retry, cerr := h.cure(ctx, cc, method, held, err)
			if cerr != nil {
				return nil, cerr
			}
			if !retry {
				return nil, err
			}
			h.emitRejection(ctx, EventStreamReopened, method, err)
			s.held = h.cur.Load()
			if cs, err = s.open(s.held); err != nil {
				return nil, err
			}
			s.retried = true
		}
		s.cs = cs
		return s, nil
	}
}

// maxReplay bounds the messages a stream keeps for a reopen; a stream that
// sends more before its first response is not reopened.
const maxReplay = 64

// clientStream watches a stream's header and trailer for renewed tokens,
// and can reopen the stream once after a rejection before its handler ran.
type clientStream struct {
	h        *TokenHolder
	ctx      context.Context
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	method   string
	streamer grpc.Streamer
	opts     []grpc.CallOption
	optBuf   [4]grpc.CallOption // room for the first open's options (see open)

	headerSeen bool // touched only by RecvMsg, which gRPC forbids calling concurrently

	mu        sync.Mutex // guards the fields below; held during a reopen
	cs        grpc.ClientStream
	held      *heldToken
	sent      []any // messages sent before the first response, for a reopen
	closed    bool  // CloseSend was called
	committed bool  // a response arrived, or too many messages were sent: no reopen
	retried   bool  // the one reopen was used, or considered
}

func (s *clientStream) open(held *heldToken) (grpc.ClientStream, error) {
	// Until a stream has opened, the room in s is free (a failed open is
	// finished with it); gRPC keeps an open stream's options until the
	// stream finishes, so a reopen after that gets options of its own.
	var all []grpc.CallOption
	if s.cs == nil && len(s.opts)+1 <= len(s.optBuf) {
		all = s.optBuf[:0]
	} else {
		all = make([]grpc.CallOption, 0, len(s.opts)+1)
	}
	all = append(all, s.opts...) // never append into the caller's slice
	all = append(all, held.callOpt)
	return s.streamer(s.ctx, s.desc, s.cc, s.method, all...)
}

func (s *clientStream) current() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cs
}

// Context returns the current stream's context.
func (s *clientStream) Context() context.Context { return s.current().Context() }

// Trailer returns the current stream's trailer.
func (s *clientStream) Trailer() metadata.MD { return s.current().Trailer() }

// SendMsg sends m, keeping it for a reopen until the first response.
func (s *clientStream) SendMsg(m any) error {
	s.mu.Lock()
	if !s.committed && !s.retried && s.h.mayRetry(s.held) {
		if len(s.sent) < maxReplay {
			s.sent = append(s.sent, m)
		} else {
			s.committed, s.sent = true, nil
		}
	}
	cs := s.cs
	s.mu.Unlock()
	return cs.SendMsg(m)
}

// CloseSend half-closes the stream, and remembers it for a reopen.
func (s *clientStream) CloseSend() error {
	s.mu.Lock()
	s.closed = true
	cs := s.cs
	s.mu.Unlock()
	return cs.CloseSend()
}

// Header waits for the header, as the embedded stream does, and picks a
// renewed token from it.
func (s *clientStream) Header() (metadata.MD, error) {
	md, err := s.current().Header()
	// grpc-go reports a failed stream from RecvMsg, not from Header: a nil
	// header with a nil error is a stream that ended without one (a
	// trailers-only rejection, say). No response yet, so RecvMsg may still
	// reopen it.
	if err == nil && md != nil {
		s.commit()
		s.h.pick(s.ctx, s.method, md)
	}
	return md, err
}

// RecvMsg picks the header after the first message, and the trailer once
// the stream is done. Neither call blocks: the header has arrived with the
// first message, and the trailer with the end of the stream.
func (s *clientStream) RecvMsg(m any) error {
	cs := s.current()
	err := cs.RecvMsg(m)
	if err != nil {
		if reopened, rerr := s.reopen(err); reopened {
			s.h.emitRejection(s.ctx, EventStreamReopened, s.method, err)
			cs = s.current()
			err = cs.RecvMsg(m)
		} else if rerr != nil {
			s.h.pick(s.ctx, s.method, cs.Trailer())
			return rerr
		}
	}
	if err == nil {
		s.commit()
	}
	if !s.headerSeen {
		s.headerSeen = true
		if md, herr := cs.Header(); herr == nil {
			s.h.pick(s.ctx, s.method, md)
		}
	}
	// A stream with a single response (client streaming) is done after its
	// first successful RecvMsg; gRPC has read the trailer by then.
	if err != nil || !s.desc.ServerStreams {
		s.h.pick(s.ctx, s.method, cs.Trailer())
	}
	return err
}

// commit records that a response arrived: the stream is never replayed.
func (s *clientStream) commit() {
	s.mu.Lock()
	s.committed, s.sent = true, nil
	s.mu.Unlock()
}

// reopen reopens the stream after err, once, if no response has arrived
// and [TokenHolder.cure] finds err worth a retry: only a rejection that
// says the handler did not run (a missing header alone proves nothing; an
// earlier server interceptor or a proxy may have consumed messages). It
// replays the messages sent so far and the half-close. It holds s.mu
// throughout, so that concurrent senders wait for the new stream. It
// reports whether the stream was reopened, or else the error of a failed
// refresh, if one was tried.
func (s *clientStream) reopen(err error) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed || s.retried || !handlerNotRun(err) {
		return false, nil
	}
	s.retried = true
	retry, cerr := s.h.cure(s.ctx, s.cc, s.method, s.held, err)
	if !retry {
		return false, cerr
	}
	held := s.h.cur.Load()
	cs, oerr := s.open(held)
	if oerr != nil {
		return false, oerr
	}
	for _, m := range s.sent {
		if cs.SendMsg(m) != nil {
			break // the new stream failed too; RecvMsg reports why
		}
	}
	if s.closed {
		_ = cs.CloseSend()
	}
	// The one reopen is spent: nothing more to keep for a replay.
	s.cs, s.held, s.sent, s.committed = cs, held, nil, true
	return true, nil
}
