package interceptor

import (
	"context"
	"sync"

	"google.golang.org/grpc/status"
)

// flight is one call in progress (a refresh, a service login), shared by
// every caller that needs it. It runs on a goroutine of its own, under its
// own timeout, so that no caller's deadline cuts it short and every
// caller, the one that started it (the leader) included, can stop waiting
// at its own deadline. A panic of the call is raised again on the leader's
// goroutine if the leader still waits, or else on the flight's own: it is
// never swallowed, and the waiters are released either way.
type flight[T any] struct {
	done chan struct{}
	val  T     // written before done is closed
	err  error // likewise

	mu         sync.Mutex
	panicked   any  // the call's panic, for the leader to raise again
	leaderGone bool // the leader stopped waiting
}

// newFlight returns a flight whose error, should the call panic, is
// panicErr.
func newFlight[T any](panicErr error) *flight[T] {
	return &flight[T]{done: make(chan struct{}), err: panicErr}
}

// wait returns f's outcome once it lands, or ctx's error as a gRPC status
// (codes.DeadlineExceeded or codes.Canceled) when ctx ends first. leader
// says whether the caller started f.
func (f *flight[T]) wait(ctx context.Context, leader bool) (T, error) {
	select {
	case <-f.done:
		if leader && f.panicked != nil {
			panic(f.panicked)
		}
		return f.val, f.err
	case <-ctx.Done():
		if leader {
			f.mu.Lock()
			f.leaderGone = true
			p := f.panicked
			f.mu.Unlock()
			if p != nil {
				panic(p)
			}
		}
		var zero T
		return zero, status.FromContextError(ctx.Err()).Err()
	}
}

// land releases f's waiters. p is what the flight's goroutine recovered
// (nil if the call returned); it is raised again here if the leader no
// longer waits. Call it last, from the flight's deferred function, after
// the owner has recorded the outcome.
func (f *flight[T]) land(p any) {
	f.mu.Lock()
	gone := p != nil && f.leaderGone
	if !gone {
		f.panicked = p
	}
	f.mu.Unlock()
	close(f.done)
	if gone {
		panic(p)
	}
}
