package interceptor

import (
	"context"
	"sync"
	"time"
)

// A SessionStore holds the state that refresh tokens need: each session's
// current refresh token, the successor handed out by the last rotation (for
// the grace period), and revocations. It is also the [RevocationList] that
// the server consults on every call.
//
// Verification and renewal of access tokens need no store; refresh and
// revocation do, so every replica that serves [Server.TokenService] or
// must honour revocations shares one store. Each method is a single atomic
// operation, shaped so that a networked store (for example Redis with one
// Lua script per method) does it in one round trip.
//
// Implementations must be safe for concurrent use by multiple goroutines.
type SessionStore interface {
	RevocationList
	// CreateSession records a new session whose current refresh token has
	// the id refreshID. The record may be dropped after end, the
	// session's absolute end.
	CreateSession(ctx context.Context, sessionID, refreshID string, end time.Time) error
	// Rotate is the atomic check-and-rotate of a refresh token; see
	// [Rotation] and [RotateOutcome].
	Rotate(ctx context.Context, r Rotation) (RotateResult, error)
	// Revoke marks the session revoked until end. Revoking an unknown or
	// already revoked session is not an error.
	Revoke(ctx context.Context, sessionID string, end time.Time) error
}

// Rotation asks a [SessionStore] to retire the refresh token PresentedID of
// session SessionID and make NextID current.
type Rotation struct {
	SessionID   string
	PresentedID string
	// NextID and Next are the successor: the new refresh token's id and
	// the token pair to return to the client.
	NextID string
	Next   Session
	// Now is the time of the request; GraceUntil = Now + grace period.
	Now        time.Time
	GraceUntil time.Time
	// End is the session's absolute end, after which its record may go.
	End time.Time
}

// RotateOutcome is what [SessionStore.Rotate] did.
type RotateOutcome int

// The outcomes of a rotation. A store decides them as follows, in one
// atomic step:
//
//   - the session is unknown: RotateUnknown;
//   - the session is revoked: RotateRevoked;
//   - PresentedID is current: NextID becomes current, PresentedID becomes
//     the previous id with Next as its successor until GraceUntil:
//     RotateOK;
//   - PresentedID is the previous id and Now is before its grace period's
//     end: nothing changes, and the stored successor is returned:
//     RotateReplay;
//   - otherwise the token was retired earlier and is being reused, which
//     is taken as theft: the session is revoked: RotateReused.
const (
	RotateOK RotateOutcome = iota + 1
	RotateReplay
	RotateReused
	RotateRevoked
	RotateUnknown
)

// RotateResult is the answer of [SessionStore.Rotate]. Tokens is the
// successor to return for RotateOK (Rotation.Next) and RotateReplay (the
// stored successor).
type RotateResult struct {
	Outcome RotateOutcome
	Tokens  Session
}

// MemorySessionStore is an in-process [SessionStore]. It suits one server
// process (and tests); replicas need a shared store. The zero value is
// ready to use; all methods are safe for concurrent use.
//
// Memory is bounded: the record of a session is dropped once the session
// is past its absolute end (checked as records are added), since every
// token of the session fails from then on anyway.
type MemorySessionStore struct {
	// Now replaces time.Now for pruning; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	sessions map[string]*sessionRecord
	queue    expiryQueue
}

type sessionRecord struct {
	current    string
	previous   string
	successor  Session
	graceUntil time.Time
	revoked    bool
	end        time.Time
}

// CreateSession implements [SessionStore].
func (m *MemorySessionStore) CreateSession(_ context.Context, sessionID, refreshID string, end time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.add(sessionID, &sessionRecord{current: refreshID, end: end})
	return nil
}

// Rotate implements [SessionStore].
func (m *MemorySessionStore) Rotate(_ context.Context, r Rotation) (RotateResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.sessions[r.SessionID]
	switch {
	case rec == nil:
		return RotateResult{Outcome: RotateUnknown}, nil
	case rec.revoked:
		return RotateResult{Outcome: RotateRevoked}, nil
	case r.PresentedID == rec.current:
		rec.previous, rec.current = rec.current, r.NextID
		rec.successor, rec.graceUntil = r.Next, r.GraceUntil
		return RotateResult{Outcome: RotateOK, Tokens: r.Next}, nil
	case r.PresentedID == rec.previous && r.Now.Before(rec.graceUntil):
		return RotateResult{Outcome: RotateReplay, Tokens: rec.successor}, nil
	default:
		rec.revoked = true
		rec.successor = Session{} // forget the tokens of a stolen session
		return RotateResult{Outcome: RotateReused}, nil
	}
}

// Revoke implements [SessionStore].
func (m *MemorySessionStore) Revoke(_ context.Context, sessionID string, end time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.sessions[sessionID]
	if rec == nil {
		rec = &sessionRecord{}
		m.add(sessionID, rec)
	}
	rec.revoked, rec.successor = true, Session{}
	if end.After(rec.end) {
		rec.end = end
		m.queue.add(sessionID, end)
	}
	return nil
}

// IsRevoked implements [RevocationList]. An unknown session is not revoked:
// access tokens verify without a record.
func (m *MemorySessionStore) IsRevoked(_ context.Context, sessionID string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec := m.sessions[sessionID]
	return rec != nil && rec.revoked, nil
}

// Len returns the number of session records held, for tests and metrics.
func (m *MemorySessionStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.sessions)
}

// add stores rec under sid, and first drops the records past their end.
// m.mu must be held.
func (m *MemorySessionStore) add(sid string, rec *sessionRecord) {
	now := time.Now()
	if m.Now != nil {
		now = m.Now()
	}
	if m.sessions == nil {
		m.sessions = make(map[string]*sessionRecord)
	}
	m.queue.expire(now, func(id string, end time.Time) {
		if r := m.sessions[id]; r != nil && r.end.Equal(end) {
			delete(m.sessions, id)
		}
	})
	m.sessions[sid] = rec
	if !rec.end.IsZero() {
		m.queue.add(sid, rec.end)
	}
}
