package interceptor

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// rotKey is an HS256 key with id kid and a fresh secret.
func rotKey(t testing.TB, kid string) *Key {
	t.Helper()
	return keysMust(t, kid, jwt.SigningMethodHS256, testSecret(t))
}

// rotKid returns the kid header of tok.
func rotKid(t testing.TB, tok string) string {
	t.Helper()
	kid, _ := decodeToken(t, tok).header["kid"].(string)
	return kid
}

// TestRotation_RenewalSignedBySetThatVerified: RotateKeys while a call is
// being authenticated (after its token verified under set A, before its
// renewal is signed) does not change the key that signs the renewal: it is
// A's active key, not the new set's.
func TestRotation_RenewalSignedBySetThatVerified(t *testing.T) {
	for _, kind := range []string{"unary", streamServer} {
		t.Run(kind, func(t *testing.T) {
			a, b := keysSet(t, rotKey(t, "a1")), keysSet(t, rotKey(t, "b1"))
			var srv *Server
			var rotate atomic.Bool
			rotated := make(chan error, 1)
			// The revocation list is asked after the token verified and
			// before the renewal is signed: rotate there, once.
			list := store.RevocationFunc(func(context.Context, string, time.Time) (bool, error) {
				if rotate.CompareAndSwap(true, false) {
					rotated <- srv.RotateKeys(b)
				}
				return false, nil
			})
			e := newEnv(t, withKeys(a), withServerOptions(WithRevocationList(list)))
			srv, svc, clock := e.server, e.svc, e.clock
			client := srvClient(t, e)
			s := e.startSession(t, nil)
			clock.Advance(srvDueAfter)
			rotate.Store(true)

			var hdr, tr metadata.MD
			var err error
			ctx := bearerCtx(s.AccessToken)
			if kind == "unary" {
				_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&tr))
			} else {
				var st grpc.ServerStreamingClient[testpb.StreamingOutputCallResponse]
				st, err = client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
					ResponseParameters: []*testpb.ResponseParameters{{}},
				}, grpc.Header(&hdr), grpc.Trailer(&tr))
				if err == nil {
					err = drain(st)
				}
			}
			if err != nil {
				t.Fatalf("call during RotateKeys: %v", err)
			}
			select {
			case err := <-rotated:
				if err != nil {
					t.Fatalf("RotateKeys: %v", err)
				}
			default:
				t.Fatal("the call did not reach the rotation point")
			}
			if n := svc.calls.Load(); n != 1 {
				t.Fatalf("handler ran %d times, want 1", n)
			}
			renewed := renewedToken(t, tr)
			if kind != "unary" && renewedToken(t, hdr) != renewed {
				t.Fatal("header and trailer carry different renewals")
			}
			if renewed == "" {
				t.Fatal("no renewal, want one")
			}
			if got := rotKid(t, renewed); got != "a1" {
				t.Fatalf("renewal signed with kid %q, want %q (the set that verified the call)", got, "a1")
			}
			check, err := NewServer(a, WithClock(clock.Now))
			if err != nil {
				t.Fatal(err)
			}
			if _, aerr := check.ver.Load().verify(renewed); aerr != nil {
				t.Fatalf("renewal does not verify under the set that verified the call: %v", aerr)
			}
			// Later calls verify with, and renew under, the new set.
			if got := srv.ver.Load().keys.Active().ID(); got != "b1" {
				t.Fatalf("active key after RotateKeys = %q, want b1", got)
			}
		})
	}
}

