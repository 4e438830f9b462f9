package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/interceptor/store"
)

var (
	// ErrUnexpectedReply means Redis answered something no script of this
	// package returns: another program writes the store's keys, or they
	// were written by an incompatible version.
	ErrUnexpectedReply = errors.New("redisstore: unexpected reply from redis")

	// ErrNotReplicated means that the master holds a revocation (Revoke's,
	// or the one of a Rotate that found reuse) but fewer replicas than
	// [WithReplicaAcks] asks for acknowledged it within the store's
	// timeout. The session is refused wherever the master's data is read,
	// but a failover before the replicas catch up may lose the
	// revocation: retry the revoke, which is idempotent, until it
	// succeeds.
	ErrNotReplicated = errors.New("redisstore: revocation not acknowledged by enough replicas")
)

// Store is a [store.SessionStore] in Redis. Its methods are safe for
// concurrent use; each is one round trip to Redis (IsRevoked usually
// none; a Rotate that finds reuse two with [WithReplicaAcks]), and each
// returns an error when Redis cannot answer within the store's timeout
// ([WithTimeout]).
type Store struct {
	client rueidis.Client
	opts   options
}

var _ store.SessionStore = (*Store)(nil)

// New returns a store that keeps its sessions through client. The client
// must have client-side caching enabled (rueidis's default, which needs
// RESP3: Redis 6 or later, or Valkey) for IsRevoked to answer from memory;
// with ClientOption.DisableCache every IsRevoked is a round trip. The
// caller owns client and closes it after the store's last use.
func New(client rueidis.Client, opts ...Option) *Store {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return &Store{client: client, opts: o}
}

// key is the name of sid's hash. The braces make sid the Cluster hash tag.
func (s *Store) key(sid string) string {
	return s.opts.keyPrefix + ":{" + sid + "}:s"
}

// ms formats t as decimal Unix milliseconds, truncated.
func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// Create implements [store.SessionStore]. It replaces whatever the store
// held under sessionID.
func (s *Store) Create(ctx context.Context, sessionID string, refresh store.Digest, _, keepUntil time.Time) error {
	ctx, b := s.bound(ctx)
	defer b.release()
	res := createScript.Exec(ctx, s.client, []string{s.key(sessionID)}, []string{string(refresh[:]), ms(keepUntil)})
	if err := res.Error(); err != nil {
		return fmt.Errorf("redisstore: create: %w", err)
	}
	return nil
}

// Rotate implements [store.SessionStore] in one script, with the outcomes
// of [store.Outcome]. Times are compared in milliseconds.
func (s *Store) Rotate(ctx context.Context, r store.Rotation) (store.Result, error) {
	ctx, b := s.bound(ctx)
	defer b.release()
	res := rotateScript.Exec(ctx, s.client, []string{s.key(r.SessionID)}, []string{
		string(r.Presented[:]), string(r.Next[:]), string(r.Successor),
		ms(r.Now), ms(r.GraceUntil), ms(r.KeepUntil),
	})
	reply, err := res.ToArray()
	if err != nil {
		return store.Result{}, fmt.Errorf("redisstore: rotate: %w", err)
	}
	if len(reply) == 0 {
		return store.Result{}, ErrUnexpectedReply
	}
	n, err := reply[0].AsInt64()
	if err != nil {
		return store.Result{}, ErrUnexpectedReply
	}
	switch o := store.Outcome(n); o {
	case store.OK:
		return store.Result{Outcome: o, Successor: r.Successor}, nil
	case store.Replay:
		if len(reply) != 2 {
			return store.Result{}, ErrUnexpectedReply
		}
		succ, err := reply[1].AsBytes()
		if err != nil {
			return store.Result{}, ErrUnexpectedReply
		}
		return store.Result{Outcome: o, Successor: succ}, nil
	case store.Reused:
		// The script revoked the session. With WithReplicaAcks, revoke it
		// again on a connection that then waits for the replicas: reuse
		// revived by a failover would let the thief's tokens through.
		if s.opts.replicaAcks > 0 {
			if err := s.revokeReplicated(ctx, r.SessionID, r.Now, r.KeepUntil); err != nil {
				return store.Result{}, fmt.Errorf("redisstore: rotate: reuse revoked the session: %w", err)
			}
		}
		s.settle(ctx)
		return store.Result{Outcome: o}, nil
	case store.Revoked, store.Unknown:
		return store.Result{Outcome: o}, nil
	}
	return store.Result{}, ErrUnexpectedReply
}

// Revoke implements [store.Revoker]. Revoking a session the store does not
// know records nothing: it is refused already. It returns
// [WithRevokeSettle] after Redis applied the revocation, so that every
// replica refuses the session by then. The revoked record is kept
// until the later of its keep-until and keepUntil. With [WithReplicaAcks]
// it returns nil only once the replicas acknowledged the revocation, and
// otherwise an error, which may wrap [ErrNotReplicated]: retry it.
func (s *Store) Revoke(ctx context.Context, sessionID string, now, keepUntil time.Time) error {
	ctx, b := s.bound(ctx)
	defer b.release()
	if s.opts.replicaAcks > 0 {
		if err := s.revokeReplicated(ctx, sessionID, now, keepUntil); err != nil {
			return fmt.Errorf("redisstore: revoke: %w", err)
		}
	} else {
		res := revokeScript.Exec(ctx, s.client, []string{s.key(sessionID)}, []string{ms(now), ms(keepUntil)})
		if err := res.Error(); err != nil {
			return fmt.Errorf("redisstore: revoke: %w", err)
		}
	}
	s.settle(ctx)
	return nil
}

// settle waits, after a revocation Redis applied, for the other replicas
// to apply Redis's invalidation of their cached answers
// ([WithRevokeSettle]), or until ctx ends.
func (s *Store) settle(ctx context.Context) {
	if s.opts.settle <= 0 {
		return
	}
	t := time.NewTimer(s.opts.settle)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// IsRevoked implements [store.RevocationList] as an allow-list: a session
// is refused when it was revoked, when Redis does not know it, and once its
// keep-until is before now. The answer comes from the client-side cache
// when it can (see the package doc for the staleness bound), and is an
// error, never false, when Redis cannot answer.
func (s *Store) IsRevoked(ctx context.Context, sessionID string, now time.Time) (bool, error) {
	ctx, b := s.bound(ctx)
	defer b.release()
	cmd := s.client.B().Hmget().Key(s.key(sessionID)).Field("rev", "keep").Cache()
	reply, err := s.client.DoCache(ctx, cmd, s.opts.cacheTTL).ToArray()
	if err != nil {
		return true, fmt.Errorf("redisstore: is revoked: %w", err)
	}
	if len(reply) != 2 {
		return true, ErrUnexpectedReply
	}
	if reply[1].IsNil() {
		return true, nil // unknown
	}
	keep, err := reply[1].AsInt64()
	if err != nil {
		return true, ErrUnexpectedReply
	}
	if !reply[0].IsNil() {
		return true, nil // the only value rev ever holds is "1"
	}
	return now.UnixMilli() > keep, nil
}
