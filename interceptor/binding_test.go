package interceptor

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// The validity of every certificate of these tests: wide enough around
// both the wall clock, which TLS handshakes read, and any harness clock
// that SLIDEJWT_TEST_EPOCH sets, which the certificates never meet.
var (
	bindNotBefore = time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)
	bindNotAfter  = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
)

// bindPKI is a CA made for one test, with a server certificate for
// "bufnet" (the harness's target), from which the test issues client
// certificates.
type bindPKI struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	server tls.Certificate
}

func newBindPKI(t testing.TB) *bindPKI {
	t.Helper()
	p := &bindPKI{caKey: bindKey(t), pool: x509.NewCertPool()}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "slidejwt test CA"},
		NotBefore:             bindNotBefore,
		NotAfter:              bindNotAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.pool.AddCert(p.ca)
	p.server = p.issue(t, "bufnet", x509.ExtKeyUsageServerAuth, bindKey(t))
	return p
}

func bindKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// issue returns a certificate for cn and key, signed by the CA, with a
// random serial.
func (p *bindPKI) issue(t testing.TB, cn string, usage x509.ExtKeyUsage, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    bindNotBefore,
		NotAfter:     bindNotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{cn}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: crypto.Signer(key), Leaf: leaf}
}

// client returns a new client certificate for cn with a new key.
func (p *bindPKI) client(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	return p.issue(t, cn, x509.ExtKeyUsageClientAuth, bindKey(t))
}

// serve makes an env serve TLS with the CA's server certificate, verifying
// a client certificate if one is given, behind the Server's interceptors.
func (p *bindPKI) serve() envOption {
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientCAs:    p.pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS13,
	})
	return withGRPC(func(s *Server) []grpc.ServerOption {
		return []grpc.ServerOption{
			grpc.Creds(creds),
			grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
			grpc.ChainStreamInterceptor(s.StreamServerInterceptor()),
		}
	})
}

// dial returns a TLS connection to e presenting cert, or no client
// certificate for nil.
func (p *bindPKI) dial(t testing.TB, e *testEnv, cert *tls.Certificate, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.pool, ServerName: "bufnet", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return e.dial(t, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
}

// bindLoginMethod is the exempt method of a bindEnv that logs in.
const bindLoginMethod = testpb.TestService_EmptyCall_FullMethodName

// bindLogin is a TestService whose EmptyCall is a login: it starts a
// session for "orders" bound to the call's TLS client certificate and
// sends its tokens in the response header. Its other methods are
// testService's.
type bindLogin struct {
	*testService
	server atomic.Pointer[Server]
}

func (l *bindLogin) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	sess, err := l.server.Load().StartSession(ctx, "orders", nil, BindToPeerCertificate())
	if errors.Is(err, ErrNoClientCertificate) {
		return nil, status.Error(codes.Unauthenticated, "client certificate required")
	}
	if err != nil {
		return nil, err
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("access-token", sess.AccessToken, "refresh-token", sess.RefreshToken))
	return &testpb.Empty{}, nil
}

// bindEnv is a server behind TLS with the login of bindLogin.
type bindEnv struct {
	*testEnv
	pki *bindPKI
	svc *testService // the service whose handlers count calls
}

func newBindEnv(t testing.TB, opts ...envOption) *bindEnv {
	t.Helper()
	pki := newBindPKI(t)
	l := &bindLogin{testService: new(testService)}
	e := newEnv(t, append([]envOption{
		pki.serve(), withService(l), withServerOptions(WithExemptMethods(bindLoginMethod)),
	}, opts...)...)
	l.server.Store(e.server)
	return &bindEnv{testEnv: e, pki: pki, svc: l.testService}
}

// login logs in on conn and returns the tokens.
func (e *bindEnv) login(t testing.TB, conn *grpc.ClientConn) (access, refresh string) {
	t.Helper()
	var hdr metadata.MD
	if _, err := testpb.NewTestServiceClient(conn).EmptyCall(context.Background(), &testpb.Empty{}, grpc.Header(&hdr)); err != nil {
		t.Fatalf("login: %v", err)
	}
	a, r := hdr.Get("access-token"), hdr.Get("refresh-token")
	if len(a) != 1 || len(r) != 1 {
		t.Fatalf("login header has %d access and %d refresh tokens, want 1 each", len(a), len(r))
	}
	return a[0], r[0]
}

