package interceptor

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// storeGrace is the grace period the store tests pass in their rotations.
const storeGrace = 30 * time.Second

// storeTokens is the successor a rotation to refresh id next carries.
func storeTokens(sid, next string) Session {
	return Session{AccessToken: "access-" + next, SessionID: sid, RefreshToken: "refresh-" + next}
}

// storeRotation asks to rotate presented to next in session sid at now.
func storeRotation(sid, presented, next string, now time.Time) Rotation {
	return Rotation{
		SessionID:   sid,
		PresentedID: presented,
		NextID:      next,
		Next:        storeTokens(sid, next),
		Now:         now,
		GraceUntil:  now.Add(storeGrace),
		End:         t0.Add(DefaultMaxLifetime),
	}
}

func storeRotate(t testing.TB, m *MemorySessionStore, r Rotation) RotateResult {
	t.Helper()
	res, err := m.Rotate(context.Background(), r)
	if err != nil {
		t.Fatalf("Rotate(%s → %s): %v", r.PresentedID, r.NextID, err)
	}
	return res
}

func storeRevoked(t testing.TB, m *MemorySessionStore, sid string) bool {
	t.Helper()
	ok, err := m.IsRevoked(context.Background(), sid)
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", sid, err)
	}
	return ok
}

func storeCreate(t testing.TB, m *MemorySessionStore, sid, refreshID string, end time.Time) {
	t.Helper()
	if err := m.CreateSession(context.Background(), sid, refreshID, end); err != nil {
		t.Fatalf("CreateSession(%q): %v", sid, err)
	}
}

func storeRevoke(t testing.TB, m *MemorySessionStore, sid string, end time.Time) {
	t.Helper()
	if err := m.Revoke(context.Background(), sid, end); err != nil {
		t.Fatalf("Revoke(%q): %v", sid, err)
	}
}

// storeOutcome names o in failure messages.
func storeOutcome(o RotateOutcome) string {
	switch o {
	case RotateOK:
		return "OK"
	case RotateReplay:
		return "Replay"
	case RotateReused:
		return "Reused"
	case RotateRevoked:
		return "Revoked"
	case RotateUnknown:
		return "Unknown"
	}
	return fmt.Sprintf("RotateOutcome(%d)", int(o))
}

// storeStep is one rotation of session "s" and what it must return.
type storeStep struct {
	presented, next string
	at              time.Duration // since t0
	want            RotateOutcome
	wantTokens      string // NextID whose tokens come back; "" for none
}

