package memstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// t0 is the fixed time every test of this package starts from, so that
// they pass on any date. No test compares with the wall clock.
var t0 = time.Date(2030, time.March, 4, 5, 6, 7, 0, time.UTC)

const (
	// grace is the grace period the tests' rotations ask for.
	grace = 30 * time.Second
	// keep is how long after t0 the tests' sessions are kept.
	keep = 24 * time.Hour
)

// ticker hands out strictly increasing times after t0, one microsecond
// apart, to goroutines that share a store.
type ticker struct{ n atomic.Int64 }

func (c *ticker) now() time.Time { return t0.Add(time.Duration(c.n.Add(1)) * time.Microsecond) }

// digest names a refresh token in the tests; digest("") is the zero
// digest, which a store must not take for an unset previous token.
func digest(name string) store.Digest {
	if name == "" {
		return store.Digest{}
	}
	return sha256.Sum256([]byte(name))
}

// sealed is the sealed successor that a rotation to name carries; nil
// for "".
func sealed(name string) []byte {
	if name == "" {
		return nil
	}
	return []byte("sealed-" + name)
}

// rotation asks to rotate presented to next in session sid at now, with a
// grace period of grace and the record kept until t0+keep.
func rotation(sid, presented, next string, now time.Time) store.Rotation {
	return store.Rotation{
		SessionID:  sid,
		Presented:  digest(presented),
		Next:       digest(next),
		Successor:  sealed(next),
		Now:        now,
		GraceUntil: now.Add(grace),
		KeepUntil:  t0.Add(keep),
	}
}

func mustCreate(t testing.TB, m *SessionStore, sid, refresh string, now, keepUntil time.Time) {
	t.Helper()
	if err := m.Create(context.Background(), sid, digest(refresh), now, keepUntil); err != nil {
		t.Fatalf("Create(%q): %v", sid, err)
	}
}

func mustRotate(t testing.TB, m *SessionStore, r store.Rotation) store.Result {
	t.Helper()
	res, err := m.Rotate(context.Background(), r)
	if err != nil {
		t.Fatalf("Rotate(%q): %v", r.SessionID, err)
	}
	return res
}

// mustRevoke and isRevoked serve both stores of this package.
func mustRevoke(t testing.TB, r store.Revoker, sid string, now, keepUntil time.Time) {
	t.Helper()
	if err := r.Revoke(context.Background(), sid, now, keepUntil); err != nil {
		t.Fatalf("Revoke(%q): %v", sid, err)
	}
}

func isRevoked(t testing.TB, l store.RevocationList, sid string, now time.Time) bool {
	t.Helper()
	got, err := l.IsRevoked(context.Background(), sid, now)
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", sid, err)
	}
	return got
}

// step is one rotation of session "s" and what it must return or, when
// want is zero (see revokeAt), a revocation of it.
type step struct {
	presented, next string
	at              time.Duration // since t0
	want            store.Outcome
	wantSuccessor   string // the next whose sealed successor comes back; "" for none
}

// revokeAt is the step that revokes session "s" at t0+at.
func revokeAt(at time.Duration) step { return step{at: at} }

