package redisstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// TestCluster runs the store on a Redis Cluster of three masters that the
// test starts and joins (internal/redistest), through rueidis's cluster
// client, as two replicas with a client each: create, rotate, two
// replicas rotating one refresh token at once (exactly one successor),
// grace replay, reuse revoking the session, revoke, and the other
// replica's cached IsRevoked invalidated by the node that owns the
// session. Then it proves the key layout: every key the store wrote
// hashes to its session id's slot and lives on the master that owns that
// slot, and the sessions of many random ids spread over all three.
func TestCluster(t *testing.T) {
	nodes := redistest.StartCluster(t, 3)
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.Addr())
	}
	opt := rueidis.ClientOption{InitAddress: addrs}
	a := New(newClient(t, opt))
	b := New(newClient(t, opt), WithCacheTTL(time.Hour)) // only invalidations end its cached answers
	if mode := a.client.Mode(); mode != rueidis.ClientModeCluster {
		t.Fatalf("client mode = %v, want %v", mode, rueidis.ClientModeCluster)
	}
	ids := []string{"s", "t"}

	mustCreate(t, a, "s", "r1", t0, t0.Add(keep))
	if isRevoked(t, b, "s", t0) {
		t.Fatal("IsRevoked(s) on the other replica = true, want false")
	}
	if res := mustRotate(t, a, rotation("s", "r1", "r2", t0)); res.Outcome != store.OK {
		t.Fatalf("Rotate r1: outcome = %v, want %v", res.Outcome, store.OK)
	}
	if res := mustRotate(t, b, rotation("s", "r1", "rX", t0.Add(time.Second))); res.Outcome != store.Replay || !bytes.Equal(res.Successor, sealed("r2")) {
		t.Fatalf("replay of r1 within the grace: %v %q, want %v %q", res.Outcome, res.Successor, store.Replay, sealed("r2"))
	}

	// Replicas a and b rotate r2 at the same instant, ten times each.
	const n = 20
	results := make([]store.Result, n)
	errs := make([]error, n)
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-begin
			results[i], errs[i] = []*Store{a, b}[i%2].Rotate(context.Background(), rotation("s", "r2", fmt.Sprint("c", i), t0.Add(2*time.Second)))
		})
	}
	close(begin)
	wg.Wait()
	winner := -1
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("concurrent Rotate %d: %v", i, errs[i])
		}
		if res.Outcome == store.OK {
			if winner >= 0 {
				t.Fatalf("concurrent Rotates %d and %d both got OK", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("no concurrent Rotate got OK")
	}
	for i, res := range results {
		if i != winner && (res.Outcome != store.Replay || !bytes.Equal(res.Successor, sealed(fmt.Sprint("c", winner)))) {
			t.Errorf("concurrent Rotate %d: %v %q, want %v of the winner's successor", i, res.Outcome, res.Successor, store.Replay)
		}
	}
	if isRevoked(t, b, "s", t0) {
		t.Fatal("IsRevoked(s) after rotations = true, want false")
	}

	// r1 after its grace period is reuse: the session is revoked, and the
	// other replica's cached answer is invalidated.
	if res := mustRotate(t, a, rotation("s", "r1", "rY", t0.Add(time.Hour))); res.Outcome != store.Reused {
		t.Fatalf("r1 after the grace: outcome = %v, want %v", res.Outcome, store.Reused)
	}
	eventuallyRevoked(t, b, "s")
	if res := mustRotate(t, b, rotation("s", fmt.Sprint("c", winner), "rZ", t0.Add(time.Hour))); res.Outcome != store.Revoked {
		t.Fatalf("current token after reuse: outcome = %v, want %v", res.Outcome, store.Revoked)
	}

	mustCreate(t, b, "t", "r1", t0, t0.Add(keep))
	if isRevoked(t, b, "t", t0) {
		t.Fatal("IsRevoked(t) = true, want false")
	}
	mustRevoke(t, a, "t", t0, t0.Add(keep))
	eventuallyRevoked(t, b, "t")

	// Many sessions, with ids as the server makes them (128 random bits).
	const sessions = 300
	for range sessions {
		var id [16]byte
		_, _ = rand.Read(id[:])
		sid := base64.RawURLEncoding.EncodeToString(id[:])
		ids = append(ids, sid)
		mustCreate(t, a, sid, "r1", t0, t0.Add(keep))
		if res := mustRotate(t, b, rotation(sid, "r1", "r2", t0)); res.Outcome != store.OK {
			t.Fatalf("Rotate(%s): outcome = %v, want %v", sid, res.Outcome, store.OK)
		}
	}

	keysOf := make(map[string]int, len(ids))
	perNode := make([]int, len(nodes))
	for i, node := range nodes {
		keys, _ := node.Do("KEYS", "*").([]any)
		perNode[i] = len(keys)
		lo, hi := redistest.SlotRange(i, len(nodes))
		for _, k := range keys {
			key := k.(string)
			sid, ok := hashTag(key)
			if !ok {
				t.Fatalf("key %q on node %d has no hash tag", key, i)
			}
			keysOf[sid]++
			keySlot, sidSlot := node.Do("CLUSTER", "KEYSLOT", key), node.Do("CLUSTER", "KEYSLOT", sid)
			if keySlot != sidSlot {
				t.Errorf("key %q is in slot %v, its session id %q in slot %v", key, keySlot, sid, sidSlot)
			}
			if slot := int(keySlot.(int64)); slot < lo || slot > hi {
				t.Errorf("key %q (slot %d) is on node %d, which owns slots %d-%d", key, slot, i, lo, hi)
			}
		}
	}
	for _, sid := range ids {
		if keysOf[sid] == 0 {
			t.Errorf("session %q has no key in the cluster", sid)
		}
	}
	t.Logf("keys per master of %d sessions: %v", len(ids), perNode)
	for i, k := range perNode {
		// Each master owns a third of the slots; a sixth of the sessions
		// is a bound that random ids miss with a negligible probability.
		if k < sessions/6 {
			t.Errorf("master %d holds %d keys of %d sessions, want about a third", i, k, len(ids))
		}
	}
}

// hashTag returns the Cluster hash tag of key: what is between its first
// '{' and the next '}'.
func hashTag(key string) (string, bool) {
	_, rest, ok := strings.Cut(key, "{")
	if !ok {
		return "", false
	}
	tag, _, ok := strings.Cut(rest, "}")
	return tag, ok && tag != ""
}

// eventuallyRevoked waits until s says sid is revoked: the invalidation
// of a cached answer is asynchronous. The deadline is generous (five
// seconds; it takes milliseconds) for a loaded machine; with a cache TTL
// of an hour, only an invalidation meets it.
func eventuallyRevoked(t testing.TB, s *Store, sid string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !isRevoked(t, s, sid, t0) {
		if time.Now().After(deadline) {
			t.Fatalf("IsRevoked(%s) still false 5s after the session was revoked elsewhere: no invalidation", sid)
		}
		time.Sleep(time.Millisecond)
	}
}
