package redisstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// replicated is a master and its replica, which replicates through a
// proxy that the test can stall: the replica then lags behind, on demand.
type replicated struct {
	master, replica *redistest.Server
	link            *redistest.Proxy
}

// startReplicated starts a master, a proxy to it and a replica through the
// proxy, and waits until the replica is in sync.
func startReplicated(t testing.TB) replicated {
	t.Helper()
	// A full sync through an RDB file: a diskless one waits five seconds
	// by default, and then the replica's first acknowledgment, up to a
	// second, before the master streams it any write.
	master := redistest.Start(t, "--repl-diskless-sync", "no")
	link := redistest.StartProxy(t, master.Addr())
	replica := redistest.StartReplicaVia(t, master, link.Addr())
	redistest.WaitInSync(t, master, 1, 30*time.Second)
	return replicated{master: master, replica: replica, link: link}
}

// store returns a store on a client of the master.
func (r replicated) store(t testing.TB, opts ...Option) *Store {
	t.Helper()
	return New(newClient(t, rueidis.ClientOption{InitAddress: []string{r.master.Addr()}}), opts...)
}

// revokedOn reports whether the server at addr holds sid's revocation,
// read from its data directly.
func revokedOn(t *testing.T, s *Store, addr, sid string) bool {
	t.Helper()
	rev, err := redistest.Do(addr, "HGET", s.key(sid), "rev")
	if err != nil {
		t.Fatalf("HGET %s rev on %s: %v", s.key(sid), addr, err)
	}
	return rev == "1"
}

// TestReplicaAcks_RevokeWaitsForReplica: with WithReplicaAcks(1), Revoke
// returns only once the replica holds the revocation. With the
// replication link stalled it does not return (the store without the
// option, the control, returns at once and the replica lacks the
// revocation); when the link flows again it returns, and the replica
// holds the revocation the moment it does. Revocations with the link
// flowing are on the replica as soon as each returns, also the first,
// which runs the script by EVAL after a NOSCRIPT. A Rotate that finds
// reuse waits too.
func TestReplicaAcks_RevokeWaitsForReplica(t *testing.T) {
	r := startReplicated(t)
	acked := r.store(t, WithReplicaAcks(1), WithTimeout(10*time.Second))
	plain := r.store(t)
	for _, sid := range []string{"stalled", "control", "reused"} {
		mustCreate(t, acked, sid, "r1", t0, t0.Add(keep))
	}
	for i := range 20 {
		mustCreate(t, acked, fmt.Sprint("s", i), "r1", t0, t0.Add(keep))
	}
	redistest.WaitInSync(t, r.master, 1, 30*time.Second)

	r.link.Stall()
	mustRevoke(t, plain, "control", t0, t0.Add(keep))
	if revokedOn(t, plain, r.replica.Addr(), "control") {
		t.Fatal("control: the replica behind a stalled link has the revocation; the test cannot tell waiting from luck")
	}
	done := make(chan error, 1)
	go func() { done <- acked.Revoke(context.Background(), "stalled", t0, t0.Add(keep)) }()
	select {
	case err := <-done:
		t.Fatalf("Revoke with WithReplicaAcks(1) returned (%v) while the replication link was stalled", err)
	case <-time.After(300 * time.Millisecond):
	}
	r.link.Resume()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Revoke after the link flowed again: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Revoke did not return within 10s of the link flowing again")
	}
	if !revokedOn(t, acked, r.replica.Addr(), "stalled") {
		t.Fatal("Revoke returned, and the replica does not hold the revocation")
	}

	// The script is not loaded: the first Revoke runs it by EVAL.
	r.master.Do("SCRIPT", "FLUSH")
	evals := commandCalls(t, acked.client, "eval")
	for i := range 20 {
		sid := fmt.Sprint("s", i)
		mustRevoke(t, acked, sid, t0, t0.Add(keep))
		if !revokedOn(t, acked, r.replica.Addr(), sid) {
			t.Fatalf("Revoke(%s) returned, and the replica does not hold the revocation", sid)
		}
	}
	if got := commandCalls(t, acked.client, "eval") - evals; got != 1 {
		t.Fatalf("EVAL ran %d times after SCRIPT FLUSH, want 1 (the NOSCRIPT fallback, then EVALSHA)", got)
	}

	if res := mustRotate(t, acked, rotation("reused", "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if res := mustRotate(t, acked, rotation("reused", "r1", "r3", t0.Add(grace))); res.Outcome != store.Reused {
		t.Fatalf("Rotate of the retired token after the grace: outcome = %v, want %v", res.Outcome, store.Reused)
	}
	if !revokedOn(t, acked, r.replica.Addr(), "reused") {
		t.Fatal("Rotate returned Reused, and the replica does not hold the revocation")
	}
}

