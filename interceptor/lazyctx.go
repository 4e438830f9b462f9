package interceptor

import (
	"context"
	"sync"
	"sync/atomic"
)

// lazyCancelCtx is its parent context made cancellable, like
// context.WithCancelCause, but without the cost of that until it is
// needed: the child of context.WithCancelCause is made only when Done is
// first called or the context is cancelled. Until then Err and Value are
// the parent's. Most stream handlers never call Done, and a guarded
// stream is rarely ended by its guard, so most streams never pay for a
// cancellable child (two allocations, and a registration with the parent
// under its lock, undone at the end).
//
// Once made, the child answers every method, so that contexts derived
// from this one (which call Done first) see one consistent cancellation,
// and context.Cause finds the cause.
type lazyCancelCtx struct {
	context.Context

	mu       sync.Mutex // serializes making the child
	released bool       // guarded by mu
	child    atomic.Pointer[cancelChild]
}

// cancelChild is the child context of a lazyCancelCtx and its cancel
// function.
type cancelChild struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (c *lazyCancelCtx) Done() <-chan struct{} { return c.made().ctx.Done() }

func (c *lazyCancelCtx) Err() error {
	if ch := c.child.Load(); ch != nil {
		return ch.ctx.Err()
	}
	return c.Context.Err()
}

func (c *lazyCancelCtx) Value(key any) any {
	if ch := c.child.Load(); ch != nil {
		return ch.ctx.Value(key)
	}
	return c.Context.Value(key)
}

// cancel cancels the context with cause, as a CancelCauseFunc does.
func (c *lazyCancelCtx) cancel(cause error) { c.made().cancel(cause) }

// release ends the context once its user is done with it (a child made
// later is made cancelled), and frees its registration with the parent.
func (c *lazyCancelCtx) release() {
	c.mu.Lock()
	c.released = true
	ch := c.child.Load()
	c.mu.Unlock()
	if ch != nil {
		ch.cancel(nil)
	}
}

// made returns the child, made by the first call.
func (c *lazyCancelCtx) made() *cancelChild {
	if ch := c.child.Load(); ch != nil {
		return ch
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch := c.child.Load(); ch != nil {
		return ch
	}
	ctx, cancel := context.WithCancelCause(c.Context)
	if c.released {
		cancel(nil)
	}
	ch := &cancelChild{ctx: ctx, cancel: cancel}
	c.child.Store(ch)
	return ch
}
