package redisstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// t0 is the fixed time the tests start from. It is far in the future
// because Redis expires each record by its own clock at the keep-until
// the tests give (t0 plus a day or so): the records of the tests must
// outlive the test on any date this code runs. Only the TTL test uses
// the wall clock.
var t0 = time.Date(2200, time.March, 4, 5, 6, 7, 0, time.UTC)

// tick is the resolution of the store's times: Redis keeps Unix
// milliseconds, so the boundaries are tested one millisecond either side
// (memstore's tests use one nanosecond).
const tick = time.Millisecond

const (
	grace = 30 * time.Second
	keep  = 24 * time.Hour
)

func digest(name string) store.Digest {
	if name == "" {
		return store.Digest{}
	}
	return sha256.Sum256([]byte(name))
}

func sealed(name string) []byte {
	if name == "" {
		return nil
	}
	return []byte("sealed-" + name)
}

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

func mustCreate(t testing.TB, s *Store, sid, refresh string, now, keepUntil time.Time) {
	t.Helper()
	if err := s.Create(context.Background(), sid, digest(refresh), now, keepUntil); err != nil {
		t.Fatalf("Create(%q): %v", sid, err)
	}
}

func mustRotate(t testing.TB, s *Store, r store.Rotation) store.Result {
	t.Helper()
	res, err := s.Rotate(context.Background(), r)
	if err != nil {
		t.Fatalf("Rotate(%q): %v", r.SessionID, err)
	}
	return res
}

func mustRevoke(t testing.TB, s *Store, sid string, now, keepUntil time.Time) {
	t.Helper()
	if err := s.Revoke(context.Background(), sid, now, keepUntil); err != nil {
		t.Fatalf("Revoke(%q): %v", sid, err)
	}
}

func isRevoked(t testing.TB, s *Store, sid string, now time.Time) bool {
	t.Helper()
	got, err := s.IsRevoked(context.Background(), sid, now)
	if err != nil {
		t.Fatalf("IsRevoked(%q): %v", sid, err)
	}
	return got
}

type step struct {
	presented, next string
	at              time.Duration // since t0
	want            store.Outcome
	wantSuccessor   string
}

func revokeAt(at time.Duration) step { return step{at: at} }

// testRotateOutcomes is memstore's table of rotation outcomes, with
// the boundaries one millisecond either side.
func testRotateOutcomes(t *testing.T, start starter) {
	srv := start(t)
	s := New(srv.client())
	for i, tc := range []struct {
		name        string
		create      bool
		steps       []step
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
				{"r1", "r3", grace - tick, store.Replay, "r2"},
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
				{"r1", "r3", time.Hour + grace - tick, store.Replay, "r2"},
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
				{"r1", "r3", grace + tick, store.Reused, ""},
				{"r2", "r4", grace + tick, store.Revoked, ""},
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
				{"r1", "r2", keep + tick, store.Unknown, ""},
			},
			wantRevoked: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sid := fmt.Sprint("outcomes-", i)
			if tc.create {
				mustCreate(t, s, sid, "r1", t0, t0.Add(keep))
			}
			var last time.Time
			for i, st := range tc.steps {
				last = t0.Add(st.at)
				if st.want == 0 {
					mustRevoke(t, s, sid, last, t0.Add(keep))
					continue
				}
				res := mustRotate(t, s, rotation(sid, st.presented, st.next, last))
				if res.Outcome != st.want {
					t.Fatalf("step %d (%q at t0+%v): outcome = %v, want %v", i, st.presented, st.at, res.Outcome, st.want)
				}
				if want := sealed(st.wantSuccessor); !bytes.Equal(res.Successor, want) {
					t.Fatalf("step %d (%q at t0+%v): successor = %q, want %q", i, st.presented, st.at, res.Successor, want)
				}
			}
			if got := isRevoked(t, s, sid, last); got != tc.wantRevoked {
				t.Fatalf("IsRevoked at t0+%v = %v, want %v", last.Sub(t0), got, tc.wantRevoked)
			}
		})
	}
}

// testSuccessorIsTheStoredCopy: a replay returns the bytes the
// winning rotation carried, even when the caller reuses its buffer or
// writes into what a replay returned.
func testSuccessorIsTheStoredCopy(t *testing.T, start starter) {
	s := New(start(t).client())
	mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
	r := rotation("s", "r1", "r2", t0)
	if res := mustRotate(t, s, r); res.Outcome != store.OK {
		t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	clear(r.Successor)
	for i := range 2 {
		res := mustRotate(t, s, rotation("s", "r1", "r3", t0.Add(time.Second)))
		if res.Outcome != store.Replay || !bytes.Equal(res.Successor, sealed("r2")) {
			t.Fatalf("replay %d: %v %q, want %v %q", i, res.Outcome, res.Successor, store.Replay, sealed("r2"))
		}
		clear(res.Successor)
	}
}

// testIsRevoked is memstore's allow-list table, with the keep-until
// boundary one millisecond either side.
func testIsRevoked(t *testing.T, start starter) {
	srv := start(t)
	s := New(srv.client())
	keepUntil := t0.Add(keep)
	rotateKeeping := func(d time.Duration) func(*testing.T, string) {
		return func(t *testing.T, sid string) {
			r := rotation(sid, "r1", "r2", t0)
			r.KeepUntil = keepUntil.Add(d)
			if res := mustRotate(t, s, r); res.Outcome != store.OK {
				t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
			}
		}
	}
	for i, tc := range []struct {
		name     string
		setup    func(*testing.T, string)
		noCreate bool
		at       time.Time
		want     bool
	}{
		{name: "unknown session", noCreate: true, at: t0, want: true},
		{name: "created", at: t0},
		{name: "created, one tick before keep-until", at: keepUntil.Add(-tick)},
		{name: "created, at keep-until", at: keepUntil},
		{name: "created, one tick after keep-until", at: keepUntil.Add(tick), want: true},
		{
			name:  "revoked",
			setup: func(t *testing.T, sid string) { mustRevoke(t, s, sid, t0, keepUntil) },
			at:    t0,
			want:  true,
		},
		{
			name: "reused",
			setup: func(t *testing.T, sid string) {
				if res := mustRotate(t, s, rotation(sid, "rX", "r2", t0)); res.Outcome != store.Reused {
					t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.Reused)
				}
			},
			at:   t0,
			want: true,
		},
		{name: "rotated keeping later, at the new keep-until", setup: rotateKeeping(time.Hour), at: keepUntil.Add(time.Hour)},
		{name: "rotated keeping later, one tick after", setup: rotateKeeping(time.Hour), at: keepUntil.Add(time.Hour + tick), want: true},
		{name: "rotated keeping earlier, at the first keep-until", setup: rotateKeeping(-time.Hour), at: keepUntil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sid := fmt.Sprint("isrevoked-", i)
			if !tc.noCreate {
				mustCreate(t, s, sid, "r1", t0, keepUntil)
			}
			if tc.setup != nil {
				tc.setup(t, sid)
			}
			if got := isRevoked(t, s, sid, tc.at); got != tc.want {
				t.Fatalf("IsRevoked at t0+%v = %v, want %v", tc.at.Sub(t0), got, tc.want)
			}
		})
	}
}

