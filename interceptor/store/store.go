// Package store is the contract between a slidejwt server and the state it
// shares with the other replicas: which sessions may still be used, and
// each session's refresh-token chain.
//
// Applications pick an implementation and pass it to
// [github.com/slidejwt/slidejwt/interceptor.WithSessionStore] or
// [github.com/slidejwt/slidejwt/interceptor.WithRevocationList]; they only
// need this package to write a store of their own. The in-process
// implementations are in [github.com/slidejwt/slidejwt/interceptor/memstore].
//
// # Rules for every implementation
//
//   - Stores have no clock. Every method receives now from the server, and
//     every expiry the store keeps is a time the server computed (from its
//     [interceptor.Policy]). Two replicas whose clocks differ by less than
//     the leeway therefore agree.
//   - Each method is one atomic operation, so that a networked store does
//     it in one round trip (one server-side script, say) and two replicas
//     that race cannot both win.
//   - Stores never see a bearer token. The server hands them digests of
//     token ids, which they compare, and sealed successors, which they
//     return as they got them: neither lets a reader of the store
//     impersonate a user.
//   - Methods are safe for concurrent use by multiple goroutines.
//   - An error means "the store could not answer": the server fails
//     closed (codes.Unavailable) and never lets a call through because a
//     lookup failed.
package store

import (
	"context"
	"time"
)

// A RevocationList says whether a session must be refused.
//
// The server asks it on every authenticated call, after the token verified
// and before the handler runs; on every message of an open stream; and
// every stream-check interval while a stream is silent. Implementations
// should therefore answer from memory in steady state.
type RevocationList interface {
	// IsRevoked reports whether the session sessionID must be refused at
	// now: it was revoked, or, for a store that records every session it
	// allows (as [SessionStore] implementations do), it is unknown.
	IsRevoked(ctx context.Context, sessionID string, now time.Time) (bool, error)
}

// RevocationFunc adapts a function to a [RevocationList].
type RevocationFunc func(ctx context.Context, sessionID string, now time.Time) (bool, error)

// IsRevoked calls f.
func (f RevocationFunc) IsRevoked(ctx context.Context, sessionID string, now time.Time) (bool, error) {
	return f(ctx, sessionID, now)
}

// A Revoker ends sessions.
type Revoker interface {
	// Revoke marks sessionID revoked at now. The mark must be kept at
	// least until keepUntil, the last instant at which the server would
	// still accept one of the session's tokens; it may be dropped after.
	// Revoking an unknown or already revoked session is not an error.
	Revoke(ctx context.Context, sessionID string, now, keepUntil time.Time) error
}

// A SessionStore records every session that refresh tokens may extend,
// and each session's refresh-token chain. It is also the session's
// [RevocationList], as an allow-list: a session it does not know is
// refused, so that a store that lost its data (a restart without
// persistence, a failover to a lagging replica, a flush) never revives a
// revoked session; it logs sessions out instead.
type SessionStore interface {
	RevocationList
	Revoker
	// Create records a new session whose current refresh token has the
	// digest refresh. The record may be dropped after keepUntil. The
	// server makes sessionID 128 random bits: it is always new, and a store
	// may overwrite whatever it held under that id.
	Create(ctx context.Context, sessionID string, refresh Digest, now, keepUntil time.Time) error
	// Rotate is the atomic check-and-rotate of a refresh token; see
	// [Rotation] and [Outcome].
	Rotate(ctx context.Context, r Rotation) (Result, error)
}

// Digest is the SHA-256 digest of a refresh token's id, computed by the
// server. A store compares digests and never sees the id itself.
type Digest [32]byte

// Rotation asks a [SessionStore] to retire the refresh token whose digest
// is Presented and make Next the session's current one. Presented always
// comes from a refresh token whose signature the server verified, so a
// digest the store does not recognise is a retired token, not noise.
type Rotation struct {
	SessionID string
	Presented Digest
	Next      Digest
	// Successor is the token pair to hand out again if Presented comes
	// back within the grace period (a client that lost the response). It
	// is sealed by the server with a key that only the holder of the
	// presented refresh token can derive: the store keeps it as opaque
	// bytes and returns it unchanged.
	Successor []byte
	// Now is the time of the request; the grace period ends at
	// GraceUntil.
	Now        time.Time
	GraceUntil time.Time
	// KeepUntil is how long the session's record must be kept.
	KeepUntil time.Time
}

// Outcome is what [SessionStore.Rotate] did.
type Outcome int

// The outcomes of a rotation. A store decides them as follows, in one
// atomic step:
//
//   - the session is unknown: Unknown;
//   - the session is revoked: Revoked;
//   - Presented is current: Next becomes current, Presented becomes the
//     previous digest with Successor as its successor until GraceUntil:
//     OK;
//   - Presented is the previous digest and Now is before GraceUntil:
//     nothing changes, and the stored successor is returned: Replay;
//   - otherwise the token was retired earlier and is being reused, which
//     is taken as theft: the session is revoked and its successor
//     forgotten: Reused.
const (
	OK Outcome = iota + 1
	Replay
	Reused
	Revoked
	Unknown
)

// String returns the outcome's lower-case name ("ok", "replay", ...).
func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Replay:
		return "replay"
	case Reused:
		return "reused"
	case Revoked:
		return "revoked"
	case Unknown:
		return "unknown"
	}
	return "invalid"
}

// Result is the answer of [SessionStore.Rotate]. Successor is the sealed
// successor for OK (Rotation.Successor) and Replay (the stored one).
type Result struct {
	Outcome   Outcome
	Successor []byte
}
