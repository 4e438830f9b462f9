package redisstore

import (
	"context"
	"time"
)

// bound returns ctx limited to the store's timeout ([WithTimeout]), and the
// function that releases it. A context that ends sooner already is
// returned as it is, which saves a timer when the RPC has a tight deadline.
// Otherwise the timer costs some hundreds of nanoseconds, also when
// IsRevoked answers from the cache: a small part of an RPC, bought with
// plain context.WithTimeout rather than a context of the store's own.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= s.opts.timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.opts.timeout)
}
