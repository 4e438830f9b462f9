package interceptor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func revocationIs(t *testing.T, m *MemoryRevocationList, sid string) bool {
	t.Helper()
	ok, err := m.IsRevoked(context.Background(), sid)
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", sid, err)
	}
	return ok
}

func TestRevocation_MemoryBasics(t *testing.T) {
	var m MemoryRevocationList // the zero value is ready
	if revocationIs(t, &m, "a") || m.Len() != 0 {
		t.Fatalf("zero list: IsRevoked = true or Len = %d, want false, 0", m.Len())
	}
	m.Revoke("a", time.Now().Add(time.Hour))
	if !revocationIs(t, &m, "a") {
		t.Fatal(`IsRevoked("a") = false after Revoke`)
	}
	if revocationIs(t, &m, "b") || revocationIs(t, &m, "") {
		t.Fatal("IsRevoked of an unknown sid = true")
	}
	if got := m.Len(); got != 1 {
		t.Fatalf("Len = %d, want 1", got)
	}
	m.Revoke("a", time.Now().Add(2*time.Hour))
	if got := m.Len(); got != 1 {
		t.Fatalf("Len after revoking again = %d, want 1", got)
	}
}

// TestRevocation_MemoryPruning: an entry is dropped by the first Revoke
// after its keep-until time, not at it.
func TestRevocation_MemoryPruning(t *testing.T) {
	clk := newFakeClock(t0)
	m := &MemoryRevocationList{Now: clk.Now}
	m.Revoke("a", t0.Add(time.Hour))
	m.Revoke("b", t0.Add(2*time.Hour))

	clk.Set(t0.Add(time.Hour)) // exactly a's until: kept
	m.Revoke("c", t0.Add(3*time.Hour))
	if !revocationIs(t, m, "a") || m.Len() != 3 {
		t.Fatalf("at a's until: a revoked %v, Len %d; want true, 3", revocationIs(t, m, "a"), m.Len())
	}

	clk.Set(t0.Add(time.Hour + time.Nanosecond)) // one tick past a's until
	if !revocationIs(t, m, "a") {
		t.Fatal("a pruned before any Revoke ran")
	}
	m.Revoke("d", t0.Add(4*time.Hour))
	if revocationIs(t, m, "a") {
		t.Fatal("a kept after a Revoke past its until")
	}
	for _, sid := range []string{"b", "c", "d"} {
		if !revocationIs(t, m, sid) {
			t.Fatalf("%s pruned before its until", sid)
		}
	}
	if got := m.Len(); got != 3 {
		t.Fatalf("Len = %d, want 3", got)
	}

	clk.Set(t0.Add(3*time.Hour + time.Nanosecond)) // past b and c
	m.Revoke("e", t0.Add(5*time.Hour))
	for sid, want := range map[string]bool{"b": false, "c": false, "d": true, "e": true} {
		if got := revocationIs(t, m, sid); got != want {
			t.Errorf("IsRevoked(%q) = %v, want %v", sid, got, want)
		}
	}
	if got := m.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2", got)
	}
}

// TestRevocation_MemoryRevokeAgainKeepsLater: revoking a sid again keeps
// the later of the two times, in either order.
func TestRevocation_MemoryRevokeAgainKeepsLater(t *testing.T) {
	for _, order := range [][2]time.Duration{{time.Hour, 2 * time.Hour}, {2 * time.Hour, time.Hour}} {
		t.Run(fmt.Sprint(order[0], "then", order[1]), func(t *testing.T) {
			clk := newFakeClock(t0)
			m := &MemoryRevocationList{Now: clk.Now}
			m.Revoke("x", t0.Add(order[0]))
			m.Revoke("x", t0.Add(order[1]))
			clk.Set(t0.Add(time.Hour + time.Nanosecond))
			m.Revoke("y", t0.Add(10*time.Hour)) // prunes
			if !revocationIs(t, m, "x") {
				t.Fatal("x pruned at its earlier time, want kept until the later")
			}
			clk.Set(t0.Add(2*time.Hour + time.Nanosecond))
			m.Revoke("z", t0.Add(10*time.Hour))
			if revocationIs(t, m, "x") {
				t.Fatal("x kept past its later time")
			}
			if got := m.Len(); got != 2 {
				t.Fatalf("Len = %d, want 2 (y, z)", got)
			}
		})
	}
}