// wantBindRejected fails the test unless err is a TOKEN_INVALID rejection
// made before the handler ran.
func wantBindRejected(t testing.TB, err error) {
	t.Helper()
	wantReason(t, err, ReasonTokenInvalid)
	if !handlerNotRun(err) {
		t.Fatalf("rejection %v does not say handler_ran false", err)
	}
}

// bindCnf returns the thumbprint of the cnf claim of tok, and whether it
// has one; it fails the test if tok does not decode.
func bindCnf(t testing.TB, tok string) (Thumbprint, bool) {
	t.Helper()
	c := decodeToken(t, tok).claims
	if c.Confirmation == nil {
		return Thumbprint{}, false
	}
	return c.Confirmation.X5tS256, true
}

// bindPresenters are the connections a test presents a token on: the one
// it is bound to, and every kind that must be refused.
type bindPresenter struct {
	name string
	conn *grpc.ClientConn
	ok   bool
}

func (e *bindEnv) presenters(t testing.TB, bound tls.Certificate) []bindPresenter {
	t.Helper()
	other := e.pki.client(t, "inventory")
	sameSubject := e.pki.client(t, bound.Leaf.Subject.CommonName)
	sameKey := e.pki.issue(t, bound.Leaf.Subject.CommonName, x509.ExtKeyUsageClientAuth, bound.PrivateKey.(*ecdsa.PrivateKey))
	plain := newEnv(t, withKeys(e.keys), withClock(e.clock))
	return []bindPresenter{
		{"bound certificate", e.pki.dial(t, e.testEnv, &bound), true},
		{"bound certificate, another connection", e.pki.dial(t, e.testEnv, &bound), true},
		{"another certificate", e.pki.dial(t, e.testEnv, &other), false},
		{"same subject, another key", e.pki.dial(t, e.testEnv, &sameSubject), false},
		{"same key, reissued certificate", e.pki.dial(t, e.testEnv, &sameKey), false},
		{"TLS without a client certificate", e.pki.dial(t, e.testEnv, nil), false},
		{"plaintext", plain.dial(t), false},
	}
}

func TestUnary_CertificateBound(t *testing.T) {
	e := newBindEnv(t)
	orders := e.pki.client(t, "orders")
	tok, _ := e.login(t, e.pki.dial(t, e.testEnv, &orders))
	if got, ok := bindCnf(t, tok); !ok || got != CertificateThumbprint(orders.Leaf) {
		t.Fatalf("login token cnf = %v, %v; want the thumbprint of the login's client certificate", got, ok)
	}
	for _, p := range e.presenters(t, orders) {
		t.Run(p.name, func(t *testing.T) {
			before := e.svc.calls.Load()
			_, err := unaryCall(t, testpb.NewTestServiceClient(p.conn), tok)
			ran := e.svc.calls.Load() - before
			if p.ok {
				if err != nil || ran != 1 {
					t.Fatalf("err = %v, handler ran %d times; want success", err, ran)
				}
				return
			}
			wantBindRejected(t, err)
			if ran != 0 {
				t.Fatalf("handler ran %d times, want 0", ran)
			}
		})
	}
}

