package interceptor

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Server verifies and renews session tokens. Its interceptors authenticate
// every call, put the claims into the handler's context and send a renewed
// token in response metadata when the [Policy] says so. Its
// [Server.StartSession] mints the first token of a session.
//
// Every replica configured with the same keys, issuer, audience and policy
// verifies and renews the same sessions without shared state; refresh and
// revocation need a shared [store.SessionStore] (or [store.RevocationList]).
//
// A Server is safe for concurrent use.
type Server struct {
	cfg serverConfig
	ver atomic.Pointer[verifier]
	// signHook, if set, is called before every signature (tests count
	// signatures with it).
	signHook func()
	// watch checks the open streams (see guardStream).
	watch streamWatch
	// handlers runs guarded stream handlers on reused goroutines.
	handlers handlerWorkers
}

// NewServer returns a Server that trusts keys. It fails on an invalid
// option or [Policy].
//
// A key set that cannot sign ([NewVerifyKeySet], [RemoteKeySet.KeySet])
// makes a verify-only server, for a service in a mesh where one service
// signs: it verifies every call as a signing server does but never mints a
// token. [Server.StartSession] fails with [ErrVerifyOnly],
// [Server.Refresh] with codes.FailedPrecondition, and no call is renewed
// (its event is [EventAuthenticated]) unless [WithDelegatedRenewal] names
// the signing service to ask for renewals.
func NewServer(keys *KeySet, opts ...ServerOption) (*Server, error) {
	if err := checkKeySet(keys); err != nil {
		return nil, err
	}
	cfg := defaultServerConfig()
	for _, o := range opts {
		o.applyServer(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	s.ver.Store(newVerifier(keys, &s.cfg))
	return s, nil
}

// RotateKeys replaces the trusted key set. Calls in flight finish with the
// old set; later calls verify with, and renew under, the new one. The new
// set may be one that cannot sign (see [NewServer]).
func (s *Server) RotateKeys(keys *KeySet) error {
	if err := checkKeySet(keys); err != nil {
		return err
	}
	s.ver.Store(newVerifier(keys, &s.cfg))
	return nil
}

// Policy returns the effective policy, with defaults filled in.
func (s *Server) Policy() Policy { return s.cfg.policy }

// Session describes a session's current access token.
type Session struct {
	// AccessToken is the compact JWT to send as "authorization: Bearer ...".
	AccessToken string
	// SessionID is the sid claim, stable for the session's life.
	SessionID string
	// Expiry is the access token's exp.
	Expiry time.Time
	// AuthTime is the login time (auth_time).
	AuthTime time.Time
	// End is the session's absolute end: AuthTime + MaxLifetime.
	End time.Time
	// RefreshToken is the session's current refresh token, for
	// TokenService.Refresh; empty unless the server has a session store.
	RefreshToken string
	// RefreshExpiry is the refresh token's exp.
	RefreshExpiry time.Time
}

// StartSession mints the first access token of a new session for subject,
// to be called by the application's login handler once it has checked the
// user's credentials. The token carries a new random sid, auth_time = now,
// the freshness marker (see [RequireFresh]), and the custom claims, which
// every renewal copies unchanged. A custom claim must not use a name of the
// session model ([ErrReservedClaim]) and must marshal to JSON. Options
// shape the session: [WithMaxLifetime] gives it an end of its own,
// [BindToPeerCertificate] (or [BindToCertificate]) binds it to the login
// call's TLS client certificate.
func (s *Server) StartSession(ctx context.Context, subject string, custom map[string]any, opts ...SessionOption) (Session, error) {
	if subject == "" {
		return Session{}, fmt.Errorf("%w: empty subject", ErrInvalidOption)
	}
	var raw map[string]json.RawMessage
	for name, v := range custom {
		if isReservedClaim(name) {
			return Session{}, fmt.Errorf("%w: %q", ErrReservedClaim, name)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return Session{}, fmt.Errorf("slidejwt: custom claim %q: %w", name, err)
		}
		if raw == nil {
			raw = make(map[string]json.RawMessage, len(custom))
		}
		raw[name] = b
	}
	var sc sessionConfig
	for _, o := range opts {
		o.applySession(&sc)
	}
	now := s.cfg.now().Truncate(jwt.TimePrecision)
	end, err := sc.sessionEnd(s.cfg.policy, now)
	if err != nil {
		return Session{}, err
	}
	cnf, err := sc.sessionBinding(ctx)
	if err != nil {
		return Session{}, err
	}
	v := s.ver.Load() // one key set for the whole session start
	if v.keys.active == nil {
		return Session{}, fmt.Errorf("%w: this server only verifies; sessions start at the service that signs", ErrVerifyOnly)
	}
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:   s.cfg.issuer,
			Subject:  subject,
			Audience: s.cfg.audience,
		},
		SessionID:     randomID(),
		AuthTime:      jwt.NewNumericDate(now),
		SessionExpiry: end,
		Confirmation:  cnf,
		Custom:        raw,
	}
	sess, refreshID, err := s.mint(v, c, now, true)
	if err != nil {
		return Session{}, err
	}
	if s.cfg.store != nil {
		start := s.startTimer()
		err := s.cfg.store.Create(ctx, sess.SessionID, refreshDigest(refreshID), now, claimsPolicy(s.cfg.policy, c).KeepUntil(now))
		s.emitStore(ctx, StoreCreate, sess.SessionID, start, 0, err)
		if err != nil {
			return Session{}, fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
		}
	}
	s.emit(ctx, Event{Kind: EventSessionStarted, Subject: subject, SessionID: sess.SessionID, Expiry: sess.Expiry})
	return sess, nil
}

