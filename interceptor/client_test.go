package interceptor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// cliTarget is the target of every bufconn connection of the tests
// (dialBufconn).
const cliTarget = "passthrough:///bufnet"

// cliSecret signs the tokens the client tests craft. The holder does not
// verify signatures, so any key will do.
var cliSecret = []byte("client-test-secret-0123456789abcdef")

// cliClaims returns session claims for sub and sid expiring at exp, logged
// in at t0.
func cliClaims(sub, sid string, exp time.Time) *Claims {
	return &Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			ExpiresAt: jwt.NewNumericDate(exp),
			IssuedAt:  jwt.NewNumericDate(t0),
			ID:        randomID(),
		},
		SessionID: sid,
		AuthTime:  jwt.NewNumericDate(t0),
	}
}

// cliMint signs c with typ at+jwt and kid k1; header entries override
// those, and a nil entry deletes one.
func cliMint(t testing.TB, header map[string]any, c *Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["typ"] = accessTokenType
	tok.Header["kid"] = "k1"
	for k, v := range header {
		if v == nil {
			delete(tok.Header, k)
		} else {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(cliSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// cliTokenOfLen returns a token for claims like c (with a padding claim
// added) that is exactly n bytes long.
func cliTokenOfLen(t testing.TB, n int, c *Claims) string {
	t.Helper()
	mint := func(hdrPad, pad int) string {
		cc := *c
		cc.Custom = map[string]json.RawMessage{"pad": json.RawMessage(`"` + strings.Repeat("x", pad) + `"`)}
		return cliMint(t, map[string]any{"pad": strings.Repeat("p", hdrPad)}, &cc)
	}
	// Base64 never yields a length of 4k+1, so vary the header as well.
	for hdrPad := range 4 {
		lo, hi := 0, n // the smallest pad whose token is at least n long
		for lo < hi {
			mid := (lo + hi) / 2
			if len(mint(hdrPad, mid)) < n {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		if tok := mint(hdrPad, lo); len(tok) == n {
			return tok
		}
	}
	t.Fatalf("cannot build a token of %d bytes", n)
	return ""
}

// cliSwaps records OnSwap calls.
type cliSwaps struct {
	mu     sync.Mutex
	tokens []string
	exps   []time.Time
}

func (r *cliSwaps) onSwap(tok string, exp time.Time) {
	r.mu.Lock()
	r.tokens = append(r.tokens, tok)
	r.exps = append(r.exps, exp)
	r.mu.Unlock()
}

func (r *cliSwaps) get() ([]string, []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.tokens...), append([]time.Time(nil), r.exps...)
}

// cliHolder returns a holder for tok that records its swaps.
func cliHolder(t testing.TB, tok string, opts ...ClientOption) (*TokenHolder, *cliSwaps) {
	t.Helper()
	swaps := new(cliSwaps)
	h, err := NewTokenHolder(tok, append([]ClientOption{OnSwap(swaps.onSwap)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return h, swaps
}

// cliConn returns a plaintext connection to e with h's interceptors.
func cliConn(t testing.TB, e *testEnv, h *TokenHolder, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return e.dial(t, append([]grpc.DialOption{
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()),
	}, opts...)...)
}

// cliWantSwaps fails unless the recorded swaps are exactly the tokens want.
func cliWantSwaps(t testing.TB, swaps *cliSwaps, want ...string) {
	t.Helper()
	got, _ := swaps.get()
	if len(got) != len(want) {
		t.Fatalf("OnSwap called %d times, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("OnSwap call %d got another token than swap %d", i, i)
		}
	}
}

func TestTokenHolder_OfferRules(t *testing.T) {
	exp := t0.Add(24 * time.Hour)
	held := cliMint(t, nil, cliClaims("alice", "sid-1", exp))
	later := func(mod func(*Claims)) string {
		c := cliClaims("alice", "sid-1", exp.Add(time.Hour))
		if mod != nil {
			mod(c)
		}
		return cliMint(t, nil, c)
	}
	hour, sec := exp.Add(time.Hour), exp.Add(time.Second)
	for _, tc := range []struct {
		name  string
		offer string
		opts  []ClientOption
		swap  bool
		exp   time.Time // the held expiry after a swap
	}{
		{"later exp, same sid", later(nil), nil, true, hour},
		{"one second later", later(func(c *Claims) { c.ExpiresAt = jwt.NewNumericDate(sec) }), nil, true, sec},
		{"media type typ", cliMint(t, map[string]any{"typ": "application/at+jwt"}, cliClaims("alice", "sid-1", hour)), nil, true, hour},
		{"same token", held, nil, false, exp},
		{"equal exp, new jti", cliMint(t, nil, cliClaims("alice", "sid-1", exp)), nil, false, exp},
		{"one second earlier", cliMint(t, nil, cliClaims("alice", "sid-1", exp.Add(-time.Second))), nil, false, exp},
		{"different sid", later(func(c *Claims) { c.SessionID = "sid-2" }), nil, false, exp},
		{"different sub", later(func(c *Claims) { c.Subject = "mallory" }), nil, false, exp},
		{"no sid", later(func(c *Claims) { c.SessionID = "" }), nil, false, exp},
		{"no sub", later(func(c *Claims) { c.Subject = "" }), nil, false, exp},
		{"no exp", later(func(c *Claims) { c.ExpiresAt = nil }), nil, false, exp},
		{"empty", "", nil, false, exp},
		{"garbage", "not-a-token", nil, false, exp},
		{"three garbage segments", "a.b.c", nil, false, exp},
		{"non-strict base64", held + "=", nil, false, exp},
		{"typ JWT", cliMint(t, map[string]any{"typ": "JWT"}, cliClaims("alice", "sid-1", hour)), nil, false, exp},
		{"no typ", cliMint(t, map[string]any{"typ": nil}, cliClaims("alice", "sid-1", hour)), nil, false, exp},
		{"at max size", cliTokenOfLen(t, DefaultMaxTokenSize, cliClaims("alice", "sid-1", hour)), nil, true, hour},
		{"one byte over max size", cliTokenOfLen(t, DefaultMaxTokenSize+1, cliClaims("alice", "sid-1", hour)), nil, false, exp},
		{"at configured size", cliTokenOfLen(t, 1024, cliClaims("alice", "sid-1", hour)), []ClientOption{WithMaxTokenSize(1024)}, true, hour},
		{"over configured size", cliTokenOfLen(t, 1025, cliClaims("alice", "sid-1", hour)), []ClientOption{WithMaxTokenSize(1024)}, false, exp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, swaps := cliHolder(t, held, tc.opts...)
			if got := h.offer(tc.offer); got != tc.swap {
				t.Fatalf("offer = %v, want %v", got, tc.swap)
			}
			want := held
			if tc.swap {
				want = tc.offer
				cliWantSwaps(t, swaps, tc.offer)
				if _, exps := swaps.get(); !exps[0].Equal(tc.exp) {
					t.Errorf("OnSwap expiry = %v, want %v", exps[0], tc.exp)
				}
			} else {
				cliWantSwaps(t, swaps)
			}
			if h.Token() != want {
				t.Errorf("holder token changed = %v, want %v", h.Token() != held, tc.swap)
			}
			if got := h.Expiry(); !got.Equal(tc.exp) {
				t.Errorf("Expiry = %v, want %v", got, tc.exp)
			}
			if got := h.SessionID(); got != "sid-1" {
				t.Errorf("SessionID = %q, want %q", got, "sid-1")
			}
		})
	}
}

func TestTokenHolder_OnSwapOrder(t *testing.T) {
	exp := t0.Add(24 * time.Hour)
	tok := func(d time.Duration) string { return cliMint(t, nil, cliClaims("alice", "sid-1", exp.Add(d))) }
	h, swaps := cliHolder(t, tok(0))
	plus1, plus3, plus2, plus3b, plus4 := tok(time.Hour), tok(3*time.Hour), tok(2*time.Hour), tok(3*time.Hour), tok(4*time.Hour)
	for _, step := range []struct {
		tok  string
		swap bool
	}{{plus1, true}, {plus3, true}, {plus2, false}, {plus3b, false}, {plus3, false}, {plus1, false}, {plus4, true}} {
		if got := h.offer(step.tok); got != step.swap {
			t.Fatalf("offer = %v, want %v", got, step.swap)
		}
	}
	cliWantSwaps(t, swaps, plus1, plus3, plus4)
	_, exps := swaps.get()
	for i, want := range []time.Time{exp.Add(time.Hour), exp.Add(3 * time.Hour), exp.Add(4 * time.Hour)} {
		if !exps[i].Equal(want) {
			t.Errorf("OnSwap %d expiry = %v, want %v", i, exps[i], want)
		}
	}
	if h.Token() != plus4 {
		t.Error("holder does not hold the latest token")
	}
}

func TestNewTokenHolder_RefusesMalformedToken(t *testing.T) {
	exp := t0.Add(time.Hour)
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"empty", ""},
		{"garbage", "garbage"},
		{"bearer prefix", "Bearer " + cliMint(t, nil, cliClaims("alice", "sid-1", exp))},
		{"typ JWT", cliMint(t, map[string]any{"typ": "JWT"}, cliClaims("alice", "sid-1", exp))},
		{"no sid", cliMint(t, nil, cliClaims("alice", "", exp))},
		{"no sub", cliMint(t, nil, cliClaims("", "sid-1", exp))},
		{"no exp", cliMint(t, nil, &Claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "alice"}, SessionID: "sid-1"})},
		{"over size", cliTokenOfLen(t, DefaultMaxTokenSize+1, cliClaims("alice", "sid-1", exp))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := NewTokenHolder(tc.tok)
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("err = %v, want %v", err, ErrMalformedToken)
			}
			if h != nil {
				t.Error("holder returned with an error")
			}
			if err != nil && tc.tok != "" && strings.Contains(err.Error(), tc.tok) {
				t.Error("error message contains the token")
			}
		})
	}
}

