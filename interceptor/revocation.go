package interceptor

import (
	"context"
	"sync"
	"time"
)

// A RevocationList says whether a session was revoked. The server asks it
// on every authenticated request, after the token verified and before the
// handler runs.
//
// IsRevoked must be safe for concurrent use by multiple goroutines. An
// error fails the request with codes.Unavailable (the server fails closed)
// and the handler does not run.
type RevocationList interface {
	IsRevoked(ctx context.Context, sessionID string) (bool, error)
}

// RevocationFunc adapts a function to a [RevocationList].
type RevocationFunc func(ctx context.Context, sessionID string) (bool, error)

// IsRevoked calls f.
func (f RevocationFunc) IsRevoked(ctx context.Context, sessionID string) (bool, error) {
	return f(ctx, sessionID)
}

// MemoryRevocationList is an in-process [RevocationList]. It suits a single
// server; replicas need a shared store (see the README). The zero value is
// ready to use, and all methods are safe for concurrent use.
//
// Memory is bounded by the number of sessions revoked within one maximum
// lifetime: each entry is kept only until the time given to Revoke, after
// which every token of the session fails anyway, and expired entries are
// dropped as new ones are added.
type MemoryRevocationList struct {
	// Now replaces time.Now for pruning; nil means time.Now.
	Now func() time.Time

	mu      sync.RWMutex
	revoked map[string]time.Time // sid → keep until
	queue   expiryQueue
}

// Revoke marks session sessionID revoked until the time until, which must
// be no earlier than the session's absolute end plus the server's leeway
// ([Session.End] + [WithLeeway]): the server accepts the session's tokens
// until then. [Server.RevokeSession] computes it for you. Revoking again
// keeps the later time.
func (m *MemoryRevocationList) Revoke(sessionID string, until time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.revoked == nil {
		m.revoked = make(map[string]time.Time)
	}
	m.queue.expire(m.now(), func(sid string, end time.Time) {
		if t, ok := m.revoked[sid]; ok && t.Equal(end) {
			delete(m.revoked, sid)
		}
	})
	if old, ok := m.revoked[sessionID]; ok && !until.After(old) {
		return
	}
	m.revoked[sessionID] = until
	m.queue.add(sessionID, until)
}

// IsRevoked reports whether sessionID was revoked. It never fails.
func (m *MemoryRevocationList) IsRevoked(_ context.Context, sessionID string) (bool, error) {
	m.mu.RLock()
	_, ok := m.revoked[sessionID]
	m.mu.RUnlock()
	return ok, nil
}

// Len returns the number of entries held, for tests and metrics.
func (m *MemoryRevocationList) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.revoked)
}

func (m *MemoryRevocationList) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}
