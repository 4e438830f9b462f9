package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"google.golang.org/grpc"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// runBounded runs the load with cfg and fails the test if it does not
// stop by itself within limit.
func runBounded(t *testing.T, cfg config, limit time.Duration) (result, string) {
	t.Helper()
	var out bytes.Buffer
	type done struct {
		res result
		err error
	}
	ch := make(chan done, 1)
	go func() {
		res, err := run(context.Background(), cfg, &out)
		ch <- done{res, err}
	}()
	select {
	case d := <-ch:
		if d.err != nil {
			t.Fatalf("run: %v", d.err)
		}
		return d.res, out.String()
	case <-time.After(limit):
		t.Fatalf("run did not stop by itself within %v", limit)
		return result{}, ""
	}
}

// TestRun_ShortLoad runs the load for 1.5 s: no call fails, no token is
// downgraded, renewals happen, and it stops by itself.
func TestRun_ShortLoad(t *testing.T) {
	for _, alg := range []string{"HS256", "ES256"} {
		t.Run(alg, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.clients, cfg.duration, cfg.alg = 3, 1500*time.Millisecond, alg
			res, out := runBounded(t, cfg, 30*time.Second)
			t.Logf("\n%s", out)
			if res.Calls == 0 {
				t.Fatal("no calls made")
			}
			if res.AuthFailures != 0 || res.OtherFailures != 0 {
				t.Errorf("failures: auth %d, other %d; want 0", res.AuthFailures, res.OtherFailures)
			}
			if res.Downgrades != 0 {
				t.Errorf("downgrades = %d, want 0", res.Downgrades)
			}
			// 1.5 s crosses at least one second boundary: every session's
			// exp moves once.
			if res.Swaps < int64(cfg.clients) || res.RenewalsSent < res.Swaps {
				t.Errorf("renewals sent %d, swapped %d; want swapped ≥ %d and sent ≥ swapped", res.RenewalsSent, res.Swaps, cfg.clients)
			}
			if res.StoppedBy != "duration" || res.Elapsed < cfg.duration || res.Elapsed > cfg.duration+10*time.Second {
				t.Errorf("stopped by %s after %v, want by duration after about %v", res.StoppedBy, res.Elapsed, cfg.duration)
			}
			if !res.OK() || !strings.Contains(out, "result           PASS") {
				t.Errorf("OK() = %v, summary does not say PASS", res.OK())
			}
			if res.P50 <= 0 || res.P99 < res.P50 || res.Max < res.P99 {
				t.Errorf("latency p50 %v, p99 %v, max %v: want 0 < p50 ≤ p99 ≤ max", res.P50, res.P99, res.Max)
			}
		})
	}
}