func TestNewTokenHolder_Options(t *testing.T) {
	tok := cliMint(t, nil, cliClaims("alice", "sid-1", t0.Add(time.Hour)))
	for _, tc := range []struct {
		name string
		opt  ClientOption
		ok   bool
	}{
		{"empty header key", WithRenewalHeader(""), false},
		{"grpc- prefix", WithRenewalHeader("grpc-x"), false},
		{"-bin suffix", WithRenewalHeader("x-bin"), false},
		{"upper case", WithRenewalHeader("Renewed-Token"), false},
		{"space", WithRenewalHeader("renewed token"), false},
		{"max size 255", WithMaxTokenSize(255), false},
		{"nil clock", WithClock(nil), false},
		{"custom header key", WithRenewalHeader("x-session.token_2"), true},
		{"max size 256", WithMaxTokenSize(256), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewTokenHolder(tok, tc.opt)
			if tc.ok && err != nil {
				t.Fatalf("err = %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("err = %v, want %v", err, ErrInvalidOption)
			}
		})
	}
}

func TestUnary_HolderSwapsRenewals(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	ctx := context.Background()

	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	cliWantSwaps(t, swaps)

	e.clock.Advance(srvDueAfter)
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	renewed := h.Token()
	cliWantSwaps(t, swaps, renewed)
	srvCheckRenewed(t, e, s, renewed, t0.Add(srvDueAfter+DefaultTTL))
	if got := h.Expiry(); !got.Equal(t0.Add(srvDueAfter + DefaultTTL)) {
		t.Errorf("Expiry = %v, want %v", got, t0.Add(srvDueAfter+DefaultTTL))
	}

	// The next call presents the renewed token and is not renewed again.
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if c := e.svc.lastClaims.Load(); c.Fresh || !c.ExpiresAt.Time.Equal(h.Expiry()) {
		t.Errorf("server saw exp %v fresh %v, want the renewed token's exp %v", c.ExpiresAt.Time, c.Fresh, h.Expiry())
	}
	cliWantSwaps(t, swaps, renewed)
}

func TestUnary_HolderSwapsOnHandlerError(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	e.clock.Advance(srvDueAfter)

	req := &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition)}}
	if _, err := client.UnaryCall(context.Background(), req); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("code = %v (err %v), want %v", status.Code(err), err, codes.FailedPrecondition)
	}
	if h.Token() == s.AccessToken {
		t.Fatal("renewal sent with a failing call was not swapped in")
	}
	srvCheckRenewed(t, e, s, h.Token(), t0.Add(srvDueAfter+DefaultTTL))
	cliWantSwaps(t, swaps, h.Token())
}

func TestUnary_HolderCustomRenewalHeader(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client string
		swap   bool
	}{{"agreed", "x-session-token", true}, {"mismatched", DefaultRenewalHeader, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withServerOptions(WithRenewalHeader("x-session-token")))
			s := e.startSession(t, nil)
			client, h := e.holderClient(t, s.AccessToken, WithRenewalHeader(tc.client))
			e.clock.Advance(srvDueAfter)
			if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			if got := h.Token() != s.AccessToken; got != tc.swap {
				t.Errorf("swapped = %v, want %v", got, tc.swap)
			}
		})
	}
}

