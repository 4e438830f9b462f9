package interceptor

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// guardStream runs handler on ss for as long as the session of c is live,
// and ends the stream when it is not:
//
//   - at the session's end plus the leeway ([Policy.AcceptUntil]), with
//     SESSION_EXPIRED, by a timer (under a clock set with [WithClock], by
//     the periodic check below instead);
//   - at its next message in either direction once the session is revoked,
//     with SESSION_REVOKED: every SendMsg and every received message asks
//     the revocation list, which is meant to answer from memory;
//   - within the stream-check interval when the stream is silent: a ticker
//     asks the same questions;
//   - with codes.Unavailable when the revocation list cannot answer (the
//     server fails closed).
//
// A stream is not ended by its access token's idle expiry: the token was
// checked when the stream opened, and the session is what a stream
// outlives or not.
//
// The handler runs on a goroutine of its own, so that a handler blocked in
// RecvMsg on a silent stream cannot keep the stream open: the interceptor
// returns the rejection, gRPC writes it and closes the stream, and the
// handler's pending RecvMsg fails. Its context (ctx, given to the handler)
// is cancelled first, with the rejection as the cause, and every later
// SendMsg or RecvMsg of the handler returns the rejection without touching
// the stream. A panic in the handler is re-raised on the interceptor's
// goroutine, where a recovery interceptor chained before this one sees it.
func (s *Server) guardStream(ctx context.Context, c *Claims, srv any, ss grpc.ServerStream, method string, handler grpc.StreamHandler) error {
	authTime := c.AuthTime.Time
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := &guardedStream{
		ServerStream: ss,
		ctx:          hctx,
		s:            s,
		c:            c,
		method:       method,
		cancel:       cancel,
		ended:        make(chan struct{}),
	}

	done := make(chan handlerResult, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- handlerResult{panicked: true, panicValue: v}
			}
		}()
		done <- handlerResult{err: handler(srv, g)}
	}()

	// The timer ends the stream at the session's end. Under a clock given
	// with WithClock (a simulation, a test) real time says nothing about
	// the clock's time, so only the ticker's checks end the stream.
	var expired <-chan time.Time
	if !s.cfg.clockSet {
		timer := time.NewTimer(max(0, s.cfg.policy.AcceptUntil(authTime).Sub(s.cfg.now())))
		defer timer.Stop()
		expired = timer.C
	}
	ticker := time.NewTicker(s.cfg.streamCheck)
	defer ticker.Stop()
	for {
		select {
		case res := <-done:
			if res.panicked {
				panic(res.panicValue)
			}
			if err := g.endErr(); err != nil {
				return err // the handler returned because its stream was ended
			}
			return res.err
		case <-g.ended:
			return g.endErr()
		case <-expired:
			g.end(reject(ReasonSessionExpired, "stream outlived its session"))
		case <-ticker.C:
			g.check()
		}
	}
}

type handlerResult struct {
	err        error
	panicked   bool
	panicValue any
}

// guardedStream is the stream a guarded handler sees.
type guardedStream struct {
	grpc.ServerStream
	ctx    context.Context
	s      *Server
	c      *Claims
	method string
	cancel context.CancelCauseFunc

	once  sync.Once
	ended chan struct{} // closed by end
	err   error         // set by end before ended is closed
}

func (g *guardedStream) Context() context.Context { return g.ctx }

// SendMsg sends m unless the session is no longer live.
func (g *guardedStream) SendMsg(m any) error {
	if err := g.check(); err != nil {
		return err
	}
	return g.ServerStream.SendMsg(m)
}

// RecvMsg receives m, and hands it to the handler only if the session is
// still live.
func (g *guardedStream) RecvMsg(m any) error {
	if err := g.endErr(); err != nil {
		return err
	}
	if err := g.ServerStream.RecvMsg(m); err != nil {
		if eerr := g.endErr(); eerr != nil {
			return eerr // the stream failed because it was ended
		}
		return err
	}
	return g.check()
}

// check ends the stream if its session is past its end or no longer live,
// and returns the rejection if the stream is ended.
func (g *guardedStream) check() error {
	if err := g.endErr(); err != nil {
		return err
	}
	now := g.s.cfg.now()
	if g.s.cfg.policy.SessionEnded(now, g.c.AuthTime.Time) {
		return g.end(reject(ReasonSessionExpired, "stream outlived its session"))
	}
	if err := g.s.checkLive(g.ctx, g.c.SessionID, now); err != nil {
		return g.end(err)
	}
	return nil
}

// end ends the stream with err, once, and returns the error it ended with.
func (g *guardedStream) end(err error) error {
	g.once.Do(func() {
		ev := Event{Kind: EventStreamEnded, Method: g.method, Subject: g.c.Subject, SessionID: g.c.SessionID, Err: err}
		if ae, ok := err.(*authError); ok {
			ev.Reason = ae.reason
		}
		g.s.emit(g.ctx, ev)
		g.err = err
		g.cancel(err)
		close(g.ended)
	})
	<-g.ended
	return g.err
}

// endErr returns the error the stream was ended with, or nil.
func (g *guardedStream) endErr() error {
	select {
	case <-g.ended:
		return g.err
	default:
		return nil
	}
}
