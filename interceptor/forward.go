package interceptor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// renewedKey is the context key under which the server interceptors keep
// the *renewal they send in the call's response, for a Forwarder.
type renewedKey struct{}

// A Forwarder forwards the caller's token on the calls a handler makes to
// other services, so that they run as the caller: its interceptors go on
// the handler's connection to the downstream service, and every call on
// that connection must be made with the handler's context (or one derived
// from it).
//
// A forwarded call carries exactly one "authorization" value: the bearer
// token that the [Server] interceptor verified for this call, or the
// renewal it minted for it (which the caller is about to receive anyway).
// The Forwarder refuses, with [ErrDuplicateAuthorization] and before
// anything is sent, a call whose outgoing metadata carries another
// authorization value (a copy of the caller's own token is dropped, not
// sent twice) or that has per-call credentials, such as a [TokenHolder]'s
// interceptors chained before it add; a holder's interceptors chained
// after it refuse the call in turn. Do not also give the connection call
// credentials of its own (grpc.WithPerRPCCredentials): the Forwarder
// cannot see them, and the server would refuse both values. A call in a
// context without a verified caller token (outside a handler, or in an
// exempt method) fails with [ErrNoCallerToken]: the Forwarder never falls
// back to another principal. A caller token bound to the caller's TLS
// client certificate ([BindToPeerCertificate]) is never forwarded: the
// call fails with [ErrBoundToken], before anything is sent, since the
// downstream service would see this service's certificate and refuse it.
//
// A downstream renewal of the caller's token is relayed into the
// response trailer of the caller's call, unless the call's own response
// already carries a renewal (the Forwarder then forwarded that renewal,
// and downstream had none to make). Only a renewal that the Server's key
// set verifies, of the same session (identical iss, aud, sub, sid,
// auth_time, session_exp and cnf), and that expires later than the forwarded
// token but not past the session's end is relayed; anything else is
// dropped (a renewal with a cnf claim among them: the forwarded token has
// none). A downstream rejection that carries a slidejwt reason is about
// the caller's token, and the server interceptor passes it on to the
// caller (marked handler_ran "true") when the handler returns it as it
// is, or wrapped with %w.
//
// Like the token itself, a Forwarder trusts the downstream service with
// the caller's session; bind it to that service with [BindTarget].
//
// A Forwarder is safe for concurrent use by multiple goroutines.
type Forwarder struct {
	s     *Server
	cfg   clientConfig
	guard grpc.CallOption // transport-security check, attaching nothing
}

