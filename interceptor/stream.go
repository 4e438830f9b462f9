package interceptor

import (
	"context"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// guardStream runs handler on ss for as long as the session of c is live,
// and ends the stream when it is not:
//
//   - at the session's end plus the leeway ([Policy.AcceptUntil]), with
//     SESSION_EXPIRED, by a timer (under a clock set with [WithClock], by
//     the server's stream watcher instead);
//   - at its next message in either direction once the session is revoked,
//     with SESSION_REVOKED: every SendMsg and every received message asks
//     the revocation list, which is meant to answer from memory;
//   - within the stream-check interval when the stream is silent: one
//     watcher goroutine per server asks the same questions of every open
//     stream once per interval;
//   - with codes.Unavailable when the revocation list cannot answer (the
//     server fails closed).
//
// A stream is not ended by its access token's idle expiry: the token was
// checked when the stream opened, and the session is what a stream
// outlives or not.
//
// When it ends a stream, it first cancels the handler's context (ctx,
// given to the handler) with the rejection as the cause, and every later
// SendMsg or RecvMsg of the handler returns the rejection without touching
// the stream. Then:
//
//   - A stream whose client sends messages (client streaming and
//     bidirectional) runs its handler on a goroutine of its own, so that a
//     handler blocked in RecvMsg on a silent stream cannot keep the stream
//     open: the interceptor returns the rejection at once, gRPC writes it
//     and closes the stream, and the handler's pending RecvMsg fails. A
//     panic in the handler is re-raised on the interceptor's goroutine,
//     where a recovery interceptor chained before this one sees it.
//   - A server-streaming handler runs on the interceptor's own goroutine,
//     which saves two goroutine hand-offs per stream: its one RecvMsg (the
//     request, read by the generated code before the handler proper
//     starts) does not wait on the client once the call is open, so it
//     waits, as gRPC requires of every handler for cancellation and
//     deadlines, on its context. The stream ends with the rejection when
//     the handler returns. A handler that ignores its context's end keeps
//     a silent stream open until its next Send, which fails.
func (s *Server) guardStream(ctx context.Context, c *verifiedClaims, srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	g := &guardedStream{
		ServerStream: ss,
		ctx:          lazyCancelCtx{Context: ctx},
		s:            s,
		c:            c,
		method:       info.FullMethod,
	}
	defer g.ctx.release()
	if info.IsClientStream {
		g.wake = make(chan struct{})
	}

	// A timer ends the stream at the session's end. It is set only once
	// the end is near (see armBy): most streams close long before their
	// session ends, and need none. Under a clock given with WithClock (a
	// simulation, a test) real time says nothing about the clock's time,
	// so only the watcher's checks end the stream.
	g.until = s.policyFor(c).AcceptUntil(c.authTime())
	if !s.cfg.clockSet {
		g.armBy(s.cfg.now(), s.armHorizon())
		defer g.disarm()
	}
	s.watch.add(g, s)
	defer s.watch.remove(g)

	if !info.IsClientStream {
		return g.runInline(srv, handler)
	}
	s.handlers.run(handlerJob{g, srv, handler})
	<-g.wake
	g.mu.Lock()
	res, err := g.res, g.err
	g.mu.Unlock()
	if err != nil {
		return err // ended: the handler may still be running, and will fail
	}
	if res.panicked {
		panic(res.panicValue)
	}
	return res.err
}

// run runs the handler and wakes guardStream with its result.
func (g *guardedStream) run(srv any, handler grpc.StreamHandler) {
	res := handlerResult{panicked: true}
	defer func() {
		if res.panicked {
			res.panicValue = recover()
		}
		g.finish(res)
	}()
	res.err = handler(srv, g)
	res.panicked = false
}

// runInline runs the handler on the caller's goroutine and returns its
// error, or the rejection that ended the stream first. A panic goes on up,
// the stream marked finished.
func (g *guardedStream) runInline(srv any, handler grpc.StreamHandler) error {
	returned := false
	defer func() {
		if !returned {
			g.finish(handlerResult{panicked: true})
		}
	}()
	err := handler(srv, g)
	returned = true
	g.finish(handlerResult{err: err})
	if eerr := g.endErr(); eerr != nil {
		return eerr
	}
	return err
}

// handlerWorkers runs guarded handlers on goroutines that it keeps for
// reuse, as grpc-go's NumStreamWorkers does for its own. A new goroutine
// starts with a small stack and grows it, by copying, on the first deep
// call (gRPC's send path is one): per stream that cost as much as the rest
// of the guard together. A reused goroutine has grown already. An idle
// worker exits after workerIdle, and every worker after workerJobs
// handlers, so that a stack grown by one deep handler is given back.
type handlerWorkers struct {
	jobs chan handlerJob // unbuffered: a send succeeds only to an idle worker
	once sync.Once
}

// handlerJob is one guarded handler to run.
type handlerJob struct {
	g       *guardedStream
	srv     any
	handler grpc.StreamHandler
}

const (
	workerIdle = 10 * time.Second
	workerJobs = 1 << 16
)

// run runs j on an idle worker, or on a new one.
func (w *handlerWorkers) run(j handlerJob) {
	w.once.Do(func() { w.jobs = make(chan handlerJob) })
	select {
	case w.jobs <- j:
	default:
		go w.work(j)
	}
}

// work runs j, then the jobs it receives while it is not idle too long.
func (w *handlerWorkers) work(j handlerJob) {
	var idle *time.Timer
	for n := 1; ; n++ {
		j.g.run(j.srv, j.handler)
		j = handlerJob{} // an idle worker holds no stream
		if n == workerJobs {
			return
		}
		if idle == nil {
			idle = time.NewTimer(workerIdle)
		} else {
			idle.Reset(workerIdle)
		}
		select {
		case j = <-w.jobs:
		case <-idle.C:
			return
		}
	}
}

type handlerResult struct {
	err        error
	panicked   bool
	panicValue any
}

// streamWatch checks every open guarded stream of a server once per
// stream-check interval, on one goroutine that runs while streams are
// open: a silent stream of a revoked session ends within the interval,
// and no stream pays for a ticker of its own.
type streamWatch struct {
	mu      sync.Mutex
	streams map[*guardedStream]struct{}
	running bool
	batch   []*guardedStream // the loop's own buffer
}

func (w *streamWatch) add(g *guardedStream, s *Server) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streams == nil {
		w.streams = make(map[*guardedStream]struct{})
	}
	w.streams[g] = struct{}{}
	if !w.running {
		w.running = true
		go w.loop(s, s.cfg.streamCheck)
	}
}

