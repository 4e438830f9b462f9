package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// The mesh cases (issue 10): a signing server holds the private key,
// publishes its public keys as a JWKS (Server.JWKSHandler, served over
// TLS by httptest at interceptor.JWKSPath) and serves TokenService on a
// loopback TCP port of its own; the server under test only verifies,
// with an interceptor.RemoteKeySet reading that JWKS, fetched once at
// set-up (RemoteKeySet.Refresh, as a service does at start-up). Tokens
// are minted by the signer. ES256 and EdDSA only: an HMAC secret has no
// public half and no JWKS, so HS256 skips both cases (rather than
// measure a verify-only set holding the secret, which is not a mesh).
//
//   - steady-jwks: steady on the verify-only server; no renewal is due,
//     and the token is served from the verified-token cache after its
//     first call, which checks only that the remote keys are still
//     fresh. Its target is steady's, 1.10× floor.
//   - renew-delegated: renew-every on the verify-only server, with
//     WithDelegatedRenewal to the signer. Every call presents a token no
//     call presented before (the holder swapped in the last renewal), so
//     every call costs what the first call of a session's renewal window
//     costs: a verify, one TokenService/Renew call to the signer (which
//     verifies and signs) and a verify of the answer. That is the worst
//     case; the calls that follow in a real window share that one Renew
//     call. It is compared with renew-every, the same pattern renewed
//     locally. renew (the same token on every call) would measure only a
//     hit of the delegation cache, with one Renew call per loop.
//
// After the loop, a case fails unless the JWKS was fetched once (more
// only as the keys' max-age allows) and the signer received exactly one
// Renew call per call (renew-delegated) or none (steady-jwks); for
// renew-delegated, checkEvery also checks that every call was renewed and
// the holder swapped the renewal in.
const (
	caseSteadyJWKS     = "steady-jwks"
	caseRenewDelegated = "renew-delegated"
)

// meshJWKSAge is renew-delegated's JWKS max-age, refresh bound and
// maximum staleness: its fake clock runs a second per call, and the keys
// must stay fresh for far more calls than a timed loop makes (a year is
// about 31 million calls), or a loop would refetch on the fake schedule.
const meshJWKSAge = 365 * 24 * time.Hour

// meshRenewTimeout is renew-delegated's WithDelegatedRenewalTimeout,
// instead of the default of 1 s. The case measures what a delegated
// renewal costs, not the timeout. On the shared, loaded 2-core VM, one
// round of six once failed with 11 failed renewals: one delegated
// renewal failed (its cause was not recorded then; a stall past the 1 s
// timeout is the likely one, not reproduced since), and since a server
// remembers a failure for DefaultDelegatedRenewalRetry (10 s on the fake
// clock, 10 calls) the holder kept presenting the same token and the
// next 10 calls made no Renew call. The loop still fails on any failed
// renewal, and now says why.
const meshRenewTimeout = 10 * time.Second

// benchMesh is a mesh case's signing server and verify-only server.
type benchMesh struct {
	signer   *interceptor.Server // holds the private key; mints and renews
	verifier *interceptor.Server // verifies with remote; the server under test
	remote   *interceptor.RemoteKeySet
	clock    *benchClock // renew-delegated only: the fake clock of every party

	ready   time.Time    // when the set-up fetch of the JWKS ended
	fetches atomic.Int64 // JWKS requests the signer's handler answered
	renews  atomic.Int64 // TokenService/Renew calls the signer received
	failed  atomic.Int64 // EventRenewalFailed at the verifier
	// firstErr is the Err of the first EventRenewalFailed (it never holds
	// token text).
	firstErr atomic.Pointer[error]
}

