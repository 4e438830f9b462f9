package interceptor

import (
	"time"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

// EventKind says what an [Event] reports.
type EventKind int

// The kinds of [Event].
const (
	// EventAuthenticated: a call was authenticated and no renewal was due.
	EventAuthenticated EventKind = iota + 1
	// EventRenewed: a call was authenticated and a renewed token was sent.
	EventRenewed
	// EventRenewalFailed: a call was authenticated, a renewal was due but
	// could not be minted (Err says why); the call went on.
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
	}
	return "unknown"
}

// An Event reports one authentication outcome to the hook set with
// [WithEventHook]. It never carries a token; Subject and SessionID are
// empty when the token did not verify.
type Event struct {
	Kind      EventKind
	Method    string // full method name; empty for EventSessionStarted
	Subject   string
	SessionID string
	Reason    Reason    // for EventRejected
	Err       error     // for EventRejected and EventRenewalFailed; never holds token text
	Expiry    time.Time // exp of the presented token, or of the minted one
	// Outcome is what the session store did with a refresh (for
	// EventRefreshed, and EventRejected from Refresh once the store was
	// asked); zero otherwise.
	Outcome store.Outcome
}
