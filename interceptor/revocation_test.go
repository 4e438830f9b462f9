package interceptor

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// revocationStream runs a streaming call of the given kind and returns its
// first error (nil when it completes).
func revocationStream(ctx context.Context, client testpb.TestServiceClient, kind string) error {
	switch kind {
	case "server-stream":
		st, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
		if err != nil {
			return err
		}
		return drain(st)
	case "client-stream":
		st, err := client.StreamingInputCall(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&testpb.StreamingInputCallRequest{}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = st.CloseAndRecv()
		return err
	case "bidi":
		st, err := client.FullDuplexCall(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(&testpb.StreamingOutputCallRequest{}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := st.Recv(); err != nil {
			return err
		}
		_ = st.CloseSend()
		_, err = st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

var revocationKinds = []string{"unary", "server-stream", "client-stream", "bidi"}

func TestRevocation_RevokedSession(t *testing.T) {
	for _, kind := range revocationKinds {
		t.Run(kind, func(t *testing.T) {
			list := &memstore.RevocationList{}
			e := newEnv(t, withServerOptions(WithRevocationList(list)))
			revoked := e.startSession(t, nil)
			other := e.startSession(t, nil)
			revokedClient, _ := e.holderClient(t, revoked.AccessToken)
			otherClient, _ := e.holderClient(t, other.AccessToken)
			ctx := context.Background()

			if err := revocationStream(ctx, revokedClient, kind); err != nil {
				t.Fatalf("before revocation: %v", err)
			}
			_ = list.Revoke(context.Background(), revoked.SessionID, e.clock.Now(), revoked.End)
			before := e.svc.calls.Load()
			wantReason(t, revocationStream(ctx, revokedClient, kind), ReasonSessionRevoked)
			if n := e.svc.calls.Load(); n != before {
				t.Fatalf("handler ran for a revoked session")
			}
			// A renewal due does not save the session either.
			e.clock.Advance(13 * time.Hour)
			wantReason(t, revocationStream(ctx, revokedClient, kind), ReasonSessionRevoked)
			if n := e.svc.calls.Load(); n != before {
				t.Fatalf("handler ran for a revoked session")
			}
			// Other sessions are unaffected.
			if err := revocationStream(ctx, otherClient, kind); err != nil {
				t.Fatalf("other session: %v", err)
			}
			if n := e.svc.calls.Load(); n != before+1 {
				t.Fatalf("handler ran %d times for the other session, want 1", n-before)
			}
		})
	}
}

func TestRevocation_StoreError(t *testing.T) {
	const secret = "redis: dial tcp 10.1.2.3:6379: connection refused"
	for _, kind := range revocationKinds {
		t.Run(kind, func(t *testing.T) {
			var mu sync.Mutex
			var asked []string
			store := store.RevocationFunc(func(_ context.Context, sid string, _ time.Time) (bool, error) {
				mu.Lock()
				asked = append(asked, sid)
				mu.Unlock()
				return false, errors.New(secret)
			})
			e := newEnv(t, withServerOptions(WithRevocationList(store)))
			s := e.startSession(t, nil)
			client, _ := e.holderClient(t, s.AccessToken)
			err := revocationStream(context.Background(), client, kind)
			if got := status.Code(err); got != codes.Unavailable {
				t.Fatalf("code = %v (err %v), want Unavailable", got, err)
			}
			msg := status.Convert(err).Message()
			for _, leak := range []string{"redis", "10.1.2.3", "refused", s.SessionID} {
				if strings.Contains(msg, leak) {
					t.Fatalf("message %q leaks %q", msg, leak)
				}
			}
			if n := e.svc.calls.Load(); n != 0 {
				t.Fatalf("handler ran %d times, want 0", n)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(asked) != 1 || asked[0] != s.SessionID {
				t.Fatalf("store asked about %d sids, want exactly the session's once", len(asked))
			}
		})
	}
}

// TestRevocation_NotRevokedByStore: the server asks the store with the
// token's sid and passes its "not revoked" answer through.
func TestRevocation_NotRevokedByStore(t *testing.T) {
	var got []string
	var mu sync.Mutex
	store := store.RevocationFunc(func(_ context.Context, sid string, _ time.Time) (bool, error) {
		mu.Lock()
		got = append(got, sid)
		mu.Unlock()
		return false, nil
	})
	e := newEnv(t, withServerOptions(WithRevocationList(store)))
	s := e.startSession(t, nil)
	client, _ := e.holderClient(t, s.AccessToken)
	if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != s.SessionID {
		t.Fatalf("store asked %d times, sid match %v; want once with the session's sid", len(got), len(got) == 1 && got[0] == s.SessionID)
	}
}

// TestRevocation_CustomClaimCannotShadowSid: revoking the sid that
// StartSession returned must reject the session's tokens whatever custom
// claims the application put in them. A custom claim "SID" is decoded
// into the sid field by encoding/json's case-insensitive matching.
func TestRevocation_CustomClaimCannotShadowSid(t *testing.T) {
	list := &memstore.RevocationList{}
	e := newEnv(t, withServerOptions(WithRevocationList(list)))
	s, err := e.server.StartSession(context.Background(), "alice", map[string]any{"SID": "legacy-session-42"})
	if errors.Is(err, ErrReservedClaim) {
		return // refused: nothing to shadow
	}
	if err != nil {
		t.Fatal(err)
	}
	client, _ := e.holderClient(t, s.AccessToken)
	_ = list.Revoke(context.Background(), s.SessionID, e.clock.Now(), s.End)
	_, err = client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	if err == nil {
		t.Fatal("revoked session accepted: a custom claim \"SID\" replaced the sid the server checks")
	}
	wantReason(t, err, ReasonSessionRevoked)
}

// TestRevocation_EntryOutlivesLeeway: the server accepts a session's token
// until its absolute end + leeway, so Revoke's doc asks for that as until.
// Pruning must not re-admit a revoked session during the leeway.
func TestRevocation_EntryOutlivesLeeway(t *testing.T) {
	list := &memstore.RevocationList{}
	e := newEnv(t, withServerOptions(WithRevocationList(list)))
	capT := e.server.Policy().SessionEnd(t0)
	tok := policyMint(t, e, t0, capT.Add(-24*time.Hour), capT) // renewed up to the cap
	var sid string
	if err := json.Unmarshal(claimsSegment(t, tok, 1)["sid"], &sid); err != nil {
		t.Fatal(err)
	}
	_ = list.Revoke(context.Background(), sid, e.clock.Now(), capT.Add(DefaultLeeway)) // as documented: the session's end plus the leeway
	p := newPolicyCaller(t, e)
	e.clock.Set(capT.Add(-time.Second))
	_, err := unaryCall(t, p.client, tok)
	wantReason(t, err, ReasonSessionRevoked)

	e.clock.Set(capT.Add(10 * time.Second)) // within the leeway of exp and of the cap
	_ = list.Revoke(context.Background(), "another-session", e.clock.Now(), capT.Add(time.Hour))
	_, err = unaryCall(t, p.client, tok)
	if err == nil {
		t.Fatal("revoked session accepted at cap+10s: its entry was pruned at the cap, but its token is accepted until cap+leeway")
	}
	if r, _ := ReasonOf(err); r != ReasonSessionRevoked && r != ReasonSessionExpired {
		t.Fatalf("reason = %q (err %v), want SESSION_REVOKED or SESSION_EXPIRED", r, err)
	}
}