func TestStream_CertificateBound(t *testing.T) {
	e := newBindEnv(t)
	orders := e.pki.client(t, "orders")
	tok, _ := e.login(t, e.pki.dial(t, e.testEnv, &orders))
	for _, p := range e.presenters(t, orders) {
		t.Run(p.name, func(t *testing.T) {
			before := e.svc.calls.Load()
			st, err := testpb.NewTestServiceClient(p.conn).StreamingOutputCall(bearerCtx(tok),
				&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
			if err == nil {
				err = drain(st)
			}
			ran := e.svc.calls.Load() - before
			if p.ok {
				if err != nil || ran != 1 {
					t.Fatalf("err = %v, handler ran %d times; want success", err, ran)
				}
				return
			}
			wantBindRejected(t, err)
			if ran != 0 {
				t.Fatalf("handler ran %d times, want 0", ran)
			}
		})
	}
}

// TestCertificateBound_CacheHit: a token that verified once is checked
// against each call's certificate all the same; the refusal names the
// session in its event.
func TestCertificateBound_CacheHit(t *testing.T) {
	e := newBindEnv(t)
	orders, thief := e.pki.client(t, "orders"), e.pki.client(t, "thief")
	tok, _ := e.login(t, e.pki.dial(t, e.testEnv, &orders))
	sid := decodeToken(t, tok).claims.SessionID
	good := testpb.NewTestServiceClient(e.pki.dial(t, e.testEnv, &orders))
	bad := testpb.NewTestServiceClient(e.pki.dial(t, e.testEnv, &thief))
	e.events.take()

	for i, step := range []struct {
		c     testpb.TestServiceClient
		ok    bool
		cache CacheResult
	}{
		{good, true, CacheMiss},
		{bad, false, CacheHit},
		{good, true, CacheHit},
		{bad, false, CacheHit},
	} {
		_, err := unaryCall(t, step.c, tok)
		if step.ok != (err == nil) {
			t.Fatalf("call %d: err = %v, want ok %v", i, err, step.ok)
		}
		if !step.ok {
			wantBindRejected(t, err)
		}
		evs := e.events.take()
		if len(evs) != 1 {
			t.Fatalf("call %d: %d events, want 1", i, len(evs))
		}
		ev := evs[0]
		if ev.Cache != step.cache {
			t.Errorf("call %d: cache %v, want %v", i, ev.Cache, step.cache)
		}
		if !step.ok && (ev.Kind != EventRejected || ev.Reason != ReasonTokenInvalid || ev.SessionID != sid) {
			t.Errorf("call %d: event %v %v session %q, want rejected TOKEN_INVALID of session %q", i, ev.Kind, ev.Reason, ev.SessionID, sid)
		}
	}
}

// TestCertificateBound_Renewal: a renewal carries the login's cnf, byte
// for byte, and is bound as the login token was; a holder on the bound
// connection swaps it in.
func TestCertificateBound_Renewal(t *testing.T) {
	e := newBindEnv(t)
	orders, thief := e.pki.client(t, "orders"), e.pki.client(t, "thief")
	conn := e.pki.dial(t, e.testEnv, &orders)
	tok, _ := e.login(t, conn)
	e.clock.Advance(13 * time.Hour) // within RenewBefore of the default policy

	h, err := NewTokenHolder(tok, WithClock(e.clock.Now)) // TLS: no AllowInsecureTransport
	if err != nil {
		t.Fatal(err)
	}
	client := testpb.NewTestServiceClient(e.pki.dial(t, e.testEnv, &orders,
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor())))
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	renewed := h.Token()
	if renewed == tok {
		t.Fatal("the holder swapped in no renewal")
	}
	if got, want := string(claimsSegmentTB(t, renewed)["cnf"]), string(claimsSegmentTB(t, tok)["cnf"]); got != want || want == "" {
		t.Fatalf("renewal cnf = %s, want %s", got, want)
	}
	if _, err := unaryCall(t, testpb.NewTestServiceClient(e.pki.dial(t, e.testEnv, &thief)), renewed); err == nil {
		t.Fatal("renewal accepted from another certificate")
	} else {
		wantBindRejected(t, err)
	}
	if _, err := unaryCall(t, testpb.NewTestServiceClient(conn), renewed); err != nil {
		t.Fatalf("renewal refused from its certificate: %v", err)
	}
}