// mint signs, with v's active key, a session's access token at now, and
// its refresh token when a session store is configured, from the session
// claims in base (iss, aud, sub, sid, auth_time, session_exp, cnf,
// custom). It returns the refresh token's id.
func (s *Server) mint(v *verifier, base *Claims, now time.Time, fresh bool) (Session, string, error) {
	p := claimsPolicy(s.cfg.policy, base)
	authTime := base.AuthTime.Time

	access := *base
	access.IssuedAt = jwt.NewNumericDate(now)
	access.ExpiresAt = jwt.NewNumericDate(p.AccessExpiry(now, authTime))
	access.ID = randomID()
	access.Fresh = fresh
	tok, err := s.sign(v, &access, accessTokenType)
	if err != nil {
		return Session{}, "", err
	}
	sess := Session{
		AccessToken: tok,
		SessionID:   base.SessionID,
		Expiry:      access.ExpiresAt.Time,
		AuthTime:    authTime,
		End:         p.SessionEnd(authTime),
	}
	if s.cfg.store == nil {
		return sess, "", nil
	}
	refresh := *base
	refresh.IssuedAt = jwt.NewNumericDate(now)
	refresh.ExpiresAt = jwt.NewNumericDate(p.RefreshExpiry(now, authTime))
	refresh.ID = randomID()
	refresh.Fresh = false
	if sess.RefreshToken, err = s.sign(v, &refresh, refreshTokenType); err != nil {
		return Session{}, "", err
	}
	sess.RefreshExpiry = refresh.ExpiresAt.Time
	return sess, refresh.ID, nil
}

// sign mints c under v's active key with the JOSE header typ and the key's
// kid, and enforces the token size bound. The key set is the caller's:
// a renewal is signed by the set that verified the request, even while
// RotateKeys replaces it.
func (s *Server) sign(v *verifier, c *Claims, typ string) (string, error) {
	if s.signHook != nil {
		s.signHook()
	}
	k := v.keys.active
	if k == nil {
		return "", ErrVerifyOnly
	}
	tok, err := signCompact(k, c, typ)
	if err != nil {
		return "", fmt.Errorf("slidejwt: sign token: %w", err)
	}
	if len(tok) > s.cfg.maxTokenSize {
		return "", fmt.Errorf("%w: %d bytes, limit %d", ErrTokenTooLarge, len(tok), s.cfg.maxTokenSize)
	}
	return tok, nil
}

