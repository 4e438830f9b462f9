package redisstore

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/slidejwt/slidejwt/interceptor/store"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// recordingStore is a Store that keeps the last sealed successor a
// rotation carried, to learn its real size.
type recordingStore struct {
	*Store
	mu        sync.Mutex
	successor []byte
}

func (r *recordingStore) Rotate(ctx context.Context, rot store.Rotation) (store.Result, error) {
	r.mu.Lock()
	r.successor = rot.Successor
	r.mu.Unlock()
	return r.Store.Rotate(ctx, rot)
}

// TestMemoryPerSession measures what a session costs Redis, and fails if
// that grows past a bound about a quarter above the figure measured on
// Redis 7.0.15 (152, 1296, 1392 and 87 bytes below; the figures are in
// doc.go): a regression such as
// a field that keeps a token (some hundreds of bytes) or a key per
// rotation, rather than a change of allocator size class.
//
// It takes one session through a real interceptor.Server (ES256) for the
// size of a real sealed successor and the MEMORY USAGE of its hash after
// login (Create) and after a refresh (Rotate, which stores the
// successor). Then it writes 10,000 sessions, each created and rotated
// once with a successor of that size, and divides the growth of Redis's
// used_memory by their number; then two clients in turn read each one
// through the client-side cache, as every replica's IsRevoked does, and
// Redis's tracking table of the keys they hold is measured the same way.
// The figures are logged; doc.go quotes them.
func TestMemoryPerSession(t *testing.T) {
	const sessions = 10000
	srv := startRedis(t)
	admin := srv.client()
	rec := &recordingStore{Store: New(srv.client())}
	rep := newReplicaOf(t, testKeys(t), rec)
	memoryUsage := func(key string) int64 {
		t.Helper()
		n, err := do(t, admin, "MEMORY", "USAGE", key, "SAMPLES", "0").AsInt64()
		if err != nil {
			t.Fatalf("MEMORY USAGE %s: %v", key, err)
		}
		return n
	}
	usedMemory := func() int64 {
		t.Helper()
		info, err := do(t, admin, "INFO", "memory").ToString()
		if err != nil {
			t.Fatalf("INFO memory: %v", err)
		}
		n, err := strconv.ParseInt(redistest.InfoField(info, "used_memory"), 10, 64)
		if err != nil {
			t.Fatalf("INFO memory: used_memory: %v", err)
		}
		return n
	}

	sess := rep.login(t)
	key := rec.key(sess.SessionID)
	created := memoryUsage(key)
	if _, err := rep.srv.Refresh(context.Background(), sess.RefreshToken); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	rotated := memoryUsage(key)
	rec.mu.Lock()
	successor := len(rec.successor)
	rec.mu.Unlock()
	t.Logf("MEMORY USAGE of one session's hash: %d bytes after login, %d after a refresh (sealed successor of %d bytes, ES256)", created, rotated, successor)

	if err := do(t, admin, "FLUSHALL").Error(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	s := rec.Store
	before := usedMemory()
	const workers = 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			succ := make([]byte, successor)
			ctx := context.Background()
			for i := w; i < sessions; i += workers {
				sid := fmt.Sprint("mem-", i)
				_, _ = rand.Read(succ)
				r := rotation(sid, "r1", "r2", t0)
				r.Successor = succ
				if err := s.Create(ctx, sid, digest("r1"), t0, t0.Add(keep)); err != nil {
					t.Errorf("Create(%s): %v", sid, err)
					return
				}
				if res, err := s.Rotate(ctx, r); err != nil || res.Outcome != store.OK {
					t.Errorf("Rotate(%s): %v %v", sid, res.Outcome, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	stored := usedMemory()
	readAll := func() int64 {
		t.Helper()
		reader := New(srv.client())
		for i := range sessions {
			if isRevoked(t, reader, fmt.Sprint("mem-", i), t0) {
				t.Fatalf("IsRevoked(mem-%d) = true, want false", i)
			}
		}
		return usedMemory()
	}
	tracked := readAll()
	trackedTwice := readAll()
	data := (stored - before) / sessions
	tracking, again := (tracked-stored)/sessions, (trackedTwice-tracked)/sessions
	t.Logf("used_memory per session over %d sessions, each rotated once: %d bytes of data; Redis's tracking table: %d bytes for the first client that caches it, %d for a second",
		sessions, data, tracking, again)

	for _, c := range []struct {
		what       string
		got, limit int64
	}{
		{"MEMORY USAGE after login", created, 192},
		{"MEMORY USAGE after a refresh", rotated, 1600},
		{"used_memory per rotated session", data, 1750},
		{"tracking table per session, first client", tracking, 128},
		{"tracking table per session, second client", again, 128},
	} {
		if c.got <= 0 || c.got > c.limit {
			t.Errorf("%s = %d bytes, want in (0, %d]", c.what, c.got, c.limit)
		}
	}
}