// claimsSegmentTB is claimsSegment(t, tok, 1) for any testing.TB.
func claimsSegmentTB(t testing.TB, tok string) map[string]json.RawMessage {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments, want 3", len(parts))
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCertificateBound_Refresh: the refresh token of a bound session is
// bound too. Presented from anywhere else it is refused before the store
// is asked, so it is not rotated; from its certificate it gives a pair
// bound to the same certificate.
func TestCertificateBound_Refresh(t *testing.T) {
	ms := &memstore.SessionStore{}
	e := newBindEnv(t, withStore(ms))
	orders, thief := e.pki.client(t, "orders"), e.pki.client(t, "thief")
	conn := e.pki.dial(t, e.testEnv, &orders)
	access, refresh := e.login(t, conn)
	want, _ := bindCnf(t, access)
	if got, ok := bindCnf(t, refresh); !ok || got != want {
		t.Fatalf("refresh token cnf = %v, %v; want the access token's", got, ok)
	}
	plain := newEnv(t, withKeys(e.keys), withClock(e.clock), withStore(ms))
	e.clock.Advance(time.Hour)
	for name, c := range map[string]*grpc.ClientConn{
		"another certificate": e.pki.dial(t, e.testEnv, &thief),
		"no certificate":      e.pki.dial(t, e.testEnv, nil),
		"plaintext":           plain.dial(t),
	} {
		_, err := slidejwtv1.NewTokenServiceClient(c).Refresh(context.Background(), &slidejwtv1.RefreshRequest{RefreshToken: refresh})
		if r, _ := ReasonOf(err); status.Code(err) != codes.Unauthenticated || r != ReasonTokenInvalid {
			t.Fatalf("refresh from %s: %v, want TOKEN_INVALID", name, err)
		}
	}
	e.events.take()
	resp, err := slidejwtv1.NewTokenServiceClient(conn).Refresh(context.Background(), &slidejwtv1.RefreshRequest{RefreshToken: refresh})
	if err != nil {
		t.Fatalf("refresh from the bound certificate: %v", err)
	}
	if refreshed := e.events.kinds(EventRefreshed); len(refreshed) != 1 || refreshed[0].Outcome != store.OK {
		t.Fatalf("refresh events %+v, want one with outcome OK (the refusals rotated nothing)", refreshed)
	}
	pair := resp.GetTokens()
	for _, tok := range []string{pair.GetAccessToken(), pair.GetRefreshToken()} {
		if got, ok := bindCnf(t, tok); !ok || got != want {
			t.Fatalf("refreshed token cnf = %v, %v; want the session's", got, ok)
		}
	}
	if _, err := unaryCall(t, testpb.NewTestServiceClient(conn), pair.GetAccessToken()); err != nil {
		t.Fatalf("refreshed token refused from its certificate: %v", err)
	}
	_, err = unaryCall(t, testpb.NewTestServiceClient(e.pki.dial(t, e.testEnv, &thief)), pair.GetAccessToken())
	wantBindRejected(t, err)
}

// bindForgeries are tokens of the session of tok, signed by k, that a
// server would accept as later tokens of it but for their cnf: without
// one, bound to another certificate, and (for an unbound tok) bound.
func bindForgeries(t testing.TB, k *Key, tok string, exp time.Time) map[string]string {
	t.Helper()
	other := Thumbprint{1, 2, 3}
	out := map[string]string{}
	for name, cnf := range map[string]*Confirmation{"no cnf": nil, "another cnf": {X5tS256: other}} {
		c := decodeToken(t, tok).claims
		if c.Confirmation == nil && cnf == nil {
			continue // not a change of this token's cnf
		}
		c.Confirmation = cnf
		c.ExpiresAt, c.ID, c.Fresh = jwt.NewNumericDate(exp), randomID(), false
		out[name] = delForge(t, k, c)
	}
	return out
}

// bindRenewal is a genuine-looking renewal of tok expiring at exp, its cnf
// kept.
func bindRenewal(t testing.TB, k *Key, tok string, exp time.Time) string {
	t.Helper()
	c := decodeToken(t, tok).claims
	c.ExpiresAt, c.ID, c.Fresh = jwt.NewNumericDate(exp), randomID(), false
	return delForge(t, k, c)
}

// TestCertificateBound_HolderRefusesRebinding: a holder takes no renewal
// and no refreshed pair that drops, changes or adds a cnf, however well
// signed.
func TestCertificateBound_HolderRefusesRebinding(t *testing.T) {
	e := newEnv(t, withMemStore())
	cert := newBindPKI(t).client(t, "orders")
	bound, err := e.server.StartSession(context.Background(), "orders", nil, BindToCertificate(cert.Leaf))
	if err != nil {
		t.Fatal(err)
	}
	unbound := e.startSession(t, nil)
	exp := bound.Expiry.Add(time.Minute)
	k := e.keys.active

	for _, s := range []Session{bound, unbound} {
		forged := bindForgeries(t, k, s.AccessToken, exp)
		if len(forged) == 0 {
			t.Fatal("no forgery")
		}
		for name, tok := range forged {
			h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now))
			if err != nil {
				t.Fatal(err)
			}
			if h.offer(tok) {
				t.Errorf("holder swapped in a renewal with %s", name)
			}
		}
		h, err := NewTokenHolder(s.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now))
		if err != nil {
			t.Fatal(err)
		}
		if !h.offer(bindRenewal(t, k, s.AccessToken, exp)) {
			t.Error("holder refused a renewal that keeps the cnf")
		}
	}

	// A refreshed pair: both tokens must keep the cnf.
	rt := decodeToken(t, bound.RefreshToken).claims
	rt.Confirmation = nil
	unboundRefresh, err := signCompact(k, rt, refreshTokenType)
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string]*slidejwtv1.TokenPair{
		"access token without cnf":  {AccessToken: bindForgeries(t, k, bound.AccessToken, exp)["no cnf"], RefreshToken: bound.RefreshToken},
		"access token, another cnf": {AccessToken: bindForgeries(t, k, bound.AccessToken, exp)["another cnf"], RefreshToken: bound.RefreshToken},
		"refresh token without cnf": {AccessToken: bindRenewal(t, k, bound.AccessToken, exp), RefreshToken: unboundRefresh},
	} {
		h, err := NewTokenHolder(bound.AccessToken, AllowInsecureTransport(), WithClock(e.clock.Now),
			WithRefreshToken(bound.RefreshToken), BindTarget("bufnet"))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.install(pair); err == nil || h.Token() != bound.AccessToken || h.RefreshToken() != bound.RefreshToken {
			t.Errorf("%s: install = %v, want it refused and the tokens kept", name, err)
		}
	}
	if _, err := NewTokenHolder(bound.AccessToken, AllowInsecureTransport(), WithRefreshToken(unboundRefresh), BindTarget("bufnet")); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("NewTokenHolder with a refresh token without the cnf: %v, want ErrInvalidOption", err)
	}
}

