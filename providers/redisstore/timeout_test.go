package redisstore

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type ctxKey struct{}

// TestBound: a store call's context ends at the store's timeout, or at the
// caller's deadline when that comes sooner, and keeps the caller's values.
func TestBound(t *testing.T) {
	const d = time.Minute
	parent := context.WithValue(context.Background(), ctxKey{}, "v")
	for _, tc := range []struct {
		name   string
		parent time.Duration // 0: no deadline
		want   time.Duration
	}{
		{"no deadline", 0, d},
		{"later deadline", 2 * d, d},
		{"sooner deadline", d / 2, d / 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := parent
			if tc.parent > 0 {
				var cancel context.CancelFunc
				p, cancel = context.WithTimeout(parent, tc.parent)
				defer cancel()
			}
			before := time.Now()
			ctx, b := New(nil, WithTimeout(d)).bound(p)
			defer b.release()
			dl, ok := ctx.Deadline()
			if !ok || dl.Before(before.Add(tc.want-time.Second)) || dl.After(time.Now().Add(tc.want)) {
				t.Fatalf("deadline in %v, want in %v", time.Until(dl), tc.want)
			}
			if got := ctx.Value(ctxKey{}); got != "v" {
				t.Fatalf("Value = %v, want the caller's", got)
			}
		})
	}
}

// TestWithTimeout: the option sets the timeout; zero or less keeps the
// default.
func TestWithTimeout(t *testing.T) {
	for _, tc := range []struct{ d, want time.Duration }{
		{0, DefaultTimeout},
		{-time.Second, DefaultTimeout},
		{time.Nanosecond, time.Nanosecond},
		{5 * time.Second, 5 * time.Second},
	} {
		if got := New(nil, WithTimeout(tc.d)).opts.timeout; got != tc.want {
			t.Errorf("WithTimeout(%v): timeout = %v, want %v", tc.d, got, tc.want)
		}
	}
}

// doneCounter is a context that counts the calls of its Done method.
type doneCounter struct {
	context.Context
	n atomic.Int64
}

func (c *doneCounter) Done() <-chan struct{} {
	c.n.Add(1)
	return c.Context.Done()
}

// TestBound_TimerOnlyOnDone: a bound makes its timer (which asks its
// parent for Done) only when something calls its Done; Err, Value and
// Deadline answer without one.
func TestBound_TimerOnlyOnDone(t *testing.T) {
	parent := &doneCounter{Context: context.WithValue(context.Background(), ctxKey{}, "v")}
	ctx, b := New(nil, WithTimeout(time.Minute)).bound(parent)
	defer b.release()
	_, _ = ctx.Deadline()
	_ = ctx.Value(ctxKey{})
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err = %v, want nil", err)
	}
	if n := parent.n.Load(); n != 0 || b.timed.Load() != nil {
		t.Fatalf("timer made (parent's Done called %d times) without a Done call", n)
	}
	select {
	case <-ctx.Done():
		t.Fatal("Done closed a minute early")
	default:
	}
	if b.timed.Load() == nil || parent.n.Load() == 0 {
		t.Fatal("Done made no timer")
	}
	if got := ctx.Value(ctxKey{}); got != "v" {
		t.Errorf("Value after Done = %v, want the caller's", got)
	}
}

// TestBound_Deadline: at its deadline a bound's Err is DeadlineExceeded,
// whether or not a Done call made its timer, and a Done channel closes.
func TestBound_Deadline(t *testing.T) {
	const d = 20 * time.Millisecond
	s := New(nil, WithTimeout(d))

	ctx, b := s.bound(context.Background())
	defer b.release()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10 s after a 20 ms deadline")
	}
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Err after Done = %v, want DeadlineExceeded", err)
	}

	ctx, b = s.bound(context.Background())
	defer b.release()
	time.Sleep(2 * d)
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Err past the deadline, no Done call = %v, want DeadlineExceeded", err)
	}
	if b.timed.Load() != nil {
		t.Error("Err made a timer")
	}
}

// TestBound_ParentAndRelease: a bound ends with its parent, with or
// without a timer, and release ends a Done channel made before or after
// it.
func TestBound_ParentAndRelease(t *testing.T) {
	s := New(nil, WithTimeout(time.Minute))
	closed := func(ctx context.Context) bool {
		select {
		case <-ctx.Done():
			return true
		case <-time.After(10 * time.Second):
			return false
		}
	}

	parent, cancel := context.WithCancel(context.Background())
	ctx, b := s.bound(parent)
	cancel()
	if err := ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("Err after the parent's cancel, no timer = %v, want Canceled", err)
	}
	if !closed(ctx) {
		t.Error("Done not closed after the parent's cancel")
	}
	b.release()

	ctx, b = s.bound(context.Background())
	done := ctx.Done()
	b.release()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("Done made before release not closed by it")
	}

	ctx, b = s.bound(context.Background())
	b.release()
	if !closed(ctx) {
		t.Error("Done made after release not closed")
	}

	var none *boundCtx
	none.release() // a nil bound releases nothing
}