// TestSessionStore_RotateOutcomes drives Rotate through every outcome,
// with the grace period and the keep-until time tested at their end and
// one tick either side.
func TestSessionStore_RotateOutcomes(t *testing.T) {
	const sid = "s"
	for _, tc := range []struct {
		name   string
		create bool // Create(sid, "r1") at t0 first
		steps  []step
		// wantRevoked is IsRevoked(sid) at the time of the last step.
		wantRevoked bool
	}{
		{
			name:   "current token rotates, and its successor becomes current",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r2", "r3", time.Second, store.OK, "r3"},
			},
		},
		{
			name:   "retired token one tick before the grace end replays the stored successor",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r1", "r3", grace - time.Nanosecond, store.Replay, "r2"},
				// r3 was a losing candidate: r2 is still current.
				{"r2", "r4", grace, store.OK, "r4"},
			},
		},
		{
			name:   "replay can repeat within the grace period",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r1", "r3", 0, store.Replay, "r2"},
				{"r1", "r4", time.Second, store.Replay, "r2"},
			},
		},
		{
			name:   "grace period runs from the rotation, not from login",
			create: true,
			steps: []step{
				{"r1", "r2", time.Hour, store.OK, "r2"},
				{"r1", "r3", time.Hour + grace - time.Nanosecond, store.Replay, "r2"},
			},
		},
		{
			name:   "retired token exactly at the grace end is reuse",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r1", "r3", grace, store.Reused, ""},
				{"r2", "r4", grace, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "retired token one tick after the grace end is reuse",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r1", "r3", grace + time.Nanosecond, store.Reused, ""},
				{"r2", "r4", grace + time.Nanosecond, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "a token two generations old is reuse even within the grace",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"r2", "r3", time.Second, store.OK, "r3"},
				{"r1", "r4", 2 * time.Second, store.Reused, ""},
				{"r3", "r5", 2 * time.Second, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "after reuse a replay within the old grace gets Revoked, not the successor",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				{"rX", "r3", time.Second, store.Reused, ""},
				{"r1", "r4", 2 * time.Second, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "the zero digest is not the previous token of a session never rotated",
			create: true,
			steps: []step{
				{"", "r2", 0, store.Reused, ""},
				{"r1", "r3", 0, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:   "revocation forgets the successor",
			create: true,
			steps: []step{
				{"r1", "r2", 0, store.OK, "r2"},
				revokeAt(time.Second),
				{"r1", "r3", 2 * time.Second, store.Revoked, ""},
			},
			wantRevoked: true,
		},
		{
			name:        "revoked session",
			create:      true,
			steps:       []step{revokeAt(0), {"r1", "r2", 0, store.Revoked, ""}},
			wantRevoked: true,
		},
		{
			name:        "unknown session",
			steps:       []step{{"r1", "r2", 0, store.Unknown, ""}},
			wantRevoked: true,
		},
		{
			name:   "current token exactly at keep-until rotates",
			create: true,
			steps:  []step{{"r1", "r2", keep, store.OK, "r2"}},
		},
		{
			name:   "current token one tick after keep-until is unknown: the record went",
			create: true,
			steps: []step{
				{"r1", "r2", keep + time.Nanosecond, store.Unknown, ""},
			},
			wantRevoked: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(SessionStore)
			if tc.create {
				mustCreate(t, m, sid, "r1", t0, t0.Add(keep))
			}
			var last time.Time
			for i, st := range tc.steps {
				last = t0.Add(st.at)
				if st.want == 0 {
					mustRevoke(t, m, sid, last, t0.Add(keep))
					continue
				}
				res := mustRotate(t, m, rotation(sid, st.presented, st.next, last))
				if res.Outcome != st.want {
					t.Fatalf("step %d (%q at t0+%v): outcome = %v, want %v", i, st.presented, st.at, res.Outcome, st.want)
				}
				if want := sealed(st.wantSuccessor); !bytes.Equal(res.Successor, want) {
					t.Fatalf("step %d (%q at t0+%v): successor = %q, want %q", i, st.presented, st.at, res.Successor, want)
				}
			}
			if got := isRevoked(t, m, sid, last); got != tc.wantRevoked {
				t.Fatalf("IsRevoked at t0+%v = %v, want %v", last.Sub(t0), got, tc.wantRevoked)
			}
		})
	}
}

// TestSessionStore_SuccessorIsTheStoredCopy: a replay returns the bytes the
// winning rotation carried, even when the caller reuses its buffer or
// writes into what a replay returned (as an in-place AEAD open does).
func TestSessionStore_SuccessorIsTheStoredCopy(t *testing.T) {
	m := new(SessionStore)
	mustCreate(t, m, "s", "r1", t0, t0.Add(keep))
	r := rotation("s", "r1", "r2", t0)
	if res := mustRotate(t, m, r); res.Outcome != store.OK {
		t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	clear(r.Successor) // the caller reuses its buffer

	for i := range 2 {
		res := mustRotate(t, m, rotation("s", "r1", "r3", t0.Add(time.Second)))
		if res.Outcome != store.Replay || !bytes.Equal(res.Successor, sealed("r2")) {
			t.Fatalf("replay %d: %v %q, want %v %q", i, res.Outcome, res.Successor, store.Replay, sealed("r2"))
		}
		clear(res.Successor) // the caller opens it in place
	}
}

// TestSessionStore_IsRevoked: the store is an allow-list. A session is
// refused when unknown, revoked or reused, and after its record's
// keep-until, which the latest rotation may move later but never earlier.
func TestSessionStore_IsRevoked(t *testing.T) {
	keepUntil := t0.Add(keep)
	rotateKeeping := func(d time.Duration) func(*testing.T, *SessionStore) {
		return func(t *testing.T, m *SessionStore) {
			r := rotation("s", "r1", "r2", t0)
			r.KeepUntil = keepUntil.Add(d)
			if res := mustRotate(t, m, r); res.Outcome != store.OK {
				t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
			}
		}
	}
	for _, tc := range []struct {
		name     string
		setup    func(*testing.T, *SessionStore) // after Create("s") at t0, unless nil
		noCreate bool
		at       time.Time
		want     bool
	}{
		{name: "unknown session", noCreate: true, at: t0, want: true},
		{name: "created", at: t0},
		{name: "created, one tick before keep-until", at: keepUntil.Add(-time.Nanosecond)},
		{name: "created, at keep-until", at: keepUntil},
		{name: "created, one tick after keep-until", at: keepUntil.Add(time.Nanosecond), want: true},
		{
			name: "revoked",
			setup: func(t *testing.T, m *SessionStore) {
				mustRevoke(t, m, "s", t0, keepUntil)
			},
			at:   t0,
			want: true,
		},
		{
			name: "reused",
			setup: func(t *testing.T, m *SessionStore) {
				if res := mustRotate(t, m, rotation("s", "rX", "r2", t0)); res.Outcome != store.Reused {
					t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.Reused)
				}
			},
			at:   t0,
			want: true,
		},
		{name: "rotated keeping later, at the new keep-until", setup: rotateKeeping(time.Hour), at: keepUntil.Add(time.Hour)},
		{name: "rotated keeping later, one tick after", setup: rotateKeeping(time.Hour), at: keepUntil.Add(time.Hour + time.Nanosecond), want: true},
		{name: "rotated keeping earlier, at the first keep-until", setup: rotateKeeping(-time.Hour), at: keepUntil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(SessionStore)
			if !tc.noCreate {
				mustCreate(t, m, "s", "r1", t0, keepUntil)
			}
			if tc.setup != nil {
				tc.setup(t, m)
			}
			if got := isRevoked(t, m, "s", tc.at); got != tc.want {
				t.Fatalf("IsRevoked at t0+%v = %v, want %v", tc.at.Sub(t0), got, tc.want)
			}
		})
	}
}

// TestSessionStore_RevokeUnknown: revoking a session the store does not
// know is not an error and records nothing; the session stays refused.
func TestSessionStore_RevokeUnknown(t *testing.T) {
	var m SessionStore // the zero value is ready
	mustRevoke(t, &m, "ghost", t0, t0.Add(keep))
	mustRevoke(t, &m, "ghost", t0, t0.Add(keep)) // again
	if got := m.Len(); got != 0 {
		t.Fatalf("Len = %d, want 0", got)
	}
	if !isRevoked(t, &m, "ghost", t0) {
		t.Fatal("IsRevoked(ghost) = false, want true")
	}
	if res := mustRotate(t, &m, rotation("ghost", "r1", "r2", t0)); res.Outcome != store.Unknown {
		t.Fatalf("Rotate(ghost): outcome = %v, want %v", res.Outcome, store.Unknown)
	}
}

// TestSessionStore_Pruning: a record is dropped only by a later write
// whose now is after its keep-until, not at it, and not by reads. Session
// "a" is kept until t0+1h, "b" until t0+2h.
func TestSessionStore_Pruning(t *testing.T) {
	aUntil := t0.Add(time.Hour)
	createC := func(t *testing.T, m *SessionStore, now time.Time) {
		mustCreate(t, m, "c", "rc", now, t0.Add(3*time.Hour))
	}
	rotateB := func(t *testing.T, m *SessionStore, now time.Time) {
		if res := mustRotate(t, m, rotation("b", "rb", "rb2", now)); res.Outcome != store.OK {
			t.Fatalf("Rotate(b): outcome = %v, want %v", res.Outcome, store.OK)
		}
	}
	revoke := func(sid string) func(*testing.T, *SessionStore, time.Time) {
		return func(t *testing.T, m *SessionStore, now time.Time) {
			mustRevoke(t, m, sid, now, t0.Add(2*time.Hour))
		}
	}
	for _, tc := range []struct {
		name    string
		write   func(*testing.T, *SessionStore, time.Time)
		at      time.Time
		wantLen int
	}{
		{"Create at a's keep-until", createC, aUntil, 3},
		{"Create one tick after", createC, aUntil.Add(time.Nanosecond), 2},
		{"Rotate at a's keep-until", rotateB, aUntil, 2},
		{"Rotate one tick after", rotateB, aUntil.Add(time.Nanosecond), 1},
		{"Revoke at a's keep-until", revoke("b"), aUntil, 2},
		{"Revoke one tick after", revoke("b"), aUntil.Add(time.Nanosecond), 1},
		{"Revoke of an unknown session one tick after", revoke("ghost"), aUntil.Add(time.Nanosecond), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(SessionStore)
			mustCreate(t, m, "a", "ra", t0, aUntil)
			mustCreate(t, m, "b", "rb", t0, t0.Add(2*time.Hour))
			// Reads do not prune.
			if !isRevoked(t, m, "a", t0.Add(10*time.Hour)) {
				t.Fatal("IsRevoked(a) after its keep-until = false, want true")
			}
			if got := m.Len(); got != 2 {
				t.Fatalf("after IsRevoked: Len = %d, want 2", got)
			}
			tc.write(t, m, tc.at)
			if got := m.Len(); got != tc.wantLen {
				t.Fatalf("Len = %d, want %d", got, tc.wantLen)
			}
		})
	}
}