// ackTestTimeout is the store timeout of the tests that wait for WAIT to
// give up (see TestReplicaAcks_FailsClosed).
const ackTestTimeout = 3 * time.Second

// TestReplicaAcks_FailsClosed: with the replica hung (SIGSTOP), a Revoke
// that needs its acknowledgment fails with ErrNotReplicated within the
// store's timeout plus slack, and the master still holds the revocation:
// IsRevoked says revoked, also for another client whose cached answer the
// revocation invalidated, and a replica server answers the revocation
// with codes.Unavailable and rejects the session's calls. A Rotate that
// finds reuse fails the same way. Create and a plain Rotate do not wait:
// they succeed with the replica hung. Once the replica answers again the
// retried Revoke succeeds and the replica holds it.
func TestReplicaAcks_FailsClosed(t *testing.T) {
	// Three seconds, so that WAIT's margin is 750 ms: getting a new
	// connection, the race detector and a machine loaded by the whole test
	// suite take some of the time before WAIT's own timeout starts, and a
	// WAIT that outlives the store's timeout fails with the context's
	// error instead of ErrNotReplicated (seen in CI with one second).
	const (
		timeout = ackTestTimeout
		slack   = time.Second
	)
	r := startReplicated(t)
	s := r.store(t, WithReplicaAcks(1), WithTimeout(timeout))
	other := r.store(t, WithCacheTTL(time.Hour)) // only invalidations end its cached answers
	rep := newReplicaOf(t, testKeys(t), s)
	ctx := context.Background()

	r.replica.Pause()
	mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
	mustCreate(t, s, "reused", "r1", t0, t0.Add(keep))
	sess := rep.login(t)
	if err := rep.call(ctx, sess); err != nil {
		t.Fatalf("RPC of a new session with the replica hung: %v", err)
	}
	if isRevoked(t, other, "s", t0) {
		t.Fatal("IsRevoked(s) = true, want false")
	}
	if res := mustRotate(t, s, rotation("reused", "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate with the replica hung: outcome = %v, want %v", res.Outcome, store.OK)
	}

	notReplicated := func(name string, f func() error) {
		t.Helper()
		begin := time.Now()
		err := f()
		took := time.Since(begin)
		if !errors.Is(err, ErrNotReplicated) {
			t.Fatalf("%s with the replica hung: %v, want ErrNotReplicated", name, err)
		}
		if took > timeout+slack {
			t.Fatalf("%s with the replica hung took %v, want at most the timeout %v plus %v", name, took, timeout, slack)
		}
		if took < timeout/4 {
			t.Fatalf("%s with the replica hung failed after %v: it did not wait for the replica", name, took)
		}
		t.Logf("%s: %v after %v", name, err, took.Round(time.Millisecond))
	}
	notReplicated("Revoke", func() error { return s.Revoke(ctx, "s", t0, t0.Add(keep)) })
	if !isRevoked(t, s, "s", t0) {
		t.Fatal("IsRevoked(s) after the failed Revoke = false: the master must hold the revocation")
	}
	eventuallyRevoked(t, other, "s")
	notReplicated("Rotate (reuse)", func() error {
		_, err := s.Rotate(ctx, rotation("reused", "r1", "r3", t0.Add(grace)))
		return err
	})
	if !isRevoked(t, s, "reused", t0) {
		t.Fatal("IsRevoked(reused) after the failed Rotate = false: the master must hold the revocation")
	}

	err := rep.srv.RevokeSession(ctx, sess.SessionID)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("RevokeSession with the replica hung: %v, want code %v", err, codes.Unavailable)
	}
	// The replica server's cached answer ends with Redis's invalidation.
	deadline := time.Now().Add(5 * time.Second)
	for err := rep.call(ctx, sess); !isRevokedReason(err); err = rep.call(ctx, sess) {
		if time.Now().After(deadline) {
			t.Fatalf("RPC 5s after the unacknowledged RevokeSession: %v, want SESSION_REVOKED", err)
		}
		time.Sleep(time.Millisecond)
	}

	r.replica.Resume()
	mustRevoke(t, s, "s", t0, t0.Add(keep))
	if !revokedOn(t, s, r.replica.Addr(), "s") {
		t.Fatal("the retried Revoke returned, and the replica does not hold the revocation")
	}
	if err := rep.srv.RevokeSession(ctx, sess.SessionID); err != nil {
		t.Fatalf("RevokeSession retried with the replica back: %v", err)
	}
}

