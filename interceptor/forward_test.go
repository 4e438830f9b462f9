package interceptor

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/slidejwt/slidejwt/interceptor/memstore"
)

// fwdAuthLog records the authorization values of every call that reaches a
// server, before authentication.
type fwdAuthLog struct {
	mu    sync.Mutex
	calls int
	most  int      // the most values one call carried
	vals  []string // every value, in order
}

func (l *fwdAuthLog) record(ctx context.Context) {
	v := metadata.ValueFromIncomingContext(ctx, "authorization")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	l.most = max(l.most, len(v))
	l.vals = append(l.vals, v...)
}

func (l *fwdAuthLog) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	l.record(ctx)
	return handler(ctx, req)
}

func (l *fwdAuthLog) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	l.record(ss.Context())
	return handler(srv, ss)
}

// get returns the calls so far, the most values one carried, and the values.
func (l *fwdAuthLog) get() (calls, most int, vals []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls, l.most, append([]string(nil), l.vals...)
}

// fwdUpSvc is the upstream service: each handler runs do with its context
// (by default one downstream call of the mesh's kind) and returns its
// error. The last error do returned is kept in doErr.
type fwdUpSvc struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int64
	do    func(ctx context.Context) error
	doErr atomic.Pointer[error]
}

func (s *fwdUpSvc) run(ctx context.Context) error {
	s.calls.Add(1)
	err := s.do(ctx)
	s.doErr.Store(&err)
	return err
}

func (s *fwdUpSvc) lastErr() error {
	if p := s.doErr.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *fwdUpSvc) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := s.run(ctx); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{}, nil
}

func (s *fwdUpSvc) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if err := s.run(ctx); err != nil {
		return nil, err
	}
	return &testpb.Empty{}, nil
}

func (s *fwdUpSvc) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	if err := s.run(stream.Context()); err != nil {
		return err
	}
	return stream.Send(&testpb.StreamingOutputCallResponse{})
}

func (s *fwdUpSvc) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	if err := s.run(stream.Context()); err != nil {
		return err
	}
	return stream.Send(&testpb.StreamingOutputCallResponse{})
}

// fwdMesh is a caller's view of an upstream service whose handlers call a
// downstream service through a Forwarder. up and down share keys and
// clock.
type fwdMesh struct {
	up, down *testEnv
	svc      *fwdUpSvc
	fwd      *Forwarder
	auth     *fwdAuthLog // what reached down
	client   testpb.TestServiceClient
	// downVia is the handler's client of down through the Forwarder.
	downVia testpb.TestServiceClient
}

// newFwdMesh builds a mesh; the handler's default do makes one downstream
// call of downKind ("unary" or "stream") with its context.
func newFwdMesh(t testing.TB, downKind string, upOpts, downOpts []envOption, fwdOpts ...ClientOption) *fwdMesh {
	t.Helper()
	m := &fwdMesh{auth: new(fwdAuthLog), svc: new(fwdUpSvc)}
	m.down = newEnv(t, append([]envOption{withBefore(m.auth.unary, m.auth.stream)}, downOpts...)...)
	m.up = newEnv(t, append([]envOption{withKeys(m.down.keys), withClock(m.down.clock), withService(m.svc)}, upOpts...)...)
	var err error
	if m.fwd, err = m.up.server.NewForwarder(append([]ClientOption{AllowInsecureTransport()}, fwdOpts...)...); err != nil {
		t.Fatal(err)
	}
	m.downVia = testpb.NewTestServiceClient(m.down.dial(t,
		grpc.WithChainUnaryInterceptor(m.fwd.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(m.fwd.StreamClientInterceptor())))
	m.svc.do = func(ctx context.Context) error { return fwdDownCall(ctx, m.downVia, downKind) }
	m.client = srvClient(t, m.up)
	return m
}

// fwdDownCall makes one call of kind on c with ctx and opts: a unary call,
// or a server stream of one message read to its end.
func fwdDownCall(ctx context.Context, c testpb.TestServiceClient, kind string, opts ...grpc.CallOption) error {
	if kind == "unary" {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, opts...)
		return err
	}
	st, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{}},
	}, opts...)
	if err != nil {
		return err
	}
	return drain(st)
}

