package interceptor

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// refreshMethod is exempt from access-token authentication: a client calls
// it precisely when its access token has lapsed.
const refreshMethod = slidejwtv1.TokenService_Refresh_FullMethodName

// revokeMethod ends the caller's session: its response carries no renewal.
const revokeMethod = slidejwtv1.TokenService_Revoke_FullMethodName

// Refresh exchanges a refresh token for the session's next token pair,
// rotating the refresh token through the session store; see
// [store.Outcome] for the reuse rules. It is what TokenService.Refresh
// serves. The new pair keeps the session's session_exp and cnf; the
// refresh token of a session bound to a certificate
// ([BindToPeerCertificate]) is refused unless ctx's call comes with that
// certificate (outside gRPC, put it into ctx with peer.NewContext and a
// credentials.TLSInfo). Errors are gRPC status errors: TOKEN_MISSING, TOKEN_INVALID,
// SESSION_EXPIRED (past the absolute end, or the refresh token itself
// lapsed), SESSION_REVOKED (revoked, reused after the grace period, or
// unknown to the store), codes.Unavailable when the store fails and
// codes.FailedPrecondition without a store or on a server that only
// verifies (see [NewServer]).
//
// The store is asked whether the session is live before anything is
// signed, so a refresh token of a revoked or unknown session costs a
// verification and a store lookup, never a signature.
func (s *Server) Refresh(ctx context.Context, refreshToken string) (Session, error) {
	start := s.startTimer()
	sess, c, outcome, err := s.refresh(ctx, refreshToken)
	ev := Event{Kind: EventRefreshed, Method: refreshMethod, Expiry: sess.Expiry, Outcome: outcome}
	if c != nil {
		ev.Subject, ev.SessionID = c.Subject, c.SessionID
	}
	if err != nil {
		ev.Kind, ev.Err = EventRejected, err
		if ae, ok := err.(*authError); ok {
			ev.Reason = ae.reason
		}
	}
	s.emitTimed(ctx, ev, start)
	return sess, err
}

func (s *Server) refresh(ctx context.Context, raw string) (Session, *Claims, store.Outcome, error) {
	v := s.ver.Load() // one key set verifies and signs
	if !v.keys.CanSign() {
		return Session{}, nil, 0, errRefreshVerifyOnly
	}
	if s.cfg.store == nil {
		return Session{}, nil, 0, status.Error(codes.FailedPrecondition, "slidejwt: refresh tokens need a session store")
	}
	switch {
	case raw == "":
		return Session{}, nil, 0, reject(ReasonTokenMissing, "no refresh token")
	case len(raw) > s.cfg.maxTokenSize:
		return Session{}, nil, 0, reject(ReasonTokenInvalid, "token too long")
	case !isCompactJWS(raw):
		return Session{}, nil, 0, reject(ReasonTokenInvalid, "malformed token")
	}
	p := s.cfg.policy
	c, aerr := v.verifyRefresh(raw)
	now := s.cfg.now()
	// The refresh token of a bound session is bound too: from another
	// certificate it is refused before the store is asked, so a stolen one
	// cannot rotate (and so burn) the holder's.
	if c != nil && c.Confirmation != nil {
		if berr := checkBinding(ctx, c.Confirmation.X5tS256); berr != nil {
			return Session{}, c, 0, berr
		}
	}
	if c != nil {
		p = claimsPolicy(p, c) // the session's own end, if it has one
	}
	if c != nil && !p.CanRefresh(now, c.AuthTime.Time) {
		return Session{}, c, 0, reject(ReasonSessionExpired, "")
	}
	if aerr != nil {
		if aerr.reason == ReasonTokenExpired {
			// Nothing can restore a session whose refresh token lapsed.
			return Session{}, c, 0, reject(ReasonSessionExpired, "refresh token expired")
		}
		return Session{}, c, 0, aerr
	}
	// Look before signing: a revoked or unknown session's token costs no
	// signature. The rotation below still decides atomically.
	start := s.startTimer()
	revoked, err := s.cfg.store.IsRevoked(ctx, c.SessionID, now)
	s.emitStore(ctx, StoreIsRevoked, c.SessionID, start, 0, err)
	switch {
	case err != nil:
		return Session{}, c, 0, errStoreUnavailable
	case revoked:
		return Session{}, c, store.Revoked, reject(ReasonSessionRevoked, "")
	}

	// Mint the successor first, so that the store checks and rotates in
	// one atomic step; a losing concurrent request discards its candidate.
	base := *c
	base.Fresh = false
	next, nextID, err := s.mint(v, &base, now, false)
	if err != nil {
		return Session{}, c, 0, status.Error(codes.Internal, "slidejwt: cannot mint tokens")
	}
	sealed, err := sealSuccessor(next.TokenPair(), c.ID, c.SessionID)
	if err != nil {
		return Session{}, c, 0, status.Error(codes.Internal, "slidejwt: cannot seal tokens")
	}
	start = s.startTimer()
	res, err := s.cfg.store.Rotate(ctx, store.Rotation{
		SessionID:  c.SessionID,
		Presented:  refreshDigest(c.ID),
		Next:       refreshDigest(nextID),
		Successor:  sealed,
		Now:        now,
		GraceUntil: p.GraceUntil(now),
		KeepUntil:  p.KeepUntil(c.AuthTime.Time),
	})
	s.emitStore(ctx, StoreRotate, c.SessionID, start, res.Outcome, err)
	if err != nil {
		return Session{}, c, 0, errStoreUnavailable
	}
	switch res.Outcome {
	case store.OK:
		return next, c, res.Outcome, nil
	case store.Replay:
		pair, err := openSuccessor(res.Successor, c.ID, c.SessionID)
		if err != nil {
			return Session{}, c, res.Outcome, status.Error(codes.Internal, "slidejwt: stored successor does not open")
		}
		return sessionFromPair(pair, c, p), c, res.Outcome, nil
	case store.Reused:
		return Session{}, c, res.Outcome, reject(ReasonSessionRevoked, "refresh token reused; session revoked")
	case store.Unknown:
		return Session{}, c, res.Outcome, reject(ReasonSessionRevoked, "session unknown to the store")
	default:
		return Session{}, c, res.Outcome, reject(ReasonSessionRevoked, "")
	}
}