// TestCertificateBound_AcceptDelegated: a verify-only server relays no
// answer of its renewal service whose cnf is not the presented token's.
func TestCertificateBound_AcceptDelegated(t *testing.T) {
	e := newEnv(t)
	cert := newBindPKI(t).client(t, "orders")
	bound, err := e.server.StartSession(context.Background(), "orders", nil, BindToCertificate(cert.Leaf))
	if err != nil {
		t.Fatal(err)
	}
	unbound := e.startSession(t, nil)
	exp := bound.Expiry.Add(time.Minute)
	v, k := e.server.ver.Load(), e.keys.active
	for _, s := range []Session{bound, unbound} {
		c := compactClaims(decodeToken(t, s.AccessToken).claims)
		for name, tok := range bindForgeries(t, k, s.AccessToken, exp) {
			if r := e.server.acceptDelegated(v, c, tok); r.err == nil {
				t.Errorf("answer with %s relayed", name)
			}
		}
		if r := e.server.acceptDelegated(v, c, bindRenewal(t, k, s.AccessToken, exp)); r.err != nil {
			t.Errorf("answer that keeps the cnf refused: %v", r.err)
		}
	}
}

// TestCertificateBound_NotDelegated: a verify-only server does not ask its
// renewal service to renew a bound token, which the renewal service would
// see on the verify-only server's connection and refuse; the call goes on
// without a renewal. An unbound token of the same mesh is renewed.
func TestCertificateBound_NotDelegated(t *testing.T) {
	pki := newBindPKI(t)
	m := newDelMesh(t, nil, []envOption{pki.serve()})
	orders := pki.client(t, "orders")
	bound, err := m.auth.server.StartSession(context.Background(), "orders", nil, BindToCertificate(orders.Leaf))
	if err != nil {
		t.Fatal(err)
	}
	unbound := m.auth.startSession(t, nil)
	m.clock.Advance(delDue)
	client := testpb.NewTestServiceClient(pki.dial(t, m.svc, &orders))

	renewed, err := unaryCall(t, client, bound.AccessToken)
	if err != nil || renewed != "" || m.renews() != 0 {
		t.Fatalf("bound token: err %v, renewed %v, %d Renew calls; want success, no renewal, no Renew", err, renewed != "", m.renews())
	}
	resp, err := slidejwtv1.NewTokenServiceClient(pki.dial(t, m.svc, &orders)).Renew(bearerCtx(bound.AccessToken), &slidejwtv1.RenewRequest{})
	if err != nil || resp.GetAccessToken() != "" || m.renews() != 0 {
		t.Fatalf("Renew of the bound token: %v, token %v, %d Renew calls at auth; want an empty answer and none", err, resp.GetAccessToken() != "", m.renews())
	}
	renewed, err = unaryCall(t, client, unbound.AccessToken)
	if err != nil || renewed == "" || m.renews() != 1 {
		t.Fatalf("unbound token: err %v, renewed %v, %d Renew calls; want success, a renewal, one Renew", err, renewed != "", m.renews())
	}
}

