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
	mu  sync.Mutex // serializes swaps and their OnSwap calls
}

// heldToken is one immutable generation of the held token.
type heldToken struct {
	raw string
	sid string
	sub string
	exp time.Time
	md  map[string]string // request metadata, built once per token
}

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
	h := &TokenHolder{cfg: cfg}
	t, err := h.decode(token)
	if err != nil {
		return nil, err
	}
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
		return nil, fmt.Errorf("%w: %w", ErrMalformedToken, err)
	}
	typ, _ := t.Header["typ"].(string)
	if !isAccessTokenType(typ) || c.SessionID == "" || c.Subject == "" || c.ExpiresAt == nil {
		return nil, fmt.Errorf("%w: not a session access token", ErrMalformedToken)
	}
	return &heldToken{
		raw: raw,
		sid: c.SessionID,
		sub: c.Subject,
		exp: c.ExpiresAt.Time,
		md:  map[string]string{"authorization": "Bearer " + raw},
	}, nil
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
func (h *TokenHolder) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return h.cur.Load().md, nil
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
func (h *TokenHolder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var header, trailer metadata.MD
		all := make([]grpc.CallOption, len(opts), len(opts)+3)
		copy(all, opts) // never append into the caller's slice
		all = append(all, grpc.PerRPCCredentials(h), grpc.Header(&header), grpc.Trailer(&trailer))
		err := invoker(ctx, method, req, reply, cc, all...)
		h.pick(header)
		h.pick(trailer)
		return err
	}
}

// StreamClientInterceptor attaches the token to streams and swaps in a
// renewed token from the response header (read once the first message has
// arrived, or when the caller asks for it) and the trailer (read once the
// stream has ended). It never blocks the caller.
func (h *TokenHolder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		all := make([]grpc.CallOption, len(opts), len(opts)+1)
		copy(all, opts)
		all = append(all, grpc.PerRPCCredentials(h))
		cs, err := streamer(ctx, desc, cc, method, all...)
		if err != nil {
			return nil, err
		}
		return &clientStream{ClientStream: cs, h: h, serverStreams: desc.ServerStreams}, nil
	}
}

// clientStream watches a stream's header and trailer for renewed tokens.
type clientStream struct {
	grpc.ClientStream
	h             *TokenHolder
	serverStreams bool
	headerSeen    bool // touched only by RecvMsg, which gRPC forbids calling concurrently
}

// Header waits for the header, as the embedded stream does, and picks a
// renewed token from it.
func (s *clientStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if err == nil {
		s.h.pick(md)
	}
	return md, err
}

// RecvMsg picks the header after the first message, and the trailer once
// the stream is done. Neither call blocks: the header has arrived with the
// first message, and the trailer with the end of the stream.
func (s *clientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if !s.headerSeen {
		s.headerSeen = true
		if md, herr := s.ClientStream.Header(); herr == nil {
			s.h.pick(md)
		}
	}
	// A stream with a single response (client streaming) is done after its
	// first successful RecvMsg; gRPC has read the trailer by then.
	if err != nil || !s.serverStreams {
		s.h.pick(s.ClientStream.Trailer())
	}
	return err
}