var errStoreUnavailable = status.Error(codes.Unavailable, "slidejwt: session store unavailable")

var errRefreshVerifyOnly = status.Error(codes.FailedPrecondition, "slidejwt: this server only verifies; refresh at the service that signs")

// sessionFromPair is the Session of a stored successor pair of the
// session whose refresh claims are c.
func sessionFromPair(pair *slidejwtv1.TokenPair, c *Claims, p Policy) Session {
	sess := Session{
		AccessToken:  pair.GetAccessToken(),
		SessionID:    c.SessionID,
		Expiry:       pair.GetAccessTokenExpiresAt().AsTime(),
		AuthTime:     c.AuthTime.Time,
		End:          p.SessionEnd(c.AuthTime.Time),
		RefreshToken: pair.GetRefreshToken(),
	}
	if pair.GetRefreshTokenExpiresAt() != nil {
		sess.RefreshExpiry = pair.GetRefreshTokenExpiresAt().AsTime()
	}
	return sess
}

// RevokeSession ends session sessionID on every server that shares the
// session store, or the revocation list if it is a [store.Revoker]. Its
// access and refresh tokens are rejected with SESSION_REVOKED from then on,
// and its open streams end. Without a revoker it fails with
// codes.FailedPrecondition; when the store fails, with codes.Unavailable.
func (s *Server) RevokeSession(ctx context.Context, sessionID string) error {
	// The session began no later than now, so its record is kept at most
	// until now's KeepUntil.
	return s.revoke(ctx, sessionID, s.cfg.now())
}

// revoke revokes sessionID, whose login was at authTime or earlier.
func (s *Server) revoke(ctx context.Context, sessionID string, authTime time.Time) error {
	if s.cfg.revoker == nil {
		return status.Error(codes.FailedPrecondition, "slidejwt: no session store or revocation list to revoke in")
	}
	start := s.startTimer()
	err := s.cfg.revoker.Revoke(ctx, sessionID, s.cfg.now(), s.cfg.policy.KeepUntil(authTime))
	s.emitStore(ctx, StoreRevoke, sessionID, start, 0, err)
	if err != nil {
		return errStoreUnavailable
	}
	s.emit(ctx, Event{Kind: EventRevoked, SessionID: sessionID})
	return nil
}

// TokenService returns the server's implementation of
// slidejwt.v1.TokenService, to register beside the application's
// services. Refresh is exempt from authentication; Revoke needs the
// caller's access token and ends the caller's own session; Renew needs it
// too and answers, in its body, the renewal the call earns as any call
// does (PROTOCOL.md §2), for the verify-only services that delegate their
// renewals to this one ([WithDelegatedRenewal]).
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
	c := sharedClaims(ctx) // read only; no copy needed
	if c == nil {
		// Revoke reached without the interceptor: refuse rather than guess.
		return nil, reject(ReasonTokenMissing, "Revoke needs the caller's access token")
	}
	if err := t.s.revoke(ctx, c.sid(), c.authTime()); err != nil {
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