// newBenchMesh starts case c's signer and JWKS endpoint, fetches the
// JWKS, and returns the mesh with its verifier, whose renewals are
// counted in f.renewals. For renew-delegated it sets f.clock. It skips
// tb for HS256.
func newBenchMesh(tb testing.TB, ctx context.Context, k *algKeys, f *fixture) *benchMesh {
	tb.Helper()
	if k.alg == "HS256" {
		tb.Skipf("%s has no JWKS (an HMAC secret has no public half); %s runs for ES256 and EdDSA", k.alg, f.name)
	}
	delegated := f.name == caseRenewDelegated
	m := &benchMesh{}
	var (
		common     []interceptor.ServerOption
		remoteOpts []interceptor.RemoteKeySetOption
		jwksOpts   []interceptor.JWKSHandlerOption
	)
	if delegated {
		m.clock = newBenchClock()
		f.clock = m.clock
		common = []interceptor.ServerOption{interceptor.WithPolicy(renewPolicy), interceptor.WithClock(m.clock.now)}
		remoteOpts = []interceptor.RemoteKeySetOption{
			interceptor.WithRemoteClock(m.clock.now),
			interceptor.WithJWKSRefreshBounds(time.Minute, meshJWKSAge),
			interceptor.WithJWKSMaxStale(meshJWKSAge),
		}
		jwksOpts = []interceptor.JWKSHandlerOption{interceptor.WithJWKSMaxAge(meshJWKSAge)}
	}

	signer, err := interceptor.NewServer(k.set, common...)
	if err != nil {
		tb.Fatal(err)
	}
	m.signer = signer
	countRenew := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if info.FullMethod == slidejwtv1.TokenService_Renew_FullMethodName {
			m.renews.Add(1)
		}
		return h(ctx, req)
	}
	signerAddr := serve(tb, []grpc.ServerOption{grpc.ChainUnaryInterceptor(countRenew, signer.UnaryServerInterceptor())},
		demoService{}, func(s *grpc.Server) { slidejwtv1.RegisterTokenServiceServer(s, signer.TokenService()) })

	jwks, err := signer.JWKSHandler(jwksOpts...)
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(interceptor.JWKSPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.fetches.Add(1)
		jwks.ServeHTTP(w, r)
	}))
	ts := httptest.NewTLSServer(mux)
	tb.Cleanup(ts.Close)
	remote, err := interceptor.NewRemoteKeySet(ts.URL+interceptor.JWKSPath,
		append([]interceptor.RemoteKeySetOption{interceptor.WithHTTPClient(ts.Client())}, remoteOpts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Refresh(ctx); err != nil {
		tb.Fatalf("%s: JWKS fetch: %v", f.name, err)
	}
	m.remote, m.ready = remote, time.Now()

	vopts := append([]interceptor.ServerOption{}, common...)
	if delegated {
		vopts = append(vopts,
			interceptor.WithDelegatedRenewal(dial(tb, signerAddr)),
			interceptor.WithDelegatedRenewalTimeout(meshRenewTimeout),
			interceptor.WithEventHook(func(_ context.Context, e interceptor.Event) {
				switch e.Kind {
				case interceptor.EventRenewed:
					f.renewals.Add(1)
				case interceptor.EventRenewalFailed:
					m.failed.Add(1)
					m.firstErr.CompareAndSwap(nil, &e.Err)
				}
			}))
	}
	verifier, err := interceptor.NewServer(remote.KeySet(), vopts...)
	if err != nil {
		tb.Fatal(err)
	}
	m.verifier = verifier
	return m
}

// check reports how the mesh fell short of its case after calls calls
// (counted for renew-delegated; 0 for steady-jwks, which must make no
// Renew call): one JWKS fetch at set-up and none per call, and one Renew
// call at the signer per call. steady-jwks runs on the wall clock, whose
// keys are refreshed (in the background) once per refresh interval, at
// least DefaultJWKSRefreshMin; renew-delegated's keys never are.
func (m *benchMesh) check(name string, calls int64) error {
	allowed := int64(1)
	if m.clock == nil {
		allowed += int64(time.Since(m.ready) / interceptor.DefaultJWKSRefreshMin)
	}
	if n := m.fetches.Load(); n < 1 || n > allowed {
		return fmt.Errorf("%s: %d JWKS fetches, want 1 at set-up (at most %d by now) and none per call", name, n, allowed)
	}
	if n := m.failed.Load(); n != 0 {
		return fmt.Errorf("%s: %d delegated renewals failed, the first with: %v", name, n, *m.firstErr.Load())
	}
	if n := m.renews.Load(); n != calls {
		return fmt.Errorf("%s: %d Renew calls at the signer for %d renewed calls, want one per renewed call", name, n, calls)
	}
	return nil
}

// TestMesh_Cases checks that the mesh cases do what they say, over more
// calls than TestBenchSetup's two: the server under test cannot sign, and
// refuses a token of a key that its JWKS does not publish under the same
// kid; its keys come from one JWKS fetch at set-up and none per call;
// steady-jwks renews nothing, and renew-delegated makes one Renew call at
// the signer per call, relays every renewal and the client swaps each one
// in, so that every call presents a new token.
func TestMesh_Cases(t *testing.T) {
	const calls = 25
	keys := mustKeys(t)
	for _, family := range families {
		for _, alg := range []string{"ES256", "EdDSA"} {
			for _, c := range []string{caseSteadyJWKS, caseRenewDelegated} {
				t.Run(family+"/"+alg+"/"+c, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
					defer cancel()
					f := newFixture(t, ctx, keys[alg], c)
					m := f.mesh
					if m.remote.KeySet().CanSign() {
						t.Fatal("the server under test can sign; want a verify-only key set")
					}
					if _, err := m.verifier.StartSession(ctx, benchSubject, nil); err == nil {
						t.Fatal("the server under test started a session; want it to refuse to sign")
					}
					if err := f.check(family); err != nil {
						t.Fatal(err)
					}
					op := (*fixture).unary
					if family == familyStreamOpen {
						op = (*fixture).streamOpen
					}
					seen := map[string]bool{f.holder.Token(): true}
					for i := range calls {
						if err := op(f); err != nil {
							t.Fatalf("call %d: %v", i+1, err)
						}
						seen[f.holder.Token()] = true
					}

					if got := m.fetches.Load(); got != 1 {
						t.Errorf("JWKS fetches: got %d, want 1", got)
					}
					// seen holds the token after check's calls and one per
					// loop call that renewed.
					var wantRenews, wantTokens int64 = 0, 1
					if c == caseRenewDelegated {
						// check's two calls and the loop's, each renewed once.
						wantRenews, wantTokens = calls+2, calls+1
						if got := f.calls; got != calls+2 {
							t.Errorf("calls counted: got %d, want %d", got, calls+2)
						}
					}
					if got := m.renews.Load(); got != wantRenews {
						t.Errorf("Renew calls at the signer: got %d, want %d", got, wantRenews)
					}
					if got := int64(len(seen)); got != wantTokens {
						t.Errorf("distinct tokens the client held: got %d, want %d", got, wantTokens)
					}
					if err := f.checkEvery(); err != nil {
						t.Error(err)
					}
				})
			}
		}
	}
}