// testRevokeUnknown: revoking a session the store does not know is
// not an error and writes nothing; the session stays refused.
func testRevokeUnknown(t *testing.T, start starter) {
	srv := start(t)
	c := srv.client()
	s := New(c)
	mustRevoke(t, s, "ghost", t0, t0.Add(keep))
	mustRevoke(t, s, "ghost", t0, t0.Add(keep))
	if n, err := do(t, c, "DBSIZE").AsInt64(); err != nil || n != 0 {
		t.Fatalf("DBSIZE = %d, %v; want 0", n, err)
	}
	if !isRevoked(t, s, "ghost", t0) {
		t.Fatal("IsRevoked(ghost) = false, want true")
	}
	if res := mustRotate(t, s, rotation("ghost", "r1", "r2", t0)); res.Outcome != store.Unknown {
		t.Fatalf("Rotate(ghost): outcome = %v, want %v", res.Outcome, store.Unknown)
	}
}

// testConcurrentRotate: 50 goroutines, on two clients as two
// replicas would be, rotate the same presented digest at once. Exactly
// one gets OK; every other gets Replay with the winner's successor, and
// no losing candidate becomes current.
func testConcurrentRotate(t *testing.T, start starter) {
	const n = 50
	srv := start(t)
	replicas := []*Store{New(srv.client()), New(srv.client())}
	mustCreate(t, replicas[0], "s", "r1", t0, t0.Add(keep))

	results := make([]store.Result, n)
	errs := make([]error, n)
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-begin
			results[i], errs[i] = replicas[i%2].Rotate(context.Background(), rotation("s", "r1", fmt.Sprint("n", i), t0))
		})
	}
	close(begin)
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
	if res := mustRotate(t, replicas[0], rotation("s", fmt.Sprint("n", winner), "next", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate of the winner's candidate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if res := mustRotate(t, replicas[1], rotation("s", fmt.Sprint("n", loser), "next2", t0)); res.Outcome != store.Reused {
		t.Fatalf("Rotate of a losing candidate: outcome = %v, want %v", res.Outcome, store.Reused)
	}
}

// testConcurrentUse runs every method at once on two clients, for
// the race detector: each goroutine's sessions still rotate, replay and
// revoke as they would alone.
func testConcurrentUse(t *testing.T, start starter) {
	const goroutines, perG = 8, 50
	srv := start(t)
	replicas := []*Store{New(srv.client()), New(srv.client())}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			ctx := context.Background()
			for i := range perG {
				s, other := replicas[(g+i)%2], replicas[(g+i+1)%2]
				sid := fmt.Sprint(g, "-", i)
				revoke := i%3 == 0
				now := t0.Add(time.Duration(i) * time.Millisecond)
				if err := s.Create(ctx, sid, digest("r0"), now, t0.Add(keep)); err != nil {
					t.Errorf("Create(%s): %v", sid, err)
					return
				}
				first, err1 := s.Rotate(ctx, rotation(sid, "r0", "r1", now))
				second, err2 := other.Rotate(ctx, rotation(sid, "r0", "r2", now))
				if err1 != nil || err2 != nil || first.Outcome != store.OK || second.Outcome != store.Replay || !bytes.Equal(second.Successor, sealed("r1")) {
					t.Errorf("session %s: %v %v, %v %v %q; want OK, Replay of r1", sid, first.Outcome, err1, second.Outcome, err2, second.Successor)
					return
				}
				if revoke {
					if err := other.Revoke(ctx, sid, now, t0.Add(keep)); err != nil {
						t.Errorf("Revoke(%s): %v", sid, err)
						return
					}
				}
				if got, err := other.IsRevoked(ctx, sid, now); err != nil || got != revoke {
					t.Errorf("session %s: IsRevoked = %v, %v; want %v", sid, got, err, revoke)
					return
				}
				want := store.OK
				if revoke {
					want = store.Revoked
				}
				if res, err := s.Rotate(ctx, rotation(sid, "r1", "r3", now)); err != nil || res.Outcome != want {
					t.Errorf("session %s: last Rotate = %v, %v; want %v", sid, res.Outcome, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
