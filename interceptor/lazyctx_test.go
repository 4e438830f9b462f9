package interceptor

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// doneCounter is a context that counts the calls of its Done method.
type doneCounter struct {
	context.Context
	n atomic.Int64
}

func (c *doneCounter) Done() <-chan struct{} {
	c.n.Add(1)
	return c.Context.Done()
}

type lazyKey struct{}

// closedWithin reports whether ch closes within a generous bound.
func closedWithin(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// TestLazyCancelCtx_NoChildUntilNeeded: Err and Value come from the parent
// and make no child (the parent is not asked for Done) until Done or
// cancel is called.
func TestLazyCancelCtx_NoChildUntilNeeded(t *testing.T) {
	parent := &doneCounter{Context: context.WithValue(context.Background(), lazyKey{}, "v")}
	c := &lazyCancelCtx{Context: parent}
	defer c.release()
	if err := c.Err(); err != nil {
		t.Fatalf("Err = %v, want nil", err)
	}
	if got := c.Value(lazyKey{}); got != "v" {
		t.Fatalf("Value = %v, want the parent's", got)
	}
	if parent.n.Load() != 0 || c.child.Load() != nil {
		t.Fatal("a child was made without Done or cancel")
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed, want open")
	default:
	}
	if c.child.Load() == nil || parent.n.Load() == 0 {
		t.Fatal("Done made no child")
	}
	if got := c.Value(lazyKey{}); got != "v" {
		t.Fatalf("Value after Done = %v, want the parent's", got)
	}
}

// TestLazyCancelCtx_Cancel: cancel ends the context with its cause, for
// contexts derived from it too, whether or not Done was called before.
func TestLazyCancelCtx_Cancel(t *testing.T) {
	cause := errors.New("session revoked")
	for _, doneFirst := range []bool{false, true} {
		c := &lazyCancelCtx{Context: context.Background()}
		var derived context.Context
		if doneFirst {
			_ = c.Done()
			var stop context.CancelFunc
			derived, stop = context.WithCancel(c)
			defer stop()
		}
		c.cancel(cause)
		if !closedWithin(c.Done()) {
			t.Fatalf("doneFirst %v: Done not closed after cancel", doneFirst)
		}
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Errorf("doneFirst %v: Err = %v, want Canceled", doneFirst, err)
		}
		if got := context.Cause(c); got != cause {
			t.Errorf("doneFirst %v: Cause = %v, want the cause", doneFirst, got)
		}
		if derived != nil {
			if !closedWithin(derived.Done()) {
				t.Fatal("a derived context's Done not closed after cancel")
			}
			if got := context.Cause(derived); got != cause {
				t.Errorf("derived Cause = %v, want the cause", got)
			}
		}
		c.release()
	}
}

// TestLazyCancelCtx_Parent: the context ends with its parent, with or
// without a child.
func TestLazyCancelCtx_Parent(t *testing.T) {
	for _, doneFirst := range []bool{false, true} {
		parent, cancel := context.WithCancel(context.Background())
		c := &lazyCancelCtx{Context: parent}
		if doneFirst {
			_ = c.Done()
		}
		cancel()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Errorf("doneFirst %v: Err after the parent's cancel = %v, want Canceled", doneFirst, err)
		}
		if !closedWithin(c.Done()) {
			t.Errorf("doneFirst %v: Done not closed after the parent's cancel", doneFirst)
		}
		c.release()
	}
}

// TestLazyCancelCtx_Release: release ends a child made before it and one
// made after it, and a release without a child makes none.
func TestLazyCancelCtx_Release(t *testing.T) {
	c := &lazyCancelCtx{Context: context.Background()}
	done := c.Done()
	c.release()
	if !closedWithin(done) {
		t.Error("Done made before release not closed by it")
	}

	c = &lazyCancelCtx{Context: context.Background()}
	c.release()
	if c.child.Load() != nil {
		t.Error("release made a child")
	}
	if !closedWithin(c.Done()) {
		t.Error("Done made after release not closed")
	}
}

// TestLazyCancelCtx_Concurrent: Done, Err, Value and cancel from many
// goroutines agree on one child (run with -race).
func TestLazyCancelCtx_Concurrent(t *testing.T) {
	c := &lazyCancelCtx{Context: context.Background()}
	defer c.release()
	cause := errors.New("ended")
	var wg sync.WaitGroup
	chans := make([]<-chan struct{}, 16)
	for i := range chans {
		wg.Go(func() {
			_ = c.Err()
			_ = c.Value(lazyKey{})
			chans[i] = c.Done()
			if i == 7 {
				c.cancel(cause)
			}
		})
	}
	wg.Wait()
	for i, ch := range chans {
		if ch != chans[0] {
			t.Fatalf("goroutine %d got another Done channel", i)
		}
	}
	if !closedWithin(chans[0]) || context.Cause(c) != cause {
		t.Fatalf("after cancel: Cause %v, want the cause", context.Cause(c))
	}
}