// randomID returns 128 random bits, base64url-encoded.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// authenticate is the one place where a call is authenticated and its
// renewal decided; the interceptors and AuthFunc only adapt it. It returns
// the handler's context (carrying the claims), the verified claims, and
// the renewal to send, or nil when none is due. Its error is a gRPC status
// error and the handler must not run.
//
// One key set serves the whole call: the renewal is signed by the set that
// verified the token, even while [Server.RotateKeys] replaces it.
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, *verifiedClaims, *renewal, error) {
	now := s.cfg.now() // one reading of the clock for the whole decision
	// The Duration of the call's event, on the monotonic clock: the
	// reading just made when it is time.Now's, none without a hook.
	start := now
	if s.cfg.clockSet {
		start = s.startTimer()
	}
	v := s.ver.Load()
	if v.remote != nil {
		v = s.syncRemote(v)
	}
	c, key, cache, err := s.check(ctx, v, now)
	if err != nil {
		ev := Event{Kind: EventRejected, Method: method, Err: err, Cache: cache}
		if ae, ok := err.(*authError); ok {
			ev.Reason = ae.reason
			ae.beforeHandler = true
		}
		if c != nil {
			ev.Subject, ev.SessionID = c.sub(), c.sid()
		}
		s.emitTimed(ctx, ev, start)
		return ctx, nil, nil, err
	}
	ctx = context.WithValue(ctx, claimsKey{}, c)
	ev := Event{Kind: EventAuthenticated, Method: method, Subject: c.sub(), SessionID: c.sid(), Expiry: c.exp(), Cache: cache}
	var r *renewal
	switch {
	case method == revokeMethod: // a logout gets no renewal of the session it ends
	case v.keys.active == nil:
		r = s.delegate(ctx, v, c, key, now) // nil without WithDelegatedRenewal
	default:
		r = s.renew(v, c, now)
	}
	if method == renewMethod {
		ctx = context.WithValue(ctx, renewalKey{}, r) // TokenService.Renew answers it
	}
	switch {
	case r == nil:
	case r.call != nil:
		// Asked of the renewal service, which has not answered yet: the
		// call's event waits for the answer (see delegatedCall.await).
		r.call.hold(ev, start)
		return ctx, c, r, nil
	case r.err != nil:
		// The presented token is still good; the call goes on and the
		// client keeps its token. Report the failure.
		ev.Kind, ev.Err = EventRenewalFailed, r.err
		r = nil
	default:
		ev.Kind, ev.Expiry = EventRenewed, r.exp
		// For a Forwarder: the call's own renewal is the token to forward,
		// and it wins over a downstream one.
		ctx = context.WithValue(ctx, renewedKey{}, r)
	}
	s.emitTimed(ctx, ev, start)
	return ctx, c, r, nil
}

// check extracts and verifies the bearer token with v and applies the
// session rules. It returns the claims, the token's cache key and whether
// the cache held it. On rejection it may return the verified claims (for
// events).
func (s *Server) check(ctx context.Context, v *verifier, now time.Time) (*verifiedClaims, tokenKey, CacheResult, error) {
	// One metadata lookup: auth.AuthFromMD reads only the first value, so
	// it can neither see a second one nor save the copy made to count them.
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch {
	case len(vals) == 0:
		return nil, tokenKey{}, CacheNone, reject(ReasonTokenMissing, "")
	case len(vals) > 1:
		return nil, tokenKey{}, CacheNone, reject(ReasonTokenInvalid, "more than one authorization value")
	}
	scheme, raw, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "bearer") || raw == "" {
		return nil, tokenKey{}, CacheNone, reject(ReasonTokenMissing, "authorization is not a bearer token")
	}
	if len(raw) > s.cfg.maxTokenSize {
		return nil, tokenKey{}, CacheNone, reject(ReasonTokenInvalid, "token too long")
	}
	c, key, cache, aerr := v.verifyCached(raw, now)
	if aerr != nil && aerr.keysDown {
		return nil, key, cache, errKeysUnavailableStatus
	}
	// A certificate-bound token is checked against this call's TLS client
	// certificate on every call, cache hits included, and before anything
	// else about its session: its presenter may not be its holder.
	if c != nil && c.bound {
		t, _ := c.cnf()
		if err := checkBinding(ctx, t); err != nil {
			return c, key, cache, err
		}
	}
	if c != nil && s.policyFor(c).SessionEnded(now, c.authTime()) {
		return c, key, cache, reject(ReasonSessionExpired, "")
	}
	// c is nil only when the token is invalid; an expired token's verified
	// claims are checked against the revocation list too, so that a client
	// is told SESSION_REVOKED rather than invited to refresh.
	if c != nil {
		if err := s.checkLive(ctx, c.sid(), now); err != nil {
			return c, key, cache, err
		}
	}
	if aerr != nil {
		return c, key, cache, aerr
	}
	return c, key, cache, nil
}