// cliInjector is a server-side test double that sends whatever renewed
// token the test stores, in the header, the trailer or both, without
// authenticating anything.
type cliInjector struct {
	header, trailer atomic.Pointer[string]
}

func (in *cliInjector) set(header, trailer string) {
	in.header.Store(&header)
	in.trailer.Store(&trailer)
}

func (in *cliInjector) md(p *atomic.Pointer[string]) metadata.MD {
	if v := p.Load(); v != nil && *v != "" {
		return metadata.Pairs(DefaultRenewalHeader, *v)
	}
	return nil
}

func (in *cliInjector) env(t testing.TB) *testEnv {
	return newEnv(t, withGRPC(func(*Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				if md := in.md(&in.header); md != nil {
					_ = grpc.SetHeader(ctx, md)
				}
				if md := in.md(&in.trailer); md != nil {
					_ = grpc.SetTrailer(ctx, md)
				}
				return handler(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
				if md := in.md(&in.header); md != nil {
					_ = ss.SetHeader(md)
				}
				if md := in.md(&in.trailer); md != nil {
					ss.SetTrailer(md)
				}
				return handler(srv, ss)
			}),
		}
	}))
}

// TestUnary_HolderRefusesBadRenewals has a server send bad renewed tokens,
// in the header and the trailer, through real calls.
func TestUnary_HolderRefusesBadRenewals(t *testing.T) {
	in := new(cliInjector)
	e := in.env(t)
	exp := t0.Add(24 * time.Hour)
	held := cliMint(t, nil, cliClaims("alice", "sid-1", exp))
	h, swaps := cliHolder(t, held, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	later := exp.Add(time.Hour)
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"same token", held},
		{"earlier", cliMint(t, nil, cliClaims("alice", "sid-1", exp.Add(-time.Hour)))},
		{"equal exp", cliMint(t, nil, cliClaims("alice", "sid-1", exp))},
		{"other session", cliMint(t, nil, cliClaims("alice", "sid-2", later))},
		{"other subject", cliMint(t, nil, cliClaims("mallory", "sid-1", later))},
		{"garbage", "garbage"},
		{"typ JWT", cliMint(t, map[string]any{"typ": "JWT"}, cliClaims("alice", "sid-1", later))},
		{"over size", cliTokenOfLen(t, DefaultMaxTokenSize+1, cliClaims("alice", "sid-1", later))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in.set(tc.tok, tc.tok)
			if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			if h.Token() != held {
				t.Error("holder swapped in a bad renewal")
			}
			cliWantSwaps(t, swaps)
		})
	}

	// The same path does swap a good renewal, so the refusals above mean
	// something.
	good := cliMint(t, nil, cliClaims("alice", "sid-1", later))
	in.set("", good)
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	cliWantSwaps(t, swaps, good)
}

func TestUnary_HolderKeepsCallerHeaderAndTrailer(t *testing.T) {
	e := srvAuthFuncEnv(t) // sends the renewal in the header and the trailer
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	conn := cliConn(t, e, h)
	e.clock.Advance(srvDueAfter)

	// The caller's options sit in a slice with spare capacity; the
	// interceptor must not write into it.
	var header, trailer metadata.MD
	type marker struct {
		grpc.EmptyCallOption
		n int
	}
	backing := []grpc.CallOption{grpc.Header(&header), grpc.Trailer(&trailer), marker{n: 1}, marker{n: 2}, marker{n: 3}}
	opts := backing[:2]
	if err := conn.Invoke(context.Background(), srvUnaryMethod, &testpb.SimpleRequest{}, new(testpb.SimpleResponse), opts...); err != nil {
		t.Fatal(err)
	}
	for i, o := range backing[2:] {
		if o != (marker{n: i + 1}) {
			t.Errorf("spare element %d of the caller's options was overwritten with %T", i, o)
		}
	}
	if h.Token() == s.AccessToken {
		t.Fatal("holder did not swap the renewal")
	}
	cliWantSwaps(t, swaps, h.Token())
	if got := renewedToken(t, header); got != h.Token() {
		t.Error("caller's header lacks the renewed token")
	}
	if got := renewedToken(t, trailer); got != h.Token() {
		t.Error("caller's trailer lacks the renewed token")
	}
}

func TestStream_HolderPicksHeaderAfterFirstRecv(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	e.clock.Advance(srvDueAfter)

	req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}, {}, {}}}
	stream, err := client.StreamingOutputCall(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if h.Token() != s.AccessToken {
		t.Fatal("swapped before any message was read")
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	// Swapped from the header: the trailer is only read at the end.
	if h.Token() == s.AccessToken {
		t.Fatal("not swapped after the first message")
	}
	srvCheckRenewed(t, e, s, h.Token(), t0.Add(srvDueAfter+DefaultTTL))
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	cliWantSwaps(t, swaps, h.Token())
}

// TestStream_HolderPicksOnlyWhereSent isolates the header and the trailer
// path: a server sends the renewal in one of them only.
func TestStream_HolderPicksOnlyWhereSent(t *testing.T) {
	in := new(cliInjector)
	e := in.env(t)
	for _, tc := range []struct {
		name    string
		trailer bool
		// call runs the stream; mid is called when one message has been
		// received and the stream has not ended yet (nil if no such point).
		call func(c testpb.TestServiceClient, mid func()) error
	}{
		{"server stream header", false, cliServerStream(2)},
		{"server stream trailer", true, cliServerStream(2)},
		{"server stream trailer no message", true, cliServerStream(0)},
		{"client stream header", false, cliClientStream},
		{"client stream trailer", true, cliClientStream},
		{"bidi header", false, cliBidiStream},
		{"bidi trailer", true, cliBidiStream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp := t0.Add(24 * time.Hour)
			held := cliMint(t, nil, cliClaims("alice", "sid-1", exp))
			good := cliMint(t, nil, cliClaims("alice", "sid-1", exp.Add(time.Hour)))
			h, swaps := cliHolder(t, held, AllowInsecureTransport())
			client := testpb.NewTestServiceClient(cliConn(t, e, h))
			if tc.trailer {
				in.set("", good)
			} else {
				in.set(good, "")
			}
			mid := func() {
				// After the first message the header has been read, the
				// trailer not yet.
				if got, want := h.Token() == good, !tc.trailer; got != want {
					t.Errorf("after the first message: swapped = %v, want %v", got, want)
				}
			}
			if err := tc.call(client, mid); err != nil {
				t.Fatal(err)
			}
			cliWantSwaps(t, swaps, good)
		})
	}
}

