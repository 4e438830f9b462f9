// Package memstore holds in-process implementations of the
// [store.SessionStore] and [store.RevocationList] contracts.
//
// They suit one server process, and tests. Replicas must share their
// state: with these stores, a session revoked on one replica stays usable
// on the others, and a refresh token rotated on one is unknown to the
// next. Use a networked store there.
//
// Like every store, they have no clock: the times they compare and prune
// by come from the server.
package memstore

import (
	"bytes"
	"context"
	"sync"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// SessionStore is an in-process [store.SessionStore]. The zero value is
// ready to use; all methods are safe for concurrent use.
//
// Memory is bounded: a session's record is dropped once the time the
// server gave as its keep-until has passed (checked as records are
// written), since every token of the session fails from then on anyway.
type SessionStore struct {
	mu       sync.Mutex
	sessions map[string]*sessionRecord
	queue    expiryQueue
}

type sessionRecord struct {
	current    store.Digest
	previous   store.Digest
	successor  []byte
	graceUntil time.Time
	revoked    bool
	keepUntil  time.Time
}

var _ store.SessionStore = (*SessionStore)(nil)

// Create implements [store.SessionStore].
func (m *SessionStore) Create(_ context.Context, sessionID string, refresh store.Digest, now, keepUntil time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(now)
	m.put(sessionID, &sessionRecord{current: refresh, keepUntil: keepUntil})
	return nil
}

// Rotate implements [store.SessionStore].
func (m *SessionStore) Rotate(_ context.Context, r store.Rotation) (store.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(r.Now)
	rec := m.sessions[r.SessionID]
	switch {
	case rec == nil:
		return store.Result{Outcome: store.Unknown}, nil
	case rec.revoked:
		return store.Result{Outcome: store.Revoked}, nil
	case r.Presented == rec.current:
		rec.previous, rec.current = rec.current, r.Next
		// Keep a copy, and hand out copies: the caller may reuse its
		// buffer, and a replaying caller may open the successor in place.
		rec.successor, rec.graceUntil = bytes.Clone(r.Successor), r.GraceUntil
		if r.KeepUntil.After(rec.keepUntil) {
			rec.keepUntil = r.KeepUntil
			m.queue.add(r.SessionID, r.KeepUntil)
		}
		return store.Result{Outcome: store.OK, Successor: r.Successor}, nil
	case r.Presented == rec.previous && r.Now.Before(rec.graceUntil):
		// A record never rotated has a zero graceUntil: no replay.
		return store.Result{Outcome: store.Replay, Successor: bytes.Clone(rec.successor)}, nil
	default:
		rec.revoked, rec.successor = true, nil // forget the tokens of a stolen session
		return store.Result{Outcome: store.Reused}, nil
	}
}

// Revoke implements [store.Revoker]. Revoking a session the store does not
// know records nothing: it is refused already.
func (m *SessionStore) Revoke(_ context.Context, sessionID string, now, keepUntil time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(now)
	if rec := m.sessions[sessionID]; rec != nil {
		rec.revoked, rec.successor = true, nil
	}
	return nil
}

// IsRevoked implements [store.RevocationList]: a session is refused when
// it was revoked, when the store does not know it, and once its record's
// keep-until time has passed.
func (m *SessionStore) IsRevoked(_ context.Context, sessionID string, now time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.sessions[sessionID]
	return rec == nil || rec.revoked || now.After(rec.keepUntil), nil
}

// Len returns the number of session records held, for tests and metrics.
func (m *SessionStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// prune drops the records whose keep-until is before now. m.mu is held.
func (m *SessionStore) prune(now time.Time) {
	m.queue.expire(now, func(id string, until time.Time) {
		if r := m.sessions[id]; r != nil && r.keepUntil.Equal(until) {
			delete(m.sessions, id)
		}
	})
}

// put stores rec under sid. m.mu is held.
func (m *SessionStore) put(sid string, rec *sessionRecord) {
	if m.sessions == nil {
		m.sessions = make(map[string]*sessionRecord)
	}
	m.sessions[sid] = rec
	m.queue.add(sid, rec.keepUntil)
}

// RevocationList is an in-process deny-list: a [store.RevocationList] and
// [store.Revoker] for a server without refresh tokens. The zero value is
// ready to use, and all methods are safe for concurrent use.
//
// Memory is bounded by the number of sessions revoked within one maximum
// lifetime: each entry is kept only until the keep-until time given to
// Revoke, after which every token of the session fails anyway.
type RevocationList struct {
	mu      sync.RWMutex
	revoked map[string]time.Time // sid → keep until
	queue   expiryQueue
}

var (
	_ store.RevocationList = (*RevocationList)(nil)
	_ store.Revoker        = (*RevocationList)(nil)
)

// Revoke implements [store.Revoker]. Revoking again keeps the later
// keep-until time.
func (m *RevocationList) Revoke(_ context.Context, sessionID string, now, keepUntil time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.revoked == nil {
		m.revoked = make(map[string]time.Time)
	}
	m.queue.expire(now, func(sid string, until time.Time) {
		if t, ok := m.revoked[sid]; ok && t.Equal(until) {
			delete(m.revoked, sid)
		}
	})
	if old, ok := m.revoked[sessionID]; ok && !keepUntil.After(old) {
		return nil
	}
	m.revoked[sessionID] = keepUntil
	m.queue.add(sessionID, keepUntil)
	return nil
}

// IsRevoked implements [store.RevocationList]. It never fails. An entry
// past its keep-until time still answers true until it is pruned: the
// server stops accepting the session's tokens by then anyway.
func (m *RevocationList) IsRevoked(_ context.Context, sessionID string, _ time.Time) (bool, error) {
	m.mu.RLock()
	_, ok := m.revoked[sessionID]
	m.mu.RUnlock()
	return ok, nil
}

// Len returns the number of entries held, for tests and metrics.
func (m *RevocationList) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.revoked)
}