// TestCertificateBound_ForwarderRefuses: a token bound to the caller's
// certificate is never forwarded (downstream would see this service's
// certificate): the call fails before anything is sent, and the caller
// gets no slidejwt reason about its session. An unbound token is
// forwarded as before.
func TestCertificateBound_ForwarderRefuses(t *testing.T) {
	for _, kind := range []string{"unary", "stream"} {
		t.Run(kind, func(t *testing.T) {
			pki := newBindPKI(t)
			auth, up := new(fwdAuthLog), new(fwdUpSvc)
			down := newEnv(t, withBefore(auth.unary, auth.stream))
			upEnv := newEnv(t, withKeys(down.keys), withClock(down.clock), withService(up), pki.serve())
			fwd, err := upEnv.server.NewForwarder(AllowInsecureTransport())
			if err != nil {
				t.Fatal(err)
			}
			downVia := testpb.NewTestServiceClient(down.dial(t,
				grpc.WithChainUnaryInterceptor(fwd.UnaryClientInterceptor()),
				grpc.WithChainStreamInterceptor(fwd.StreamClientInterceptor())))
			up.do = func(ctx context.Context) error { return fwdDownCall(ctx, downVia, kind) }

			alice := pki.client(t, "alice")
			client := testpb.NewTestServiceClient(pki.dial(t, upEnv, &alice))
			bound, err := upEnv.server.StartSession(context.Background(), "alice", nil, BindToCertificate(alice.Leaf))
			if err != nil {
				t.Fatal(err)
			}
			_, err = unaryCall(t, client, bound.AccessToken)
			if status.Code(err) != codes.FailedPrecondition || hasSlidejwtInfo(status.Convert(err)) {
				t.Fatalf("bound token: caller got %v, want FailedPrecondition without a slidejwt reason", err)
			}
			if !errors.Is(up.lastErr(), ErrBoundToken) {
				t.Fatalf("handler's downstream call: %v, want ErrBoundToken", up.lastErr())
			}
			if calls, _, _ := auth.get(); calls != 0 {
				t.Fatalf("%d calls reached downstream, want 0", calls)
			}

			unbound := upEnv.startSession(t, nil)
			if _, err := unaryCall(t, client, unbound.AccessToken); err != nil {
				t.Fatalf("unbound token: %v", err)
			}
			if calls, _, vals := auth.get(); calls != 1 || vals[0] != "Bearer "+unbound.AccessToken {
				t.Fatalf("downstream got %d calls, want 1 with the unbound token", calls)
			}
		})
	}
}

// TestCertificateBound_ForwarderDropsBoundRelay: a downstream renewal of a
// forwarded (unbound) token that carries a cnf is not relayed.
func TestCertificateBound_ForwarderDropsBoundRelay(t *testing.T) {
	e := newEnv(t)
	f, err := e.server.NewForwarder(AllowInsecureTransport())
	if err != nil {
		t.Fatal(err)
	}
	s := e.startSession(t, nil)
	exp := s.Expiry.Add(time.Minute)
	c := compactClaims(decodeToken(t, s.AccessToken).claims)
	fc := &forwardCall{claims: c, best: c.exp()}
	forged := bindForgeries(t, e.keys.active, s.AccessToken, exp)
	if len(forged) != 1 {
		t.Fatalf("%d forgeries, want the bound one", len(forged))
	}
	for name, tok := range forged {
		if _, ok := f.accept(fc, tok); ok {
			t.Errorf("relay of a renewal with %s accepted", name)
		}
	}
	if _, ok := f.accept(fc, bindRenewal(t, e.keys.active, s.AccessToken, exp)); !ok {
		t.Error("relay of a renewal that keeps the (absent) cnf refused")
	}
}

// bindPeerCtx returns ctx as a call's context whose TLS client
// certificate is cert.
func bindPeerCtx(ctx context.Context, cert *x509.Certificate) context.Context {
	return peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{
		State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}},
	}})
}