// cliServerStream reads n messages, then the end of the stream.
func cliServerStream(n int) func(testpb.TestServiceClient, func()) error {
	return func(c testpb.TestServiceClient, mid func()) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: make([]*testpb.ResponseParameters, n)})
		if err != nil {
			return err
		}
		for i := range n {
			if _, err := stream.Recv(); err != nil {
				return err
			}
			if i == 0 && n > 1 {
				mid()
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			return errors.Join(errors.New("want io.EOF"), err)
		}
		return nil
	}
}

// cliClientStream sends two messages and closes. It has no mid point: its
// single response ends the stream.
func cliClientStream(c testpb.TestServiceClient, _ func()) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.StreamingInputCall(ctx)
	if err != nil {
		return err
	}
	for range 2 {
		if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte("x")}}); err != nil {
			return err
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetAggregatedPayloadSize() != 2 {
		return errors.New("wrong aggregated size")
	}
	return nil
}

// cliBidiStream exchanges two messages, then closes.
func cliBidiStream(c testpb.TestServiceClient, mid func()) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for i := range 2 {
		if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
			return err
		}
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if i == 0 {
			mid()
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return errors.Join(errors.New("want io.EOF"), err)
	}
	return nil
}

func TestStream_HolderPicksWhenCallerReadsHeader(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	e.clock.Advance(srvDueAfter)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
		t.Fatal(err)
	}
	header, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	// Swapped by the caller's Header() call, before any RecvMsg.
	if h.Token() == s.AccessToken || renewedToken(t, header) != h.Token() {
		t.Fatal("not swapped from the header the caller read")
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	cliWantSwaps(t, swaps, h.Token())
}

// TestStream_HolderNoMessageEnds: streams on which the server never sends
// a message end normally (no hang; the context deadline would turn one into
// a failure) and still deliver the renewal.
func TestStream_HolderNoMessageEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(ctx context.Context, c testpb.TestServiceClient) error
	}{
		{"server stream", func(ctx context.Context, c testpb.TestServiceClient) error {
			stream, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
		{"bidi", func(ctx context.Context, c testpb.TestServiceClient) error {
			stream, err := c.FullDuplexCall(ctx)
			if err != nil {
				return err
			}
			if err := stream.CloseSend(); err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
			client := testpb.NewTestServiceClient(cliConn(t, e, h))
			e.clock.Advance(srvDueAfter)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tc.call(ctx, client); !errors.Is(err, io.EOF) {
				t.Fatalf("Recv = %v, want io.EOF", err)
			}
			if h.Token() == s.AccessToken {
				t.Fatal("renewal not picked up")
			}
			srvCheckRenewed(t, e, s, h.Token(), t0.Add(srvDueAfter+DefaultTTL))
			cliWantSwaps(t, swaps, h.Token())
		})
	}
}

func TestUnary_HolderRefusesInsecureTransport(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, err := NewTokenHolder(s.AccessToken) // no AllowInsecureTransport
	if err != nil {
		t.Fatal(err)
	}
	if !h.RequireTransportSecurity() {
		t.Fatal("RequireTransportSecurity = false, want true")
	}
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
	if got := status.Code(err); got != codes.Unauthenticated {
		t.Errorf("unary code = %v (err %v), want %v", got, err, codes.Unauthenticated)
	}
	if _, ok := ReasonOf(err); ok {
		t.Error("unary error carries a server reason, want a client-side failure")
	}

	var streamErr error
	if stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{}); err != nil {
		streamErr = err
	} else {
		_, streamErr = stream.Recv()
	}
	if got := status.Code(streamErr); got != codes.Unauthenticated {
		t.Errorf("stream code = %v (err %v), want %v", got, streamErr, codes.Unauthenticated)
	}

	// The token never reached the server: no interceptor ran, no handler ran.
	if got := len(e.events.all()) - len(e.events.kinds(EventSessionStarted)); got != 0 {
		t.Errorf("server saw %d calls, want 0", got)
	}
	if got := e.svc.calls.Load(); got != 0 {
		t.Errorf("handler calls = %d, want 0", got)
	}
}

func TestUnary_HolderPerRPCCredentialsInsecure(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	h, err := NewTokenHolder(s.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return e.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(h.PerRPCCredentials()))
	if err == nil {
		conn.Close()
		t.Fatal("NewClient accepted secure-only credentials on an insecure connection")
	}

	// With the explicit opt-in, the credentials alone authenticate calls.
	h, err = NewTokenHolder(s.AccessToken, AllowInsecureTransport())
	if err != nil {
		t.Fatal(err)
	}
	client := testpb.NewTestServiceClient(e.dial(t, grpc.WithPerRPCCredentials(h.PerRPCCredentials())))
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	srvCheckClaims(t, e, s)
}

// cliTLS returns server and client TLS credentials for a self-signed
// certificate naming "slidejwt.test".
func cliTLS(t testing.TB) (server, client credentials.TransportCredentials) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "slidejwt.test"},
		DNSNames:              []string{"slidejwt.test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS13,
	})
	client = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "slidejwt.test", MinVersion: tls.VersionTLS13})
	return server, client
}

func TestUnary_HolderOverTLS(t *testing.T) {
	serverCreds, clientCreds := cliTLS(t)
	e := newEnv(t, withGRPC(func(s *Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.Creds(serverCreds),
			grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
			grpc.ChainStreamInterceptor(s.StreamServerInterceptor()),
		}
	}))
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken) // secure: no AllowInsecureTransport
	client := testpb.NewTestServiceClient(cliConn(t, e, h, grpc.WithTransportCredentials(clientCreds)))

	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("unary over TLS: %v", err)
	}
	srvCheckClaims(t, e, s)
	e.clock.Advance(srvDueAfter)
	if err := cliServerStream(1)(client, nil); err != nil {
		t.Fatalf("stream over TLS: %v", err)
	}
	srvCheckRenewed(t, e, s, h.Token(), t0.Add(srvDueAfter+DefaultTTL))
	cliWantSwaps(t, swaps, h.Token())

	t.Run("PerRPCCredentials", func(t *testing.T) {
		conn := e.dial(t, grpc.WithTransportCredentials(clientCreds), grpc.WithPerRPCCredentials(h.PerRPCCredentials()))
		if _, err := testpb.NewTestServiceClient(conn).UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("unary over TLS with call credentials: %v", err)
		}
		if c := e.svc.lastClaims.Load(); c.ID == "" || !c.ExpiresAt.Time.Equal(h.Expiry()) {
			t.Errorf("server saw exp %v, want the held token's %v", c.ExpiresAt.Time, h.Expiry())
		}
	})

	// Documented misuse: interceptors and call credentials together send
	// two authorization values, which the server rejects.
	t.Run("both ways at once", func(t *testing.T) {
		conn := cliConn(t, e, h, grpc.WithTransportCredentials(clientCreds), grpc.WithPerRPCCredentials(h.PerRPCCredentials()))
		_, err := testpb.NewTestServiceClient(conn).UnaryCall(context.Background(), &testpb.SimpleRequest{})
		wantReason(t, err, ReasonTokenInvalid)
	})
}