// TestReplicaAcks_Failover: a revocation, then at once the master dies,
// its replica is promoted (REPLICAOF NO ONE), and a new client uses it, as
// the deployment's servers would once they follow the new master.
//
//   - control, without the option: the replica lags (its link stalled);
//     Revoke succeeds on the master alone, and after the failover the
//     revoked session is live again. This is what WithReplicaAcks
//     prevents.
//   - acknowledged: with WithReplicaAcks(1), Revoke returns, the link is
//     stalled at once (nothing more reaches the replica) and the master
//     dies: the promoted replica holds the revocation.
//   - not acknowledged: with the replica lagging, Revoke fails with
//     ErrNotReplicated, so the caller knows; after the failover it
//     retries on the new master and the session is revoked.
func TestReplicaAcks_Failover(t *testing.T) {
	for _, tc := range []struct {
		name        string
		acks        int
		lagging     bool
		wantErr     error
		wantRevived bool
	}{
		{"control without acks", 0, true, nil, true},
		{"acknowledged", 1, false, nil, false},
		{"not acknowledged", 1, true, ErrNotReplicated, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReplicated(t)
			s := r.store(t, WithReplicaAcks(tc.acks), WithTimeout(ackTestTimeout))
			mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
			redistest.WaitInSync(t, r.master, 1, 30*time.Second)

			if tc.lagging {
				r.link.Stall()
			}
			err := s.Revoke(context.Background(), "s", t0, t0.Add(keep))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Revoke: %v, want %v", err, tc.wantErr)
			}
			// The failover: the master dies with whatever the link held.
			r.link.Stall()
			r.master.Stop()
			r.link.Close()
			if got := r.replica.Do("REPLICAOF", "NO", "ONE"); got != "OK" {
				t.Fatalf("REPLICAOF NO ONE = %v, want OK", got)
			}
			// The new master has no replica left to wait for.
			promoted := New(newClient(t, rueidis.ClientOption{InitAddress: []string{r.replica.Addr()}}))

			revoked := isRevoked(t, promoted, "s", t0)
			switch {
			case tc.wantRevived && revoked:
				t.Fatal("the promoted replica holds a revocation that the stalled link held back: the test no longer shows a lost revocation")
			case !tc.wantRevived && !revoked:
				t.Fatal("IsRevoked(s) on the promoted replica = false: the failover revived a revoked session")
			}
			if !revoked {
				// The session is live again: the caller that saw Revoke
				// fail retries it, on the new master.
				if tc.wantErr == nil {
					return // the control: nobody knows
				}
				mustRevoke(t, promoted, "s", t0, t0.Add(keep))
				eventuallyRevoked(t, promoted, "s") // its cached answer ends with the invalidation
			}
			if res := mustRotate(t, promoted, rotation("s", "r1", "r2", t0)); res.Outcome != store.Revoked {
				t.Fatalf("Rotate(s) on the promoted replica: outcome = %v, want %v", res.Outcome, store.Revoked)
			}
		})
	}
}

