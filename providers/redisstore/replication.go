package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// revokeReplicated revokes sessionID, as Revoke does, and returns nil only
// once at least [WithReplicaAcks] replicas of the master that ran the
// script hold the revocation. Revoke calls it instead of the plain script,
// and Rotate after a reuse, whose script revoked the session already: the
// revoke script then rewrites the same mark, so that its WAIT covers it
// (WAIT waits for the connection's last write, and a replica that has a
// later write of the replication stream has every earlier one).
func (s *Store) revokeReplicated(ctx context.Context, sessionID string, now, keepUntil time.Time) error {
	return s.execReplicated(ctx, revokeScript, []string{s.key(sessionID)}, []string{ms(now), ms(keepUntil)})
}

// execReplicated runs sc and then WAIT on one connection, pipelined in
// one round trip: WAIT counts the replicas that acknowledged the
// connection's last write, so it must follow the script on the
// connection that sent it, and on the master that ran it.
//
//   - Standalone and Sentinel: rueidis sends a DoMulti that holds a
//     blocking command (WAIT) on one connection of its blocking pool,
//     never on the shared pipelined one, which WAIT would stall.
//   - Cluster: the cluster client's DoMulti follows a MOVED or ASK
//     redirect for the script alone, leaving WAIT on the node that
//     redirected, which would acknowledge the wrong write. A dedicated
//     client is pinned to the master of the key's slot and returns a
//     redirect as an error instead (rueidis then refreshes its slot map,
//     and the caller retries).
//
// The error wraps [ErrNotReplicated] when the script ran but fewer
// replicas acknowledged it within WAIT's timeout.
func (s *Store) execReplicated(ctx context.Context, sc *script, keys, args []string) error {
	b := s.client.B()
	res, acks := s.withWait(ctx, sc.evalsha(b, keys, args))
	if e, ok := rueidis.IsRedisErr(res.Error()); ok && e.IsNoScript() {
		// Nothing ran; the WAIT answered at once for the connection's
		// earlier writes.
		res, acks = s.withWait(ctx, sc.eval(b, keys, args))
	}
	if err := res.Error(); err != nil {
		return err
	}
	n, err := acks.AsInt64()
	if err != nil {
		return fmt.Errorf("waiting for replicas: %w", err)
	}
	if want := int64(s.opts.replicaAcks); n < want {
		return fmt.Errorf("%w: %d of %d acknowledged it within the timeout", ErrNotReplicated, n, want)
	}
	return nil
}

// withWait sends cmd and WAIT on one connection to the master that serves
// cmd's key, in one round trip, and returns both replies.
func (s *Store) withWait(ctx context.Context, cmd rueidis.Completed) (res, acks rueidis.RedisResult) {
	wait := s.client.B().Wait().Numreplicas(int64(s.opts.replicaAcks)).Timeout(waitMillis(ctx)).Build()
	var replies []rueidis.RedisResult
	if s.client.Mode() == rueidis.ClientModeCluster {
		d, release := s.client.Dedicate()
		defer release()
		replies = d.DoMulti(ctx, cmd, wait)
	} else {
		replies = s.client.DoMulti(ctx, cmd, wait)
	}
	return replies[0], replies[1]
}

// waitMillis is WAIT's timeout: the time left before ctx's deadline
// (which [Store.bound] always sets) less a margin, so that Redis answers
// with the count, and the connection stays usable, before the client gives
// up on it. The margin covers getting a connection of the blocking pool
// (perhaps a new one), Redis noticing the timeout at its next server tick
// (every 100 ms at the default hz 10) and the reply: a quarter of the time
// left, at least 200 ms, at most half. The timeout is at least 1 ms: WAIT
// takes 0 as "forever".
func waitMillis(ctx context.Context) int64 {
	left := DefaultTimeout
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	margin := min(max(left/4, waitMargin), left/2)
	return max((left - margin).Milliseconds(), 1)
}

// waitMargin is the least time left for Redis to notice a WAIT's timeout
// and answer.
const waitMargin = 200 * time.Millisecond