// TestUnary_HolderConcurrentRenewals runs many goroutines on one holder
// while the server renews every call and responses return out of order.
func TestUnary_HolderConcurrentRenewals(t *testing.T) {
	const goroutines, callsEach = 64, 50
	var clock atomic.Pointer[fakeClock]
	e := newEnv(t,
		withServerOptions(WithPolicy(Policy{TTL: time.Hour, MaxLifetime: 1000 * time.Hour, RenewBefore: time.Hour})),
		withDelay(func() {
			clock.Load().Advance(time.Second)
			time.Sleep(mathrand.N(2 * time.Millisecond)) // reorder responses
		}))
	clock.Store(e.clock)
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))

	// A watcher checks that the held expiry never goes back.
	stop := make(chan struct{})
	watched := make(chan error, 1)
	go func() {
		last := h.Expiry()
		for {
			select {
			case <-stop:
				watched <- nil
				return
			default:
			}
			if exp := h.Expiry(); exp.Before(last) {
				watched <- errors.New("held expiry went back")
				return
			} else {
				last = exp
			}
		}
	}()

	var wg sync.WaitGroup
	var failed atomic.Int64
	for range goroutines {
		wg.Go(func() {
			for range callsEach {
				if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-watched; err != nil {
		t.Error(err)
	}

	if n := failed.Load(); n != 0 {
		var failures []string
		for _, ev := range append(e.events.kinds(EventRejected), e.events.kinds(EventRenewalFailed)...) {
			failures = append(failures, ev.Kind.String())
		}
		t.Fatalf("%d calls failed, want 0 (server events: %v)", n, failures)
	}
	if got := e.svc.calls.Load(); got != goroutines*callsEach {
		t.Fatalf("handler calls = %d, want %d", got, goroutines*callsEach)
	}
	var minted []time.Time
	for _, ev := range e.events.kinds(EventRenewed) {
		minted = append(minted, ev.Expiry)
	}
	if len(minted) < 2 {
		t.Fatalf("server minted %d tokens, want many", len(minted))
	}
	latest := minted[0]
	for _, exp := range minted {
		if exp.After(latest) {
			latest = exp
		}
	}
	if got := h.Expiry(); !got.Equal(latest) {
		t.Errorf("held expiry = %v, want the latest minted %v", got, latest)
	}
	c, aerr := e.server.ver.Load().verify(h.Token())
	if aerr != nil {
		t.Fatalf("held token does not verify: %v", aerr)
	}
	if !c.ExpiresAt.Time.Equal(latest) || c.SessionID != s.SessionID {
		t.Errorf("held token exp, sid = %v, %q; want %v, %q", c.ExpiresAt.Time, c.SessionID, latest, s.SessionID)
	}
	tokens, exps := swaps.get()
	if len(exps) == 0 {
		t.Fatal("OnSwap never called")
	}
	for i := 1; i < len(exps); i++ {
		if !exps[i].After(exps[i-1]) {
			t.Fatalf("OnSwap expiry %d = %v, not after %v", i, exps[i], exps[i-1])
		}
	}
	if tokens[len(tokens)-1] != h.Token() {
		t.Error("last OnSwap token is not the held token")
	}
	t.Logf("%d calls, %d tokens minted, %d swaps", goroutines*callsEach, len(minted), len(exps))
}

// TestUnary_HolderOutOfOrderRenewals delivers a newer renewal B before an
// older one A, deterministically: A's handler is held until B is done.
// Renewal de-duplication is off: with it, B would be A's token again.
func TestUnary_HolderOutOfOrderRenewals(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var n atomic.Int64
	e := newEnv(t, withServerOptions(WithCacheSize(0)), withDelay(func() {
		if n.Add(1) == 1 {
			close(entered)
			<-release
		}
	}))
	s := e.startSession(t, nil)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport())
	client := testpb.NewTestServiceClient(cliConn(t, e, h))
	e.clock.Advance(srvDueAfter)

	var trailerA metadata.MD
	doneA := make(chan error, 1)
	go func() {
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailerA))
		doneA <- err
	}()
	select { // A is minted (exp t0+37h) and its handler waits.
	case <-entered:
	case err := <-doneA:
		t.Fatalf("call A ended before its handler ran: %v", err)
	}

	e.clock.Advance(time.Hour)
	var trailerB metadata.MD
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailerB)); err != nil {
		t.Fatal(err)
	}
	b := renewedToken(t, trailerB)
	srvCheckRenewed(t, e, s, b, t0.Add(srvDueAfter+time.Hour+DefaultTTL))
	if h.Token() != b {
		t.Fatal("holder did not swap in B")
	}

	close(release)
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	a := renewedToken(t, trailerA)
	srvCheckRenewed(t, e, s, a, t0.Add(srvDueAfter+DefaultTTL))
	if h.Token() != b {
		t.Error("late older renewal A replaced B")
	}
	cliWantSwaps(t, swaps, b)
	if got, want := h.Expiry(), t0.Add(srvDueAfter+time.Hour+DefaultTTL); !got.Equal(want) {
		t.Errorf("Expiry = %v, want %v", got, want)
	}
}