// fwdCall makes a call of kind ("unary", streamServer or streamBidi) on c
// presenting tok, and returns every renewed token of its response, header
// and trailer, and its error.
func fwdCall(ctx context.Context, c testpb.TestServiceClient, kind, tok string) ([]string, error) {
	ctx = metadata.NewOutgoingContext(ctx, bearerMD(tok))
	var hdr, tr metadata.MD
	var err error
	switch kind {
	case "unary":
		_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
	case streamServer:
		var st grpc.ServerStreamingClient[testpb.StreamingOutputCallResponse]
		if st, err = c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{}); err == nil {
			err = drain(st)
			hdr, _ = st.Header()
			tr = st.Trailer()
		}
	case streamBidi:
		var st grpc.BidiStreamingClient[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]
		if st, err = c.FullDuplexCall(ctx); err == nil {
			_ = st.CloseSend()
			err = drain(st)
			hdr, _ = st.Header()
			tr = st.Trailer()
		}
	}
	return append(hdr.Get(DefaultRenewalHeader), tr.Get(DefaultRenewalHeader)...), err
}

var fwdKinds = []string{"unary", streamServer, streamBidi}

// TestForward_CarriesCallerToken: the downstream handler runs as the
// caller: it gets the caller's token, once, and sees the caller's session.
func TestForward_CarriesCallerToken(t *testing.T) {
	for _, up := range fwdKinds {
		for _, down := range []string{"unary", "stream"} {
			t.Run(up+" to "+down, func(t *testing.T) {
				m := newFwdMesh(t, down, nil, nil)
				s := m.up.startSession(t, nil)
				renewed, err := fwdCall(context.Background(), m.client, up, s.AccessToken)
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				if len(renewed) != 0 {
					t.Errorf("%d renewals, want none right after login", len(renewed))
				}
				calls, most, vals := m.auth.get()
				if calls != 1 || most != 1 || len(vals) != 1 || vals[0] != "Bearer "+s.AccessToken {
					t.Fatalf("downstream got %d calls, at most %d authorization values, want 1 call with the caller's token", calls, most)
				}
				if c := m.down.svc.lastClaims.Load(); c == nil || c.SessionID != s.SessionID || c.Subject != "alice" {
					t.Errorf("downstream handler claims = %+v, want alice's session", c)
				}
			})
		}
	}
}

// TestForward_RelaysDownstreamRenewal: when only the downstream renews,
// the renewal reaches the caller in the trailer of its own call, once, for
// every kind of call on either side; a TokenHolder swaps it in.
func TestForward_RelaysDownstreamRenewal(t *testing.T) {
	for _, up := range fwdKinds {
		for _, down := range []string{"unary", "stream"} {
			t.Run(up+" to "+down, func(t *testing.T) {
				m := newFwdMesh(t, down, []envOption{withServerOptions(WithPolicy(Policy{RenewBefore: -1}))}, nil)
				s := m.up.startSession(t, nil)
				m.up.clock.Advance(srvDueAfter)
				wantExp := m.up.clock.Now().Add(DefaultTTL)
				renewed, err := fwdCall(context.Background(), m.client, up, s.AccessToken)
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				if len(renewed) != 1 {
					t.Fatalf("%d renewed tokens reached the caller, want 1", len(renewed))
				}
				srvCheckRenewed(t, m.up, s, renewed[0], wantExp)
				if n := m.down.events.count(EventRenewed, ""); n != 1 {
					t.Errorf("downstream renewed %d times, want 1", n)
				}
				if n := m.up.events.count(EventRenewed, ""); n != 0 {
					t.Errorf("upstream renewed %d times, want 0", n)
				}
			})
		}
	}
	t.Run("holder swaps it in", func(t *testing.T) {
		m := newFwdMesh(t, "unary", []envOption{withServerOptions(WithPolicy(Policy{RenewBefore: -1}))}, nil)
		s := m.up.startSession(t, nil)
		c, h := m.up.holderClient(t, s.AccessToken)
		m.up.clock.Advance(srvDueAfter)
		if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatal(err)
		}
		if want := m.up.clock.Now().Add(DefaultTTL); !h.Expiry().Equal(want) || h.SessionID() != s.SessionID {
			t.Errorf("holder holds exp %v of sid %q, want the relayed renewal's %v", h.Expiry(), h.SessionID(), want)
		}
	})
}