// TestCertificateBound_MalformedCnf: a cnf claim is one object with one
// x5t#S256 member, a 43-character base64url string of 32 bytes. Anything
// else is TOKEN_INVALID at the server, even from the right certificate,
// and a token the holder does not take.
func TestCertificateBound_MalformedCnf(t *testing.T) {
	cert := newBindPKI(t).client(t, "orders")
	tp := CertificateThumbprint(cert.Leaf)
	b64 := tp.String()
	std := base64.StdEncoding.EncodeToString(tp[:])
	// The same 32 bytes but for the two bits after them: not strict.
	last := strings.IndexByte(base64URLAlphabet, b64[42])
	loose := b64[:42] + string(base64URLAlphabet[last|1])
	s, err := NewServer(claimsKeys(t), WithClock(func() time.Time { return t0.Add(time.Minute) }))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, extra string
		ok          bool
	}{
		{"valid", `"cnf":{"x5t#S256":"` + b64 + `"}`, true},
		{"valid, with spaces", `"cnf" : { "x5t#S256" : "` + b64 + `" }`, true},
		{"valid, escaped name", `"cnf":{"x5t\u0023S256":"` + b64 + `"}`, true},
		{"two x5t#S256", `"cnf":{"x5t#S256":"` + b64 + `","x5t#S256":"` + b64 + `"}`, false},
		{"two x5t#S256, one escaped", `"cnf":{"x5t#S256":"` + b64 + `","x5t\u0023S256":"` + b64 + `"}`, false},
		{"two cnf", `"cnf":{"x5t#S256":"` + b64 + `"},"cnf":{"x5t#S256":"` + b64 + `"}`, false},
		{"cnf in another case", `"CNF":{"x5t#S256":"` + b64 + `"}`, false},
		{"x5t#S256 in another case", `"cnf":{"X5T#S256":"` + b64 + `"}`, false},
		{"another member too", `"cnf":{"x5t#S256":"` + b64 + `","jkt":"` + b64 + `"}`, false},
		{"another method only", `"cnf":{"jkt":"` + b64 + `"}`, false},
		{"empty object", `"cnf":{}`, false},
		{"null", `"cnf":null`, false},
		{"a string", `"cnf":"` + b64 + `"`, false},
		{"an array", `"cnf":["` + b64 + `"]`, false},
		{"a number", `"cnf":1`, false},
		{"thumbprint not a string", `"cnf":{"x5t#S256":1}`, false},
		{"thumbprint null", `"cnf":{"x5t#S256":null}`, false},
		{"thumbprint empty", `"cnf":{"x5t#S256":""}`, false},
		{"thumbprint too short", `"cnf":{"x5t#S256":"` + b64[:42] + `"}`, false},
		{"thumbprint too long", `"cnf":{"x5t#S256":"` + b64 + `A"}`, false},
		{"thumbprint of SHA-1 length", `"cnf":{"x5t#S256":"` + b64[:27] + `"}`, false},
		{"thumbprint padded", `"cnf":{"x5t#S256":"` + b64 + `="}`, false},
		{"thumbprint in standard base64", `"cnf":{"x5t#S256":"` + std + `"}`, false},
		{"thumbprint with loose bits", `"cnf":{"x5t#S256":"` + loose + `"}`, false},
		{"thumbprint in hex", `"cnf":{"x5t#S256":"` + strings.Repeat("ab", 32) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := claimsSign(claimsPayload(tc.extra))
			ran := false
			ctx := bindPeerCtx(metadata.NewIncomingContext(context.Background(), bearerMD(tok)), cert.Leaf)
			_, err := s.UnaryServerInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"},
				func(context.Context, any) (any, error) { ran = true; return nil, nil })
			_, herr := NewTokenHolder(tok, AllowInsecureTransport())
			if tc.ok {
				if err != nil || !ran || herr != nil {
					t.Fatalf("server %v (handler ran %v), holder %v; want both to take it", err, ran, herr)
				}
				return
			}
			wantReason(t, err, ReasonTokenInvalid)
			if ran {
				t.Fatal("handler ran")
			}
			// The holder decodes the payload with encoding/json, which
			// keeps the last of two cnf and reads "CNF" as cnf; the server
			// refuses those, and a holder only matters for tokens a
			// server gave it.
			if tc.name != "two cnf" && tc.name != "cnf in another case" && !errors.Is(herr, ErrMalformedToken) {
				t.Fatalf("holder: %v, want ErrMalformedToken", herr)
			}
		})
	}
}