// cliForge builds a compact JWS from header and claims as given, signed
// with cliSecret (HS256) when signed, or else with an empty signature.
// Unlike cliMint it can write any claim, in any JSON type.
func cliForge(t testing.TB, header, claims map[string]any, signed bool) string {
	t.Helper()
	seg := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := seg(header) + "." + seg(claims)
	if !signed {
		return input + "."
	}
	sig, err := jwt.SigningMethodHS256.Sign(input, cliSecret)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// cliClaimsOf returns tok's header and claims as JSON objects, numbers
// kept exact.
func cliClaimsOf(t testing.TB, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims
}

// cliRemint returns a copy of tok signed with cliSecret, with its header
// and claims changed by mod (nil: unchanged). A nil value deletes an entry.
func cliRemint(t testing.TB, tok string, mod func(header, claims map[string]any)) string {
	t.Helper()
	h, c := cliClaimsOf(t, tok)
	h["alg"] = "HS256"
	if mod != nil {
		mod(h, c)
	}
	for _, m := range []map[string]any{h, c} {
		for k, v := range m {
			if v == nil {
				delete(m, k)
			}
		}
	}
	return cliForge(t, h, c, true)
}

// cliUnix is t as a NumericDate.
func cliUnix(t time.Time) int64 { return t.Unix() }

// TestTokenHolder_OfferIdentity: a renewal must repeat iss, aud, sub, sid
// and auth_time exactly, be signed, and expire later than the held token
// but not past the session's end. Boundaries are tested at the second and
// one second either side.
func TestTokenHolder_OfferIdentity(t *testing.T) {
	exp := t0.Add(24 * time.Hour)
	base := func() map[string]any {
		return map[string]any{
			"iss": "auth.example", "aud": []string{"orders", "billing"}, "sub": "alice", "sid": "sid-1",
			"auth_time": cliUnix(t0), "iat": cliUnix(t0), "exp": cliUnix(exp), "jti": "j0",
		}
	}
	hdr := func() map[string]any { return map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": "k1"} }
	held := cliForge(t, hdr(), base(), true)
	later := exp.Add(time.Hour)
	end := t0.Add(48 * time.Hour)
	defaultEnd := t0.Add(DefaultMaxLifetime)
	renewal := func(mod func(h, c map[string]any)) string {
		h, c := hdr(), base()
		c["exp"], c["jti"] = cliUnix(later), "j1"
		mod(h, c)
		return cliForge(t, h, c, true)
	}
	for _, tc := range []struct {
		name string
		tok  string
		opts []ClientOption
		swap bool
	}{
		{"control: same identity, later exp", renewal(func(h, c map[string]any) {}), nil, true},
		{"control: aud in the same order", renewal(func(_, c map[string]any) { c["aud"] = []any{"orders", "billing"} }), nil, true},
		{"the reported forgery: unsigned, other iss, aud and kid, exp in 2999", func() string {
			h, c := hdr(), base()
			h["alg"], h["kid"] = "none", "rogue"
			c["iss"], c["aud"], c["exp"] = "rogue.example", "rogue", time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
			return cliForge(t, h, c, false)
		}(), nil, false},
		{"alg none, signed", renewal(func(h, _ map[string]any) { h["alg"] = "none" }), nil, false},
		{"alg NONE", renewal(func(h, _ map[string]any) { h["alg"] = "NONE" }), nil, false},
		{"no alg", renewal(func(h, _ map[string]any) { delete(h, "alg") }), nil, false},
		{"empty signature", func() string {
			tok := renewal(func(h, c map[string]any) {})
			return tok[:strings.LastIndexByte(tok, '.')+1]
		}(), nil, false},
		{"four segments", renewal(func(h, c map[string]any) {}) + ".x", nil, false},
		{"other iss", renewal(func(_, c map[string]any) { c["iss"] = "rogue.example" }), nil, false},
		{"no iss", renewal(func(_, c map[string]any) { delete(c, "iss") }), nil, false},
		{"other aud", renewal(func(_, c map[string]any) { c["aud"] = []string{"orders"} }), nil, false},
		{"aud reordered", renewal(func(_, c map[string]any) { c["aud"] = []string{"billing", "orders"} }), nil, false},
		{"aud as one string", renewal(func(_, c map[string]any) { c["aud"] = "orders" }), nil, false},
		{"no aud", renewal(func(_, c map[string]any) { delete(c, "aud") }), nil, false},
		{"auth_time one second later", renewal(func(_, c map[string]any) { c["auth_time"] = cliUnix(t0.Add(time.Second)) }), nil, false},
		{"auth_time one second earlier", renewal(func(_, c map[string]any) { c["auth_time"] = cliUnix(t0.Add(-time.Second)) }), nil, false},
		{"no auth_time", renewal(func(_, c map[string]any) { delete(c, "auth_time") }), nil, false},
		{"quoted exp", renewal(func(_, c map[string]any) { c["exp"] = fmt.Sprint(cliUnix(later)) }), nil, false},
		{"typ rt+jwt", renewal(func(h, _ map[string]any) { h["typ"] = "rt+jwt" }), nil, false},
		{"exp in 2999", renewal(func(_, c map[string]any) { c["exp"] = time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC).Unix() }), nil, false},
		{"exp beyond year 9999", renewal(func(_, c map[string]any) { c["exp"] = 1e15 }), nil, false},
		// The session's end, given by WithSessionEnd.
		{"exp at the session end", renewal(func(_, c map[string]any) { c["exp"] = cliUnix(end) }), []ClientOption{WithSessionEnd(end)}, true},
		{"exp one second before the session end", renewal(func(_, c map[string]any) { c["exp"] = cliUnix(end.Add(-time.Second)) }), []ClientOption{WithSessionEnd(end)}, true},
		{"exp one second past the session end", renewal(func(_, c map[string]any) { c["exp"] = cliUnix(end.Add(time.Second)) }), []ClientOption{WithSessionEnd(end)}, false},
		{"exp half a second past the session end", renewal(func(_, c map[string]any) { c["exp"] = float64(cliUnix(end)) + 0.5 }), []ClientOption{WithSessionEnd(end)}, false},
		// Unknown end: auth_time + DefaultMaxLifetime.
		{"exp at auth_time + DefaultMaxLifetime", renewal(func(_, c map[string]any) { c["exp"] = cliUnix(defaultEnd) }), nil, true},
		{"exp one second past auth_time + DefaultMaxLifetime", renewal(func(_, c map[string]any) { c["exp"] = cliUnix(defaultEnd.Add(time.Second)) }), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, swaps := cliHolder(t, held, tc.opts...)
			if got := h.offer(tc.tok); got != tc.swap {
				t.Fatalf("offer = %v, want %v", got, tc.swap)
			}
			if tc.swap {
				cliWantSwaps(t, swaps, tc.tok)
				return
			}
			cliWantSwaps(t, swaps)
			if h.Token() != held || !h.Expiry().Equal(exp) {
				t.Fatal("holder changed its token")
			}
		})
	}
}