// TestRun_Redis runs the load for 2.5 s on two replicas sharing a
// redis-server started by the test: both replicas serve calls, no call or
// refresh fails, no token is downgraded, sessions are renewed and
// refreshed, and the sessions are in Redis.
func TestRun_Redis(t *testing.T) {
	srv := redistest.Start(t)
	cfg := defaultConfig()
	cfg.clients, cfg.duration, cfg.redis, cfg.refreshEvery = 4, 2500*time.Millisecond, srv.Addr(), 500*time.Millisecond
	res, out := runBounded(t, cfg, time.Minute)
	t.Logf("\n%s", out)
	if res.AuthFailures != 0 || res.OtherFailures != 0 {
		t.Errorf("failures: auth %d, other %d; want 0", res.AuthFailures, res.OtherFailures)
	}
	if res.Downgrades != 0 {
		t.Errorf("downgrades = %d, want 0", res.Downgrades)
	}
	if len(res.ReplicaCalls) != 2 || res.ReplicaCalls[0] == 0 || res.ReplicaCalls[1] == 0 || res.ReplicaCalls[0]+res.ReplicaCalls[1] != res.Calls {
		t.Errorf("calls by replica %v of %d: want both replicas to serve calls, adding up", res.ReplicaCalls, res.Calls)
	}
	// 2.5 s crosses at least two second boundaries: every session's exp
	// moves, and renewal is due on every call.
	if res.Swaps < int64(cfg.clients) || res.RenewalsSent < res.Swaps {
		t.Errorf("renewals sent %d, swapped %d; want swapped ≥ %d and sent ≥ swapped", res.RenewalsSent, res.Swaps, cfg.clients)
	}
	// Every client's refresh loop ticks at least 4 times in 2.5 s; allow
	// for a slow machine.
	if res.Refreshes < int64(cfg.clients) || res.RefreshP50 <= 0 {
		t.Errorf("refreshes %d (p50 %v), want at least %d", res.Refreshes, res.RefreshP50, cfg.clients)
	}
	for _, want := range []string{
		"; replicas A 127.0.0.1:",
		" sharing Redis at " + srv.Addr() + "\n",
		"refreshes        ",
		"auth failures    0\n",
		"downgrades       0\n",
		"result           PASS\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if !res.OK() {
		t.Errorf("OK() = false: %+v", res)
	}

	// The sessions are in Redis, under the load's prefix.
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys, err := c.Do(context.Background(), c.B().Keys().Pattern(redisKeyPrefix+":{*}:s").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != cfg.clients {
		t.Errorf("%d session keys in Redis, want %d", len(keys), cfg.clients)
	}
}

// TestRun_RedisFlushed: Redis losing the sessions in the middle of the
// run (FLUSHALL) makes the calls fail authentication, and the run fail.
func TestRun_RedisFlushed(t *testing.T) {
	srv := redistest.Start(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := defaultConfig()
	cfg.clients, cfg.duration, cfg.redis = 2, 2*time.Second, srv.Addr()
	flushed := make(chan error, 1)
	time.AfterFunc(700*time.Millisecond, func() {
		flushed <- c.Do(context.Background(), c.B().Flushall().Build()).Error()
	})
	res, out := runBounded(t, cfg, time.Minute)
	if err := <-flushed; err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	if res.AuthFailures == 0 || res.OK() || !strings.Contains(out, "result           FAIL\n") {
		t.Errorf("auth failures %d, OK() = %v; want failures and FAIL after the flush:\n%s", res.AuthFailures, res.OK(), out)
	}
}

// TestRun_RedisUnreachable: with no Redis at the address, the run fails
// before any call, naming Redis.
func TestRun_RedisUnreachable(t *testing.T) {
	cfg := defaultConfig()
	cfg.redis = redistest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	res, err := run(ctx, cfg, &out)
	if err == nil || !strings.Contains(err.Error(), "redis") {
		t.Fatalf("run: err = %v, want one naming redis", err)
	}
	if res.Calls != 0 || out.Len() != 0 {
		t.Errorf("calls %d, output %q; want none", res.Calls, out.String())
	}
}

// TestRun_MaxCallsStops: the call budget ends the run long before the
// duration, after exactly that many calls.
func TestRun_MaxCallsStops(t *testing.T) {
	cfg := defaultConfig()
	cfg.clients, cfg.inflight, cfg.duration, cfg.maxCalls = 4, 3, maxDuration, 300
	res, _ := runBounded(t, cfg, 30*time.Second)
	if res.Calls != cfg.maxCalls || res.StoppedBy != "max-calls" {
		t.Fatalf("calls = %d, stopped by %s; want %d, max-calls", res.Calls, res.StoppedBy, cfg.maxCalls)
	}
	if !res.OK() {
		t.Fatalf("run not OK: %+v", res)
	}
}

// TestRun_Interrupted: a cancelled context stops the run between calls,
// and the calls cut short by it are not counted as failures.
func TestRun_Interrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	cfg := defaultConfig()
	cfg.clients, cfg.duration = 2, maxDuration
	res, err := run(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.StoppedBy != "interrupted" || res.Elapsed > 30*time.Second {
		t.Fatalf("stopped by %s after %v, want interrupted", res.StoppedBy, res.Elapsed)
	}
	if !res.OK() {
		t.Fatalf("run not OK: %+v", res)
	}
}

func TestParseFlags(t *testing.T) {
	got, err := parseFlags(nil, io.Discard)
	if err != nil || got != defaultConfig() {
		t.Fatalf("no flags: %+v, %v; want the defaults %+v", got, err, defaultConfig())
	}
	if d := defaultConfig(); d.clients != 8 || d.duration != 5*time.Second || d.maxCalls != 1_000_000 {
		t.Errorf("defaults %+v: want 8 clients, 5s, 1000000 calls", d)
	}
	for _, tt := range []struct {
		args []string
		flag string // "" for accepted
	}{
		{[]string{"--clients", "2", "--duration", "1m", "--max-calls", "10", "--alg", "EdDSA"}, ""},
		{[]string{"--clients", "0"}, "--clients"},
		{[]string{"--clients", "1025"}, "--clients"},
		{[]string{"--inflight", "0"}, "--inflight"},
		{[]string{"--duration", "0s"}, "--duration"},
		{[]string{"--duration", "1m1ns"}, "--duration"},
		{[]string{"--max-calls", "0"}, "--max-calls"},
		{[]string{"--ttl", "999ms"}, "--ttl"},
		{[]string{"--alg", "RS256"}, "--alg"},
		{[]string{"--cache-size", "-1"}, "--cache-size"},
		{[]string{"--redis", "127.0.0.1:6379", "--refresh-every", "0"}, ""},
		{[]string{"--redis", "redis://127.0.0.1:6379/0"}, ""},
		{[]string{"--redis", "localhost"}, "--redis"},
		{[]string{"--redis", "127.0.0.1:6379", "--refresh-every", "-1s"}, "--refresh-every"},
		{[]string{"--refresh-every", "1s"}, "--refresh-every"},
		{[]string{"stray"}, "stray"},
	} {
		_, err := parseFlags(tt.args, io.Discard)
		switch {
		case tt.flag == "" && err != nil:
			t.Errorf("%v: %v, want accepted", tt.args, err)
		case tt.flag != "" && (err == nil || !strings.Contains(err.Error(), tt.flag)):
			t.Errorf("%v: err = %v, want one naming %s", tt.args, err, tt.flag)
		}
	}
	if _, err := parseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: err = %v, want flag.ErrHelp", err)
	}
}

func TestBucket_Bounds(t *testing.T) {
	prevHi := int64(-1)
	for i := range len(histogram{}.counts) {
		lo, hi := bounds(i)
		if int64(lo) != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d = [%d, %d], previous ended at %d: want contiguous", i, lo, hi, prevHi)
		}
		for _, v := range []uint64{lo, hi, lo + (hi-lo)/2} {
			if got := bucket(v); got != i {
				t.Fatalf("bucket(%d) = %d, want %d", v, got, i)
			}
		}
		if rel := float64(hi-lo) / float64(lo+1); rel > 1.0/(1<<subBits) {
			t.Fatalf("bucket %d = [%d, %d] is %.3f wide relative to its start, want ≤ 1/%d", i, lo, hi, rel, 1<<subBits)
		}
		prevHi = int64(hi)
		if hi == 1<<63-1 {
			break // the rest covers the sign bit; durations never get there
		}
	}
}