// TestStore_RotateOutcomes drives MemorySessionStore.Rotate through every
// outcome, with the grace period tested at its end and one tick either
// side.
func TestStore_RotateOutcomes(t *testing.T) {
	const sid = "s"
	for _, tc := range []struct {
		name        string
		create      bool // CreateSession(sid, "r1") first
		revoke      bool // then Revoke(sid)
		steps       []storeStep
		wantRevoked bool
	}{
		{
			name:   "current token rotates, and its successor becomes current",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r2", "r3", time.Second, RotateOK, "r3"},
			},
		},
		{
			name:   "retired token one tick before the grace end replays the stored successor",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r1", "r3", storeGrace - time.Nanosecond, RotateReplay, "r2"},
				// r3 was a losing candidate: r2 is still current.
				{"r2", "r4", storeGrace, RotateOK, "r4"},
			},
		},
		{
			name:   "replay can repeat within the grace period",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r1", "r3", 0, RotateReplay, "r2"},
				{"r1", "r4", time.Second, RotateReplay, "r2"},
			},
		},
		{
			name:   "grace period runs from the rotation, not from login",
			create: true,
			steps: []storeStep{
				{"r1", "r2", time.Hour, RotateOK, "r2"},
				{"r1", "r3", time.Hour + storeGrace - time.Nanosecond, RotateReplay, "r2"},
			},
		},
		{
			name:   "retired token exactly at the grace end is reuse",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r1", "r3", storeGrace, RotateReused, ""},
				{"r2", "r4", storeGrace, RotateRevoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "retired token one tick after the grace end is reuse",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r1", "r3", storeGrace + time.Nanosecond, RotateReused, ""},
				{"r2", "r4", storeGrace + time.Nanosecond, RotateRevoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "a token two generations old is reuse even within the grace",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"r2", "r3", time.Second, RotateOK, "r3"},
				{"r1", "r4", 2 * time.Second, RotateReused, ""},
				{"r3", "r5", 2 * time.Second, RotateRevoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "after reuse the grace replay no longer hands out the successor",
			create: true,
			steps: []storeStep{
				{"r1", "r2", 0, RotateOK, "r2"},
				{"rX", "r3", time.Second, RotateReused, ""},
				{"r1", "r4", 2 * time.Second, RotateRevoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:  "unknown session",
			steps: []storeStep{{"r1", "r2", 0, RotateUnknown, ""}},
		},
		{
			name:        "revoked session",
			create:      true,
			revoke:      true,
			steps:       []storeStep{{"r1", "r2", 0, RotateRevoked, ""}},
			wantRevoked: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &MemorySessionStore{Now: func() time.Time { return t0 }}
			if tc.create {
				storeCreate(t, m, sid, "r1", t0.Add(DefaultMaxLifetime))
			}
			if tc.revoke {
				storeRevoke(t, m, sid, t0.Add(DefaultMaxLifetime))
			}
			for i, st := range tc.steps {
				res := storeRotate(t, m, storeRotation(sid, st.presented, st.next, t0.Add(st.at)))
				if res.Outcome != st.want {
					t.Fatalf("step %d (%s at t0+%v): outcome = %s, want %s", i, st.presented, st.at, storeOutcome(res.Outcome), storeOutcome(st.want))
				}
				var want Session
				if st.wantTokens != "" {
					want = storeTokens(sid, st.wantTokens)
				}
				if res.Tokens != want {
					t.Fatalf("step %d: tokens = %+v, want %+v", i, res.Tokens, want)
				}
			}
			if got := storeRevoked(t, m, sid); got != tc.wantRevoked {
				t.Fatalf("IsRevoked = %v, want %v", got, tc.wantRevoked)
			}
		})
	}
}

// TestStore_RevokeUnknownSession: revoking a session the store never saw is
// not an error and records it as revoked.
func TestStore_RevokeUnknownSession(t *testing.T) {
	var m MemorySessionStore // the zero value is ready
	if storeRevoked(t, &m, "ghost") || m.Len() != 0 {
		t.Fatalf("zero store: revoked or Len %d, want false, 0", m.Len())
	}
	storeRevoke(t, &m, "ghost", time.Now().Add(time.Hour))
	if !storeRevoked(t, &m, "ghost") {
		t.Fatal("IsRevoked(ghost) = false after Revoke")
	}
	if storeRevoked(t, &m, "other") {
		t.Fatal("IsRevoked of a session never seen = true")
	}
	if got := m.Len(); got != 1 {
		t.Fatalf("Len = %d, want 1", got)
	}
	if res := storeRotate(t, &m, storeRotation("ghost", "r1", "r2", time.Now())); res.Outcome != RotateRevoked {
		t.Fatalf("Rotate after Revoke: outcome %s, want Revoked", storeOutcome(res.Outcome))
	}
	storeRevoke(t, &m, "ghost", time.Now().Add(time.Hour)) // again: no error
	if got := m.Len(); got != 1 {
		t.Fatalf("Len after revoking again = %d, want 1", got)
	}
}

// TestStore_Pruning: a record is dropped by the first record added after
// its end, not at it; a session that was dropped is unknown.
func TestStore_Pruning(t *testing.T) {
	clk := newFakeClock(t0)
	m := &MemorySessionStore{Now: clk.Now}
	storeCreate(t, m, "a", "ra", t0.Add(time.Hour))
	storeCreate(t, m, "b", "rb", t0.Add(2*time.Hour))

	clk.Set(t0.Add(time.Hour)) // exactly a's end: kept
	storeCreate(t, m, "c", "rc", t0.Add(3*time.Hour))
	if got := m.Len(); got != 3 {
		t.Fatalf("at a's end: Len = %d, want 3", got)
	}

	clk.Set(t0.Add(time.Hour + time.Nanosecond))
	if got := m.Len(); got != 3 {
		t.Fatalf("a dropped before any record was added: Len = %d, want 3", got)
	}
	storeCreate(t, m, "d", "rd", t0.Add(4*time.Hour))
	if got := m.Len(); got != 3 {
		t.Fatalf("one tick past a's end: Len = %d, want 3 (b, c, d)", got)
	}
	if res := storeRotate(t, m, storeRotation("a", "ra", "ra2", clk.Now())); res.Outcome != RotateUnknown {
		t.Fatalf("Rotate of a dropped session: outcome %s, want Unknown", storeOutcome(res.Outcome))
	}
	for _, sid := range []string{"b", "c", "d"} {
		if res := storeRotate(t, m, storeRotation(sid, "r"+sid, "r"+sid+"2", clk.Now())); res.Outcome != RotateOK {
			t.Fatalf("Rotate of %s before its end: outcome %s, want OK", sid, storeOutcome(res.Outcome))
		}
	}

	// A revoked record for an unknown session goes at its end too.
	storeRevoke(t, m, "x", t0.Add(5*time.Hour))
	clk.Set(t0.Add(5*time.Hour + time.Nanosecond))
	storeCreate(t, m, "e", "re", t0.Add(6*time.Hour))
	if storeRevoked(t, m, "x") {
		t.Fatal("revoked record x kept past its end")
	}
	if got := m.Len(); got != 1 {
		t.Fatalf("Len = %d, want 1 (e)", got)
	}
}

// TestStore_RevokeAgainKeepsLater: revoking a session again, or revoking a
// created session, keeps its record until the later of the two ends.
func TestStore_RevokeAgainKeepsLater(t *testing.T) {
	for _, tc := range []struct {
		name string
		// create, if non-zero, is the end given to CreateSession first.
		create  time.Duration
		revokes []time.Duration
	}{
		{name: "revoke, revoke later", revokes: []time.Duration{time.Hour, 2 * time.Hour}},
		{name: "revoke, revoke earlier", revokes: []time.Duration{2 * time.Hour, time.Hour}},
		{name: "create, revoke later", create: time.Hour, revokes: []time.Duration{2 * time.Hour}},
		{name: "create, revoke earlier", create: 2 * time.Hour, revokes: []time.Duration{time.Hour}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock(t0)
			m := &MemorySessionStore{Now: clk.Now}
			if tc.create != 0 {
				storeCreate(t, m, "s", "r1", t0.Add(tc.create))
			}
			for _, end := range tc.revokes {
				storeRevoke(t, m, "s", t0.Add(end))
			}
			clk.Set(t0.Add(time.Hour + time.Nanosecond)) // past the earlier end
			storeCreate(t, m, "y", "ry", t0.Add(10*time.Hour))
			if !storeRevoked(t, m, "s") {
				t.Fatal("s dropped at the earlier end, want kept until the later")
			}
			clk.Set(t0.Add(2*time.Hour + time.Nanosecond)) // past the later end
			storeCreate(t, m, "z", "rz", t0.Add(10*time.Hour))
			if storeRevoked(t, m, "s") {
				t.Fatal("s kept past the later end")
			}
			if got := m.Len(); got != 2 {
				t.Fatalf("Len = %d, want 2 (y, z)", got)
			}
		})
	}
}