func (w *streamWatch) remove(g *guardedStream) {
	w.mu.Lock()
	delete(w.streams, g)
	w.mu.Unlock()
}

// loop checks the open streams every interval, sets the timer of those
// whose session ends soon, and stops once none is open.
func (w *streamWatch) loop(s *Server, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for range t.C {
		w.mu.Lock()
		if len(w.streams) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.batch = w.batch[:0]
		for g := range w.streams {
			w.batch = append(w.batch, g)
		}
		w.mu.Unlock()
		for i, g := range w.batch {
			if g.check() == nil && !s.cfg.clockSet {
				g.armBy(s.cfg.now(), s.armHorizon())
			}
			w.batch[i] = nil
		}
	}
}

// armHorizon is how soon a stream's end must be for its timer to be set:
// two check intervals, so that the watcher's next check, even if it comes
// late, still finds the end ahead and sets the timer in time.
func (s *Server) armHorizon() time.Duration {
	return min(s.cfg.streamCheck, math.MaxInt64/2) * 2
}

// armBy sets the timer that ends the stream at g.until, if that is within
// horizon of now and the stream is open and has none yet.
func (g *guardedStream) armBy(now time.Time, horizon time.Duration) {
	left := g.until.Sub(now)
	if left > horizon {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.woken || g.timer != nil {
		return
	}
	g.timer = time.AfterFunc(max(0, left), g.expire)
}

// disarm stops the stream's timer, if it has one.
func (g *guardedStream) disarm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timer != nil {
		g.timer.Stop()
	}
}

// guardedStream is the stream a guarded handler sees.
type guardedStream struct {
	grpc.ServerStream
	ctx    lazyCancelCtx // the handler's context (see Context)
	s      *Server
	c      *verifiedClaims
	method string

	until time.Time // the session's end plus the leeway: the stream ends then

	mu    sync.Mutex
	timer *time.Timer // ends the stream at until; set once that is near (armBy)
	woken bool
	wake  chan struct{} // closed once: the handler returned, or the stream ended; nil for an inline handler
	res   handlerResult // the handler's result, if it returned first
	err   error         // the rejection that ended the stream, if that came first
}

func (g *guardedStream) Context() context.Context { return &g.ctx }

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
	if !now.Before(g.until) { // the session's end: Policy.SessionEnded
		return g.end(reject(ReasonSessionExpired, "stream outlived its session"))
	}
	// A stream whose context is done (its caller left, or the call
	// ended) is over: asking the store with that context would fail, and
	// would end the stream as if the store were down. It gets the
	// context's error instead, and no message passes.
	if err := g.ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if err := g.s.checkLive(&g.ctx, g.c.sid(), now); err != nil {
		if cerr := g.ctx.Err(); cerr != nil {
			return status.FromContextError(cerr).Err()
		}
		return g.end(err)
	}
	return nil
}

// expire ends the stream at its session's end.
func (g *guardedStream) expire() {
	g.end(reject(ReasonSessionExpired, "stream outlived its session"))
}

// finish records the handler's result, unless the stream has ended.
func (g *guardedStream) finish(res handlerResult) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.woken {
		g.woken, g.res = true, res
		if g.wake != nil {
			close(g.wake)
		}
	}
}

// end ends the stream with err, unless it has ended or its handler has
// returned, and returns the error it ended with (nil if the handler
// returned first).
func (g *guardedStream) end(err error) error {
	g.mu.Lock()
	if g.woken {
		err := g.err
		g.mu.Unlock()
		return err
	}
	g.woken, g.err = true, err
	g.mu.Unlock()

	ev := Event{Kind: EventStreamEnded, Method: g.method, Subject: g.c.sub(), SessionID: g.c.sid(), Err: err}
	if ae, ok := err.(*authError); ok {
		ev.Reason = ae.reason
	}
	g.s.emit(&g.ctx, ev)
	g.ctx.cancel(err)
	if g.wake != nil {
		close(g.wake)
	}
	return err
}

// endErr returns the error the stream was ended with, or nil.
func (g *guardedStream) endErr() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}