// TestTokenHolder_OfferRefusesAmbiguousPayload: a renewal whose payload
// two parsers could read differently (a member named twice, or a session
// claim's name in another case, which encoding/json would match) is not
// swapped in, even with the right identity otherwise; the same payload
// without the extra member is.
func TestTokenHolder_OfferRefusesAmbiguousPayload(t *testing.T) {
	exp := t0.Add(24 * time.Hour)
	claims := func(extra string) string {
		return `{"iss":"auth.example","aud":["orders","billing"],"sub":"alice","sid":"sid-1",` +
			`"auth_time":` + fmt.Sprint(cliUnix(t0)) + `,"iat":` + fmt.Sprint(cliUnix(t0)) +
			`,"exp":` + fmt.Sprint(cliUnix(exp.Add(time.Hour))) + `,"jti":"j1"` + extra + `}`
	}
	forge := func(payload string) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"at+jwt","kid":"k1"}`))
		input := h + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
		sig, err := jwt.SigningMethodHS256.Sign(input, cliSecret)
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	held := cliForge(t, map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": "k1"}, map[string]any{
		"iss": "auth.example", "aud": []string{"orders", "billing"}, "sub": "alice", "sid": "sid-1",
		"auth_time": cliUnix(t0), "iat": cliUnix(t0), "exp": cliUnix(exp), "jti": "j0",
	}, true)
	for _, tc := range []struct {
		name  string
		extra string
		swap  bool
	}{
		{"as is", ``, true},
		{"sub twice", `,"sub":"mallory"`, false},
		{"SUB", `,"SUB":"mallory"`, false},
		{"Exp", `,"Exp":` + fmt.Sprint(cliUnix(exp.Add(48*time.Hour))), false},
		{"a name twice in a custom claim", `,"org":{"id":1,"id":2}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, swaps := cliHolder(t, held)
			if got := h.offer(forge(claims(tc.extra))); got != tc.swap {
				t.Fatalf("offer = %v, want %v", got, tc.swap)
			}
			if !tc.swap {
				cliWantSwaps(t, swaps)
			}
		})
	}
}

// cliDialAs returns a plaintext connection to lis under target, with opts.
// It is closed when the test ends.
func cliDialAs(t testing.TB, lis interface {
	DialContext(context.Context) (net.Conn, error)
}, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestUnary_RogueBackendRenewals: a holder talks to an honest backend and
// to a rogue one, which answers with forged renewals in its header and
// trailer. None is swapped in or reaches OnSwap, and the honest backend
// keeps accepting the held token.
func TestUnary_RogueBackendRenewals(t *testing.T) {
	honest := newEnv(t, withServerOptions(WithIssuer("auth.example"), WithAudience("orders")))
	s := honest.startSession(t, nil)
	in := new(cliInjector)
	rogue := in.env(t)
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport(), WithClock(honest.clock.Now), WithSessionEnd(s.End))
	good := testpb.NewTestServiceClient(cliConn(t, honest, h))
	bad := testpb.NewTestServiceClient(cliConn(t, rogue, h))
	y2999 := time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	forge := func(mod func(h, c map[string]any)) string {
		return cliRemint(t, s.AccessToken, func(h, c map[string]any) {
			c["exp"] = cliUnix(s.Expiry.Add(time.Hour))
			mod(h, c)
		})
	}
	other := honest.startSession(t, nil)
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"the reported forgery", func() string {
			hd, c := cliClaimsOf(t, s.AccessToken)
			hd["alg"], hd["kid"] = "none", "rogue"
			c["iss"], c["aud"], c["exp"] = "rogue.example", []string{"rogue"}, y2999
			return cliForge(t, hd, c, false)
		}()},
		{"unsigned", func() string {
			hd, c := cliClaimsOf(t, s.AccessToken)
			hd["alg"] = "none"
			c["exp"] = cliUnix(s.Expiry.Add(time.Hour))
			return cliForge(t, hd, c, false)
		}()},
		{"other iss", forge(func(_, c map[string]any) { c["iss"] = "rogue.example" })},
		{"other aud", forge(func(_, c map[string]any) { c["aud"] = []string{"rogue"} })},
		{"other auth_time", forge(func(_, c map[string]any) { c["auth_time"] = cliUnix(t0.Add(time.Second)) })},
		{"exp in 2999", forge(func(_, c map[string]any) { c["exp"] = y2999 })},
		{"exp one second past the session end", forge(func(_, c map[string]any) { c["exp"] = cliUnix(s.End.Add(time.Second)) })},
		{"typ rt+jwt", forge(func(h, _ map[string]any) { h["typ"] = "rt+jwt" })},
		{"another session's token", cliRemint(t, other.AccessToken, func(_, c map[string]any) {
			c["exp"] = cliUnix(s.Expiry.Add(time.Hour))
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in.set(tc.tok, tc.tok)
			if _, err := bad.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
			if err := cliServerStream(1)(bad, nil); err != nil {
				t.Fatal(err)
			}
			cliWantSwaps(t, swaps)
			if h.Token() != s.AccessToken {
				t.Fatal("holder swapped in a forged renewal")
			}
			if _, err := good.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatalf("honest backend: %v", err)
			}
		})
	}

	// Control: the same path takes a renewal that keeps to the rules.
	ok := forge(func(_, _ map[string]any) {})
	in.set("", ok)
	if _, err := bad.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	cliWantSwaps(t, swaps, ok)
}

// TestUnary_BoundHolderRefusesOtherTarget: a holder bound to target A,
// used through its interceptors on a connection to B, fails every call
// with ErrUnboundTarget before anything reaches B, and does not retry.
func TestUnary_BoundHolderRefusesOtherTarget(t *testing.T) {
	e := newEnv(t)
	s := e.startSession(t, nil)
	// No interceptors but the env's call recorder: anything may reach it.
	rogue := newEnv(t, withGRPC(func(*Server) []grpc.ServerOption { return nil }))
	h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport(), BindTarget(cliTarget))
	chain := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()),
	}
	good := testpb.NewTestServiceClient(cliDialAs(t, e.lis, cliTarget, chain...))
	bad := testpb.NewTestServiceClient(cliDialAs(t, rogue.lis, "passthrough:///rogue", chain...))

	wantRefused := func(t *testing.T, err error) {
		t.Helper()
		if got := status.Code(err); got != codes.FailedPrecondition {
			t.Fatalf("code = %v (err %v), want %v", got, err, codes.FailedPrecondition)
		}
		if !errors.Is(err, ErrUnboundTarget) {
			t.Fatalf("err = %v, want ErrUnboundTarget", err)
		}
		if _, ok := ReasonOf(err); ok {
			t.Fatal("error carries a server reason, want a client-side failure")
		}
		if strings.Contains(err.Error(), s.AccessToken) {
			t.Fatal("error quotes the token")
		}
	}
	_, err := bad.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
	wantRefused(t, err)
	_, err = bad.StreamingOutputCall(crfCtx(t), &testpb.StreamingOutputCallRequest{})
	wantRefused(t, err)
	_, err = bad.FullDuplexCall(crfCtx(t))
	wantRefused(t, err)
	if n, auth := rogue.calls.get(""); n != 0 || auth != 0 {
		t.Fatalf("rogue saw %d calls, %d with authorization; want 0, 0", n, auth)
	}
	if got := rogue.svc.calls.Load(); got != 0 {
		t.Fatalf("rogue handler ran %d times, want 0", got)
	}

	// The bound target works, named as given or in canonical form.
	if _, err := good.UnaryCall(crfCtx(t), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := cliServerStream(1)(good, nil); err != nil {
		t.Fatal(err)
	}
	cliWantSwaps(t, swaps)
}