// TestForward_UpstreamRenewalWins: when the caller's own call renews, the
// Forwarder forwards that renewal (so that downstream need not renew the
// old token again), and relays nothing: the caller gets exactly the
// upstream's renewal, even when the downstream renews the forwarded one
// to a later exp.
func TestForward_UpstreamRenewalWins(t *testing.T) {
	for _, up := range fwdKinds {
		for _, down := range []string{"unary", "stream"} {
			t.Run(up+" to "+down, func(t *testing.T) {
				// Downstream renews on every call, with a longer TTL.
				m := newFwdMesh(t, down, nil, []envOption{withServerOptions(WithPolicy(Policy{TTL: 48 * time.Hour, RenewBefore: 48 * time.Hour}))})
				s := m.up.startSession(t, nil)
				m.up.clock.Advance(srvDueAfter)
				renewed, err := fwdCall(context.Background(), m.client, up, s.AccessToken)
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				if n := m.down.events.count(EventRenewed, ""); n != 1 {
					t.Fatalf("precondition: downstream renewed %d times, want 1", n)
				}
				// A stream's own renewal is in its header and its trailer.
				want := 1
				if up != "unary" {
					want = 2
				}
				ups := m.up.events.kinds(EventRenewed)
				if len(renewed) != want || len(ups) != 1 {
					t.Fatalf("caller got %d renewed tokens, upstream renewed %d times; want %d values of 1 renewal", len(renewed), len(ups), want)
				}
				for _, r := range renewed {
					if r != renewed[0] {
						t.Fatal("caller got two different renewals")
					}
				}
				srvCheckRenewed(t, m.up, s, renewed[0], ups[0].Expiry)
				_, _, vals := m.auth.get()
				if len(vals) != 1 || vals[0] != "Bearer "+renewed[0] {
					t.Error("downstream did not get the upstream's renewal as the forwarded token")
				}
			})
		}
	}
}

// fwdRogue is a downstream service that answers every call with renewed
// tokens of its own choosing, in the header and the trailer.
type fwdRogue struct {
	testpb.UnimplementedTestServiceServer
	tok atomic.Pointer[string]
}

func (r *fwdRogue) md() metadata.MD { return metadata.Pairs(DefaultRenewalHeader, *r.tok.Load()) }

func (r *fwdRogue) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	_ = grpc.SetHeader(ctx, r.md())
	_ = grpc.SetTrailer(ctx, r.md())
	return &testpb.SimpleResponse{}, nil
}

func (r *fwdRogue) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	_ = stream.SetHeader(r.md())
	stream.SetTrailer(r.md())
	return stream.Send(&testpb.StreamingOutputCallResponse{})
}