// TestSessionStore_Bounded runs 100 000 sessions of ten seconds, one a
// simulated second, each rotated once with a keep-until a second later
// and half of them revoked: the store never holds much more than the last
// eleven seconds' sessions, nor its expiry queue two items for each.
func TestSessionStore_Bounded(t *testing.T) {
	const (
		n    = 100_000
		life = 10 * time.Second
	)
	// A session lives life+1s after it starts, and goes at the first
	// write after that: at most life/s+2 of them at a time.
	const wantMax = int((life+time.Second)/time.Second) + 1
	m := new(SessionStore)
	maxLen, maxQueue := 0, 0
	for i := range n {
		now := t0.Add(time.Duration(i) * time.Second)
		sid := fmt.Sprint("s", i)
		mustCreate(t, m, sid, "r1", now, now.Add(life))
		r := rotation(sid, "r1", "r2", now)
		r.KeepUntil = now.Add(life + time.Second) // moves the end later
		if res := mustRotate(t, m, r); res.Outcome != store.OK {
			t.Fatalf("Rotate(%s): outcome = %v, want %v", sid, res.Outcome, store.OK)
		}
		if i%2 == 0 {
			mustRevoke(t, m, sid, now, now.Add(life))
		}
		m.mu.Lock()
		q := len(m.queue)
		m.mu.Unlock()
		maxLen, maxQueue = max(maxLen, m.Len()), max(maxQueue, q)
	}
	if maxLen != wantMax {
		t.Fatalf("max Len = %d over %d sessions, want %d", maxLen, n, wantMax)
	}
	if limit := 2 * wantMax; maxQueue > limit {
		t.Fatalf("max expiry queue length = %d, want ≤ %d", maxQueue, limit)
	}
}