// TestRotation_TwoPhaseRolling: the two-phase key rotation logs nobody out
// in a rolling deploy. Two replicas share one session store; one client
// alternates between them, so each presents the other's latest renewal.
//
//	phase 0: every replica signs with the old key
//	phase 1: replica by replica, {old active, new verify-only}
//	phase 2: replica by replica, {new active, old verify-only}
//
// At every step, also while the replicas disagree, calls succeed on both
// and each accepts the other's renewals. A refresh token minted under the
// old key still refreshes after phase 2 while the old key is kept, which
// must be for the refresh tokens' lifetime: a replica that drops it early
// refuses that token with TOKEN_INVALID.
func TestRotation_TwoPhaseRolling(t *testing.T) {
	oldKey, newKey := rotKey(t, "old"), rotKey(t, "new")
	phase0 := keysSet(t, oldKey)
	phase1 := keysSet(t, oldKey, newKey)
	phase2 := keysSet(t, newKey, oldKey)

	clock := newFakeClock(t0)
	shared := &memstore.SessionStore{}
	// Renew on every call a minute or more after the last renewal.
	policy := Policy{TTL: time.Hour, RenewBefore: time.Hour}
	var replicas [2]*Server
	var envs [2]*testEnv
	for i := range replicas {
		envs[i] = newEnv(t, withKeys(phase0), withClock(clock), withStore(shared), withServerOptions(WithPolicy(policy)))
		replicas[i] = envs[i].server
	}
	sess, err := replicas[0].StartSession(context.Background(), "alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewTokenHolder(sess.AccessToken, AllowInsecureTransport(), WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	var held, plain [2]testpb.TestServiceClient // through the holder; without it
	var tokens [2]slidejwtv1.TokenServiceClient
	for i, e := range envs {
		held[i] = testpb.NewTestServiceClient(e.dial(t, grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor())))
		plain[i], tokens[i] = e.clients(t)
	}

	for _, step := range []struct {
		name    string
		replica int     // the replica that gets keys; -1 for none
		keys    *KeySet // its new key set
		wantKid [2]string
	}{
		{"phase 0", -1, nil, [2]string{"old", "old"}},
		{"phase 1, replica 0 done", 0, phase1, [2]string{"old", "old"}},
		{"phase 1, replica 1 done", 1, phase1, [2]string{"old", "old"}},
		{"phase 2, replica 0 done", 0, phase2, [2]string{"new", "old"}},
		{"phase 2, replica 1 done", 1, phase2, [2]string{"new", "new"}},
	} {
		if step.replica >= 0 {
			if err := replicas[step.replica].RotateKeys(step.keys); err != nil {
				t.Fatal(err)
			}
		}
		// 0, 1, 0, 1: each replica is presented the other's renewal.
		for _, i := range []int{0, 1, 0, 1} {
			clock.Advance(time.Minute)
			presented := h.Token()
			if _, err := held[i].UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
				t.Fatalf("%s: replica %d refused a token with kid %q: %v", step.name, i, rotKid(t, presented), err)
			}
			renewed := h.Token()
			if renewed == presented {
				t.Fatalf("%s: replica %d sent no renewal", step.name, i)
			}
			if got := rotKid(t, renewed); got != step.wantKid[i] {
				t.Fatalf("%s: replica %d renewed under kid %q, want %q", step.name, i, got, step.wantKid[i])
			}
		}
	}

	// Days later, long past any access token of phase 0 but within the
	// refresh TTL, the login's refresh token (signed with the old key)
	// is still good on a replica that keeps the old key, and only there.
	if got := rotKid(t, sess.RefreshToken); got != "old" {
		t.Fatalf("refresh token kid = %q, want old", got)
	}
	clock.Set(t0.Add(2 * 24 * time.Hour))
	if err := replicas[1].RotateKeys(keysSet(t, newKey)); err != nil { // dropped too early
		t.Fatal(err)
	}
	_, err = refreshCall(tokens[1], sess.RefreshToken)
	wantReason(t, err, ReasonTokenInvalid)
	pair := refreshMust(t, tokens[0], sess.RefreshToken)
	if a, r := rotKid(t, pair.GetAccessToken()), rotKid(t, pair.GetRefreshToken()); a != "new" || r != "new" {
		t.Fatalf("refreshed pair kids = %q, %q; want new, new", a, r)
	}
	// The successor, signed with the new key, works on both.
	clock.Advance(time.Minute)
	for i, c := range plain {
		if _, err := unaryCall(t, c, pair.GetAccessToken()); err != nil {
			t.Fatalf("replica %d refused the refreshed access token: %v", i, err)
		}
	}
	refreshMust(t, tokens[1], pair.GetRefreshToken())
}