// TestForward_RelaysOnlyTheCallersRenewal: a downstream that hands back
// tokens other than a renewal of the forwarded one (another session,
// another subject, a moved session end, no later exp, past the session's
// end, an untrusted key, a refresh token, garbage) gets none of them to
// the caller; a true renewal does get through (the control).
func TestForward_RelaysOnlyTheCallersRenewal(t *testing.T) {
	up := newEnv(t, withServerOptions(WithPolicy(Policy{RenewBefore: -1})))
	svc := new(fwdUpSvc)
	up2 := newEnv(t, withKeys(up.keys), withClock(up.clock), withService(svc), withServerOptions(WithPolicy(Policy{RenewBefore: -1})))
	rogue := new(fwdRogue)
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, rogue)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	fwd, err := up2.server.NewForwarder(AllowInsecureTransport())
	if err != nil {
		t.Fatal(err)
	}
	via := testpb.NewTestServiceClient(dialBufconn(t, lis,
		grpc.WithChainUnaryInterceptor(fwd.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(fwd.StreamClientInterceptor())))
	client := srvClient(t, up2)

	s := up.startSession(t, nil)
	up.clock.Advance(srvDueAfter)
	now := up.clock.Now()
	base := decodeToken(t, s.AccessToken).claims
	mint := func(edit func(c *Claims), key *Key, typ string) string {
		c := *base
		c.ID, c.IssuedAt, c.ExpiresAt, c.Fresh = randomID(), jwt.NewNumericDate(now), jwt.NewNumericDate(now.Add(DefaultTTL)), false
		if edit != nil {
			edit(&c)
		}
		tok, err := signCompact(key, &c, typ)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	trusted := up.keys.Active()
	stranger := keysMust(t, "k1", jwt.SigningMethodHS256, testSecret(t))
	for _, tc := range []struct {
		name  string
		tok   string
		relay bool
	}{
		{"a true renewal (control)", mint(nil, trusted, accessTokenType), true},
		{"another session", mint(func(c *Claims) { c.SessionID = randomID() }, trusted, accessTokenType), false},
		{"another subject", mint(func(c *Claims) { c.Subject = "mallory" }, trusted, accessTokenType), false},
		{"another issuer", mint(func(c *Claims) { c.Issuer = "https://evil.test" }, trusted, accessTokenType), false},
		{"another audience", mint(func(c *Claims) { c.Audience = jwt.ClaimStrings{"evil"} }, trusted, accessTokenType), false},
		{"another auth_time", mint(func(c *Claims) { c.AuthTime = jwt.NewNumericDate(base.AuthTime.Add(time.Second)) }, trusted, accessTokenType), false},
		{"a session end added", mint(func(c *Claims) { c.SessionExpiry = jwt.NewNumericDate(now.Add(48 * time.Hour)) }, trusted, accessTokenType), false},
		{"the same exp", mint(func(c *Claims) { c.ExpiresAt = base.ExpiresAt }, trusted, accessTokenType), false},
		{"an earlier exp", mint(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(base.ExpiresAt.Add(-time.Second)) }, trusted, accessTokenType), false},
		{"one second past the session's end", mint(func(c *Claims) {
			c.ExpiresAt = jwt.NewNumericDate(s.End.Add(time.Second))
		}, trusted, accessTokenType), false},
		{"an untrusted key", mint(nil, stranger, accessTokenType), false},
		{"a refresh token", mint(nil, trusted, refreshTokenType), false},
		{"garbage", "not.a.token", false},
		{"oversized", strings.Repeat("A", DefaultMaxTokenSize+1), false},
		{"empty", "", false},
	} {
		for _, kind := range []string{"unary", "stream"} {
			t.Run(kind+", "+tc.name, func(t *testing.T) {
				rogue.tok.Store(&tc.tok)
				svc.do = func(ctx context.Context) error { return fwdDownCall(ctx, via, kind) }
				renewed, err := fwdCall(context.Background(), client, "unary", s.AccessToken)
				if err != nil {
					t.Fatalf("call: %v", err)
				}
				switch {
				case tc.relay && (len(renewed) != 1 || renewed[0] != tc.tok):
					t.Fatalf("caller got %d renewed tokens, want the true renewal once", len(renewed))
				case !tc.relay && len(renewed) != 0:
					t.Fatalf("caller got %d renewed tokens, want none", len(renewed))
				}
			})
		}
	}
}

