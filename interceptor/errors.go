package interceptor

import (
	"errors"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// ErrorDomain is the domain of every google.rpc.ErrorInfo detail this
// package attaches to an error status.
const ErrorDomain = "slidejwt"

// Reason is the machine-readable cause of an authentication failure: the
// generated enum slidejwt.v1.ErrorReason. It travels as the reason of a
// google.rpc.ErrorInfo detail in the domain [ErrorDomain], spelled as the
// value's name without the ERROR_REASON_ prefix ([WireReason]), beside
// codes.Unauthenticated (codes.PermissionDenied for
// [ReasonFreshTokenRequired]).
type Reason = slidejwtv1.ErrorReason

// The reasons a server sends. Clients branch on them; see [ReasonOf].
const (
	// ReasonTokenMissing: no bearer token in the "authorization" metadata.
	ReasonTokenMissing = slidejwtv1.ErrorReason_ERROR_REASON_TOKEN_MISSING
	// ReasonTokenInvalid: the token is malformed, not signed by a trusted
	// key, or breaks a verifier rule. Refreshing will not help.
	ReasonTokenInvalid = slidejwtv1.ErrorReason_ERROR_REASON_TOKEN_INVALID
	// ReasonTokenExpired: the token was valid but its idle window lapsed.
	// A refresh token can restore the session.
	ReasonTokenExpired = slidejwtv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED
	// ReasonSessionExpired: the session is past its absolute maximum
	// lifetime, or its refresh token lapsed. The user must log in again.
	ReasonSessionExpired = slidejwtv1.ErrorReason_ERROR_REASON_SESSION_EXPIRED
	// ReasonSessionRevoked: the session was revoked (logout, refresh-token
	// reuse). The user must log in again.
	ReasonSessionRevoked = slidejwtv1.ErrorReason_ERROR_REASON_SESSION_REVOKED
	// ReasonFreshTokenRequired: the method demands a token minted at login
	// (see [RequireFresh]); a renewed token is not enough. Sent with
	// codes.PermissionDenied: the caller is known but must log in again.
	ReasonFreshTokenRequired = slidejwtv1.ErrorReason_ERROR_REASON_FRESH_TOKEN_REQUIRED
)

// reasonPrefix is the enum's value prefix, which the wire form drops.
const reasonPrefix = "ERROR_REASON_"

// WireReason returns r as it travels in google.rpc.ErrorInfo.reason: the
// enum value's name without the ERROR_REASON_ prefix, as "TOKEN_EXPIRED".
func WireReason(r Reason) string {
	return strings.TrimPrefix(r.String(), reasonPrefix)
}

// Errors returned by constructors and by the client. Test them with
// errors.Is.
var (
	// ErrKeyTooShort is returned by [NewKey] for an HMAC secret shorter than
	// the hash output of its algorithm (RFC 7518 §3.2) and never less than
	// 32 bytes, or an RSA key below 2048 bits.
	ErrKeyTooShort = errors.New("slidejwt: key too short")
	// ErrUnsupportedAlgorithm is returned by [NewKey] for an algorithm
	// outside HS256/384/512, ES256/384, EdDSA, RS256 and PS256.
	ErrUnsupportedAlgorithm = errors.New("slidejwt: unsupported signing algorithm")
	// ErrKeyType is returned by [NewKey] when the key does not fit the
	// algorithm (an RSA key for ES256, a P-384 key for ES256, ...).
	ErrKeyType = errors.New("slidejwt: key type does not match algorithm")
	// ErrInvalidKeySet is returned by [NewKeySet] for a set without a
	// signing key, by [NewKeySet] and [NewVerifyKeySet] for two keys
	// sharing a kid or a nil or zero [Key] (and by NewVerifyKeySet for no
	// key), by [NewServer] and [Server.RotateKeys] for a nil or zero
	// [KeySet], by [NewKey] for an empty kid, and by [Key.Public],
	// [Key.JWK] and [KeySet.JWKS] for a zero Key or KeySet.
	ErrInvalidKeySet = errors.New("slidejwt: invalid key set")
	// ErrInvalidPolicy is returned for a [Policy] whose durations are
	// negative or inconsistent.
	ErrInvalidPolicy = errors.New("slidejwt: invalid policy")
	// ErrInvalidOption is returned by constructors for an option value that
	// cannot work (an empty metadata key, a negative leeway, ...).
	ErrInvalidOption = errors.New("slidejwt: invalid option")
	// ErrReservedClaim is returned by [Server.StartSession] when a custom
	// claim uses a name the session model owns (exp, sid, auth_time, ...).
	ErrReservedClaim = errors.New("slidejwt: reserved claim name")
	// ErrTokenTooLarge is returned when a minted token would exceed the
	// configured maximum size.
	ErrTokenTooLarge = errors.New("slidejwt: token too large")
	// ErrMalformedToken is returned by [NewTokenHolder] for a token that does
	// not decode as a session token of this package.
	ErrMalformedToken = errors.New("slidejwt: malformed token")
	// ErrStoreUnavailable is returned by [Server.StartSession] when the
	// session store could not record the new session (wrapping the store's
	// own error): the login may be tried again later, and a gRPC handler
	// answers it with codes.Unavailable.
	ErrStoreUnavailable = errors.New("slidejwt: session store unavailable")
	// ErrNoPublicKey is returned by [Key.Public] and [Key.JWK] for an HMAC
	// secret, which has no public half to publish.
	ErrNoPublicKey = errors.New("slidejwt: key has no public half")
	// ErrVerifyOnly is returned by [Server.StartSession] on a server whose
	// key set cannot sign ([NewVerifyKeySet], [RemoteKeySet]).
	ErrVerifyOnly = errors.New("slidejwt: key set cannot sign")
	// ErrInvalidJWKS is what a [RemoteKeySet] reports (see [OnJWKSError])
	// for a JWKS response it refuses as a whole (a bad status, too large,
	// not a JSON object with a "keys" array) and for each entry of one
	// that it refuses.
	ErrInvalidJWKS = errors.New("slidejwt: invalid JWKS")
	// ErrDuplicateAuthorization is the error, wrapped, of a call that would
	// carry two "authorization" values: a [TokenHolder]'s or a
	// [ServiceHolder]'s interceptors given a call whose outgoing metadata
	// already has one (or that a [Forwarder] forwards), or a [Forwarder]
	// given a call with another authorization value or with per-call
	// credentials. It is a codes.FailedPrecondition status, returned before
	// anything is sent: a server refuses two values, and a client must not
	// pick one of two principals for the program.
	ErrDuplicateAuthorization = errors.New("slidejwt: the call would carry two authorization values")
	// ErrNoCallerToken is the error, wrapped, of a call through a
	// [Forwarder] whose context holds no caller token that a slidejwt
	// server interceptor verified: outside a handler, or in a method
	// exempt from authentication. It is a codes.Unauthenticated status
	// without a slidejwt reason. Nothing is sent.
	ErrNoCallerToken = errors.New("slidejwt: no verified caller token to forward")
	// ErrServiceRejected is the error, wrapped, of a call through a
	// [ServiceHolder] that the downstream server rejected with a slidejwt
	// reason about the service's own session, after the holder's own
	// remedies (refresh, a new login and one retry where the handler did
	// not run). It is a codes.Unavailable status without a slidejwt
	// reason, so that a handler that returns it does not tell its own
	// caller something about the caller's session that is not true.
	// errors.Unwrap gives the downstream status error.
	ErrServiceRejected = errors.New("slidejwt: a downstream service rejected this service's own token")
	// ErrServiceLogin is the error, wrapped, of a call through a
	// [ServiceHolder] that needed a session and could not log in: the
	// login function failed (errors.Unwrap gives its error), returned a
	// token pair the holder cannot use, or is backing off after such a
	// failure. It is a codes.Unavailable status without a slidejwt reason.
	ErrServiceLogin = errors.New("slidejwt: service login failed")
)

// authError is a rejection decided by the server. Its detail is a fixed
// phrase chosen by this package: it never contains the token, its claims or
// any other attacker-controlled text.
type authError struct {
	reason Reason
	detail string
	// beforeHandler marks a rejection by the server interceptor itself: the
	// handler did not run. It travels as ErrorInfo metadata (see
	// [MetadataHandlerRan]).
	beforeHandler bool
	// keysDown marks a token that could not be checked because a remote
	// key set has no usable keys: the server answers codes.Unavailable
	// instead (see errKeysUnavailableStatus).
	keysDown bool
}

// MetadataHandlerRan is the google.rpc.ErrorInfo metadata key by which a
// server says whether the method's handler ran: "false" on every rejection
// made by the slidejwt interceptors before the handler, and "true" on a
// slidejwt error about the caller's token that a handler returned (a
// downstream rejection of the token a [Forwarder] forwarded, say) or that
// ended a stream whose handler was running. Any other slidejwt error a
// handler returns carries neither the reason nor the marker: see
// PROTOCOL.md §3. A client may safely
// retry a call, or replay a stream's messages, only on "false".
const MetadataHandlerRan = "handler_ran"

func (e *authError) Error() string {
	if e.detail == "" {
		return "slidejwt: " + reasonPhrase(e.reason)
	}
	return "slidejwt: " + reasonPhrase(e.reason) + ": " + e.detail
}

func reasonPhrase(r Reason) string {
	switch r {
	case ReasonTokenMissing:
		return "bearer token missing"
	case ReasonTokenInvalid:
		return "token invalid"
	case ReasonTokenExpired:
		return "token expired"
	case ReasonSessionExpired:
		return "session past its maximum lifetime"
	case ReasonSessionRevoked:
		return "session revoked"
	case ReasonFreshTokenRequired:
		return "fresh login required"
	}
	return "unauthenticated"
}

func reject(r Reason, detail string) *authError { return &authError{reason: r, detail: detail} }

// GRPCStatus makes the error a gRPC status: codes.Unauthenticated (or
// PermissionDenied for a freshness failure) with an ErrorInfo detail.
func (e *authError) GRPCStatus() *status.Status {
	code := codes.Unauthenticated
	if e.reason == ReasonFreshTokenRequired {
		code = codes.PermissionDenied
	}
	st := status.New(code, e.Error())
	info := &errdetails.ErrorInfo{Reason: WireReason(e.reason), Domain: ErrorDomain}
	if e.beforeHandler {
		info.Metadata = map[string]string{MetadataHandlerRan: "false"}
	}
	if withInfo, err := st.WithDetails(info); err == nil {
		return withInfo
	}
	return st
}

// markHandlerRan is what the server interceptors do with the error a
// handler returned. An error with a slidejwt ErrorInfo is about some
// token; the caller may only learn it when the token is the caller's own:
//
//   - a rejection made in this process ([RequireFresh], a stream ended
//     with its session) or relayed by a [Forwarder] (a downstream server
//     refused the caller's token) keeps its reason, with the
//     MetadataHandlerRan set to "true": the handler ran;
//   - any other (a downstream rejection of a service's own token, or of a
//     token that a handler sent by hand) becomes a codes.Unavailable
//     status without details ([errForeignRejection]): the caller must not
//     refresh, log in or log out over another principal's token.
//
// Errors without a slidejwt ErrorInfo are returned as they are.
func markHandlerRan(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok || len(st.Proto().GetDetails()) == 0 {
		return err
	}
	if hasSlidejwtInfo(st) && !aboutCaller(err) {
		return errForeignRejection
	}
	p := st.Proto() // a copy
	changed := false
	for i, d := range p.GetDetails() {
		var info errdetails.ErrorInfo
		if d.UnmarshalTo(&info) != nil || info.GetDomain() != ErrorDomain {
			continue
		}
		if info.GetMetadata()[MetadataHandlerRan] == "true" {
			continue
		}
		if info.Metadata == nil {
			info.Metadata = map[string]string{}
		}
		info.Metadata[MetadataHandlerRan] = "true"
		a, aerr := anypb.New(&info)
		if aerr != nil {
			continue
		}
		p.Details[i] = a
		changed = true
	}
	if !changed {
		return err
	}
	return status.ErrorProto(p)
}

// errForeignRejection replaces a slidejwt rejection that a handler
// returned and that is not about the caller's own token (see
// markHandlerRan). It carries no details: no reason, and no handler_ran
// marker, which a client reads as "the handler may have run".
var errForeignRejection = status.Error(codes.Unavailable,
	"slidejwt: a downstream call failed on credentials other than the caller's")

// aboutCaller reports whether err, a slidejwt rejection returned by a
// handler, is about the caller's own token: made by this package in this
// process (an *authError never crosses the wire as one), or relayed by a
// Forwarder from a call that carried the caller's token.
func aboutCaller(err error) bool {
	var ae *authError
	var fe *forwardedError
	return errors.As(err, &ae) || errors.As(err, &fe)
}

// hasSlidejwtInfo reports whether st carries an ErrorInfo in ErrorDomain.
func hasSlidejwtInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return true
		}
	}
	return false
}

// handlerNotRun reports whether err says that the server rejected the call
// before its handler ran (ErrorInfo metadata handler_ran=false).
func handlerNotRun(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetMetadata()[MetadataHandlerRan] == "false"
		}
	}
	return false
}

// ReasonOf returns the [Reason] carried by a gRPC error from a slidejwt
// server, read from its google.rpc.ErrorInfo detail in [ErrorDomain]. It
// reports false for any other error, including nil, and for a reason this
// version does not know.
func ReasonOf(err error) (Reason, bool) {
	if err == nil {
		return 0, false
	}
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			v, known := slidejwtv1.ErrorReason_value[reasonPrefix+info.GetReason()]
			if !known || v == 0 {
				return 0, false
			}
			return Reason(v), true
		}
	}
	return 0, false
}