// TestHistogram_Quantile compares the histogram's quantiles with the exact
// ones of the same samples, split across merged histograms.
func TestHistogram_Quantile(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var samples []time.Duration
	parts := []*histogram{new(histogram), new(histogram), new(histogram)}
	for i := range 100_000 {
		// log-uniform between 1 µs and 100 ms
		d := time.Duration(1000 * math.Pow(10, 5*r.Float64()))
		samples = append(samples, d)
		parts[i%3].record(d)
	}
	var h histogram
	for _, p := range parts {
		h.merge(p)
	}
	slices.Sort(samples)
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := samples[int(q*float64(len(samples)))-1]
		got := h.quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.04 || diff < -0.04 {
			t.Errorf("quantile(%v) = %v, exact %v: off by %.1f%%, want ≤ 4%%", q, got, exact, 100*diff)
		}
	}
	if h.max != samples[len(samples)-1] || h.min != samples[0] || h.n != uint64(len(samples)) {
		t.Errorf("min, max, n = %v, %v, %d; want %v, %v, %d", h.min, h.max, h.n, samples[0], samples[len(samples)-1], len(samples))
	}
	var empty histogram
	if got := empty.quantile(0.5); got != 0 {
		t.Errorf("empty quantile = %v, want 0", got)
	}
}

func TestResult_OK(t *testing.T) {
	for _, tt := range []struct {
		r    result
		want bool
	}{
		{result{Calls: 10}, true},
		{result{}, false},
		{result{Calls: 10, AuthFailures: 1}, false},
		{result{Calls: 10, OtherFailures: 1}, false},
		{result{Calls: 10, Downgrades: 1}, false},
	} {
		if got := tt.r.OK(); got != tt.want {
			t.Errorf("%+v.OK() = %v, want %v", tt.r, got, tt.want)
		}
	}
}

// TestWork_CountsAuthFailures: a client whose token the server does not
// trust is counted as failing, call by call.
func TestWork_CountsAuthFailures(t *testing.T) {
	newSessions := func() *interceptor.Server {
		k, err := newKey("HS256")
		if err != nil {
			t.Fatal(err)
		}
		ks, err := interceptor.NewKeySet(k)
		if err != nil {
			t.Fatal(err)
		}
		s, err := interceptor.NewServer(ks)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	served, foreign := newSessions(), newSessions()
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(served.UnaryServerInterceptor()))
	demov1.RegisterDemoServiceServer(srv, echoService{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	var n counters
	c, err := login(context.Background(), foreign, "mallory", lis.Addr().String(), &n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.conn.Close() })
	var h histogram
	work(context.Background(), c, time.Now().Add(time.Minute), 5, &n, &h)
	if got := n.authFailures.Load(); got != 5 || n.calls.Load() != 5 || h.n != 5 {
		t.Fatalf("auth failures %d, calls %d, recorded %d; want 5 each", got, n.calls.Load(), h.n)
	}
}