// TestForward_NeverTwoAuthorizations: whatever else would add an
// authorization value (the handler's outgoing metadata, per-call
// credentials, a TokenHolder's interceptors on either side of the
// Forwarder), the downstream server never sees two: a copy of the caller's
// own token is dropped, anything else refuses the call before it is sent,
// with ErrDuplicateAuthorization (codes.FailedPrecondition, no slidejwt
// reason).
func TestForward_NeverTwoAuthorizations(t *testing.T) {
	type setup struct {
		ctx   func(ctx context.Context, callerTok string) context.Context
		opts  func(h *TokenHolder) []grpc.CallOption
		chain string // "holder-after" or "holder-before" the Forwarder
	}
	incoming := func(ctx context.Context, _ string) context.Context {
		md, _ := metadata.FromIncomingContext(ctx)
		return metadata.NewOutgoingContext(ctx, md)
	}
	for _, tc := range []struct {
		name    string
		s       setup
		refused bool
		renewed bool // the upstream renews the call: a copy of the presented token is still the caller's
	}{
		{"nothing else", setup{}, false, false},
		{"a copy of the incoming metadata", setup{ctx: incoming}, false, false},
		{"a copy of the incoming metadata when the upstream renewed", setup{ctx: incoming}, false, true},
		{"the caller's token with a lower-case scheme", setup{ctx: func(ctx context.Context, tok string) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "bearer "+tok)
		}}, false, false},
		{"another bearer token", setup{ctx: func(ctx context.Context, _ string) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer x.y.z")
		}}, true, false},
		{"another token under an upper-case key", setup{ctx: func(ctx context.Context, _ string) context.Context {
			return metadata.NewOutgoingContext(ctx, metadata.MD{"Authorization": {"Bearer x.y.z"}})
		}}, true, false},
		{"a Basic credential", setup{ctx: func(ctx context.Context, _ string) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Basic dXNlcjpwdw==")
		}}, true, false},
		{"the caller's token and another", setup{ctx: func(ctx context.Context, tok string) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok, "authorization", "Bearer x.y.z")
		}}, true, false},
		{"per-call credentials", setup{opts: func(h *TokenHolder) []grpc.CallOption {
			return []grpc.CallOption{grpc.PerRPCCredentials(h.PerRPCCredentials())}
		}}, true, false},
		{"a holder's interceptors after the Forwarder", setup{chain: "holder-after"}, true, false},
		{"a holder's interceptors before the Forwarder", setup{chain: "holder-before"}, true, false},
	} {
		for _, down := range []string{"unary", "stream"} {
			t.Run(down+", "+tc.name, func(t *testing.T) {
				var upOpts []envOption
				if !tc.renewed {
					upOpts = append(upOpts, withServerOptions(WithPolicy(Policy{RenewBefore: -1})))
				}
				m := newFwdMesh(t, down, upOpts, nil)
				s := m.up.startSession(t, nil)
				svcSess := m.down.startSession(t, nil) // another principal's token
				h, err := NewTokenHolder(svcSess.AccessToken, AllowInsecureTransport(), WithClock(m.down.clock.Now))
				if err != nil {
					t.Fatal(err)
				}
				via := m.downVia
				switch tc.s.chain {
				case "holder-after":
					via = testpb.NewTestServiceClient(m.down.dial(t,
						grpc.WithChainUnaryInterceptor(m.fwd.UnaryClientInterceptor(), h.UnaryClientInterceptor()),
						grpc.WithChainStreamInterceptor(m.fwd.StreamClientInterceptor(), h.StreamClientInterceptor())))
				case "holder-before":
					via = testpb.NewTestServiceClient(m.down.dial(t,
						grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor(), m.fwd.UnaryClientInterceptor()),
						grpc.WithChainStreamInterceptor(h.StreamClientInterceptor(), m.fwd.StreamClientInterceptor())))
				}
				m.svc.do = func(ctx context.Context) error {
					if tc.s.ctx != nil {
						ctx = tc.s.ctx(ctx, s.AccessToken)
					}
					var opts []grpc.CallOption
					if tc.s.opts != nil {
						opts = tc.s.opts(h)
					}
					return fwdDownCall(ctx, via, down, opts...)
				}
				if tc.renewed {
					m.up.clock.Advance(srvDueAfter)
				}
				_, err = fwdCall(context.Background(), m.client, "unary", s.AccessToken)
				calls, most, vals := m.auth.get()
				if most > 1 {
					t.Fatalf("a downstream call carried %d authorization values", most)
				}
				if !tc.refused {
					if err != nil {
						t.Fatalf("call: %v", err)
					}
					if calls != 1 || len(vals) != 1 {
						t.Fatalf("downstream got %d calls with %d values, want 1 with 1", calls, len(vals))
					}
					want := s.AccessToken
					if tc.renewed {
						evs := m.up.events.kinds(EventRenewed)
						if len(evs) != 1 {
							t.Fatalf("upstream renewed %d times, want 1", len(evs))
						}
						want = "" // the renewal, checked below
					}
					_, tok, _ := strings.Cut(vals[0], " ")
					if want != "" && tok != want || want == "" && tok == s.AccessToken {
						t.Error("downstream got the wrong token")
					}
					return
				}
				if calls != 0 {
					t.Fatalf("%d calls reached downstream, want none", calls)
				}
				derr := m.svc.lastErr()
				if !errors.Is(derr, ErrDuplicateAuthorization) || status.Code(derr) != codes.FailedPrecondition {
					t.Fatalf("downstream call: %v, want ErrDuplicateAuthorization as FailedPrecondition", derr)
				}
				if _, ok := ReasonOf(err); ok || status.Code(err) != codes.FailedPrecondition {
					t.Fatalf("caller got %v, want FailedPrecondition without a reason", err)
				}
				verifyNoLeak(t, err, bearerMD(s.AccessToken))
			})
		}
	}
}

