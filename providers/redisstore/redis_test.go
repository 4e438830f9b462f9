package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// testKeysExpireAtKeepUntil: a session is one hash in the session
// id's hash slot, and it carries a TTL that ends at the keep-until the
// server gave, moved later (never earlier) by rotations and revocations.
// Redis expires keys by its own clock, so this test takes keep-until from
// the wall clock.
func testKeysExpireAtKeepUntil(t *testing.T, start starter) {
	srv := start(t)
	c := srv.client()
	s := New(c)
	now := time.Now()
	pexpiretime := func(want time.Time) {
		t.Helper()
		keys, err := do(t, c, "KEYS", "*").AsStrSlice()
		if err != nil || len(keys) != 1 || keys[0] != "slidejwt:{s}:s" {
			t.Fatalf("KEYS * = %q, %v; want [slidejwt:{s}:s]", keys, err)
		}
		if pttl, err := do(t, c, "PTTL", keys[0]).AsInt64(); err != nil || pttl <= 0 {
			t.Fatalf("PTTL = %d, %v; want > 0", pttl, err)
		}
		at, err := do(t, c, "PEXPIRETIME", keys[0]).AsInt64()
		if err != nil || at != want.UnixMilli() {
			t.Fatalf("PEXPIRETIME = %d, %v; want keep-until %d", at, err, want.UnixMilli())
		}
	}
	first := now.Add(time.Hour)
	mustCreate(t, s, "s", "r1", now, first)
	pexpiretime(first)

	later := now.Add(2 * time.Hour)
	r := rotation("s", "r1", "r2", now)
	r.KeepUntil = later
	if res := mustRotate(t, s, r); res.Outcome != store.OK {
		t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	pexpiretime(later)

	r = rotation("s", "r2", "r3", now)
	r.KeepUntil = first // earlier: the record keeps the later end
	if res := mustRotate(t, s, r); res.Outcome != store.OK {
		t.Fatalf("Rotate: outcome = %v, want %v", res.Outcome, store.OK)
	}
	pexpiretime(later)

	latest := now.Add(3 * time.Hour)
	mustRevoke(t, s, "s", now, latest)
	pexpiretime(latest)

	// A record whose keep-until Redis's clock has passed is gone.
	mustCreate(t, s, "gone", "r1", now, now.Add(-time.Second))
	if n, err := do(t, c, "EXISTS", "slidejwt:{gone}:s").AsInt64(); err != nil || n != 0 {
		t.Fatalf("EXISTS of a record past its keep-until = %d, %v; want 0", n, err)
	}
}

// TestStore_KeyPrefix: WithKeyPrefix names the keys, and a prefix with a
// brace, which would move the hash tag, keeps the default.
func TestStore_KeyPrefix(t *testing.T) {
	for _, tc := range []struct{ prefix, want string }{
		{"", "slidejwt:{s}:s"},
		{"app1", "app1:{s}:s"},
		{"a{b", "slidejwt:{s}:s"},
		{"a}b", "slidejwt:{s}:s"},
	} {
		if got := New(nil, WithKeyPrefix(tc.prefix)).key("s"); got != tc.want {
			t.Errorf("WithKeyPrefix(%q): key = %q, want %q", tc.prefix, got, tc.want)
		}
	}
}

// testFlushAllDoesNotRevive: a revoked session stays refused after
// Redis loses its data, also for a store whose cache had answered for it.
func testFlushAllDoesNotRevive(t *testing.T, start starter) {
	srv := start(t)
	c := srv.client()
	s := New(c, WithCacheTTL(time.Hour))
	mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
	if isRevoked(t, s, "s", t0) {
		t.Fatal("IsRevoked after Create = true, want false")
	}
	mustRevoke(t, s, "s", t0, t0.Add(keep))
	if err := do(t, c, "FLUSHALL").Error(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	// The invalidations are asynchronous; within a second is generous.
	deadline := time.Now().Add(time.Second)
	for !isRevoked(t, s, "s", t0) {
		if time.Now().After(deadline) {
			t.Fatal("IsRevoked after revoke and FLUSHALL = false, want true")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if res := mustRotate(t, s, rotation("s", "r1", "r2", t0)); res.Outcome != store.Unknown {
		t.Fatalf("Rotate after FLUSHALL: outcome = %v, want %v", res.Outcome, store.Unknown)
	}
}

// testIsRevokedFromMemory: in steady state IsRevoked does not reach
// Redis, and a revocation through another client (another replica) is
// seen by Redis's invalidation, long before the cache TTL would end it.
func testIsRevokedFromMemory(t *testing.T, start starter) {
	srv := start(t)
	admin := srv.client()
	a := New(srv.client(), WithCacheTTL(time.Hour))
	b := New(srv.client())
	mustCreate(t, b, "s", "r1", t0, t0.Add(keep))
	if isRevoked(t, a, "s", t0) {
		t.Fatal("IsRevoked = true, want false")
	}
	before := commandCalls(t, admin, "hmget")
	// Nothing waits on a cached answer: no call makes its deadline's
	// timer, which would ask the caller's context for Done.
	ctx := &doneCounter{Context: context.Background()}
	for range 100 {
		if revoked, err := a.IsRevoked(ctx, "s", t0); err != nil || revoked {
			t.Fatalf("IsRevoked = %v, %v; want false", revoked, err)
		}
	}
	if got := commandCalls(t, admin, "hmget") - before; got != 0 {
		t.Fatalf("100 cached IsRevoked calls ran HMGET %d times in Redis, want 0", got)
	}
	if n := ctx.n.Load(); n != 0 {
		t.Errorf("100 cached IsRevoked calls asked the caller's context for Done %d times, want 0 (no timer)", n)
	}

	mustRevoke(t, b, "s", t0, t0.Add(keep))
	revokedAt := time.Now()
	for !isRevoked(t, a, "s", t0) {
		if time.Since(revokedAt) > time.Second {
			t.Fatal("a revocation by another client was not seen within 1s (cache TTL 1h): no invalidation")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("revocation seen by the other client after %v", time.Since(revokedAt))
}

// testFailsClosed: with Redis killed, or hung (paused with SIGSTOP: its
// connections stay open and nothing answers), every method returns an
// error within the store's timeout (plus a generous slack for a loaded
// machine) although the calls carry no deadline of their own; IsRevoked
// says revoked with its error, also for a session whose answer it had
// cached, once the cache TTL or the connection ended that answer; and an
// RPC on a replica over the store fails with codes.Unavailable. When Redis
// is back the same store and replica recover on their own: after a pause
// with the sessions Redis kept, after a restart without persistence with
// the old sessions refused (allow-list).
func testFailsClosed(t *testing.T, start starter) {
	const (
		timeout  = 300 * time.Millisecond
		cacheTTL = 300 * time.Millisecond
		slack    = time.Second
	)
	for _, tc := range []struct {
		name     string
		down, up func(*redisServer)
		dataKept bool
	}{
		{"killed", func(r *redisServer) { r.Stop() }, func(r *redisServer) { r.Start() }, false},
		{"paused", func(r *redisServer) { r.Pause() }, func(r *redisServer) { r.Resume() }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := start(t)
			rep := newReplica(t, testKeys(t), rueidis.ClientOption{InitAddress: []string{srv.Addr()}},
				WithTimeout(timeout), WithCacheTTL(cacheTTL))
			s := rep.store
			bg := context.Background()
			sess := rep.login(t)
			if err := rep.call(bg, sess); err != nil {
				t.Fatalf("RPC with Redis up: %v", err)
			}
			mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
			mustCreate(t, s, "victim", "r1", t0, t0.Add(keep))
			if isRevoked(t, s, "s", t0) {
				t.Fatal("IsRevoked = true, want false")
			}

			tc.down(srv)
			// A cached answer (the right one: nothing changed) may still
			// come until the client sees the connection close or the
			// cache TTL ends; then every answer is an error.
			deadline := time.Now().Add(cacheTTL + timeout + slack)
			for {
				revoked, err := s.IsRevoked(bg, "s", t0)
				if err != nil {
					if !revoked {
						t.Fatal("IsRevoked with Redis down = false with an error, want true")
					}
					break
				}
				if revoked {
					t.Fatal("IsRevoked with Redis down = true without an error, want a cached false or an error")
				}
				if time.Now().After(deadline) {
					t.Fatalf("IsRevoked still answered from the cache %v after Redis went down (cache TTL %v)", cacheTTL+timeout+slack, cacheTTL)
				}
				time.Sleep(5 * time.Millisecond)
			}
			bounded := func(name string, f func(context.Context) error) {
				t.Helper()
				begin := time.Now()
				err := f(bg)
				took := time.Since(begin)
				if err == nil {
					t.Errorf("%s with Redis %s: no error", name, tc.name)
				}
				if took > timeout+slack {
					t.Errorf("%s with Redis %s took %v, want at most the timeout %v plus %v", name, tc.name, took, timeout, slack)
				}
			}
			bounded("IsRevoked", func(ctx context.Context) error {
				revoked, err := s.IsRevoked(ctx, "never-cached", t0)
				if !revoked {
					t.Error("IsRevoked with Redis down = false: a lookup that failed let the session through")
				}
				return err
			})
			bounded("Create", func(ctx context.Context) error { return s.Create(ctx, "s2", digest("r1"), t0, t0.Add(keep)) })
			bounded("Rotate", func(ctx context.Context) error {
				_, err := s.Rotate(ctx, rotation("s", "r1", "r2", t0))
				return err
			})
			bounded("Revoke", func(ctx context.Context) error { return s.Revoke(ctx, "victim", t0, t0.Add(keep)) })
			bounded("RPC", func(ctx context.Context) error {
				err := rep.call(ctx, sess)
				if status.Code(err) != codes.Unavailable {
					t.Errorf("RPC with Redis %s: %v, want code %v", tc.name, err, codes.Unavailable)
				}
				return err
			})

			tc.up(srv)
			deadline = time.Now().Add(10 * time.Second)
			for {
				err := s.Create(bg, "s3", digest("r1"), t0, t0.Add(keep))
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("Create 10s after Redis came back: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if res := mustRotate(t, s, rotation("s3", "r1", "r2", t0)); res.Outcome != store.OK {
				t.Fatalf("Rotate after Redis came back: outcome = %v, want %v", res.Outcome, store.OK)
			}
			if isRevoked(t, s, "s3", t0) {
				t.Fatal("IsRevoked(s3) after Redis came back = true, want false")
			}
			if err := rep.call(bg, rep.login(t)); err != nil {
				t.Fatalf("RPC of a new session after Redis came back: %v", err)
			}
			err := rep.call(bg, sess)
			switch {
			case tc.dataKept && err != nil:
				t.Fatalf("RPC of the old session after a pause: %v, want it let through", err)
			case !tc.dataKept && !isRevokedReason(err):
				t.Fatalf("RPC of the old session after a restart without persistence: %v, want SESSION_REVOKED (allow-list)", err)
			}
		})
	}
}