// checkLive asks the revocation list, if any, whether session sid may
// still be used at now: nil, a SESSION_REVOKED rejection, or
// codes.Unavailable when the list cannot answer (the server fails closed).
func (s *Server) checkLive(ctx context.Context, sid string, now time.Time) error {
	if s.cfg.revocations == nil {
		return nil
	}
	start := s.startTimer()
	revoked, err := s.cfg.revocations.IsRevoked(ctx, sid, now)
	s.emitStore(ctx, StoreIsRevoked, sid, start, 0, err)
	switch {
	case err != nil:
		return errRevocationUnavailable
	case revoked:
		return reject(ReasonSessionRevoked, "")
	}
	return nil
}

var errRevocationUnavailable = status.Error(codes.Unavailable, "slidejwt: revocation list unavailable")

// errKeysUnavailableStatus answers a call whose token cannot be checked
// because a remote key set has no usable keys (see [RemoteKeySet]).
var errKeysUnavailableStatus = status.Error(codes.Unavailable, "slidejwt: signing keys unavailable")

// syncRemote returns v, or, if v's remote key set dropped or replaced a
// key since v was made, a verifier with empty caches that replaces it: no
// token verified with a withdrawn key is served from a cache, as after
// RotateKeys. A RotateKeys in between wins.
func (s *Server) syncRemote(v *verifier) *verifier {
	if v.remote.gen() == v.gen {
		return v
	}
	nv := newVerifier(v.keys, &s.cfg)
	if s.ver.CompareAndSwap(v, nv) {
		return nv
	}
	return s.ver.Load()
}

// renew mints, under v, the renewed token for the verified claims c of the
// presented token when the policy says one is due; it returns nil
// otherwise.
// Everything but exp, iat, jti and the freshness marker is copied from c,
// session_exp and cnf included.
//
// Requests presenting the same token while its renewal is due share one
// renewed token: one signature per token per renewal, not one per request.
// They are matched on the token as presented (its digest), never on a
// claim such as jti: two tokens sharing a jti (from another issuer that the
// key set trusts) must not share a renewal.
func (s *Server) renew(v *verifier, c *verifiedClaims, now time.Time) *renewal {
	if v.keys.active == nil {
		return nil // a verify-only server renews nothing
	}
	p := s.policyFor(c)
	d := p.Decide(now, c.exp(), c.authTime())
	if !d.Renew {
		return nil
	}
	mint := func(r *renewal) {
		next := c.claims()
		next.ExpiresAt = jwt.NewNumericDate(d.Expiry)
		next.IssuedAt = jwt.NewNumericDate(now)
		next.ID = randomID()
		next.Fresh = false
		r.exp = d.Expiry
		if r.tok, r.err = s.sign(v, next, accessTokenType); r.err == nil {
			r.md = metadata.Pairs(s.cfg.renewalHeader, r.tok)
		}
	}
	if v.verified == nil {
		r := new(renewal)
		mint(r)
		return r
	}
	// The renewal lives on the verified claims that the cache shares among
	// the requests presenting the token (racing first presentations
	// included: see verifyCached), so it is shared and dies with them. It
	// is reused until the presented token is no longer accepted, or until
	// the renewal itself expires if that comes first (a TTL shorter than
	// the leeway), so a renewal handed out is never already expired.
	// Whoever runs the Once mints at a time no earlier than the renewal's
	// creation, so the token's exp is no earlier than d.Expiry.
	until := p.AcceptExpiryUntil(c.exp())
	if d.Expiry.Before(until) {
		until = d.Expiry
	}
	for {
		old := c.renewal.Load()
		if old != nil && now.Before(old.until) {
			old.once.Do(func() { mint(old) })
			return old
		}
		r := &renewal{until: until}
		if c.renewal.CompareAndSwap(old, r) {
			r.once.Do(func() { mint(r) })
			return r
		}
	}
}

