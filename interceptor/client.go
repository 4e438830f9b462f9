package interceptor

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// TokenHolder holds a session's current access token on the client. Its
// interceptors attach the token to every call and swap in the renewed
// tokens that servers send back, so the application never makes a
// "refresh" call while it stays active.
//
// A renewed token is swapped in only if it decodes, names the same session
// (sid) and subject, and expires later than the held one, so a response
// that arrives late never downgrades the token. The holder does not verify
// signatures (it needs no keys); it trusts the server it called over a
// secure transport.
//
// A TokenHolder is safe for concurrent use by multiple goroutines.
type TokenHolder struct {
	cfg clientConfig
	cur atomic.Pointer[heldToken]
	mu  sync.Mutex // serializes swaps and their OnSwap and OnRefresh calls

	fmu    sync.Mutex // guards flight and failed
	flight *refreshFlight
	failed *refreshFailure
	guard  grpc.CallOption // transport-security check for the default refresh call
}

// heldToken is one immutable generation of the held tokens. It is also the
// call credentials of the calls that send it, so that a call knows exactly
// which generation it sent.
type heldToken struct {
	raw      string
	sid      string
	sub      string
	exp      time.Time
	md       map[string]string // request metadata, built once per token
	refresh  string            // the refresh token; "" without one
	insecure bool              // AllowInsecureTransport
	callOpt  grpc.CallOption   // grpc.PerRPCCredentials(this), built once
	end      time.Time         // the session's absolute end, once a refresh told it; else zero
}

// withCallOpt fills t.callOpt and returns t.
func (t *heldToken) withCallOpt() *heldToken {
	t.callOpt = grpc.PerRPCCredentials(t)
	return t
}

// GetRequestMetadata implements [credentials.PerRPCCredentials].
func (t *heldToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return t.md, nil
}

// RequireTransportSecurity implements [credentials.PerRPCCredentials].
func (t *heldToken) RequireTransportSecurity() bool { return !t.insecure }

// NewTokenHolder returns a holder for token, the access token from
// [Server.StartSession] or a login RPC. It fails with [ErrMalformedToken]
// if token does not decode as a session token.
func NewTokenHolder(token string, opts ...ClientOption) (*TokenHolder, error) {
	cfg := defaultClientConfig()
	for _, o := range opts {
		o.applyClient(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := &TokenHolder{cfg: cfg, guard: grpc.PerRPCCredentials(transportGuard{insecure: cfg.allowInsecure})}
	t, err := h.decode(token)
	if err != nil {
		return nil, err
	}
	t.refresh = cfg.refreshToken
	h.cur.Store(t)
	return h, nil
}

// Token returns the current access token.
func (h *TokenHolder) Token() string { return h.cur.Load().raw }

// Expiry returns the current access token's exp.
func (h *TokenHolder) Expiry() time.Time { return h.cur.Load().exp }

// SessionID returns the session id (sid) of the held token.
func (h *TokenHolder) SessionID() string { return h.cur.Load().sid }

var unverified = jwt.NewParser(jwt.WithStrictDecoding())

// decode reads the claims the holder needs, without verifying the
// signature.
func (h *TokenHolder) decode(raw string) (*heldToken, error) {
	if len(raw) > h.cfg.maxTokenSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformedToken, h.cfg.maxTokenSize)
	}
	var c Claims
	t, _, err := unverified.ParseUnverified(raw, &c)
	if err != nil {
		// Not %w of err: golang-jwt's messages can quote claim values.
		return nil, fmt.Errorf("%w: does not decode as a JWT", ErrMalformedToken)
	}
	typ, _ := t.Header["typ"].(string)
	if !isType(typ, accessTokenType) || c.SessionID == "" || c.Subject == "" || c.ExpiresAt == nil {
		return nil, fmt.Errorf("%w: not a session access token", ErrMalformedToken)
	}
	ht := &heldToken{
		raw:      raw,
		sid:      c.SessionID,
		sub:      c.Subject,
		exp:      c.ExpiresAt.Time,
		md:       map[string]string{"authorization": "Bearer " + raw},
		insecure: h.cfg.allowInsecure,
	}
	return ht.withCallOpt(), nil
}

// offer swaps raw in if it renews the held token, and reports whether it
// did.
func (h *TokenHolder) offer(raw string) bool {
	if raw == "" || raw == h.cur.Load().raw {
		return false
	}
	t, err := h.decode(raw)
	if err != nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.cur.Load()
	if t.sid != old.sid || t.sub != old.sub || !t.exp.After(old.exp) {
		return false
	}
	t.refresh, t.end = old.refresh, old.end
	h.cur.Store(t)
	if h.cfg.onSwap != nil {
		h.cfg.onSwap(t.raw, t.exp)
	}
	return true
}

