package interceptor

import (
	"context"
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// EventKind says what an [Event] reports. Kinds may be added: a hook
// should switch on the kinds it knows and ignore the others.
type EventKind int

// The kinds of [Event] that a [Server] reports to the hook set with
// [WithEventHook].
const (
	// EventAuthenticated: a call was authenticated and no renewal was due.
	EventAuthenticated EventKind = iota + 1
	// EventRenewed: a call was authenticated and a renewed token was sent.
	EventRenewed
	// EventRenewalFailed: a call was authenticated, a renewal was due but
	// could not be minted, or, on a server with [WithDelegatedRenewal],
	// was not obtained from the renewal service in time (Err says why,
	// wrapping [ErrDelegatedRenewal]); the call went on.
	EventRenewalFailed
	// EventRejected: a call was rejected (Reason and Err say why) and its
	// handler did not run.
	EventRejected
	// EventSessionStarted: [Server.StartSession] minted a session's first token.
	EventSessionStarted
	// EventRefreshed: [Server.Refresh] rotated a refresh token.
	EventRefreshed
	// EventRevoked: a session was revoked (a logout, or [Server.RevokeSession]).
	EventRevoked
	// EventStreamEnded: the server ended an open stream because its
	// session ended or was revoked (Reason says which), or because the
	// session store failed (Err).
	EventStreamEnded
	// EventStoreCall: the server called its session store or revocation
	// list. StoreOp says which method, Duration how long it took, Err
	// whether it failed, and Outcome what a rotation did. An
	// authenticated call with a store makes one (IsRevoked) before its
	// own event; so does every check of an open stream.
	EventStoreCall
	// EventDelegatedRenewal: a verify-only server asked the renewal
	// service of [WithDelegatedRenewal] for a renewal: one event per
	// internal call, however many requests share it. Duration is how
	// long the call took, Expiry the exp of the renewed token it got
	// (zero if none was due), and Err, wrapping [ErrDelegatedRenewal],
	// why the call failed or its answer was refused. Method is
	// TokenService/Renew. It runs on the internal call's goroutine,
	// with a context that carries no request's values.
	EventDelegatedRenewal
)

// The kinds of [Event] that a [TokenHolder] reports to the hook set with
// [WithClientEventHook].
const (
	// EventSwapped: the holder swapped in a renewed token that a server
	// sent in the response to Method. Expiry is the new token's exp.
	EventSwapped EventKind = iota + 101
	// EventFellBack: a server rejected a swapped-in renewal as
	// TOKEN_INVALID before the handler of Method ran, and the holder fell
	// back to the token that the renewal had replaced.
	EventFellBack
	// EventClientRefreshed: the holder made a refresh call with its
	// refresh token, before a call of Method (proactive: Reason is zero)
	// or after a call of Method was rejected with TOKEN_EXPIRED
	// (reactive: Reason is [ReasonTokenExpired]). Err is nil when it
	// installed the new token pair, else why it did not. Concurrent calls
	// that share one refresh report it once.
	EventClientRefreshed
	// EventRetried: the holder made a unary call of Method a second time
	// after the first was rejected (Reason) before its handler ran.
	EventRetried
	// EventStreamReopened: the holder reopened a stream of Method after
	// it was rejected (Reason) before any response arrived.
	EventStreamReopened
)

func (k EventKind) String() string {
	switch k {
	case EventAuthenticated:
		return "authenticated"
	case EventRenewed:
		return "renewed"
	case EventRenewalFailed:
		return "renewal-failed"
	case EventRejected:
		return "rejected"
	case EventSessionStarted:
		return "session-started"
	case EventRefreshed:
		return "refreshed"
	case EventRevoked:
		return "revoked"
	case EventStreamEnded:
		return "stream-ended"
	case EventStoreCall:
		return "store-call"
	case EventDelegatedRenewal:
		return "delegated-renewal"
	case EventSwapped:
		return "swapped"
	case EventFellBack:
		return "fell-back"
	case EventClientRefreshed:
		return "client-refreshed"
	case EventRetried:
		return "retried"
	case EventStreamReopened:
		return "stream-reopened"
	}
	return "unknown"
}

// An Event reports one authentication outcome to the hook set with
// [WithEventHook], or one step of a [TokenHolder] to the hook set with
// [WithClientEventHook]. It never carries a token. On the server, Subject
// and SessionID are empty when the token did not verify; on the client,
// they are the held session's.
type Event struct {
	Kind      EventKind
	Method    string // full method name; empty for EventSessionStarted, EventRevoked and EventStoreCall
	Subject   string
	SessionID string
	Reason    Reason    // for EventRejected, EventStreamEnded and the client's kinds
	Err       error     // for EventRejected, EventRenewalFailed, EventStoreCall, EventDelegatedRenewal and EventClientRefreshed; never holds token text
	Expiry    time.Time // exp of the presented token, or of the minted one; on the client, of the token held after the step
	// Outcome is what the session store did with a refresh (for
	// EventRefreshed, and EventRejected from Refresh once the store was
	// asked; for EventStoreCall of a rotation); zero otherwise.
	Outcome store.Outcome
	// Duration is how long the reported step took, on the monotonic
	// clock (never the clock of [WithClock]): authenticating a call, from
	// reading its metadata to deciding its renewal, signature included
	// (EventAuthenticated, EventRenewed, EventRenewalFailed, and
	// EventRejected of a call; for a renewal asked of a renewal service,
	// up to the asking, not the answer); the whole of [Server.Refresh]
	// (its EventRefreshed or EventRejected); one store call
	// (EventStoreCall); one call to the renewal service
	// (EventDelegatedRenewal); the refresh call (EventClientRefreshed).
	// Zero for the other kinds.
	// It is measured only when a hook is set.
	Duration time.Duration
	// Cache says whether the verified-token cache held the presented
	// token, for the events of a call whose token reached verification;
	// [CacheNone] otherwise, or when the cache is off ([WithCacheSize]).
	Cache CacheResult
	// StoreOp is the store method an EventStoreCall reports.
	StoreOp StoreOp
}

// CacheResult says whether a call's token was found in the
// verified-token cache (see [Event].Cache).
type CacheResult uint8

// The results of a cache lookup.
const (
	// CacheNone: the token did not reach verification (it was missing or
	// malformed), or the cache is off.
	CacheNone CacheResult = iota
	// CacheHit: the token had verified before; its signature was not
	// checked again.
	CacheHit
	// CacheMiss: the token was verified (parsed and its signature
	// checked).
	CacheMiss
)

// String returns "none", "hit" or "miss".
func (r CacheResult) String() string {
	switch r {
	case CacheHit:
		return "hit"
	case CacheMiss:
		return "miss"
	}
	return "none"
}

// StoreOp names the store method that an EventStoreCall reports.
type StoreOp uint8

// The store methods the server calls.
const (
	// StoreIsRevoked: [store.RevocationList.IsRevoked], on every
	// authenticated call, every check of an open stream, and every
	// refresh.
	StoreIsRevoked StoreOp = iota + 1
	// StoreCreate: [store.SessionStore.Create], at [Server.StartSession].
	StoreCreate
	// StoreRotate: [store.SessionStore.Rotate], at [Server.Refresh].
	StoreRotate
	// StoreRevoke: [store.Revoker.Revoke].
	StoreRevoke
)

// String returns the operation's lower-case name: "is_revoked",
// "create", "rotate", "revoke".
func (o StoreOp) String() string {
	switch o {
	case StoreIsRevoked:
		return "is_revoked"
	case StoreCreate:
		return "create"
	case StoreRotate:
		return "rotate"
	case StoreRevoke:
		return "revoke"
	}
	return "none"
}

// emit calls the event hook, if any, with e.
func (s *Server) emit(ctx context.Context, e Event) {
	if s.cfg.onEvent != nil {
		s.cfg.onEvent(ctx, e)
	}
}

// startTimer returns the start of a step whose Duration an event will
// report: the monotonic time now when a hook is set, and the zero time
// (without reading the clock) otherwise.
func (s *Server) startTimer() time.Time {
	if s.cfg.onEvent == nil {
		return time.Time{}
	}
	return time.Now()
}

// emitTimed sets e.Duration to the time since start and calls the hook,
// if any.
func (s *Server) emitTimed(ctx context.Context, e Event, start time.Time) {
	if s.cfg.onEvent != nil {
		e.Duration = time.Since(start)
		s.cfg.onEvent(ctx, e)
	}
}

// emitStore reports a store call that began at start (see startTimer).
func (s *Server) emitStore(ctx context.Context, op StoreOp, sid string, start time.Time, outcome store.Outcome, err error) {
	if s.cfg.onEvent != nil {
		s.cfg.onEvent(ctx, Event{Kind: EventStoreCall, StoreOp: op, SessionID: sid, Outcome: outcome, Err: err, Duration: time.Since(start)})
	}
}

// emit calls the holder's event hook, if any, with e, filling in the held
// session's subject and session id.
func (h *TokenHolder) emit(ctx context.Context, e Event) {
	if h.cfg.onEvent != nil {
		cur := h.cur.Load()
		e.Subject, e.SessionID = cur.sub, cur.sid
		h.cfg.onEvent(ctx, e)
	}
}

// emitRejection reports a retry or a reopen (kind) of method after err.
func (h *TokenHolder) emitRejection(ctx context.Context, kind EventKind, method string, err error) {
	if h.cfg.onEvent != nil {
		r, _ := ReasonOf(err)
		h.emit(ctx, Event{Kind: kind, Method: method, Reason: r})
	}
}