// renewal is the one renewed token minted for a presented token, with the
// response metadata that carries it, built once. gRPC only reads that
// metadata (SetHeader and SetTrailer copy it), so requests share it.
type renewal struct {
	once  sync.Once
	tok   string
	exp   time.Time
	md    metadata.MD
	err   error
	until time.Time // the renewal is handed out before until only
	// call, if set, is one call's wait for a delegated renewal that is
	// still in flight; the other fields are unset (see delegate.go).
	call *delegatedCall
}

// token returns the renewed token, or "" for a nil renewal.
func (r *renewal) token() string {
	if r == nil {
		return ""
	}
	return r.tok
}

func (s *Server) exempt(method string) bool {
	return method == refreshMethod || s.cfg.exempt[method]
}

// UnaryServerInterceptor authenticates unary calls. A renewed token goes
// into the response trailer, also when the handler returns an error. A
// slidejwt rejection of the caller's token that the handler returns
// (relayed by a [Forwarder], say) is marked as having run the handler (see
// [MetadataHandlerRan]), so that no client retries it; one about another
// token becomes codes.Unavailable without a reason (PROTOCOL.md §3).
func (s *Server) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if s.exempt(info.FullMethod) {
			return handler(ctx, req)
		}
		ctx, _, r, err := s.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if r != nil && r.call == nil {
			// Set before the handler runs; handler trailers are joined to it.
			_ = grpc.SetTrailer(ctx, r.md)
		}
		resp, err := handler(ctx, req)
		if r != nil && r.call != nil {
			// Asked of the renewal service while the handler ran.
			if got, _ := r.call.await(ctx); got != nil {
				_ = grpc.SetTrailer(ctx, got.md)
			}
		}
		return resp, markHandlerRan(err)
	}
}

// StreamServerInterceptor authenticates streaming calls. A renewed token is
// set in the response header before the handler runs, so it arrives with
// the first message, and in the trailer; if an earlier interceptor already
// sent the header, in the trailer only.
//
// An open stream lives as long as its session, not as long as the access
// token that opened it: it ends with SESSION_EXPIRED at the session's end
// plus the leeway, and with SESSION_REVOKED at its next message in either
// direction after a revocation, or within [WithStreamCheckInterval] if it
// is silent. See [Server.guardStream].
func (s *Server) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if s.exempt(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx, c, r, err := s.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		if r != nil && r.call != nil {
			// Asked of the renewal service while the handler runs: the
			// header waits for it, the trailer carries it.
			ds := r.call.stream(ctx, ss)
			err := s.guardStream(ctx, c, srv, ds, info, handler)
			ds.finish()
			return markHandlerRan(err)
		}
		if r != nil {
			// The header may be gone already (an earlier interceptor sent
			// it): the trailer still carries the renewal.
			_ = ss.SetHeader(r.md)
			ss.SetTrailer(r.md)
		}
		return markHandlerRan(s.guardStream(ctx, c, srv, ss, info, handler))
	}
}

// AuthFunc returns the same check as an [auth.AuthFunc], for servers that
// already chain go-grpc-middleware's auth interceptors. A renewed token is
// set in both the header and the trailer, since an AuthFunc cannot tell a
// unary call from a stream. Exempt methods pass through.
//
// An AuthFunc sees a call only before its handler runs, so two promises of
// the interceptors do not hold through it: an open stream does not end
// with its session, and a slidejwt rejection that a handler relays is
// neither marked as having run the handler nor, when it is about another
// token than the caller's, turned into codes.Unavailable. On a server with
// [WithDelegatedRenewal], it waits for a renewal asked of the renewal
// service before the handler runs (the interceptors wait after it, or
// while it runs). Prefer the interceptors wherever they fit;
// go-grpc-middleware's selector composes with them just as well.
func (s *Server) AuthFunc() auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		method, _ := grpc.Method(ctx)
		if s.exempt(method) {
			return ctx, nil
		}
		ctx, _, r, err := s.authenticate(ctx, method)
		if err != nil {
			return nil, err
		}
		if r != nil && r.call != nil {
			r, _ = r.call.await(ctx) // before the handler: an AuthFunc cannot wait after it
		}
		if r != nil {
			_ = grpc.SetHeader(ctx, r.md)
			_ = grpc.SetTrailer(ctx, r.md)
		}
		return ctx, nil
	}
}