// TestRevocation_MemoryBounded revokes 10 000 sessions of one hour each,
// one a minute: the list never holds much more than an hour's worth.
func TestRevocation_MemoryBounded(t *testing.T) {
	clk := newFakeClock(t0)
	m := &MemoryRevocationList{Now: clk.Now}
	const bound = 62 // revoked in the last 60 minutes, both ends included, plus slack of one
	maxLen := 0
	for i := range 10000 {
		clk.Advance(time.Minute)
		m.Revoke(fmt.Sprintf("s%d", i), clk.Now().Add(time.Hour))
		maxLen = max(maxLen, m.Len())
		if m.Len() > bound {
			t.Fatalf("after %d revocations Len = %d, want at most %d", i+1, m.Len(), bound)
		}
	}
	if maxLen < 60 {
		t.Fatalf("max Len = %d, want about 60 (entries pruned too early)", maxLen)
	}
	if !revocationIs(t, m, "s9999") || revocationIs(t, m, "s0") {
		t.Fatal("latest entry missing or oldest kept")
	}
}

func TestRevocation_MemoryConcurrent(t *testing.T) {
	clk := newFakeClock(t0)
	m := &MemoryRevocationList{Now: clk.Now}
	const workers, per = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range per {
				clk.Advance(time.Second)
				m.Revoke(fmt.Sprintf("w%d-%d", w, i), t0.Add(24*time.Hour))
			}
		}()
		go func() {
			defer wg.Done()
			for i := range per {
				_, _ = m.IsRevoked(context.Background(), fmt.Sprintf("w%d-%d", w, i))
				_ = m.Len()
			}
		}()
	}
	wg.Wait()
	if got := m.Len(); got != workers*per {
		t.Fatalf("Len = %d, want %d", got, workers*per)
	}
	for w := range workers {
		for i := range per {
			if !revocationIs(t, m, fmt.Sprintf("w%d-%d", w, i)) {
				t.Fatalf("w%d-%d not revoked", w, i)
			}
		}
	}
}

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
			list := &MemoryRevocationList{}
			e := newEnv(t, envConfig{serverOpts: []ServerOption{WithRevocationList(list)}})
			list.Now = e.clock.Now // before any Revoke
			revoked := e.startSession(t, nil)
			other := e.startSession(t, nil)
			revokedClient, _ := e.holderClient(t, revoked.AccessToken)
			otherClient, _ := e.holderClient(t, other.AccessToken)
			ctx := context.Background()

			if err := revocationStream(ctx, revokedClient, kind); err != nil {
				t.Fatalf("before revocation: %v", err)
			}
			list.Revoke(revoked.SessionID, revoked.End)
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
			store := RevocationFunc(func(_ context.Context, sid string) (bool, error) {
				mu.Lock()
				asked = append(asked, sid)
				mu.Unlock()
				return false, errors.New(secret)
			})
			e := newEnv(t, envConfig{serverOpts: []ServerOption{WithRevocationList(store)}})
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
	store := RevocationFunc(func(_ context.Context, sid string) (bool, error) {
		mu.Lock()
		got = append(got, sid)
		mu.Unlock()
		return false, nil
	})
	e := newEnv(t, envConfig{serverOpts: []ServerOption{WithRevocationList(store)}})
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
	list := &MemoryRevocationList{}
	e := newEnv(t, envConfig{serverOpts: []ServerOption{WithRevocationList(list)}})
	list.Now = e.clock.Now
	s, err := e.server.StartSession(context.Background(), "alice", map[string]any{"SID": "legacy-session-42"})
	if errors.Is(err, ErrReservedClaim) {
		return // refused: nothing to shadow
	}
	if err != nil {
		t.Fatal(err)
	}
	client, _ := e.holderClient(t, s.AccessToken)
	list.Revoke(s.SessionID, s.End)
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
	list := &MemoryRevocationList{}
	e := newEnv(t, envConfig{serverOpts: []ServerOption{WithRevocationList(list)}})
	list.Now = e.clock.Now
	capT := e.server.Policy().SessionEnd(t0)
	tok := policyMint(t, e, t0, capT.Add(-24*time.Hour), capT) // renewed up to the cap
	var sid string
	if err := json.Unmarshal(claimsSegment(t, tok, 1)["sid"], &sid); err != nil {
		t.Fatal(err)
	}
	list.Revoke(sid, capT.Add(DefaultLeeway)) // as documented: the session's end plus the leeway
	p := newPolicyCaller(t, e)
	e.clock.Set(capT.Add(-time.Second))
	_, err := p.unary(tok)
	wantReason(t, err, ReasonSessionRevoked)

	e.clock.Set(capT.Add(10 * time.Second)) // within the leeway of exp and of the cap
	list.Revoke("another-session", capT.Add(time.Hour))
	_, err = p.unary(tok)
	if err == nil {
		t.Fatal("revoked session accepted at cap+10s: its entry was pruned at the cap, but its token is accepted until cap+leeway")
	}
	if r, _ := ReasonOf(err); r != ReasonSessionRevoked && r != ReasonSessionExpired {
		t.Fatalf("reason = %q (err %v), want SESSION_REVOKED or SESSION_EXPIRED", r, err)
	}
}
