package redisstore

import (
	"context"
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
			ctx, cancel := New(nil, WithTimeout(d)).bound(p)
			defer cancel()
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