// TestForward_HolderRefusesOutgoingAuthorization: a TokenHolder's
// interceptors refuse a call whose outgoing metadata already carries an
// authorization value (the caller's metadata copied by hand), before
// anything is sent.
func TestForward_HolderRefusesOutgoingAuthorization(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	c, _ := e.holderClient(t, s.AccessToken)
	for _, kind := range []string{"unary", "stream"} {
		err := fwdDownCall(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AccessToken), c, kind)
		if !errors.Is(err, ErrDuplicateAuthorization) || status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s: %v, want ErrDuplicateAuthorization", kind, err)
		}
	}
	if all, _ := e.calls.get(""); all != 0 {
		t.Fatalf("%d calls reached the server, want 0", all)
	}
}

// TestForward_RejectionKeepsReason: a downstream rejection of the
// forwarded token is about the caller, and reaches it with its reason,
// marked handler_ran "true" (so it does not retry: the upstream handler
// ran).
func TestForward_RejectionKeepsReason(t *testing.T) {
	for _, up := range fwdKinds {
		for _, down := range []string{"unary", "stream"} {
			t.Run(up+" to "+down, func(t *testing.T) {
				revs := &memstore.RevocationList{}
				m := newFwdMesh(t, down, nil, []envOption{withServerOptions(WithRevocationList(revs))})
				s := m.up.startSession(t, nil)
				if err := m.down.server.RevokeSession(context.Background(), s.SessionID); err != nil {
					t.Fatal(err)
				}
				_, err := fwdCall(context.Background(), m.client, up, s.AccessToken)
				wantReason(t, err, ReasonSessionRevoked)
				if v, ok := errsHandlerRan(err); !ok || v != "true" {
					t.Errorf("%s = %q (present %v), want \"true\"", MetadataHandlerRan, v, ok)
				}
				if n := m.svc.calls.Load(); n != 1 {
					t.Errorf("upstream handler ran %d times, want 1", n)
				}
			})
		}
	}
}

// TestForward_NoCallerToken: outside an authenticated call (an exempt
// method, even when the caller sent a token; a context that is no
// handler's) the Forwarder sends nothing and fails with ErrNoCallerToken.
func TestForward_NoCallerToken(t *testing.T) {
	for _, down := range []string{"unary", "stream"} {
		t.Run(down, func(t *testing.T) {
			m := newFwdMesh(t, down, []envOption{withServerOptions(WithExemptMethods(testpb.TestService_EmptyCall_FullMethodName))}, nil)
			s := m.up.startSession(t, nil)
			_, err := m.client.EmptyCall(metadata.NewOutgoingContext(context.Background(), bearerMD(s.AccessToken)), &testpb.Empty{})
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("exempt method: %v, want Unauthenticated", err)
			}
			if _, ok := ReasonOf(err); ok {
				t.Errorf("exempt method: %v carries a slidejwt reason", err)
			}
			if derr := m.svc.lastErr(); !errors.Is(derr, ErrNoCallerToken) {
				t.Errorf("downstream call in an exempt method: %v, want ErrNoCallerToken", derr)
			}
			if err := fwdDownCall(metadata.NewOutgoingContext(context.Background(), bearerMD(s.AccessToken)), m.downVia, down); !errors.Is(err, ErrNoCallerToken) {
				t.Errorf("downstream call outside a handler: %v, want ErrNoCallerToken", err)
			}
			if calls, _, _ := m.auth.get(); calls != 0 {
				t.Fatalf("%d calls reached downstream, want 0", calls)
			}
		})
	}
}

