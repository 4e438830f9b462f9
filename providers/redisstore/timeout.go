package redisstore

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// bound returns ctx limited to the store's timeout ([WithTimeout]), and
// the bound to release once the call returns (nil, which releases
// nothing, when ctx is returned as it is). A context that ends sooner
// already is returned as it is.
//
// The bound's deadline costs a timer only if something waits on it
// (calls Done): a store call answered from the client-side cache never
// does, and a context.WithTimeout made for every call cost about a
// microsecond of each RPC (its timer, made and stopped; timed inside a
// running benchmark), half of IsRevoked's time.
func (s *Store) bound(ctx context.Context) (context.Context, *boundCtx) {
	dl := time.Now().Add(s.opts.timeout)
	if pdl, ok := ctx.Deadline(); ok && !pdl.After(dl) {
		return ctx, nil
	}
	b := &boundCtx{Context: ctx, deadline: dl}
	return b, b
}

// boundCtx is its parent context with a deadline, whose timer is made
// only by the first call of Done. Until then it answers Err, Value and
// Deadline itself, from its parent and the clock; after that, a
// context.WithDeadline of its parent answers every method, so that
// contexts derived from it see one consistent cancellation.
type boundCtx struct {
	context.Context
	deadline time.Time

	mu       sync.Mutex // serializes making timed
	released bool       // guarded by mu
	timed    atomic.Pointer[deadlineCtx]
}

// deadlineCtx is a context.WithDeadline and its cancel function.
type deadlineCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *boundCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Done makes the timer, once, and returns its channel.
func (c *boundCtx) Done() <-chan struct{} { return c.timer().ctx.Done() }

func (c *boundCtx) Err() error {
	if t := c.timed.Load(); t != nil {
		return t.ctx.Err()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *boundCtx) Value(key any) any {
	if t := c.timed.Load(); t != nil {
		return t.ctx.Value(key)
	}
	return c.Context.Value(key)
}

// timer returns the context.WithDeadline of c, made by the first call.
// After release it is made cancelled.
func (c *boundCtx) timer() *deadlineCtx {
	if t := c.timed.Load(); t != nil {
		return t
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.timed.Load(); t != nil {
		return t
	}
	ctx, cancel := context.WithDeadline(c.Context, c.deadline)
	if c.released {
		cancel()
	}
	t := &deadlineCtx{ctx: ctx, cancel: cancel}
	c.timed.Store(t)
	return t
}

// release stops the timer, if one was made, and ends c; a nil c releases
// nothing.
func (c *boundCtx) release() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.released = true
	t := c.timed.Load()
	c.mu.Unlock()
	if t != nil {
		t.cancel()
	}
}
