package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// TestStore_KeysExpireAtKeepUntil: a session is one hash in the session
// id's hash slot, and it carries a TTL that ends at the keep-until the
// server gave, moved later (never earlier) by rotations and revocations.
// Redis expires keys by its own clock, so this test takes keep-until from
// the wall clock.
func TestStore_KeysExpireAtKeepUntil(t *testing.T) {
	srv := startRedis(t)
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

// TestStore_FlushAllDoesNotRevive: a revoked session stays refused after
// Redis loses its data, also for a store whose cache had answered for it.
func TestStore_FlushAllDoesNotRevive(t *testing.T) {
	srv := startRedis(t)
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

// TestStore_IsRevokedFromMemory: in steady state IsRevoked does not reach
// Redis, and a revocation through another client (another replica) is
// seen by Redis's invalidation, long before the cache TTL would end it.
func TestStore_IsRevokedFromMemory(t *testing.T) {
	srv := startRedis(t)
	admin := srv.client()
	a := New(srv.client(), WithCacheTTL(time.Hour))
	b := New(srv.client())
	mustCreate(t, b, "s", "r1", t0, t0.Add(keep))
	if isRevoked(t, a, "s", t0) {
		t.Fatal("IsRevoked = true, want false")
	}
	before := commandCalls(t, admin, "hmget")
	for range 100 {
		if isRevoked(t, a, "s", t0) {
			t.Fatal("IsRevoked = true, want false")
		}
	}
	if got := commandCalls(t, admin, "hmget") - before; got != 0 {
		t.Fatalf("100 cached IsRevoked calls ran HMGET %d times in Redis, want 0", got)
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

// TestStore_FailsClosed: with Redis down every method returns an error,
// IsRevoked included although its answer was cached (once the client saw
// the connection close, which the test waits for); once Redis is back
// on the same address the same store works again (with its data gone:
// the old session is refused).
func TestStore_FailsClosed(t *testing.T) {
	srv := startRedis(t)
	s := New(srv.client(), WithCacheTTL(time.Hour))
	mustCreate(t, s, "s", "r1", t0, t0.Add(keep))
	if isRevoked(t, s, "s", t0) {
		t.Fatal("IsRevoked = true, want false")
	}

	srv.Stop()
	// The client drops its cache when it sees the connection close, which
	// happens shortly after the kill, not at once: until then the cached
	// answer, right when it was cached, may still come.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		revoked, err := s.IsRevoked(ctx, "s", t0)
		cancel()
		if err != nil {
			if !revoked {
				t.Fatal("IsRevoked with Redis down = false with an error, want true")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("IsRevoked still answered from the cache 5s after Redis went down: the cache was not dropped with the connection")
		}
		time.Sleep(time.Millisecond)
	}
	call := func(name string, f func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := f(ctx); err == nil {
			t.Errorf("%s with Redis down: no error", name)
		}
	}
	call("IsRevoked", func(ctx context.Context) error {
		revoked, err := s.IsRevoked(ctx, "s", t0)
		if err == nil && !revoked {
			t.Error("IsRevoked with Redis down = false, nil: a lookup that failed let the session through")
		}
		return err
	})
	call("Create", func(ctx context.Context) error { return s.Create(ctx, "s2", digest("r1"), t0, t0.Add(keep)) })
	call("Rotate", func(ctx context.Context) error {
		_, err := s.Rotate(ctx, rotation("s", "r1", "r2", t0))
		return err
	})
	call("Revoke", func(ctx context.Context) error { return s.Revoke(ctx, "s", t0, t0.Add(keep)) })

	srv.Start()
	deadline = time.Now().Add(10 * time.Second)
	for {
		err := s.Create(context.Background(), "s2", digest("r1"), t0, t0.Add(keep))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Create 10s after Redis came back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res := mustRotate(t, s, rotation("s2", "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate after the restart: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if isRevoked(t, s, "s2", t0) {
		t.Fatal("IsRevoked(s2) after the restart = true, want false")
	}
	if !isRevoked(t, s, "s", t0) {
		t.Fatal("IsRevoked(s) after a restart without persistence = false, want true (allow-list)")
	}
}