// NewForwarder returns a [Forwarder] for the calls that the handlers
// behind s's interceptors make. It reads renewals under s's renewal header
// and verifies them with s's keys. Of the client options, only
// [AllowInsecureTransport], [BindTarget], [WithRenewalHeader] (the
// downstream's header, if it differs) and [WithMaxTokenSize] apply; any
// other that changes something fails with [ErrInvalidOption].
func (s *Server) NewForwarder(opts ...ClientOption) (*Forwarder, error) {
	cfg := defaultClientConfig()
	cfg.renewalHeader, cfg.maxTokenSize = s.cfg.renewalHeader, s.cfg.maxTokenSize
	for _, o := range opts {
		if _, ok := o.(serviceOption); ok {
			return nil, fmt.Errorf("%w: a ServiceHolder's option given to NewForwarder", ErrInvalidOption)
		}
		o.applyClient(&cfg)
	}
	def := defaultClientConfig()
	if cfg.refreshToken != "" || cfg.refresher != nil || cfg.tokenService != nil || !cfg.sessionEnd.IsZero() ||
		cfg.onSwap != nil || cfg.onRefresh != nil || cfg.onEvent != nil ||
		cfg.refreshMargin != def.refreshMargin || cfg.refreshTimeout != def.refreshTimeout {
		return nil, fmt.Errorf("%w: a Forwarder holds no session: it takes AllowInsecureTransport, BindTarget, "+
			"WithRenewalHeader and WithMaxTokenSize only", ErrInvalidOption)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Forwarder{s: s, cfg: cfg, guard: grpc.PerRPCCredentials(transportGuard{insecure: cfg.allowInsecure})}, nil
}

// forwardCall is one forwarded call: what it sends and what it relayed.
type forwardCall struct {
	ctx     context.Context // the handler's: the relay goes into its call's trailer
	out     context.Context // the downstream call's
	claims  *verifiedClaims // the caller's, as the Server verified them
	renewed bool            // the caller's call carries a renewal: relay nothing

	mu   sync.Mutex
	best time.Time // the latest exp forwarded or relayed so far
}

// prepare returns the forwarded call for a call in ctx with opts, or the
// error that refuses it.
func (f *Forwarder) prepare(ctx context.Context, cc *grpc.ClientConn, opts []grpc.CallOption) (*forwardCall, error) {
	if err := checkTarget(f.cfg.target, cc); err != nil {
		return nil, err
	}
	c := sharedClaims(ctx)
	if c == nil {
		return nil, errNoCaller
	}
	if c.bound {
		return nil, errBoundForward
	}
	presented := f.callerToken(ctx, c)
	tok, renewed := presented, false
	if r, _ := ctx.Value(renewedKey{}).(*renewal); r != nil && r.err == nil && r.tok != "" {
		tok, renewed = r.tok, true
	}
	if tok == "" {
		return nil, errNoCaller
	}
	for _, o := range opts {
		switch o.(type) {
		case grpc.PerRPCCredsCallOption, *grpc.PerRPCCredsCallOption:
			return nil, &conflictError{"the call has per-call credentials"}
		}
	}
	md, _ := metadata.FromOutgoingContext(ctx) // a copy
	for _, v := range md.Get("authorization") {
		if !isBearer(v, tok) && !isBearer(v, presented) {
			return nil, &conflictError{"the outgoing metadata carries another one"}
		}
	}
	if md == nil {
		md = metadata.MD{}
	}
	md.Set("authorization", "Bearer "+tok)
	return &forwardCall{
		ctx:     ctx,
		out:     metadata.NewOutgoingContext(ctx, md),
		claims:  c,
		renewed: renewed,
		best:    c.exp(),
	}, nil
}

// callerToken returns the bearer token of the incoming metadata of ctx if
// it is the one whose claims the Server verified (c), and "" otherwise.
func (f *Forwarder) callerToken(ctx context.Context, c *verifiedClaims) string {
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) != 1 {
		return ""
	}
	scheme, raw, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "bearer") || raw == "" {
		return ""
	}
	t, err := decodeSession(raw, accessTokenType, f.s.cfg.maxTokenSize)
	if err != nil || t.sid != c.sid() || t.sub != c.sub() || t.iss != c.iss() || !t.authTime.Equal(c.authTime()) ||
		!t.exp.Equal(c.exp()) || !t.sessionExp.Equal(c.sessionExp()) || !t.confirms(c) {
		return ""
	}
	return raw
}

// isBearer reports whether the authorization value v is the bearer token
// tok.
func isBearer(v, tok string) bool {
	scheme, raw, _ := strings.Cut(v, " ")
	return tok != "" && raw == tok && strings.EqualFold(scheme, "bearer")
}