// TestForward_OnlyTheVerifiedToken: the Forwarder forwards the token the
// Server verified for the call, never another one that a later
// interceptor put into the incoming metadata.
func TestForward_OnlyTheVerifiedToken(t *testing.T) {
	var other string
	swap := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		md = md.Copy()
		md.Set("authorization", "Bearer "+other)
		return handler(metadata.NewIncomingContext(ctx, md), req)
	}
	m := newFwdMesh(t, "unary", []envOption{withAfter(swap, nil)}, nil)
	s := m.up.startSession(t, nil)
	other = m.up.startSession(t, nil).AccessToken
	if _, err := fwdCall(context.Background(), m.client, "unary", s.AccessToken); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call: %v, want Unauthenticated", err)
	}
	if derr := m.svc.lastErr(); !errors.Is(derr, ErrNoCallerToken) {
		t.Errorf("downstream call: %v, want ErrNoCallerToken", derr)
	}
	if calls, _, _ := m.auth.get(); calls != 0 {
		t.Fatalf("%d calls reached downstream, want 0", calls)
	}
}

// TestForward_Options: a Forwarder takes no session options, refuses an
// insecure transport unless allowed, and keeps to its bound target.
func TestForward_Options(t *testing.T) {
	e := newEnv(t)
	for name, opt := range map[string]ClientOption{
		"WithRefreshToken":    WithRefreshToken("x"),
		"WithSessionEnd":      WithSessionEnd(t0),
		"OnSwap":              OnSwap(func(string, time.Time) {}),
		"WithRefreshMargin":   WithRefreshMargin(time.Minute),
		"WithLoginTimeout":    WithLoginTimeout(time.Second),
		"BindTarget empty":    BindTarget(""),
		"WithRenewalHeader":   WithRenewalHeader("grpc-x"),
		"WithClientEventHook": WithClientEventHook(func(context.Context, Event) {}),
	} {
		if _, err := e.server.NewForwarder(opt); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("NewForwarder(%s): %v, want ErrInvalidOption", name, err)
		}
	}

	t.Run("insecure transport", func(t *testing.T) {
		m := newFwdMesh(t, "unary", nil, nil)
		fwd, err := m.up.server.NewForwarder()
		if err != nil {
			t.Fatal(err)
		}
		via := testpb.NewTestServiceClient(m.down.dial(t, grpc.WithChainUnaryInterceptor(fwd.UnaryClientInterceptor())))
		m.svc.do = func(ctx context.Context) error { return fwdDownCall(ctx, via, "unary") }
		s := m.up.startSession(t, nil)
		if _, err := fwdCall(context.Background(), m.client, "unary", s.AccessToken); err == nil {
			t.Fatal("a forwarded token crossed a plaintext connection")
		}
		if calls, _, _ := m.auth.get(); calls != 0 {
			t.Fatalf("%d calls reached downstream, want 0", calls)
		}
	})
	t.Run("bound target", func(t *testing.T) {
		m := newFwdMesh(t, "unary", nil, nil, BindTarget("dns:///inventory:443"))
		s := m.up.startSession(t, nil)
		if _, err := fwdCall(context.Background(), m.client, "unary", s.AccessToken); err == nil {
			t.Fatal("forwarded to a target it is not bound to")
		}
		if derr := m.svc.lastErr(); !errors.Is(derr, ErrUnboundTarget) {
			t.Errorf("downstream call: %v, want ErrUnboundTarget", derr)
		}
		if calls, _, _ := m.auth.get(); calls != 0 {
			t.Fatalf("%d calls reached downstream, want 0", calls)
		}
	})
}
