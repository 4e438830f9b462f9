// Package e2e runs the example server (examples/server) and client
// (examples/client) as real processes on loopback and drives them with the
// generated clients and an interceptor.TokenHolder.
//
// TestMain builds both binaries once (with -race when the tests run with
// it). Every test starts its own server on 127.0.0.1:0, reads the port from
// the server's "listening" log line, and stops it in a cleanup, which also
// checks that the server never logged a token the tests saw, or anything
// that looks like a JWT, and that it found no data race.
//
// The tests in redis_test.go run two servers as replicas that share one
// real redis-server (started by internal/redistest from PATH; skipped
// without it, failed without it when CI is set).
//
// The servers use durations of a few seconds, so the tests sleep to let
// tokens age. No assertion depends on how long a sleep took: each one
// compares times the server itself put into tokens, or reasons the server
// sent.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// Paths of the binaries TestMain builds.
var serverBin, clientBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "slidejwt-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	serverBin, clientBin = filepath.Join(dir, "server"), filepath.Join(dir, "client")

	// The tests spend their time waiting for tokens to age, not computing:
	// run them all at once unless -test.parallel says otherwise (its
	// default, GOMAXPROCS, would serialize them on a small CI machine).
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", "32")
	}
	code := m.Run()
	killAll() // whatever a test left running, even after a panic
	return code
}

