package interceptor

import (
	"context"
	"time"

	"google.golang.org/grpc"
)

// BindTarget binds the holder to one gRPC target: its interceptors then
// fail a call on a connection to any other target with [ErrUnboundTarget]
// (a codes.FailedPrecondition status), before the token leaves the process
// and without a retry. target is compared with the connection's
// ClientConn.Target, the string given to grpc.NewClient, and with its
// ClientConn.CanonicalTarget ("dns:///host:port"). Default: unbound, and
// the interceptors send the token on every connection they are installed
// on.
//
// Every server a holder sends its token to can use it as the session's
// owner until it expires, and can hand back renewals the holder takes
// (within the limits described at [TokenHolder]). Bind a holder that is
// meant for one backend, so that reusing its interceptors on another
// connection cannot leak the token. A bound holder with a refresh token
// and neither [WithTokenService] nor [WithRefresher] refreshes by calling
// TokenService.Refresh on the bound connection.
//
// The check is the interceptors'; the call credentials of
// [TokenHolder.PerRPCCredentials] do not make it.
func BindTarget(target string) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.target, c.targetSet = target, true })
}

// WithTokenService sets the connection to the session's token service: the
// holder refreshes by calling slidejwt.v1.TokenService.Refresh on conn,
// with the refresh timeout and the holder's transport-security rule
// ([AllowInsecureTransport]). It needs [WithRefreshToken] and excludes
// [WithRefresher]. Default: none; see [WithRefreshToken] for what a
// refresh token needs.
//
// conn may carry the holder's own interceptors: they pass the holder's
// refresh call through untouched, without an access token and without the
// [BindTarget] check, so conn may be a connection to another target than
// the bound one.
func WithTokenService(conn grpc.ClientConnInterface) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.tokenService = conn })
}

// WithSessionEnd tells the holder the session's absolute end, as
// [Session].End or the session_ends_at of a slidejwt.v1.TokenPair give it.
// The holder refuses a renewed or refreshed token that expires after end,
// and does not refresh proactively once its token expires at end. A
// refresh updates the end to the one its pair carries, which may be
// earlier but never later. Default: unknown until a refresh tells it, and
// until then the bound is the held token's auth_time +
// [DefaultMaxLifetime], the server's default policy: against a server with
// a longer MaxLifetime, give this option, or the holder stops taking
// renewals at that bound.
//
// The bound is what keeps a server that hands back a renewal with a far
// exp (made up, not signed by the issuer) from pinning that token in the
// holder; see [TokenHolder].
func WithSessionEnd(end time.Time) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.sessionEnd = end })
}

// WithClientEventHook sets a function called with the holder's own steps,
// for logging and metrics: a renewal swapped in ([EventSwapped]), a
// fallback from a refused renewal ([EventFellBack]), a refresh call
// ([EventClientRefreshed]), a unary call retried ([EventRetried]) and a
// stream reopened ([EventStreamReopened]). It runs once the step is done,
// on the goroutine of the call (for a refresh, on the goroutine the
// refresh runs on, with the values of the context of the call that
// started it), and must be safe for concurrent use. Like [OnSwap], it
// must not make a call through the same holder, which could wait for the
// hook. An [Event] never carries a token; its Subject and SessionID are
// the held session's. Switch on [Event].Kind and ignore the kinds you do
// not know: kinds may be added. Default: none, and the holder reads no
// clock and builds no event for it.
func WithClientEventHook(f func(context.Context, Event)) ClientOption {
	return clientOptionFunc(func(c *clientConfig) { c.onEvent = f })
}