// TestStore_Bounded creates 100 000 sessions of ten seconds each, one a
// simulated second, half of them revoked: the store never holds much more
// than ten seconds' worth.
func TestStore_Bounded(t *testing.T) {
	const (
		n    = 100_000
		life = 10 * time.Second
	)
	clk := newFakeClock(t0)
	m := &MemorySessionStore{Now: clk.Now}
	maxLen := 0
	for i := range n {
		sid := fmt.Sprint("s", i)
		end := clk.Now().Add(life)
		storeCreate(t, m, sid, "r", end)
		if i%2 == 0 {
			storeRevoke(t, m, sid, end.Add(time.Second)) // moves the end later
		}
		maxLen = max(maxLen, m.Len())
		clk.Advance(time.Second)
	}
	// At most the sessions of the last life+1 s (revoked ones end a second
	// later), plus the one just added.
	if limit := int(life/time.Second) + 3; maxLen > limit {
		t.Fatalf("max Len = %d over %d sessions, want ≤ %d", maxLen, n, limit)
	}
	if maxLen < int(life/time.Second) {
		t.Fatalf("max Len = %d, want ≥ %d: records dropped before their end", maxLen, int(life/time.Second))
	}
}

// TestStore_ConcurrentRotate: 50 goroutines rotate the same presented id
// at once, each with its own candidate. Exactly one wins; every other gets
// the winner's successor.
func TestStore_ConcurrentRotate(t *testing.T) {
	const n = 50
	m := &MemorySessionStore{Now: func() time.Time { return t0 }}
	storeCreate(t, m, "s", "r1", t0.Add(DefaultMaxLifetime))

	results := make([]RotateResult, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = m.Rotate(context.Background(), storeRotation("s", "r1", fmt.Sprint("n", i), t0))
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if res.Outcome == RotateOK {
			if winner >= 0 {
				t.Fatalf("goroutines %d and %d both got OK", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no goroutine got OK")
	}
	want := storeTokens("s", fmt.Sprint("n", winner))
	for i, res := range results {
		if i != winner && res.Outcome != RotateReplay {
			t.Errorf("goroutine %d: outcome %s, want Replay", i, storeOutcome(res.Outcome))
		}
		if res.Tokens != want {
			t.Errorf("goroutine %d: tokens %q, want the winner's %q", i, res.Tokens.RefreshToken, want.RefreshToken)
		}
	}
	// The winner's id is current: it rotates.
	if res := storeRotate(t, m, storeRotation("s", fmt.Sprint("n", winner), "next", t0)); res.Outcome != RotateOK {
		t.Fatalf("Rotate of the winner's id: outcome %s, want OK", storeOutcome(res.Outcome))
	}
}

// TestStore_ConcurrentUse runs every method at once, for the race
// detector: each goroutine's own sessions still rotate, replay and revoke
// as they would alone while short-lived records are pruned around them.
func TestStore_ConcurrentUse(t *testing.T) {
	const goroutines, perG = 8, 200
	clk := newFakeClock(t0)
	m := &MemorySessionStore{Now: clk.Now}
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			ctx := context.Background()
			for i := range perG {
				sid := fmt.Sprint(g, "-", i)
				now := clk.Now()
				_ = m.CreateSession(ctx, "tmp-"+sid, "r0", now.Add(time.Millisecond)) // pruned soon
				_ = m.CreateSession(ctx, sid, "r0", now.Add(time.Hour))
				first, _ := m.Rotate(ctx, storeRotation(sid, "r0", "r1", now))
				second, _ := m.Rotate(ctx, storeRotation(sid, "r0", "r2", now))
				if first.Outcome != RotateOK || second.Outcome != RotateReplay || second.Tokens != storeTokens(sid, "r1") {
					errs <- fmt.Errorf("session %s: outcomes %s, %s, want OK, Replay of r1", sid, storeOutcome(first.Outcome), storeOutcome(second.Outcome))
					return
				}
				if i%3 == 0 {
					_ = m.Revoke(ctx, sid, now.Add(2*time.Hour))
				}
				if got, _ := m.IsRevoked(ctx, sid); got != (i%3 == 0) {
					errs <- fmt.Errorf("session %s: IsRevoked = %v, want %v", sid, got, i%3 == 0)
					return
				}
				_ = m.Len()
				clk.Advance(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := m.Len(); got < goroutines*perG {
		t.Fatalf("Len = %d, want ≥ %d: live sessions were dropped", got, goroutines*perG)
	}
}
