package memstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestRevocationList_Basics: the zero value is ready; the list is a
// deny-list, so only revoked sessions are refused; revoking again adds no
// entry.
func TestRevocationList_Basics(t *testing.T) {
	var m RevocationList // the zero value is ready
	if isRevoked(t, &m, "a", t0) || m.Len() != 0 {
		t.Fatalf("zero list: IsRevoked(a) = true or Len = %d, want false, 0", m.Len())
	}
	mustRevoke(t, &m, "a", t0, t0.Add(time.Hour))
	for sid, want := range map[string]bool{"a": true, "b": false, "": false} {
		if got := isRevoked(t, &m, sid, t0); got != want {
			t.Errorf("IsRevoked(%q) = %v, want %v", sid, got, want)
		}
	}
	mustRevoke(t, &m, "a", t0, t0.Add(2*time.Hour))
	if got := m.Len(); got != 1 {
		t.Fatalf("Len after revoking again = %d, want 1", got)
	}
}

// TestRevocationList_Pruning: an entry is dropped by the first Revoke
// whose now is after its keep-until, not at it; IsRevoked, whatever its
// now, neither prunes nor forgets an entry that is not pruned yet.
func TestRevocationList_Pruning(t *testing.T) {
	m := new(RevocationList)
	mustRevoke(t, m, "a", t0, t0.Add(time.Hour))
	mustRevoke(t, m, "b", t0, t0.Add(2*time.Hour))
	// Reads do not prune, nor compare with the keep-until.
	if !isRevoked(t, m, "a", t0.Add(10*time.Hour)) || m.Len() != 2 {
		t.Fatalf("IsRevoked(a) past its keep-until = false or Len = %d; want true, 2", m.Len())
	}
	for _, tc := range []struct {
		at      time.Duration // of a Revoke of another session
		a, b    bool
		wantLen int
	}{
		{time.Hour, true, true, 3},                       // at a's keep-until: kept
		{time.Hour + time.Nanosecond, false, true, 3},    // one tick after: a goes
		{2 * time.Hour, false, true, 4},                  // at b's
		{2*time.Hour + time.Nanosecond, false, false, 3}, // one tick after: b and the first later go
	} {
		now := t0.Add(tc.at)
		mustRevoke(t, m, fmt.Sprint("later-", tc.at), now, now.Add(time.Hour))
		if got, got2 := isRevoked(t, m, "a", now), isRevoked(t, m, "b", now); got != tc.a || got2 != tc.b {
			t.Fatalf("at t0+%v: a revoked %v, b revoked %v; want %v, %v", tc.at, got, got2, tc.a, tc.b)
		}
		if got := m.Len(); got != tc.wantLen {
			t.Fatalf("at t0+%v: Len = %d, want %d", tc.at, got, tc.wantLen)
		}
	}
}

// TestRevocationList_RevokeAgainKeepsLater: revoking a session again
// keeps the later of the two keep-until times, in either order.
func TestRevocationList_RevokeAgainKeepsLater(t *testing.T) {
	for _, tc := range []struct {
		name          string
		first, second time.Duration
	}{
		{"later replaces earlier", time.Hour, 2 * time.Hour},
		{"earlier keeps later", 2 * time.Hour, time.Hour},
		{"same", 2 * time.Hour, 2 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := new(RevocationList)
			mustRevoke(t, m, "a", t0, t0.Add(tc.first))
			mustRevoke(t, m, "a", t0, t0.Add(tc.second))
			later := max(tc.first, tc.second)
			for _, at := range []time.Duration{time.Hour + time.Nanosecond, later, later + time.Nanosecond} {
				now := t0.Add(at)
				mustRevoke(t, m, "other", now, now.Add(time.Hour)) // prunes
				if got, want := isRevoked(t, m, "a", now), at <= later; got != want {
					t.Fatalf("at t0+%v: IsRevoked(a) = %v, want %v", at, got, want)
				}
			}
		})
	}
}

// TestRevocationList_Bounded revokes 100 000 sessions, one a simulated
// second, each kept a minute and every seventh revoked again a second
// later: the list never holds much more than a minute's worth, nor its
// expiry queue two items for each.
func TestRevocationList_Bounded(t *testing.T) {
	const (
		n    = 100_000
		life = time.Minute
	)
	// An entry lives life+1s at most, and goes at the first Revoke after.
	const wantMax = int((life+time.Second)/time.Second) + 1
	m := new(RevocationList)
	maxLen, maxQueue := 0, 0
	for i := range n {
		now := t0.Add(time.Duration(i) * time.Second)
		sid := fmt.Sprint("s", i)
		mustRevoke(t, m, sid, now, now.Add(life))
		if i%7 == 0 {
			mustRevoke(t, m, sid, now, now.Add(life+time.Second)) // moves, adds no entry
		}
		m.mu.RLock()
		q := len(m.queue)
		m.mu.RUnlock()
		maxLen, maxQueue = max(maxLen, m.Len()), max(maxQueue, q)
	}
	if maxLen < wantMax-1 || maxLen > wantMax {
		t.Fatalf("max Len = %d over %d revocations, want %d or %d", maxLen, n, wantMax-1, wantMax)
	}
	if limit := 2 * wantMax; maxQueue > limit {
		t.Fatalf("max expiry queue length = %d, want ≤ %d", maxQueue, limit)
	}
	if now := t0.Add(n * time.Second); !isRevoked(t, m, fmt.Sprint("s", n-1), now) || isRevoked(t, m, "s0", now) {
		t.Fatal("latest entry missing or oldest kept")
	}
}

// TestRevocationList_Concurrent revokes and reads at once, for the race
// detector; no entry is lost.
func TestRevocationList_Concurrent(t *testing.T) {
	const workers, per = 8, 200
	var clk ticker
	m := new(RevocationList)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				if err := m.Revoke(ctx, fmt.Sprint("w", w, "-", i), clk.now(), t0.Add(keep)); err != nil {
					t.Errorf("Revoke: %v", err)
					return
				}
			}
		})
		wg.Go(func() {
			for i := range per {
				if _, err := m.IsRevoked(ctx, fmt.Sprint("w", w, "-", i), clk.now()); err != nil {
					t.Errorf("IsRevoked: %v", err)
					return
				}
				_ = m.Len()
			}
		})
	}
	wg.Wait()
	if got := m.Len(); got != workers*per {
		t.Fatalf("Len = %d, want %d", got, workers*per)
	}
	for w := range workers {
		for i := range per {
			if sid := fmt.Sprint("w", w, "-", i); !isRevoked(t, m, sid, clk.now()) {
				t.Fatalf("IsRevoked(%s) = false, want true", sid)
			}
		}
	}
}
