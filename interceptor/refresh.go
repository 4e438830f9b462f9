package interceptor

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
)

// refreshMethod is exempt from access-token authentication: a client calls
// it precisely when its access token has lapsed.
const refreshMethod = slidejwtv1.TokenService_Refresh_FullMethodName

// Refresh exchanges a refresh token for the session's next token pair,
// rotating the refresh token through the [SessionStore]; see
// [RotateOutcome] for the reuse rules. It is what TokenService.Refresh
// serves. Errors are gRPC status errors: TOKEN_MISSING, TOKEN_INVALID,
// SESSION_EXPIRED (past the absolute end, or the refresh token itself
// lapsed), SESSION_REVOKED (revoked, reused after the grace period, or
// unknown to the store), codes.Unavailable when the store fails and
// codes.FailedPrecondition without a store.
func (s *Server) Refresh(ctx context.Context, refreshToken string) (Session, error) {
	sess, c, err := s.refresh(ctx, refreshToken)
	ev := Event{Kind: EventRefreshed, Method: refreshMethod, Expiry: sess.Expiry}
	if c != nil {
		ev.Subject, ev.SessionID = c.Subject, c.SessionID
	}
	if err != nil {
		ev.Kind, ev.Err = EventRejected, err
		if ae, ok := err.(*authError); ok {
			ev.Reason = ae.reason
		}
	}
	s.emit(ctx, ev)
	return sess, err
}

func (s *Server) refresh(ctx context.Context, raw string) (Session, *Claims, error) {
	if s.cfg.store == nil {
		return Session{}, nil, status.Error(codes.FailedPrecondition, "slidejwt: refresh tokens need a session store")
	}
	switch {
	case raw == "":
		return Session{}, nil, reject(ReasonTokenMissing, "no refresh token")
	case len(raw) > s.cfg.maxTokenSize:
		return Session{}, nil, reject(ReasonTokenInvalid, "token too long")
	case !isCompactJWS(raw):
		return Session{}, nil, reject(ReasonTokenInvalid, "malformed token")
	}
	c, aerr := s.ver.Load().verifyRefresh(raw)
	now := s.cfg.now()
	// From the session's end on, no leeway: any token minted now would
	// expire no later than it is issued.
	if c != nil && !now.Before(s.cfg.policy.SessionEnd(c.AuthTime.Time)) {
		return Session{}, c, reject(ReasonSessionExpired, "")
	}
	if aerr != nil {
		if aerr.reason == ReasonTokenExpired {
			// Nothing can restore a session whose refresh token lapsed.
			return Session{}, c, reject(ReasonSessionExpired, "refresh token expired")
		}
		return Session{}, c, aerr
	}

	// Mint the successor first, so that the store checks and rotates in
	// one atomic step; a losing concurrent request discards its candidate.
	base := *c
	base.Fresh = false
	next, nextID, err := s.mint(&base, now, false)
	if err != nil {
		return Session{}, c, status.Error(codes.Internal, "slidejwt: cannot mint tokens")
	}
	res, err := s.cfg.store.Rotate(ctx, Rotation{
		SessionID:   c.SessionID,
		PresentedID: c.ID,
		NextID:      nextID,
		Next:        next,
		Now:         now,
		GraceUntil:  now.Add(s.cfg.refreshGrace),
		End:         s.keepUntil(c.AuthTime.Time),
	})
	if err != nil {
		return Session{}, c, status.Error(codes.Unavailable, "slidejwt: session store unavailable")
	}
	switch res.Outcome {
	case RotateOK, RotateReplay:
		return res.Tokens, c, nil
	case RotateReused:
		return Session{}, c, reject(ReasonSessionRevoked, "refresh token reused; session revoked")
	case RotateUnknown:
		return Session{}, c, reject(ReasonSessionRevoked, "session unknown to the store")
	default:
		return Session{}, c, reject(ReasonSessionRevoked, "")
	}
}

// RevokeSession ends session sessionID on every server that shares the
// [SessionStore] (or the [RevocationList], if it has a Revoke method of
// [MemoryRevocationList]'s shape). Its access and refresh tokens are
// rejected with SESSION_REVOKED from then on.
func (s *Server) RevokeSession(ctx context.Context, sessionID string) error {
	// The session began no earlier than now − MaxLifetime, so this outlives
	// its end plus the leeway.
	until := s.keepUntil(s.cfg.now())
	switch r := s.cfg.revocations.(type) {
	case SessionStore:
		if err := r.Revoke(ctx, sessionID, until); err != nil {
			return status.Error(codes.Unavailable, "slidejwt: session store unavailable")
		}
	case interface{ Revoke(string, time.Time) }:
		r.Revoke(sessionID, until)
	default:
		return status.Error(codes.FailedPrecondition, "slidejwt: no session store or revocation list to revoke in")
	}
	s.emit(ctx, Event{Kind: EventRevoked, SessionID: sessionID})
	return nil
}

// TokenService returns the server's implementation of
// slidejwt.v1.TokenService, to register beside the application's
// services. Refresh is exempt from authentication; Revoke needs the
// caller's access token and ends the caller's own session.
func (s *Server) TokenService() slidejwtv1.TokenServiceServer { return tokenService{s: s} }

type tokenService struct {
	slidejwtv1.UnimplementedTokenServiceServer
	s *Server
}

func (t tokenService) Refresh(ctx context.Context, req *slidejwtv1.RefreshRequest) (*slidejwtv1.RefreshResponse, error) {
	sess, err := t.s.Refresh(ctx, req.GetRefreshToken())
	if err != nil {
		return nil, err
	}
	return &slidejwtv1.RefreshResponse{Tokens: sess.TokenPair()}, nil
}

func (t tokenService) Revoke(ctx context.Context, _ *slidejwtv1.RevokeRequest) (*slidejwtv1.RevokeResponse, error) {
	c, ok := ClaimsFromContext(ctx)
	if !ok {
		// Revoke reached without the interceptor: refuse rather than guess.
		return nil, reject(ReasonTokenMissing, "Revoke needs the caller's access token")
	}
	if err := t.s.RevokeSession(ctx, c.SessionID); err != nil {
		return nil, err
	}
	return &slidejwtv1.RevokeResponse{}, nil
}

// TokenPair returns the session's tokens as the slidejwt.v1 message.
func (s Session) TokenPair() *slidejwtv1.TokenPair {
	p := &slidejwtv1.TokenPair{
		AccessToken:          s.AccessToken,
		AccessTokenExpiresAt: timestamppb.New(s.Expiry),
		RefreshToken:         s.RefreshToken,
		SessionEndsAt:        timestamppb.New(s.End),
	}
	if !s.RefreshExpiry.IsZero() {
		p.RefreshTokenExpiresAt = timestamppb.New(s.RefreshExpiry)
	}
	return p
}