// relay relays into the caller's response trailer the renewal in mds of
// the forwarded token, if any, that expires latest, when it is the caller's
// and later than what the call forwarded or relayed so far.
func (f *Forwarder) relay(fc *forwardCall, mds ...metadata.MD) {
	if fc.renewed {
		return
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var tok string
	for _, md := range mds {
		for _, v := range md.Get(f.cfg.renewalHeader) {
			if exp, ok := f.accept(fc, v); ok {
				tok, fc.best = v, exp
			}
		}
	}
	if tok != "" {
		_ = grpc.SetTrailer(fc.ctx, metadata.Pairs(f.s.cfg.renewalHeader, tok))
	}
}

// accept returns the exp of raw if raw is a renewal of the forwarded token
// that the Server would accept, of the same session, later than fc.best
// and not past the session's end.
func (f *Forwarder) accept(fc *forwardCall, raw string) (time.Time, bool) {
	if raw == "" || len(raw) > f.s.cfg.maxTokenSize || !isCompactJWS(raw) {
		return time.Time{}, false
	}
	c, aerr := f.s.ver.Load().verify(raw)
	if aerr != nil || c.AuthTime == nil || c.ExpiresAt == nil {
		return time.Time{}, false
	}
	want := fc.claims
	var sessionExp time.Time
	if c.SessionExpiry != nil {
		sessionExp = c.SessionExpiry.Time
	}
	if c.SessionID != want.sid() || c.Subject != want.sub() || c.Issuer != want.iss() ||
		!c.AuthTime.Equal(want.authTime()) || !sessionExp.Equal(want.sessionExp()) ||
		!want.sameCnf(c.Confirmation) || !slices.Equal(c.Audience, want.claims().Audience) {
		return time.Time{}, false
	}
	exp := c.ExpiresAt.Time
	if !exp.After(fc.best) || exp.After(claimsPolicy(f.s.cfg.policy, c).SessionEnd(c.AuthTime.Time)) {
		return time.Time{}, false
	}
	return exp, true
}

// wrap marks err, a downstream call's error, as being about the caller's
// token when it carries a slidejwt reason, so that the server interceptor
// passes it on to the caller (see markHandlerRan).
func (fc *forwardCall) wrap(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && hasSlidejwtInfo(st) {
		return &forwardedError{err}
	}
	return err
}

// forwardedError is a downstream rejection of a forwarded caller token:
// the same status, marked as being about the caller.
type forwardedError struct{ err error }

func (e *forwardedError) Error() string { return e.err.Error() }

func (e *forwardedError) Unwrap() error { return e.err }

func (e *forwardedError) GRPCStatus() *status.Status { return status.Convert(e.err) }

// errNoCaller is ErrNoCallerToken as a gRPC status.
var errNoCaller error = &noCallerError{}

type noCallerError struct{}

func (*noCallerError) Error() string { return ErrNoCallerToken.Error() }

func (*noCallerError) Unwrap() error { return ErrNoCallerToken }

func (e *noCallerError) GRPCStatus() *status.Status {
	return status.New(codes.Unauthenticated, e.Error())
}

// UnaryClientInterceptor forwards the caller's token on unary calls and
// relays a renewal from the response header or trailer. See [Forwarder].
func (f *Forwarder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		fc, err := f.prepare(ctx, cc, opts)
		if err != nil {
			return err
		}
		md := new(struct{ header, trailer metadata.MD })
		all := make([]grpc.CallOption, len(opts), len(opts)+3)
		copy(all, opts) // never append into the caller's slice
		all = append(all, f.guard, grpc.Header(&md.header), grpc.Trailer(&md.trailer))
		err = invoker(fc.out, method, req, reply, cc, all...)
		f.relay(fc, md.header, md.trailer)
		return fc.wrap(err)
	}
}

// StreamClientInterceptor forwards the caller's token on streams and
// relays a renewal from the response header (read once the first message
// has arrived, or when the handler asks for it) and the trailer (read once
// the stream has ended). See [Forwarder].
func (f *Forwarder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		fc, err := f.prepare(ctx, cc, opts)
		if err != nil {
			return nil, err
		}
		all := make([]grpc.CallOption, len(opts), len(opts)+1)
		copy(all, opts)
		all = append(all, f.guard)
		cs, err := streamer(fc.out, desc, cc, method, all...)
		if err != nil {
			return nil, fc.wrap(err)
		}
		return &forwardStream{ClientStream: cs, f: f, fc: fc, desc: desc}, nil
	}
}

// forwardStream relays the renewals of a forwarded stream and marks its
// rejections as being about the caller.
type forwardStream struct {
	grpc.ClientStream
	f          *Forwarder
	fc         *forwardCall
	desc       *grpc.StreamDesc
	headerSeen bool // touched only by RecvMsg, which gRPC forbids calling concurrently
}

// Header waits for the header and relays a renewal from it.
func (s *forwardStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if err == nil && md != nil {
		s.f.relay(s.fc, md)
	}
	return md, s.fc.wrap(err)
}

// RecvMsg relays a renewal from the header after the first message, and
// from the trailer once the stream is done.
func (s *forwardStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if !s.headerSeen {
		s.headerSeen = true
		if md, herr := s.ClientStream.Header(); herr == nil {
			s.f.relay(s.fc, md)
		}
	}
	if err != nil || !s.desc.ServerStreams {
		s.f.relay(s.fc, s.ClientStream.Trailer())
	}
	return s.fc.wrap(err)
}