// TestMesh_OtherKeyRefused checks that steady-jwks's server verifies with
// the JWKS's keys: a token signed by another key under the signer's kid
// is refused, while the signer's token is accepted.
func TestMesh_OtherKeyRefused(t *testing.T) {
	keys := mustKeys(t)
	for _, alg := range []string{"ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			f := newFixture(t, ctx, keys[alg], caseSteadyJWKS)
			other := otherKeySet(t, alg)
			s, err := interceptor.NewServer(other)
			if err != nil {
				t.Fatal(err)
			}
			sess, err := s.StartSession(ctx, benchSubject, nil)
			if err != nil {
				t.Fatal(err)
			}
			h, err := interceptor.NewTokenHolder(sess.AccessToken, interceptor.AllowInsecureTransport())
			if err != nil {
				t.Fatal(err)
			}
			conn := dial(t, f.addr, grpc.WithUnaryInterceptor(h.UnaryClientInterceptor()))
			if err := f.unary(); err != nil {
				t.Fatalf("Echo with the signer's token: %v", err)
			}
			_, err = demov1.NewDemoServiceClient(conn).Echo(ctx, f.echoReq)
			if got, want := status.Code(err), codes.Unauthenticated; got != want {
				t.Errorf("Echo with another key's token under the same kid: got code %v, want %v (err %v)", got, want, err)
			}
			if got := f.mesh.fetches.Load(); got != 1 {
				t.Errorf("JWKS fetches: got %d, want 1 (a known kid makes no fetch)", got)
			}
		})
	}
}

// otherKeySet returns a set that signs with a new key of alg under the
// bench key's kid.
func otherKeySet(t *testing.T, alg string) *interceptor.KeySet {
	t.Helper()
	var (
		method jwt.SigningMethod
		priv   any
		err    error
	)
	switch alg {
	case "ES256":
		method = jwt.SigningMethodES256
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		method = jwt.SigningMethodEdDSA
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("no other key for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	key, err := interceptor.NewKey("bench-"+strings.ToLower(alg), method, priv)
	if err != nil {
		t.Fatal(err)
	}
	set, err := interceptor.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	return set
}