// TestReplicaAcks_Cluster: in a Cluster of two masters with a replica
// each, WAIT runs on the master that ran the revocation. With the first
// master's replica hung, revoking a session of the first master's slots
// fails with ErrNotReplicated, while one of the second master's succeeds:
// a WAIT sent anywhere else (a node whose replica answers, or a
// connection that wrote nothing) would have acknowledged at once. Once the
// replica answers again the revocation succeeds.
func TestReplicaAcks_Cluster(t *testing.T) {
	nodes := redistest.StartCluster(t, 2, "--repl-diskless-sync", "no")
	replicas := []*redistest.Server{redistest.StartClusterReplica(t, nodes[0]), redistest.StartClusterReplica(t, nodes[1])}
	for _, n := range nodes {
		redistest.WaitInSync(t, n, 1, 30*time.Second)
	}
	c := newClient(t, rueidis.ClientOption{InitAddress: []string{nodes[0].Addr(), nodes[1].Addr()}})
	if mode := c.Mode(); mode != rueidis.ClientModeCluster {
		t.Fatalf("client mode = %v, want %v", mode, rueidis.ClientModeCluster)
	}
	s := New(c, WithReplicaAcks(1), WithTimeout(ackTestTimeout)) // see TestReplicaAcks_FailsClosed

	// A session id in each master's slots.
	sids := make([]string, len(nodes))
	for i := 0; sids[0] == "" || sids[1] == ""; i++ {
		sid := fmt.Sprint("s", i)
		slot, _ := nodes[0].Do("CLUSTER", "KEYSLOT", s.key(sid)).(int64)
		for n := range nodes {
			if lo, hi := redistest.SlotRange(n, len(nodes)); sids[n] == "" && lo <= int(slot) && int(slot) <= hi {
				sids[n] = sid
			}
		}
	}
	for _, sid := range sids {
		mustCreate(t, s, sid, "r1", t0, t0.Add(keep))
	}

	replicas[0].Pause()
	if err := s.Revoke(context.Background(), sids[0], t0, t0.Add(keep)); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Revoke(%s) on master 0, whose replica is hung: %v, want ErrNotReplicated", sids[0], err)
	}
	mustRevoke(t, s, sids[1], t0, t0.Add(keep))
	replicas[0].Resume()
	mustRevoke(t, s, sids[0], t0, t0.Add(keep))
	for _, sid := range sids {
		if !isRevoked(t, s, sid, t0) {
			t.Fatalf("IsRevoked(%s) = false, want true", sid)
		}
	}
}

// TestWithReplicaAcks: the option sets the count; zero or less waits for
// none.
func TestWithReplicaAcks(t *testing.T) {
	if got := New(nil).opts.replicaAcks; got != 0 {
		t.Errorf("default replica acks = %d, want 0", got)
	}
	for _, tc := range []struct{ n, want int }{{-1, 0}, {0, 0}, {1, 1}, {3, 3}} {
		if got := New(nil, WithReplicaAcks(tc.n)).opts.replicaAcks; got != tc.want {
			t.Errorf("WithReplicaAcks(%d): %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestWaitMillis: WAIT's timeout is the time left less a margin of a
// quarter of it, at least 200 ms and at most half of it; in whole
// milliseconds, and never 0, which WAIT takes as forever.
func TestWaitMillis(t *testing.T) {
	for _, tc := range []struct {
		left time.Duration
		min  int64
		max  int64
	}{
		{10 * time.Second, 7450, 7500},
		{time.Second, 700, 750},
		{400 * time.Millisecond, 150, 200},
		{300 * time.Millisecond, 100, 150},
		{100 * time.Millisecond, 40, 50},
		{10 * time.Millisecond, 3, 5},
		{time.Millisecond, 1, 1},
		{0, 1, 1},
		{-time.Second, 1, 1},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), tc.left)
		got := waitMillis(ctx)
		cancel()
		if got < tc.min || got > tc.max {
			t.Errorf("waitMillis with %v left = %d ms, want %d to %d", tc.left, got, tc.min, tc.max)
		}
	}
}

// BenchmarkRevoke is the cost of WithReplicaAcks: Revoke on a master with
// one replica, both on loopback, without waiting and waiting for the
// replica. Revoking a revoked session writes the same
// fields again, which replicates as any revocation does.
//
//	go test -run '^$' -bench BenchmarkRevoke ./providers/redisstore/
func BenchmarkRevoke(b *testing.B) {
	master := redistest.Start(b, "--repl-diskless-sync", "no")
	redistest.StartReplica(b, master)
	redistest.WaitInSync(b, master, 1, 30*time.Second)
	for _, acks := range []int{0, 1} {
		b.Run(fmt.Sprint("acks=", acks), func(b *testing.B) {
			s := New(newClient(b, rueidis.ClientOption{InitAddress: []string{master.Addr()}}), WithReplicaAcks(acks))
			mustCreate(b, s, "s", "r1", t0, t0.Add(keep))
			ctx := context.Background()
			for b.Loop() {
				if err := s.Revoke(ctx, "s", t0, t0.Add(keep)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