// build compiles examples/server and examples/client into dir, with -race
// if this test binary has it, so that data races in real processes
// surface too.
func build(dir string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled() {
		args = append(args, "-race")
	}
	args = append(args, "./examples/server", "./examples/client")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// processEnv is the environment of the processes the tests start. A
// binary built with -race sleeps a second at exit for late race reports
// (GORACE atexit_sleep_ms); the tests stop a dozen servers and have no
// goroutine left running by then.
func processEnv() []string {
	return append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// Every process started, so that TestMain can kill leftovers.
var (
	procsMu sync.Mutex
	procs   []*exec.Cmd
)

func track(cmd *exec.Cmd) {
	procsMu.Lock()
	defer procsMu.Unlock()
	procs = append(procs, cmd)
}

func killAll() {
	procsMu.Lock()
	defer procsMu.Unlock()
	for _, cmd := range procs {
		killProc(cmd)
	}
}

// Every token any test received, so that each server's cleanup can check
// that its log contains none of them.
var (
	seenMu sync.Mutex
	seen   = map[string]bool{}
)

func see(tokens ...string) {
	seenMu.Lock()
	defer seenMu.Unlock()
	for _, t := range tokens {
		if t != "" {
			seen[t] = true
		}
	}
}

// leakedToken reports how log contains a token the tests saw: whole, or
// its payload or signature segment alone.
func leakedToken(log string) string {
	seenMu.Lock()
	defer seenMu.Unlock()
	for tok := range seen {
		parts := strings.Split(tok, ".")
		if strings.Contains(log, tok) {
			return fmt.Sprintf("a whole token (%d bytes)", len(tok))
		}
		for i, part := range parts {
			if i > 0 && len(part) >= 16 && strings.Contains(log, part) {
				return fmt.Sprintf("segment %d of a token", i)
			}
		}
	}
	return ""
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is a running example server.
type server struct {
	addr   string
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	done   chan struct{} // closed once the process exited and its output is read
	err    error         // cmd.Wait's result, set before done is closed

	// Plain connection without a holder: Login, Refresh, and calls that
	// set the authorization metadata themselves.
	demo   demov1.DemoServiceClient
	tokens slidejwtv1.TokenServiceClient
}

// listeningAddr matches the server's slog line `msg=listening addr=H:P`
// (text handler) or `"msg":"listening",...,"addr":"H:P"` (JSON handler).
var listeningAddr = regexp.MustCompile(`(?m)listening.*?\baddr"?[=:]"?([^\s"]+)`)

// listeningStore matches the store the "listening" line names.
var listeningStore = regexp.MustCompile(`(?m)listening.*?\bstore"?[=:]"?(\w+)`)

// startServer starts the example server on a free loopback port with
// args, waits for its "listening" line, checks that the line names the
// store the arguments ask for (redis with --redis, memory without), and
// stops the server when the test ends.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	s := &server{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(serverBin, append([]string{"--addr", "127.0.0.1:0"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	s.cmd.Env = processEnv()
	setProcAttr(s.cmd)
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	track(s.cmd)
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() { s.stop(t) })

	deadline := time.After(15 * time.Second)
	for s.addr == "" {
		if m := listeningAddr.FindStringSubmatch(s.stderr.String()); m != nil {
			s.addr = m[1]
			break
		}
		select {
		case <-s.done:
			t.Fatalf("server %q exited before listening: %v\nstderr:\n%s", args, s.err, s.stderr)
		case <-deadline:
			t.Fatalf("server %q printed no listening line within 15s\nstderr:\n%s", args, s.stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	wantStore := "memory"
	if slices.Contains(args, "--redis") {
		wantStore = "redis"
	}
	if m := listeningStore.FindStringSubmatch(s.stderr.String()); m == nil || m[1] != wantStore {
		t.Errorf("server %q: listening line does not say store=%s\nstderr:\n%s", args, wantStore, s.stderr)
	}
	conn := dial(t, s.addr)
	s.demo, s.tokens = demov1.NewDemoServiceClient(conn), slidejwtv1.NewTokenServiceClient(conn)
	return s
}

// stop terminates the server and checks its output: no token, nothing
// that looks like a JWT ("eyJ" starts every JOSE header), no data race, and
// a clean exit on SIGTERM.
func (s *server) stop(t *testing.T) {
	stopProc(s.cmd)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		killProc(s.cmd)
		<-s.done
		t.Errorf("server did not stop within 10s of SIGTERM; killed it")
	}
	out := s.stdout.String() + s.stderr.String()
	if what := leakedToken(out); what != "" {
		t.Errorf("server output contains %s", what)
	}
	if strings.Contains(out, "eyJ") {
		t.Errorf("server output contains %q, the start of a JWT", "eyJ")
	}
	if strings.Contains(out, "DATA RACE") {
		t.Errorf("server found a data race:\n%s", out)
	}
	if canStopCleanly && s.addr != "" && s.err != nil {
		t.Errorf("server exit after SIGTERM: %v, want status 0\nstderr:\n%s", s.err, s.stderr)
	}
}

// logLines returns the number of lines the server has logged so far.
func (s *server) logLines() int { return strings.Count(s.stderr.String(), "\n") }

// waitLogLines waits until the server has logged more than n lines. The
// server logs before it responds, but the test reads the pipe on its own
// schedule.
func (s *server) waitLogLines(t *testing.T, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for s.logLines() <= n {
		if time.Now().After(deadline) {
			t.Fatalf("server logged no line for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dial opens a plaintext connection without a holder. Loopback only.
func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func rpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// login logs alice in and returns the session's first token pair.
func (s *server) login(t *testing.T) *slidejwtv1.TokenPair {
	t.Helper()
	resp, err := s.demo.Login(rpcContext(t), &demov1.LoginRequest{Username: "alice", Password: "alice-password"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	p := resp.GetTokens()
	see(p.GetAccessToken(), p.GetRefreshToken())
	if p.GetAccessToken() == "" || p.GetRefreshToken() == "" {
		t.Fatalf("Login returned access token of %d bytes, refresh token of %d bytes; want both",
			len(p.GetAccessToken()), len(p.GetRefreshToken()))
	}
	return p
}

// refresh calls TokenService.Refresh itself (as a client that did not use
// a holder would).
func (s *server) refresh(t *testing.T, refreshToken string) (*slidejwtv1.TokenPair, error) {
	t.Helper()
	resp, err := s.tokens.Refresh(rpcContext(t), &slidejwtv1.RefreshRequest{RefreshToken: refreshToken})
	if err != nil {
		return nil, err
	}
	see(resp.GetTokens().GetAccessToken(), resp.GetTokens().GetRefreshToken())
	return resp.GetTokens(), nil
}

// echoWith calls Echo on the plain connection with token as the bearer.
func (s *server) echoWith(t *testing.T, token string, opts ...grpc.CallOption) (*demov1.EchoResponse, error) {
	ctx := metadata.AppendToOutgoingContext(rpcContext(t), "authorization", "Bearer "+token)
	return s.demo.Echo(ctx, &demov1.EchoRequest{Message: "plain"}, opts...)
}

// holder is a TokenHolder with counters.
type holder struct {
	*interceptor.TokenHolder
	swaps     atomic.Int32 // OnSwap calls
	refreshes atomic.Int32 // OnRefresh calls
	attempts  atomic.Int32 // Refresher calls, failed ones included
}

// newHolder builds a holder for pair's access token. With withRefresh it
// also holds the refresh token and refreshes through refreshVia's
// TokenService; proactive refresh is off (margin 0), because with a TTL of
// a few seconds the default 30 s margin would refresh before every call.
func newHolder(t *testing.T, pair *slidejwtv1.TokenPair, refreshVia *server, opts ...interceptor.ClientOption) *holder {
	t.Helper()
	h := &holder{}
	all := []interceptor.ClientOption{
		// The test servers listen in plaintext on loopback.
		interceptor.AllowInsecureTransport(),
		interceptor.OnSwap(func(tok string, _ time.Time) { see(tok); h.swaps.Add(1) }),
		interceptor.OnRefresh(func(p *slidejwtv1.TokenPair) {
			see(p.GetAccessToken(), p.GetRefreshToken())
			h.refreshes.Add(1)
		}),
	}
	if refreshVia != nil {
		r := interceptor.TokenServiceRefresher(refreshVia.tokens)
		all = append(all,
			interceptor.WithRefreshToken(pair.GetRefreshToken()),
			interceptor.WithRefreshMargin(0),
			interceptor.WithRefresher(interceptor.RefreshFunc(func(ctx context.Context, tok string) (*slidejwtv1.TokenPair, error) {
				h.attempts.Add(1)
				return r.Refresh(ctx, tok)
			})))
	}
	th, err := interceptor.NewTokenHolder(pair.GetAccessToken(), append(all, opts...)...)
	if err != nil {
		t.Fatalf("NewTokenHolder: %v", err)
	}
	h.TokenHolder = th
	return h
}

// client returns a DemoService client on a connection to s whose calls go
// through the holder.
func (h *holder) client(t *testing.T, s *server) demov1.DemoServiceClient {
	return demov1.NewDemoServiceClient(dial(t, s.addr,
		grpc.WithChainUnaryInterceptor(h.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(h.StreamClientInterceptor()),
	))
}

func wantReason(t *testing.T, what string, err error, want interceptor.Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s succeeded, want %s", what, interceptor.WireReason(want))
	}
	if got, ok := interceptor.ReasonOf(err); !ok || got != want {
		t.Fatalf("%s: %v; want reason %s", what, err, interceptor.WireReason(want))
	}
}

// sleepUntil sleeps until the wall clock passes at.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// nextSecond sleeps into the second after the one the pair's access token
// was issued in, plus a margin. A renewal mints exp = now + TTL truncated
// to whole seconds, which is later than the presented exp only from the
// next second on.
func nextSecond(pair *slidejwtv1.TokenPair, ttl time.Duration) {
	issued := pair.GetAccessTokenExpiresAt().AsTime().Add(-ttl)
	sleepUntil(issued.Add(time.Second + 100*time.Millisecond))
}

// shortFlags is a policy of seconds: a 3 s idle window renewed on every
// call, an 8 s absolute session, no clock-skew leeway. The grace period is
// set because its 30 s default exceeds the 8 s refresh TTL (see
// TestGoodFlags).
var shortFlags = []string{"--ttl", "3s", "--max-lifetime", "8s", "--renew-before", "3s", "--leeway", "0s",
	"--refresh-ttl", "8s", "--refresh-grace", "1s"}

// TestRenewalInTrailer: a unary call's renewed token arrives in the
// response trailer (not the header), and the holder swaps it in; a server
// stream's arrives in the header and the trailer.
func TestRenewalInTrailer(t *testing.T) {
	t.Parallel()
	srv := startServer(t, shortFlags...)
	pair := srv.login(t)
	h := newHolder(t, pair, nil)
	demo := h.client(t, srv)
	nextSecond(pair, 3*time.Second)

	var header, trailer metadata.MD
	resp, err := demo.Echo(rpcContext(t), &demov1.EchoRequest{Message: "hi"}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatalf("Echo: %v", err)
	}
	if resp.GetMessage() != "hi" || resp.GetSubject() != "alice" {
		t.Errorf("Echo = (%q, %q), want (%q, %q)", resp.GetMessage(), resp.GetSubject(), "hi", "alice")
	}
	renewed := trailer.Get(interceptor.DefaultRenewalHeader)
	see(renewed...)
	if len(renewed) != 1 {
		t.Fatalf("trailer has %d %q values, want 1", len(renewed), interceptor.DefaultRenewalHeader)
	}
	if n := len(header.Get(interceptor.DefaultRenewalHeader)); n != 0 {
		t.Errorf("unary header has %d %q values, want 0 (the trailer carries it)", n, interceptor.DefaultRenewalHeader)
	}
	if h.Token() != renewed[0] {
		t.Errorf("holder did not swap in the trailer's token")
	}
	if got := h.swaps.Load(); got != 1 {
		t.Errorf("OnSwap calls = %d, want 1", got)
	}
	if old := pair.GetAccessTokenExpiresAt().AsTime(); !h.Expiry().After(old) {
		t.Errorf("held expiry %v, want after the login token's %v", h.Expiry(), old)
	}
	if h.SessionID() == "" {
		t.Errorf("held token has no session id")
	}

	// A server stream: the renewal is in the header, set before the first
	// message, and in the trailer.
	before := h.Token()
	sleepUntil(h.Expiry().Add(-3*time.Second + time.Second + 100*time.Millisecond))
	stream, err := demo.Watch(rpcContext(t), &demov1.WatchRequest{Count: 2, Interval: durationpb.New(0)})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	sheader, err := stream.Header()
	if err != nil {
		t.Fatalf("Watch header: %v", err)
	}
	for n := 0; ; n++ {
		_, err := stream.Recv()
		if err == io.EOF {
			if n != 2 {
				t.Errorf("Watch sent %d messages, want 2", n)
			}
			break
		}
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
	}
	hr, tr := sheader.Get(interceptor.DefaultRenewalHeader), stream.Trailer().Get(interceptor.DefaultRenewalHeader)
	see(hr...)
	see(tr...)
	if len(hr) != 1 || len(tr) != 1 || hr[0] != tr[0] {
		t.Fatalf("Watch: %d renewed tokens in the header, %d in the trailer; want the same one in each", len(hr), len(tr))
	}
	if h.Token() != hr[0] || h.Token() == before {
		t.Errorf("holder did not swap in the stream's renewed token")
	}
}

// TestCapHolds: calls every 400 ms keep a session with a 3 s idle window
// alive, through renewals alone, until the 8 s absolute end; from then on
// calls fail with SESSION_EXPIRED and a refresh cannot extend it.
func TestCapHolds(t *testing.T) {
	t.Parallel()
	// A refresh TTL far beyond the session's end: the end caps it.
	srv := startServer(t, "--ttl", "3s", "--max-lifetime", "8s", "--renew-before", "3s", "--leeway", "0s", "--refresh-ttl", "1m")
	pair0 := srv.login(t)
	end := pair0.GetSessionEndsAt().AsTime()
	if got := pair0.GetRefreshTokenExpiresAt().AsTime(); !got.Equal(end) {
		t.Errorf("login: refresh token expires %v, want the session end %v", got, end)
	}

	// A refresh keeps the session's end, and caps both tokens at it.
	pair, err := srv.refresh(t, pair0.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if got := pair.GetSessionEndsAt().AsTime(); !got.Equal(end) {
		t.Errorf("refresh moved the session end from %v to %v", end, got)
	}
	if got := pair.GetRefreshTokenExpiresAt().AsTime(); !got.Equal(end) {
		t.Errorf("refreshed refresh token expires %v, want the session end %v", got, end)
	}
	if got := pair.GetAccessTokenExpiresAt().AsTime(); got.After(end) {
		t.Errorf("refreshed access token expires %v, after the session end %v", got, end)
	}
	firstExp := pair.GetAccessTokenExpiresAt().AsTime()

	h := newHolder(t, pair, srv)
	demo := h.client(t, srv)
	var lastOK time.Time
	for i := 0; ; i++ {
		start := time.Now()
		_, err := demo.Echo(rpcContext(t), &demov1.EchoRequest{Message: fmt.Sprint(i)})
		done := time.Now()
		switch {
		case err == nil:
			if !start.Before(end) {
				t.Fatalf("call %d started at end%+v and succeeded; want SESSION_EXPIRED", i, start.Sub(end))
			}
			lastOK = start
		case done.Before(end):
			t.Fatalf("call %d ended at end%+v and failed: %v; want success before the end", i, done.Sub(end), err)
		default:
			wantReason(t, fmt.Sprintf("call %d at end%+v", i, start.Sub(end)), err, interceptor.ReasonSessionExpired)
		}
		if err != nil && !start.Before(end) {
			break
		}
		if h.Expiry().After(end) {
			t.Fatalf("held token expires %v, after the session end %v", h.Expiry(), end)
		}
		time.Sleep(400 * time.Millisecond)
	}
	if !lastOK.After(firstExp) {
		t.Errorf("last successful call at %v, not after the first token's expiry %v: the session did not slide", lastOK, firstExp)
	}
	if h.swaps.Load() == 0 {
		t.Errorf("no renewal was swapped in")
	}
	if got := h.attempts.Load(); got != 0 {
		t.Errorf("holder tried %d refreshes; want 0: renewals alone kept the session alive, and SESSION_EXPIRED is not refreshed", got)
	}

	_, err = srv.refresh(t, h.RefreshToken())
	wantReason(t, "Refresh after the session end", err, interceptor.ReasonSessionExpired)
}

// TestReactiveRefresh: once the access token lapsed (no calls for longer
// than the idle window), the holder refreshes with its refresh token and
// retries, transparently: a unary call, a server stream and a bidi stream
// opened after the lapse all succeed.
func TestReactiveRefresh(t *testing.T) {
	t.Parallel()
	// Renewal only in the last second, so that idle time lets the token lapse.
	srv := startServer(t, "--ttl", "2s", "--renew-before", "1s", "--max-lifetime", "1m", "--refresh-ttl", "30s", "--leeway", "0s")
	pair := srv.login(t)
	h := newHolder(t, pair, srv)
	demo := h.client(t, srv)

	lapse := func(what string) string {
		t.Helper()
		sleepUntil(h.Expiry().Add(200 * time.Millisecond))
		// The server itself says the held token lapsed.
		_, err := srv.echoWith(t, h.Token())
		wantReason(t, what+": Echo with the held token, sent by hand", err, interceptor.ReasonTokenExpired)
		return h.Token()
	}

	t.Run("unary", func(t *testing.T) {
		old, oldRefresh := lapse("unary"), h.RefreshToken()
		resp, err := demo.Echo(rpcContext(t), &demov1.EchoRequest{Message: "after the lapse"})
		if err != nil {
			t.Fatalf("Echo after the lapse: %v", err)
		}
		if resp.GetSubject() != "alice" {
			t.Errorf("subject = %q, want alice", resp.GetSubject())
		}
		if got := h.attempts.Load(); got != 1 {
			t.Errorf("refresh attempts = %d, want 1", got)
		}
		if got := h.refreshes.Load(); got != 1 {
			t.Errorf("OnRefresh calls = %d, want 1", got)
		}
		if h.Token() == old || h.RefreshToken() == oldRefresh {
			t.Errorf("holder kept its old access or refresh token after the refresh")
		}
		if !h.Expiry().After(time.Now()) {
			t.Errorf("held token expires %v, already past", h.Expiry())
		}
	})

	t.Run("server stream", func(t *testing.T) {
		lapse("server stream")
		before := h.attempts.Load()
		stream, err := demo.Watch(rpcContext(t), &demov1.WatchRequest{Count: 2, Interval: durationpb.New(0)})
		if err != nil {
			t.Fatalf("Watch after the lapse: %v", err)
		}
		n := 0
		for ; ; n++ {
			msg, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("Watch after the lapse: message %d: %v", n+1, err)
			}
			if msg.GetSubject() != "alice" {
				t.Errorf("Watch subject = %q, want alice", msg.GetSubject())
			}
		}
		if n != 2 {
			t.Errorf("Watch sent %d messages, want 2", n)
		}
		if got := h.attempts.Load() - before; got != 1 {
			t.Errorf("refresh attempts for the stream = %d, want 1", got)
		}
	})

	t.Run("bidi stream", func(t *testing.T) {
		lapse("bidi stream")
		before := h.attempts.Load()
		chat, err := demo.Chat(rpcContext(t))
		if err != nil {
			t.Fatalf("Chat after the lapse: %v", err)
		}
		// Sent on the stream the server rejects: the holder keeps it and
		// replays it on the reopened stream. Send reports io.EOF if the
		// rejection already arrived; Recv then tells the outcome.
		if err := chat.Send(&demov1.ChatMessage{Text: "ping"}); err != nil && err != io.EOF {
			t.Fatalf("Chat send: %v", err)
		}
		msg, err := chat.Recv()
		if err != nil {
			t.Fatalf("Chat after the lapse: %v", err)
		}
		if msg.GetText() != "ping" || msg.GetSubject() != "alice" {
			t.Errorf("Chat reply = (%q, %q), want (ping, alice)", msg.GetText(), msg.GetSubject())
		}
		if err := chat.CloseSend(); err != nil {
			t.Fatalf("Chat CloseSend: %v", err)
		}
		if _, err := chat.Recv(); err != io.EOF {
			t.Errorf("Chat end: %v, want io.EOF", err)
		}
		if got := h.attempts.Load() - before; got != 1 {
			t.Errorf("refresh attempts for the stream = %d, want 1", got)
		}
	})
}

// TestReusedRefreshRevokes: a retired refresh token presented again within
// the grace period gets the same successor; presented after it, it is
// taken as theft and revokes the session, so that its newest access and
// refresh tokens fail with SESSION_REVOKED, and a holder does not loop.
func TestReusedRefreshRevokes(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	srv := startServer(t, "--ttl", "20s", "--max-lifetime", "1m", "--renew-before", "1s", "--refresh-ttl", "30s",
		"--leeway", "0s", "--refresh-grace", grace.String())
	pair0 := srv.login(t)

	pair1, err := srv.refresh(t, pair0.GetRefreshToken())
	if err != nil {
		t.Fatalf("first Refresh: %v", err)
	}
	rotated := time.Now() // the server's grace period began before this
	if pair1.GetRefreshToken() == pair0.GetRefreshToken() || pair1.GetAccessToken() == pair0.GetAccessToken() {
		t.Fatalf("Refresh returned a token it was given")
	}

	// Within the grace period: the same successor, and no harm done.
	again, err := srv.refresh(t, pair0.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh again within the grace period: %v", err)
	}
	if again.GetAccessToken() != pair1.GetAccessToken() || again.GetRefreshToken() != pair1.GetRefreshToken() {
		t.Errorf("Refresh again within the grace period returned a different pair, want the same successor")
	}
	if _, err := srv.echoWith(t, pair1.GetAccessToken()); err != nil {
		t.Fatalf("Echo with the successor after a replay: %v", err)
	}

	// After it: theft.
	sleepUntil(rotated.Add(grace + 200*time.Millisecond))
	_, err = srv.refresh(t, pair0.GetRefreshToken())
	wantReason(t, "Refresh with the retired token after the grace period", err, interceptor.ReasonSessionRevoked)

	_, err = srv.echoWith(t, pair1.GetAccessToken())
	wantReason(t, "Echo with the newest access token", err, interceptor.ReasonSessionRevoked)
	_, err = srv.echoWith(t, pair0.GetAccessToken())
	wantReason(t, "Echo with the login access token", err, interceptor.ReasonSessionRevoked)
	_, err = srv.refresh(t, pair1.GetRefreshToken())
	wantReason(t, "Refresh with the newest refresh token", err, interceptor.ReasonSessionRevoked)

	// A holder with the newest pair gets SESSION_REVOKED as it came, and
	// does not try to refresh its way out of it.
	h := newHolder(t, pair1, srv)
	_, err = h.client(t, srv).Echo(rpcContext(t), &demov1.EchoRequest{Message: "x"})
	wantReason(t, "Echo through a holder", err, interceptor.ReasonSessionRevoked)
	if got := h.attempts.Load(); got != 0 {
		t.Errorf("holder tried %d refreshes after SESSION_REVOKED, want 0", got)
	}

	// Another session of the same user is unaffected.
	other := srv.login(t)
	if _, err := srv.echoWith(t, other.GetAccessToken()); err != nil {
		t.Errorf("Echo in a new session after the revocation: %v", err)
	}
}

// TestSecondServerOwnStore: two server processes that share the key file
// but not their session stores (without --redis, each keeps its own in memory)
// refuse each other's sessions with SESSION_REVOKED: a session store is an
// allow-list, so a session it does not know is never accepted, and a
// replica that did not see a logout cannot keep serving the session.
// Replicas share a store; a server with another key rejects the token as
// invalid, before any store is asked.
func TestSecondServerOwnStore(t *testing.T) {
	t.Parallel()
	keyFile, otherKeyFile := writeKeyFile(t), writeKeyFile(t)
	args := append([]string{"--secret-file", keyFile}, shortFlags...)
	a, b := startServer(t, args...), startServer(t, args...)
	// Another key under the same key id: only the signature tells them apart.
	stranger := startServer(t, append([]string{"--secret-file", otherKeyFile}, shortFlags...)...)

	pair := a.login(t)
	if _, err := a.echoWith(t, pair.GetAccessToken()); err != nil {
		t.Fatalf("Echo on the server that started the session: %v", err)
	}
	_, err := b.echoWith(t, pair.GetAccessToken())
	wantReason(t, "Echo on a server with the same key and its own store", err, interceptor.ReasonSessionRevoked)
	_, err = b.refresh(t, pair.GetRefreshToken())
	wantReason(t, "Refresh on a server with its own store", err, interceptor.ReasonSessionRevoked)
	_, err = stranger.echoWith(t, pair.GetAccessToken())
	wantReason(t, "Echo on a server with another key", err, interceptor.ReasonTokenInvalid)

	// The refusals changed nothing on the first server.
	if _, err := a.refresh(t, pair.GetRefreshToken()); err != nil {
		t.Errorf("Refresh on the first server after the second refused it: %v", err)
	}
}

// writeKeyFile writes a random key of exactly 32 bytes once its trailing
// newline is stripped, the shortest the server accepts, and returns its path.
func writeKeyFile(t *testing.T) string {
	t.Helper()
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(f, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestBadFlags: a bad flag value stops the server at start-up with a
// non-zero status and one line on stderr naming the flag.
func TestBadFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shortKey := filepath.Join(dir, "short-key")
	// 32 bytes on disk, 31 once the trailing newline is stripped.
	if err := os.WriteFile(shortKey, []byte(strings.Repeat("k", 31)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		flag string
	}{
		{"negative ttl", []string{"--ttl", "-1s"}, "ttl"},
		{"negative max-lifetime", []string{"--max-lifetime", "-1h"}, "max-lifetime"},
		{"negative renew-before", []string{"--renew-before", "-1s"}, "renew-before"},
		{"negative refresh-ttl", []string{"--refresh-ttl", "-1s"}, "refresh-ttl"},
		{"negative leeway", []string{"--leeway", "-1s"}, "leeway"},
		{"negative refresh-grace", []string{"--refresh-grace", "-1s"}, "refresh-grace"},
		{"renew-before above ttl", []string{"--ttl", "3s", "--renew-before", "3001ms"}, "renew-before"},
		{"renew-before above default ttl", []string{"--renew-before", "25h"}, "renew-before"},
		{"short key file", []string{"--secret-file", shortKey}, "secret-file"},
		{"missing key file", []string{"--secret-file", filepath.Join(dir, "missing")}, "secret-file"},
		{"unparsable duration", []string{"--ttl", "soon"}, "ttl"},
		{"malformed users", []string{"--users", "alice"}, "users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, line := startFailing(t, tt.args...)
			if code != 2 {
				t.Errorf("server %q: exit status %d, want 2 (a bad flag)", tt.args, code)
			}
			if !namesFlag(line, tt.flag) {
				t.Errorf("server %q: stderr %q does not name --%s", tt.args, line, tt.flag)
			}
		})
	}
}

// startFailing runs the example server with args, expecting it to stop at
// start-up, and returns its exit status and the one line it wrote on
// stderr. It fails the test if the server keeps running for 15 s, exits
// with status 0, writes anything but one line on stderr, or writes
// anything on stdout.
func startFailing(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, serverBin, append([]string{"--addr", "127.0.0.1:0"}, args...)...)
	cmd.Env = processEnv()
	setProcAttr(cmd)
	cmd.Cancel = func() error { killProc(cmd); return nil }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	track(cmd)
	err := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("server %q still running after 15s, want a start-up error\nstderr:\n%s", args, &stderr)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("server %q: exit %v, want a non-zero status", args, err)
	}
	lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
	if len(lines) != 1 || lines[0] == "" || stdout.Len() != 0 {
		t.Fatalf("server %q wrote %d stderr lines and %d stdout bytes, want 1 line and nothing:\n%s", args, len(lines), stdout.Len(), &stderr)
	}
	return exit.ExitCode(), lines[0]
}

// TestGoodFlags: valid values at the edge of the contract start the
// server.
func TestGoodFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{"renew-before equal to ttl", []string{"--ttl", "3s", "--renew-before", "3s"}},
		{"max-lifetime equal to ttl", []string{"--ttl", "3s", "--max-lifetime", "3s"}},
		{"zero leeway", []string{"--leeway", "0s"}},
		{"zero refresh-grace", []string{"--refresh-grace", "0s"}},
		// --refresh-ttl may be any duration and --refresh-grace is optional,
		// so the grace's default must not refuse a short refresh TTL.
		{"short refresh-ttl, default grace", []string{"--ttl", "3s", "--max-lifetime", "8s", "--refresh-ttl", "8s"}},
		{"32-byte key file", []string{"--secret-file", writeKeyFile(t)}},
		{"two users", []string{"--users", "alice:alice-password,bob:bob-password"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startServer(t, tt.args...)
			srv.login(t)
		})
	}
}

// namesFlag reports whether line names flag as a word, so that "ttl" is
// not found in "refresh-ttl".
func namesFlag(line, flag string) bool {
	return regexp.MustCompile(`(^|[^\w-])-{0,2}` + regexp.QuoteMeta(flag) + `($|[^\w-])`).MatchString(line)
}

// TestServerLog: the server logs a line for each login, renewal, refresh
// and rejection. Its cleanup (as every server's) checks that none of it
// contains a token; rejected tokens are among those checked, including a
// refresh token presented as an access token.
func TestServerLog(t *testing.T) {
	t.Parallel()
	srv := startServer(t, shortFlags...)

	n := srv.logLines()
	pair := srv.login(t)
	srv.waitLogLines(t, n, "a login")

	nextSecond(pair, 3*time.Second)
	n = srv.logLines()
	var trailer metadata.MD
	if _, err := srv.echoWith(t, pair.GetAccessToken(), grpc.Trailer(&trailer)); err != nil {
		t.Fatalf("Echo: %v", err)
	}
	see(trailer.Get(interceptor.DefaultRenewalHeader)...)
	if len(trailer.Get(interceptor.DefaultRenewalHeader)) != 1 {
		t.Fatalf("Echo was not renewed")
	}
	srv.waitLogLines(t, n, "a renewal")

	n = srv.logLines()
	next, err := srv.refresh(t, pair.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	srv.waitLogLines(t, n, "a refresh")

	rejected := []struct {
		what  string
		token string
	}{
		{"a refresh token as an access token", next.GetRefreshToken()},
		{"a tampered access token", tamper(next.GetAccessToken())},
		{"a malformed token", "not-a-jwt"},
	}
	for _, r := range rejected {
		n = srv.logLines()
		_, err := srv.echoWith(t, r.token)
		if err == nil {
			t.Fatalf("Echo with %s succeeded", r.what)
		}
		see(r.token)
		srv.waitLogLines(t, n, "the rejection of "+r.what)
	}
	n = srv.logLines()
	_, err = srv.refresh(t, tamper(next.GetRefreshToken()))
	if err == nil {
		t.Fatalf("Refresh with a tampered refresh token succeeded")
	}
	srv.waitLogLines(t, n, "a rejected refresh")
}

// tamper returns tok with the last character of its signature changed.
func tamper(tok string) string {
	last := tok[len(tok)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	return tok[:len(tok)-1] + string(repl)
}

// runClient runs the example client binary and returns its stdout.
func runClient(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, clientBin, args...)
	cmd.Env = processEnv()
	setProcAttr(cmd)
	cmd.Cancel = func() error { killProc(cmd); return nil }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	track(cmd)
	err := cmd.Wait()
	out, errOut := stdout.String(), stderr.String()
	if strings.Contains(out+errOut, "eyJ") {
		t.Errorf("client output contains %q, the start of a JWT", "eyJ")
	}
	if what := leakedToken(out + errOut); what != "" {
		t.Errorf("client output contains %s", what)
	}
	return out, errOut, err
}

var (
	summaryLine = regexp.MustCompile(`(?m)^renewals swapped in: (\d+)$`)
	callLine    = regexp.MustCompile(`(?m) call \d+: `)
)

// TestExampleClient: the example client logs in, makes its calls, prints
// a line per swap, and reports the renewals and the refreshes its holder
// made on its own.
func TestExampleClient(t *testing.T) {
	t.Parallel()

	t.Run("renewals", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, "--ttl", "3s", "--renew-before", "3s", "--max-lifetime", "1m", "--refresh-ttl", "1m", "--leeway", "0s")
		// Proactive refresh off: with a 3 s TTL, the default 30 s margin
		// would refresh before every call instead of relying on renewals.
		out, errOut, err := runClient(t, "--addr", srv.addr, "--calls", "3", "--interval", "1s", "--refresh-margin", "0s")
		if err != nil {
			t.Fatalf("client: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
		}
		swaps := strings.Count(out, "token swapped in")
		if swaps == 0 {
			t.Errorf("client printed no swap:\n%s", out)
		}
		if got := len(callLine.FindAllString(out, -1)); got != 3 {
			t.Errorf("client printed %d calls, want 3:\n%s", got, out)
		}
		m := summaryLine.FindStringSubmatch(out)
		if m == nil || m[1] != fmt.Sprint(swaps) {
			t.Errorf("client summary does not count %d renewals:\n%s", swaps, out)
		}
		if !strings.Contains(out, "transparent refreshes: 0\n") {
			t.Errorf("client summary does not report 0 transparent refreshes:\n%s", out)
		}
		if errOut != "" {
			t.Errorf("client stderr = %q, want nothing", errOut)
		}
	})

	t.Run("reactive refresh", func(t *testing.T) {
		t.Parallel()
		// The second call comes after the 2 s token lapsed: the holder
		// refreshes and retries on its own.
		srv := startServer(t, "--ttl", "2s", "--renew-before", "1s", "--max-lifetime", "1m", "--refresh-ttl", "1m", "--leeway", "0s")
		out, errOut, err := runClient(t, "--addr", srv.addr, "--calls", "2", "--interval", "2500ms", "--refresh-margin", "0s")
		if err != nil {
			t.Fatalf("client: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
		}
		if !strings.Contains(out, "transparent refreshes: 1\n") {
			t.Errorf("client summary does not report 1 transparent refresh:\n%s", out)
		}
		if !strings.Contains(out, "holder refreshed the session on its own") {
			t.Errorf("client printed no refresh:\n%s", out)
		}
	})

	t.Run("stream", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, shortFlags...)
		out, errOut, err := runClient(t, "--addr", srv.addr, "--stream", "--calls", "2", "--interval", "200ms", "--refresh-margin", "0s")
		if err != nil {
			t.Fatalf("client --stream: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
		}
		if got := strings.Count(out, "watch message"); got != 2 {
			t.Errorf("client printed %d watch messages, want 2:\n%s", got, out)
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, shortFlags...)
		out, errOut, err := runClient(t, "--addr", srv.addr, "--password", "wrong")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
			t.Fatalf("client with a wrong password: exit %v, want a non-zero status\nstdout:\n%s", err, out)
		}
		if lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "login") {
			t.Errorf("client stderr = %q, want one line about the login", errOut)
		}
	})
}