// TestSessionStore_ConcurrentRotate: 50 goroutines rotate the same
// presented digest at once, each with its own candidate. Exactly one gets
// OK; every other gets Replay with the winner's successor, and no losing
// candidate becomes current.
func TestSessionStore_ConcurrentRotate(t *testing.T) {
	const n = 50
	m := new(SessionStore)
	mustCreate(t, m, "s", "r1", t0, t0.Add(keep))

	results := make([]store.Result, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = m.Rotate(context.Background(), rotation("s", "r1", fmt.Sprint("n", i), t0))
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if res.Outcome == store.OK {
			if winner >= 0 {
				t.Fatalf("goroutines %d and %d both got OK", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no goroutine got OK")
	}
	want := sealed(fmt.Sprint("n", winner))
	for i, res := range results {
		if i != winner && res.Outcome != store.Replay {
			t.Errorf("goroutine %d: outcome = %v, want %v", i, res.Outcome, store.Replay)
		}
		if !bytes.Equal(res.Successor, want) {
			t.Errorf("goroutine %d: successor = %q, want the winner's %q", i, res.Successor, want)
		}
	}
	loser := (winner + 1) % n
	if res := mustRotate(t, m, rotation("s", fmt.Sprint("n", winner), "next", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate of the winner's candidate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if res := mustRotate(t, m, rotation("s", fmt.Sprint("n", loser), "next2", t0)); res.Outcome != store.Reused {
		t.Fatalf("Rotate of a losing candidate: outcome = %v, want %v", res.Outcome, store.Reused)
	}
}

// TestSessionStore_ConcurrentUse runs every method at once, for the race
// detector: each goroutine's sessions still rotate, replay and revoke as
// they would alone while short-lived records are pruned around them.
func TestSessionStore_ConcurrentUse(t *testing.T) {
	const goroutines, perG = 8, 200
	var clk ticker
	m := new(SessionStore)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			ctx := context.Background()
			for i := range perG {
				sid := fmt.Sprint(g, "-", i)
				revoke := i%3 == 0
				now := clk.now()
				// Gone by this goroutine's next write, whose now is later.
				_ = m.Create(ctx, "tmp-"+sid, digest("r0"), now, now)
				if err := m.Create(ctx, sid, digest("r0"), clk.now(), t0.Add(keep)); err != nil {
					t.Errorf("Create(%s): %v", sid, err)
					return
				}
				first, err1 := m.Rotate(ctx, rotation(sid, "r0", "r1", clk.now()))
				second, err2 := m.Rotate(ctx, rotation(sid, "r0", "r2", clk.now()))
				if err1 != nil || err2 != nil || first.Outcome != store.OK || second.Outcome != store.Replay || !bytes.Equal(second.Successor, sealed("r1")) {
					t.Errorf("session %s: %v %v, %v %v %q; want OK, Replay of r1", sid, first.Outcome, err1, second.Outcome, err2, second.Successor)
					return
				}
				if revoke {
					_ = m.Revoke(ctx, sid, clk.now(), t0.Add(keep))
				}
				if got, err := m.IsRevoked(ctx, sid, clk.now()); err != nil || got != revoke {
					t.Errorf("session %s: IsRevoked = %v, %v; want %v", sid, got, err, revoke)
					return
				}
				want := store.OK
				if revoke {
					want = store.Revoked
				}
				if res, err := m.Rotate(ctx, rotation(sid, "r1", "r3", clk.now())); err != nil || res.Outcome != want {
					t.Errorf("session %s: last Rotate = %v, %v; want %v", sid, res.Outcome, err, want)
					return
				}
				_ = m.Len()
			}
		})
	}
	wg.Wait()
	if got, want := m.Len(), goroutines*perG; got != want {
		t.Fatalf("Len = %d, want %d: live sessions dropped or short-lived ones kept", got, want)
	}
}