// TestTokenHolder_CheckTarget: the target comparison, on connections that
// are never used.
func TestTokenHolder_CheckTarget(t *testing.T) {
	tok := cliMint(t, nil, cliClaims("alice", "sid-1", t0.Add(time.Hour)))
	conn, err := grpc.NewClient("api.example.com:443", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tc := range []struct {
		name, bound string
		cc          *grpc.ClientConn
		ok          bool
	}{
		{"unbound", "", conn, true},
		{"unbound, nil connection", "", nil, true},
		{"as given", "api.example.com:443", conn, true},
		{"canonical", "dns:///api.example.com:443", conn, true},
		{"other port", "api.example.com:444", conn, false},
		{"other host", "api.example.org:443", conn, false},
		{"prefix", "api.example.com", conn, false},
		{"other scheme", "passthrough:///api.example.com:443", conn, false},
		{"nil connection", "api.example.com:443", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []ClientOption
			if tc.bound != "" {
				opts = append(opts, BindTarget(tc.bound))
			}
			h, err := NewTokenHolder(tok, opts...)
			if err != nil {
				t.Fatal(err)
			}
			err = h.checkTarget(tc.cc)
			if got := err == nil; got != tc.ok {
				t.Fatalf("checkTarget = %v, want ok %v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrUnboundTarget) || status.Code(err) != codes.FailedPrecondition) {
				t.Fatalf("err = %v, want ErrUnboundTarget as FailedPrecondition", err)
			}
		})
	}
}

// TestUnary_FallbackAfterRejectedRenewal: a swapped-in renewal that the
// server rejects as TOKEN_INVALID (before its handler ran) makes the
// holder fall back to the token it replaced and retry once, which
// succeeds. The rejected token is never taken again, and the holder never
// falls back twice to the same token: a second bad renewal on top of the
// fallback is returned to the caller.
func TestUnary_FallbackAfterRejectedRenewal(t *testing.T) {
	for _, kind := range []string{"unary", "server-stream"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			s := e.startSession(t, nil)
			h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now))
			client := testpb.NewTestServiceClient(cliConn(t, e, h))
			call := func() error {
				if kind == "unary" {
					_, err := client.UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
					return err
				}
				return cliServerStream(1)(client, nil)
			}
			// Renewals that keep to the client's rules, signed with a key
			// the server does not trust.
			bad := func(d time.Duration) string {
				return cliRemint(t, s.AccessToken, func(_, c map[string]any) { c["exp"] = cliUnix(s.Expiry.Add(d)) })
			}
			r1, r2 := bad(time.Hour), bad(2*time.Hour)
			if !h.offer(r1) {
				t.Fatal("holder refused a renewal that keeps to its rules")
			}

			if err := call(); err != nil {
				t.Fatalf("call after a bad renewal: %v", err)
			}
			if got := len(e.events.kinds(EventRejected)); got != 1 {
				t.Fatalf("server rejected %d attempts, want 1", got)
			}
			if got := e.svc.calls.Load(); got != 1 {
				t.Fatalf("handler ran %d times, want 1", got)
			}
			if h.Token() != s.AccessToken || !h.Expiry().Equal(s.Expiry) {
				t.Fatal("holder did not fall back to the login token")
			}
			cliWantSwaps(t, swaps, r1, s.AccessToken)
			if got := e.svc.lastClaims.Load(); got == nil || !got.ExpiresAt.Time.Equal(s.Expiry) {
				t.Fatal("the retry did not carry the previous token")
			}

			// The rejected token is not taken again.
			if h.offer(r1) {
				t.Fatal("holder took the rejected renewal again")
			}
			// A second bad renewal on top of the fallback: no second
			// fallback to the login token; the caller gets the rejection.
			if !h.offer(r2) {
				t.Fatal("holder refused a second renewal")
			}
			wantReason(t, call(), ReasonTokenInvalid)
			if got := len(e.events.kinds(EventRejected)); got != 2 {
				t.Fatalf("server rejected %d attempts, want 2 (no retry)", got)
			}
			if got := e.svc.calls.Load(); got != 1 {
				t.Fatalf("handler ran %d times, want 1", got)
			}
			if h.Token() != r2 {
				t.Fatal("holder fell back twice to the same token")
			}
			cliWantSwaps(t, swaps, r1, s.AccessToken, r2)
		})
	}
}

// TestUnary_NoFallbackWithoutMarker: a TOKEN_INVALID that does not say the
// handler did not run does not make the holder fall back or retry.
func TestUnary_NoFallbackWithoutMarker(t *testing.T) {
	for _, marker := range []string{"", "true"} {
		t.Run("marker "+strconv.Quote(marker), func(t *testing.T) {
			svc := crfRejectingService{&testService{}, func() error { return crfRelayed(t, ReasonTokenInvalid, marker) }}
			e := newEnv(t, withMemStore(), withService(svc))
			s := e.startSession(t, nil)
			h, swaps := cliHolder(t, s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now))
			conn := e.dial(t, grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()))
			// A renewal the server accepts: the handler's rejection is
			// the only one.
			e.clock.Advance(time.Hour)
			_, tokc := e.clients(t)
			r1 := refreshMust(t, tokc, s.RefreshToken).GetAccessToken()
			if !h.offer(r1) {
				t.Fatal("holder refused a renewal that keeps to its rules")
			}
			_, err := testpb.NewTestServiceClient(conn).UnaryCall(crfCtx(t), &testpb.SimpleRequest{})
			wantReason(t, err, ReasonTokenInvalid)
			if got := svc.calls.Load(); got != 1 {
				t.Fatalf("handler ran %d times, want 1", got)
			}
			if h.Token() != r1 {
				t.Fatal("holder fell back without the marker")
			}
			cliWantSwaps(t, swaps, r1)
		})
	}
}

// TestDecodeSession_Allocs bounds the holder's decode of a renewed token:
// it reads only what it checks.
func TestDecodeSession_Allocs(t *testing.T) {
	bs := newBenchServer(t, benchAlgs[0])
	got := testing.AllocsPerRun(100, func() {
		if _, err := decodeSession(bs.tok, accessTokenType, DefaultMaxTokenSize); err != nil {
			t.Fatal(err)
		}
	})
	if got > 20 {
		t.Errorf("decodeSession allocates %v times, want at most 20", got)
	}
}
