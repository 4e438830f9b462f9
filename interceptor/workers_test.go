package interceptor

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// goroutineID returns the id of the calling goroutine, from the header of
// its stack trace ("goroutine 42 [running]:"): for tests only.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	buf = bytes.TrimPrefix(buf, []byte("goroutine "))
	id, _, _ := bytes.Cut(buf, []byte(" "))
	return string(id)
}

// runGuarded runs h on w as guardStream does and waits for its result.
func runGuarded(w *handlerWorkers, h grpc.StreamHandler) handlerResult {
	g := &guardedStream{wake: make(chan struct{})}
	w.run(handlerJob{g: g, handler: h})
	<-g.wake
	return g.res
}

// TestHandlerWorkers_Reuse: handlers that run one after the other run on
// a goroutine that is reused, also after a handler panicked (the panic is
// the handler's result, for guardStream to raise again); handlers that
// run at the same time run on goroutines of their own.
func TestHandlerWorkers_Reuse(t *testing.T) {
	var w handlerWorkers
	const jobs = 20
	ids := map[string]int{}
	for i := range jobs {
		res := runGuarded(&w, func(any, grpc.ServerStream) error {
			ids[goroutineID()]++
			if i == jobs/2 {
				panic("handler panic")
			}
			return nil
		})
		if i == jobs/2 && (!res.panicked || res.panicValue != "handler panic") {
			t.Fatalf("job %d: result %+v, want the handler's panic", i, res)
		}
		// A worker is idle once it has run the handler and reached its
		// select: give it a moment, so that the next job finds it.
		time.Sleep(5 * time.Millisecond)
	}
	if len(ids) > jobs/4 {
		t.Fatalf("%d sequential handlers ran on %d goroutines, want them reused: %v", jobs, len(ids), ids)
	}

	// Two handlers at once: the second finds no idle worker.
	release := make(chan struct{})
	started := make(chan string, 2)
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			runGuarded(&w, func(any, grpc.ServerStream) error {
				started <- goroutineID()
				<-release
				return nil
			})
			done <- struct{}{}
		}()
	}
	a, b := <-started, <-started
	close(release)
	<-done
	<-done
	if a == b {
		t.Fatalf("two concurrent handlers ran on one goroutine (%s)", a)
	}
}