const base64URLAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// TestCertificateBound_Claims: a bound session's claims carry the
// thumbprint, its JSON is RFC 8705's, and cnf is the session model's.
func TestCertificateBound_Claims(t *testing.T) {
	e := newEnv(t)
	cert := newBindPKI(t).client(t, "orders")
	s, err := e.server.StartSession(bindPeerCtx(context.Background(), cert.Leaf), "orders",
		map[string]any{"role": "admin"}, BindToPeerCertificate())
	if err != nil {
		t.Fatal(err)
	}
	tp := CertificateThumbprint(cert.Leaf)
	if got, want := string(claimsSegmentTB(t, s.AccessToken)["cnf"]), `{"x5t#S256":"`+tp.String()+`"}`; got != want {
		t.Fatalf("cnf = %s, want %s", got, want)
	}
	if len(tp.String()) != 43 {
		t.Fatalf("thumbprint %q has %d characters, want 43", tp, len(tp.String()))
	}
	_, err = e.server.StartSession(context.Background(), "orders", nil, BindToPeerCertificate())
	if !errors.Is(err, ErrNoClientCertificate) {
		t.Errorf("StartSession bound to the peer without one: %v, want ErrNoClientCertificate", err)
	}
	if _, err := e.server.StartSession(context.Background(), "orders", nil, BindToCertificate(nil)); !errors.Is(err, ErrNoClientCertificate) {
		t.Errorf("BindToCertificate(nil): %v, want ErrNoClientCertificate", err)
	}
	for _, name := range []string{"cnf", "CNF", "Cnf"} {
		if _, err := e.server.StartSession(context.Background(), "orders", map[string]any{name: 1}); !errors.Is(err, ErrReservedClaim) {
			t.Errorf("custom claim %q: %v, want ErrReservedClaim", name, err)
		}
	}
	unbound := e.startSession(t, nil)
	if _, ok := claimsSegmentTB(t, unbound.AccessToken)["cnf"]; ok {
		t.Error("an unbound session's token has a cnf")
	}

	// The handler sees the thumbprint and the custom claims, in a copy of
	// its own.
	ctx := bindPeerCtx(metadata.NewIncomingContext(context.Background(), bearerMD(s.AccessToken)), cert.Leaf)
	_, err = e.server.UnaryServerInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"},
		func(ctx context.Context, _ any) (any, error) {
			c, _ := ClaimsFromContext(ctx)
			if c.Confirmation == nil || c.Confirmation.X5tS256 != tp {
				t.Errorf("handler's claims cnf = %v, want %v", c.Confirmation, tp)
			}
			if len(c.Custom) != 1 || string(c.Custom["role"]) != `"admin"` {
				t.Errorf("handler's custom claims = %q, want role \"admin\" only", c.Custom)
			}
			c.Confirmation.X5tS256 = Thumbprint{}
			if c2, _ := ClaimsFromContext(ctx); c2.Confirmation.X5tS256 != tp {
				t.Error("a handler's change reached the shared claims")
			}
			return nil, nil
		})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPeerThumbprint_Memo: the memo answers a certificate's own
// thumbprint, and forgets it once the certificate is collected.
func TestPeerThumbprint_Memo(t *testing.T) {
	pki := newBindPKI(t)
	der := pki.client(t, "orders").Certificate[0]
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	want := CertificateThumbprint(cert)
	for range 2 {
		if got := peerThumbprint(cert); got != want {
			t.Fatalf("peerThumbprint = %v, want %v", got, want)
		}
	}
	k := weak.Make(cert)
	if _, ok := thumbprints.Load(k); !ok {
		t.Fatal("no memo entry for the certificate")
	}
	runtime.KeepAlive(cert)
	cert = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		if _, ok := thumbprints.Load(k); !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the memo kept a collected certificate's entry")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkCertificateBound measures the server interceptor on a verified
// (cached) token, unbound and bound, on a call whose TLS client
// certificate is the bound one: the cost of binding is the peer lookup and
// the thumbprint, memoized per certificate ("bound"), or hashed and
// memoized for a certificate not seen before, as on a new connection
// ("bound-newcert", which also copies the certificate).
func BenchmarkCertificateBound(b *testing.B) {
	pki := newBindPKI(b)
	cert := pki.client(b, "orders").Leaf
	s, err := NewServer(testKeySet(b))
	if err != nil {
		b.Fatal(err)
	}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	info := &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"}
	for _, bc := range []struct {
		name string
		opts []SessionOption
		per  func() *x509.Certificate
	}{
		{"unbound", nil, func() *x509.Certificate { return cert }},
		{"bound", []SessionOption{BindToCertificate(cert)}, func() *x509.Certificate { return cert }},
		{"bound-newcert", []SessionOption{BindToCertificate(cert)}, func() *x509.Certificate {
			c := *cert // a new certificate object each call: the memo misses
			return &c
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sess, err := s.StartSession(context.Background(), "orders", nil, bc.opts...)
			if err != nil {
				b.Fatal(err)
			}
			in := metadata.NewIncomingContext(context.Background(), bearerMD(sess.AccessToken))
			intercept := s.UnaryServerInterceptor()
			if _, err := intercept(bindPeerCtx(in, cert), nil, info, handler); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := intercept(bindPeerCtx(in, bc.per()), nil, info, handler); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