// pick offers every renewed token found in md.
func (h *TokenHolder) pick(md metadata.MD) {
	for _, v := range md.Get(h.cfg.renewalHeader) {
		h.offer(v)
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
// grpc.WithPerRPCCredentials. It only attaches the token; renewals are
// picked up by the interceptors. The interceptors attach the token
// themselves: use one way or the other, not both, or every call carries
// two "authorization" values and is rejected.
func (h *TokenHolder) PerRPCCredentials() credentials.PerRPCCredentials { return h }

// UnaryClientInterceptor attaches the token to unary calls and swaps in a
// renewed token from the response header or trailer. It reads them with
// its own grpc.Header and grpc.Trailer call options, so the caller's own
// options still receive the metadata.
//
// With a refresh token ([WithRefreshToken]) it also refreshes: before a
// call when the token expires within the margin ([WithRefreshMargin]), and
// after a call that failed with TOKEN_EXPIRED, which it then retries once.
func (h *TokenHolder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if isRefreshCall(ctx) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		held := h.beforeCall(ctx, cc)
		err := h.invoke(ctx, held, method, req, reply, cc, invoker, opts)
		if !h.shouldRefresh(err) {
			return err
		}
		if rerr := h.refreshFrom(ctx, cc, held); rerr != nil {
			return rerr
		}
		return h.invoke(ctx, h.cur.Load(), method, req, reply, cc, invoker, opts)
	}
}

// invoke makes one attempt of a unary call with the tokens held.
func (h *TokenHolder) invoke(ctx context.Context, held *heldToken, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	// One allocation for both: each escapes through its call option.
	md := new(struct{ header, trailer metadata.MD })
	all := make([]grpc.CallOption, len(opts), len(opts)+3)
	copy(all, opts) // never append into the caller's slice
	all = append(all, held.callOpt, grpc.Header(&md.header), grpc.Trailer(&md.trailer))
	err := invoker(ctx, method, req, reply, cc, all...)
	h.pick(md.header)
	h.pick(md.trailer)
	return err
}

// StreamClientInterceptor attaches the token to streams and swaps in a
// renewed token from the response header (read once the first message has
// arrived, or when the caller asks for it) and the trailer (read once the
// stream has ended). It never blocks the caller.
//
// With a refresh token it refreshes before opening a stream when the token
// expires within the margin, and reopens a stream once when it fails with
// TOKEN_EXPIRED before any response arrived, replaying the messages sent
// so far (the server rejected them before its handler ran). A stream that
// has received a message or header is never replayed.
func (h *TokenHolder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if isRefreshCall(ctx) {
			return streamer(ctx, desc, cc, method, opts...)
		}
		held := h.beforeCall(ctx, cc)
		s := &clientStream{h: h, ctx: ctx, desc: desc, cc: cc, method: method, streamer: streamer, opts: opts, held: held}
		cs, err := s.open(held)
		if err != nil {
			if !h.shouldRefresh(err) {
				return nil, err
			}
			if rerr := h.refreshFrom(ctx, cc, held); rerr != nil {
				return nil, rerr
			}
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
// and can reopen the stream once after TOKEN_EXPIRED.
type clientStream struct {
	h        *TokenHolder
	ctx      context.Context
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	method   string
	streamer grpc.Streamer
	opts     []grpc.CallOption

	headerSeen bool // touched only by RecvMsg, which gRPC forbids calling concurrently

	mu        sync.Mutex // guards the fields below; held during a reopen
	cs        grpc.ClientStream
	held      *heldToken
	sent      []any // messages sent before the first response, for a reopen
	closed    bool  // CloseSend was called
	committed bool  // a response arrived, or too many messages were sent: no reopen
	retried   bool  // the one reopen was used
}

func (s *clientStream) open(held *heldToken) (grpc.ClientStream, error) {
	all := make([]grpc.CallOption, len(s.opts), len(s.opts)+1)
	copy(all, s.opts)
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
	if !s.committed && s.h.canRefresh() {
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
		s.h.pick(md)
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
			cs = s.current()
			err = cs.RecvMsg(m)
		} else if rerr != nil {
			s.h.pick(cs.Trailer())
			return rerr
		}
	}
	if err == nil {
		s.commit()
	}
	if !s.headerSeen {
		s.headerSeen = true
		if md, herr := cs.Header(); herr == nil {
			s.h.pick(md)
		}
	}
	// A stream with a single response (client streaming) is done after its
	// first successful RecvMsg; gRPC has read the trailer by then.
	if err != nil || !s.desc.ServerStreams {
		s.h.pick(cs.Trailer())
	}
	return err
}

// commit records that a response arrived: the stream is never replayed.
func (s *clientStream) commit() {
	s.mu.Lock()
	s.committed, s.sent = true, nil
	s.mu.Unlock()
}

// reopen refreshes and reopens the stream after err, once, if err is
// TOKEN_EXPIRED and no response has arrived. It replays the messages sent
// so far and the half-close. It holds s.mu throughout, so that concurrent
// senders wait for the new stream. It reports whether the stream was
// reopened, or else the refresh's error, if a refresh was tried and failed.
func (s *clientStream) reopen(err error) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.committed || s.retried || !s.h.shouldRefresh(err) {
		return false, nil
	}
	s.retried = true
	// Replay only what no handler can have consumed: a stream that ended
	// without a header (slidejwt's rejection is trailers-only), or whose
	// rejection says the handler did not run (an earlier server interceptor
	// may have sent a header). Header does not block on a failed stream.
	if md, _ := s.cs.Header(); md != nil && !handlerNotRun(err) {
		return false, nil
	}
	if rerr := s.h.refreshFrom(s.ctx, s.cc, s.held); rerr != nil {
		return false, rerr
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
