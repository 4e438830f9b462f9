package redisstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// TestSentinel runs the store through rueidis's Sentinel client, as two
// replicas with a client each, on a master, its replica and a sentinel
// that the test starts. It rotates and revokes, and the other replica's
// cached answer is invalidated. Then SENTINEL FAILOVER promotes the
// replica: the store follows the new master by itself (writes land
// there), the live session stays live, the revoked one stays revoked, and
// IsRevoked of the revoked session, asked all through the failover, never
// says false without an error.
func TestSentinel(t *testing.T) {
	const name = "slidejwt"
	// No delay before the replica's first full sync (five seconds by
	// default for a diskless one).
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0")
	replica := redistest.StartReplica(t, master)
	sentinel := redistest.StartSentinel(t, name, master, "sentinel failover-timeout "+name+" 10000")
	waitFor(t, 30*time.Second, "the sentinel to see the replica in sync", func() bool {
		replicas, _ := sentinel.Do("SENTINEL", "REPLICAS", name).([]any)
		if len(replicas) != 1 {
			return false
		}
		r := fields(replicas[0])
		return r["port"] == replica.Port() && r["flags"] == "slave" && r["master-link-status"] == "ok"
	})

	opt := rueidis.ClientOption{InitAddress: []string{sentinel.Addr()}, Sentinel: rueidis.SentinelOption{MasterSet: name}}
	a := New(newClient(t, opt))
	b := New(newClient(t, opt), WithCacheTTL(time.Hour)) // only invalidations end its cached answers
	if mode := a.client.Mode(); mode != rueidis.ClientModeSentinel {
		t.Fatalf("client mode = %v, want %v", mode, rueidis.ClientModeSentinel)
	}
	mustCreate(t, a, "live", "r1", t0, t0.Add(keep))
	mustCreate(t, a, "revoked", "r1", t0, t0.Add(keep))
	if isRevoked(t, b, "revoked", t0) {
		t.Fatal("IsRevoked(revoked) before the revocation = true, want false")
	}
	mustRevoke(t, a, "revoked", t0, t0.Add(keep))
	eventuallyRevoked(t, b, "revoked")
	if res := mustRotate(t, a, rotation("live", "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate(live): outcome = %v, want %v", res.Outcome, store.OK)
	}
	if isRevoked(t, b, "live", t0) {
		t.Fatal("IsRevoked(live) = true, want false")
	}
	// The failover below is the clean kind, to a replica in sync: wait for
	// the writes to reach it.
	waitFor(t, 10*time.Second, "the replica to have the revocation and the rotation", func() bool {
		rev, _ := redistest.Do(replica.Addr(), "HGET", a.key("revoked"), "rev")
		cur, _ := redistest.Do(replica.Addr(), "HGET", a.key("live"), "cur")
		d := digest("r2")
		return rev == "1" && cur == string(d[:])
	})

	var wrong, failed, asked atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			revoked, err := b.IsRevoked(ctx, "revoked", t0)
			asked.Add(1)
			switch {
			case err != nil:
				failed.Add(1)
			case !revoked:
				wrong.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	})

	began := time.Now()
	if got := sentinel.Do("SENTINEL", "FAILOVER", name); got != "OK" {
		t.Fatalf("SENTINEL FAILOVER = %v, want OK", got)
	}
	waitFor(t, 30*time.Second, "the sentinel to name the replica as master", func() bool {
		addr, _ := sentinel.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name).([]any)
		return len(addr) == 2 && addr[1] == replica.Port()
	})
	// Writes reach the new master once the clients follow it; until then
	// they may still go to the old one, which the sentinel demotes.
	var landed string
	for i := 0; landed == ""; i++ {
		sid := fmt.Sprint("after-", i)
		if a.Create(context.Background(), sid, digest("r1"), t0, t0.Add(keep)) == nil {
			if n, _ := redistest.Do(replica.Addr(), "EXISTS", a.key(sid)); n == int64(1) {
				landed = sid
			}
		}
		if landed == "" && time.Since(began) > 30*time.Second {
			t.Fatal("30s after SENTINEL FAILOVER the store's writes do not reach the new master")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the store wrote to the new master %v after SENTINEL FAILOVER", time.Since(began).Round(time.Millisecond))
	if role := replica.Info("replication", "role"); role != "master" {
		t.Fatalf("the promoted replica's role = %q, want master", role)
	}

	if res := mustRotate(t, a, rotation(landed, "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate(%s) on the new master: outcome = %v, want %v", landed, res.Outcome, store.OK)
	}
	if res := mustRotate(t, a, rotation("live", "r2", "r3", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate(live) after the failover: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if res := mustRotate(t, a, rotation("revoked", "r1", "r2", t0)); res.Outcome != store.Revoked {
		t.Fatalf("Rotate(revoked) after the failover: outcome = %v, want %v", res.Outcome, store.Revoked)
	}
	for _, s := range []*Store{a, b} {
		if isRevoked(t, s, "live", t0) {
			t.Fatal("IsRevoked(live) after the failover = true, want false")
		}
		if !isRevoked(t, s, "revoked", t0) {
			t.Fatal("IsRevoked(revoked) after the failover = false: the failover revived a revoked session")
		}
	}
	stop()
	wg.Wait()
	t.Logf("IsRevoked(revoked) asked %d times through the failover: %d errors (fail closed), %d wrong", asked.Load(), failed.Load(), wrong.Load())
	if wrong.Load() != 0 {
		t.Fatalf("IsRevoked(revoked) said false %d times during the failover: a revoked session was let through", wrong.Load())
	}
}

// fields turns a reply of alternating names and values (SENTINEL
// REPLICAS's entries) into a map.
func fields(reply any) map[string]any {
	kv, _ := reply.([]any)
	m := make(map[string]any, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		if k, ok := kv[i].(string); ok {
			m[k] = kv[i+1]
		}
	}
	return m
}

// waitFor polls cond until it holds, failing the test after limit (a
// generous deadline for a loaded machine).
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
