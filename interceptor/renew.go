package interceptor

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// renewMethod answers the renewal that the interceptor decided for the
// caller's token in its body (see tokenService.Renew).
const renewMethod = slidejwtv1.TokenService_Renew_FullMethodName

// renewalKey is the context key under which the interceptor hands
// TokenService.Renew the renewal it decided for the call (a *renewal,
// nil when none is due).
type renewalKey struct{}

var (
	errRenewVerifyOnly    = status.Error(codes.FailedPrecondition, "slidejwt: this server only verifies and delegates no renewal; renew at the service that signs")
	errRenewalUnavailable = status.Error(codes.Unavailable, "slidejwt: renewal service unavailable")
	errRenewMint          = status.Error(codes.Internal, "slidejwt: cannot mint tokens")
)

// Renew serves TokenService.Renew: the answer, in the body, of the
// renewal that the server interceptor decided for the caller's token, as
// it decides it for every authenticated call. So a direct Renew grants
// nothing that any other call does not: it renews only when the policy
// says a renewal is due, every request presenting the same token gets the
// same renewed token (one signature per token per renewal), and the token
// was refused before the handler if it is invalid, expired, or of an
// ended, revoked or unknown session. The same token is also in the
// trailer, as on any call.
//
// A response without a token means that no renewal is due. A server that
// cannot sign answers codes.FailedPrecondition unless it delegates its
// renewals ([WithDelegatedRenewal]); then it answers with the renewal it
// got from the renewal service, or codes.Unavailable if it got none in
// time.
func (t tokenService) Renew(ctx context.Context, _ *slidejwtv1.RenewRequest) (*slidejwtv1.RenewResponse, error) {
	c := sharedClaims(ctx) // read only
	if c == nil {
		// Renew reached without the interceptor: refuse rather than guess.
		return nil, reject(ReasonTokenMissing, "Renew needs the caller's access token")
	}
	r, _ := ctx.Value(renewalKey{}).(*renewal)
	if r != nil && r.call != nil {
		var err error
		if r, err = r.call.await(ctx); err != nil {
			return nil, errRenewalUnavailable
		}
	}
	switch {
	case r == nil:
		if !t.s.ver.Load().keys.CanSign() && t.s.cfg.delegation == nil {
			return nil, errRenewVerifyOnly
		}
		return &slidejwtv1.RenewResponse{}, nil
	case errors.Is(r.err, ErrDelegatedRenewal):
		return nil, errRenewalUnavailable
	case r.err != nil:
		return nil, errRenewMint
	}
	return &slidejwtv1.RenewResponse{
		AccessToken:          r.tok,
		AccessTokenExpiresAt: timestamppb.New(r.exp),
		SessionEndsAt:        timestamppb.New(t.s.policyFor(c).SessionEnd(c.authTime())),
	}, nil
}
