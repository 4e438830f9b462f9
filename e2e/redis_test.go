package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// replicas are two example servers, A and B, started with the same key
// file and --redis pointing at one redis-server of their own.
type replicas struct {
	redis *redistest.Server
	a, b  *server
}

// startReplicas starts a redis-server with redisArgs, then A and B with
// serverArgs. The test is skipped without redis-server on PATH (failed
// when CI is set).
func startReplicas(t *testing.T, redisArgs []string, serverArgs ...string) replicas {
	t.Helper()
	rs := redistest.Start(t, redisArgs...)
	args := append([]string{"--secret-file", writeKeyFile(t), "--redis", rs.Addr()}, serverArgs...)
	return replicas{redis: rs, a: startServer(t, args...), b: startServer(t, args...)}
}

// withToken returns ctx with token as the call's bearer.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// revoke calls TokenService.Revoke (a logout) with token.
func (s *server) revoke(t *testing.T, token string) error {
	t.Helper()
	_, err := s.tokens.Revoke(withToken(rpcContext(t), token), &slidejwtv1.RevokeRequest{})
	return err
}

// wantRevoked fails the test unless err is Unauthenticated with the
// ErrorInfo reason SESSION_REVOKED.
func wantRevoked(t *testing.T, what string, err error) {
	t.Helper()
	if code := status.Code(err); code != codes.Unauthenticated {
		t.Fatalf("%s: %v; want Unauthenticated with reason SESSION_REVOKED", what, err)
	}
	wantReason(t, what, err, interceptor.ReasonSessionRevoked)
}

// staleBound is how long a replica may go on accepting a session that
// was revoked, on another replica or on itself: until Redis's
// invalidation of the replica's cached liveness arrives (normally within
// about a millisecond of the revocation), at most the store's cache
// TTL (redisstore.DefaultCacheTTL) should an invalidation be lost,
// plus slack for a loaded machine.
const staleBound = 5*time.Second + 2*time.Second // redisstore.DefaultCacheTTL (e2e is in the core module, which does not import it) plus slack

// echoUntilRevoked calls Echo on s with token until a call is refused. It
// fails the test unless the refusal is SESSION_REVOKED, within staleBound
// of since (when the revocation returned), and the call after it is
// refused too. A call that starts before the invalidation arrived is
// accepted; the test logs how many were.
func (s *server) echoUntilRevoked(t *testing.T, what, token string, since time.Time) {
	t.Helper()
	accepted := 0
	for {
		_, err := s.echoWith(t, token)
		if err != nil {
			wantRevoked(t, what, err)
			break
		}
		accepted++
		if time.Since(since) > staleBound {
			t.Fatalf("%s: still accepted %v after the revocation (%d calls)", what, time.Since(since), accepted)
		}
	}
	if accepted > 0 {
		t.Logf("%s: %d calls accepted in the %v after the revocation returned, before the invalidation arrived",
			what, accepted, time.Since(since).Round(time.Microsecond))
	}
	_, err := s.echoWith(t, token)
	wantRevoked(t, what+", the call after the first refusal", err)
}

// TestRedis_RevokeOnOtherReplica: a session logged in on A is served by B
// too (their store is shared), and once B revokes it, A refuses it with
// SESSION_REVOKED, as does B, and a refresh on either is refused.
// Each session is first used on A and B, so that its liveness is in both
// replicas' client-side caches: the revocation must invalidate them. The
// invalidation reaches A asynchronously, so a call on A that races it
// (started within about a millisecond of Revoke returning) may still be
// accepted; the test allows that for at most staleBound and logs it. Another session of
// the same user is unaffected.
func TestRedis_RevokeOnOtherReplica(t *testing.T) {
	t.Parallel()
	r := startReplicas(t, nil)
	bystander := r.a.login(t)

	for i := range 3 {
		pair := r.a.login(t)
		for _, s := range []*server{r.a, r.b, r.a} {
			if _, err := s.echoWith(t, pair.GetAccessToken()); err != nil {
				t.Fatalf("session %d: Echo before the revocation: %v", i, err)
			}
		}
		if err := r.b.revoke(t, pair.GetAccessToken()); err != nil {
			t.Fatalf("session %d: Revoke on B: %v", i, err)
		}
		revoked := time.Now()
		r.a.echoUntilRevoked(t, fmt.Sprintf("session %d: Echo on A after Revoke on B", i), pair.GetAccessToken(), revoked)
		r.b.echoUntilRevoked(t, fmt.Sprintf("session %d: Echo on B after Revoke on B", i), pair.GetAccessToken(), revoked)
		// A refresh is decided by the store's script, not by the cache.
		_, err := r.a.refresh(t, pair.GetRefreshToken())
		wantRevoked(t, fmt.Sprintf("session %d: Refresh on A after Revoke on B", i), err)
		_, err = r.b.refresh(t, pair.GetRefreshToken())
		wantRevoked(t, fmt.Sprintf("session %d: Refresh on B after Revoke on B", i), err)
	}

	for name, s := range map[string]*server{"A": r.a, "B": r.b} {
		if _, err := s.echoWith(t, bystander.GetAccessToken()); err != nil {
			t.Errorf("Echo on %s in another session: %v", name, err)
		}
	}
}

// TestRedis_RefreshReuseAcrossReplicas: a refresh token rotated on A is
// replayed by B within the grace period (the same successor: the sealed
// successor is in the shared store), and reused on B after it, which is
// theft: the session is revoked on both replicas, for its access tokens
// (within staleBound, see TestRedis_RevokeOnOtherReplica) and for its
// current refresh token.
func TestRedis_RefreshReuseAcrossReplicas(t *testing.T) {
	t.Parallel()
	const grace = 2 * time.Second
	r := startReplicas(t, nil, "--refresh-grace", grace.String())
	pair0 := r.a.login(t)

	before := time.Now()
	pair1, err := r.a.refresh(t, pair0.GetRefreshToken())
	if err != nil {
		t.Fatalf("Refresh on A: %v", err)
	}
	rotated := time.Now() // not before A's rotation

	again, err := r.b.refresh(t, pair0.GetRefreshToken())
	switch {
	case err != nil && time.Since(before) >= grace:
		// A reuse, not a replay: the machine is too slow for this test.
		t.Skipf("the replay on B came %v after the rotation on A, after the %v grace period", time.Since(before), grace)
	case err != nil:
		t.Fatalf("Refresh on B with the retired token within the grace period: %v", err)
	case again.GetAccessToken() != pair1.GetAccessToken() || again.GetRefreshToken() != pair1.GetRefreshToken():
		t.Fatalf("Refresh on B within the grace period returned another pair, want A's successor")
	}

	// The successor works on both replicas (and is now in both caches).
	for _, s := range []*server{r.a, r.b} {
		if _, err := s.echoWith(t, pair1.GetAccessToken()); err != nil {
			t.Fatalf("Echo with the successor: %v", err)
		}
	}

	sleepUntil(rotated.Add(grace + 300*time.Millisecond))
	_, err = r.b.refresh(t, pair0.GetRefreshToken())
	wantRevoked(t, "Refresh on B with the token retired on A, after the grace period", err)
	revoked := time.Now()

	r.a.echoUntilRevoked(t, "Echo on A with the newest access token", pair1.GetAccessToken(), revoked)
	r.b.echoUntilRevoked(t, "Echo on B with the newest access token", pair1.GetAccessToken(), revoked)
	_, err = r.a.refresh(t, pair1.GetRefreshToken())
	wantRevoked(t, "Refresh on A with the newest refresh token", err)
	_, err = r.b.refresh(t, pair1.GetRefreshToken())
	wantRevoked(t, "Refresh on B with the newest refresh token", err)
	_, err = r.a.echoWith(t, pair0.GetAccessToken())
	wantRevoked(t, "Echo on A with the login access token", err)
}

// TestRedis_StreamsEndOnRevoke: a bidi Chat and a server-streaming Watch
// open on A, both silent after their first message, end with
// SESSION_REVOKED when B revokes their session, within the stream check
// interval plus generous slack. A stream of another session on A stays
// open and keeps working.
func TestRedis_StreamsEndOnRevoke(t *testing.T) {
	t.Parallel()
	r := startReplicas(t, nil)
	victim, bystander := r.a.login(t), r.a.login(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	chat, err := r.a.demo.Chat(withToken(ctx, victim.GetAccessToken()))
	if err != nil {
		t.Fatalf("Chat on A: %v", err)
	}
	if err := chat.Send(&demov1.ChatMessage{Text: "hi"}); err != nil {
		t.Fatalf("Chat send: %v", err)
	}
	if m, err := chat.Recv(); err != nil || m.GetText() != "hi" {
		t.Fatalf("Chat recv = %q, %v; want the echo", m.GetText(), err)
	}
	// One message now, the next in a minute: silent for the rest of the test.
	watch, err := r.a.demo.Watch(withToken(ctx, victim.GetAccessToken()),
		&demov1.WatchRequest{Count: 2, Interval: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("Watch on A: %v", err)
	}
	if m, err := watch.Recv(); err != nil || m.GetSequence() != 1 {
		t.Fatalf("Watch recv = %d, %v; want message 1", m.GetSequence(), err)
	}
	other, err := r.a.demo.Chat(withToken(ctx, bystander.GetAccessToken()))
	if err != nil {
		t.Fatalf("Chat on A in another session: %v", err)
	}
	chatOnce := func(what string) {
		t.Helper()
		if err := other.Send(&demov1.ChatMessage{Text: what}); err != nil {
			t.Fatalf("Chat in another session, %s: send: %v", what, err)
		}
		if m, err := other.Recv(); err != nil || m.GetText() != what {
			t.Fatalf("Chat in another session, %s: recv = %q, %v; want the echo", what, m.GetText(), err)
		}
	}
	chatOnce("before")

	type end struct {
		what string
		err  error
		at   time.Time
	}
	ends := make(chan end, 2)
	go func() {
		for {
			if _, err := chat.Recv(); err != nil {
				ends <- end{"Chat", err, time.Now()}
				return
			}
		}
	}()
	go func() {
		for {
			if _, err := watch.Recv(); err != nil {
				ends <- end{"Watch", err, time.Now()}
				return
			}
		}
	}()

	if err := r.b.revoke(t, victim.GetAccessToken()); err != nil {
		t.Fatalf("Revoke on B: %v", err)
	}
	revoked := time.Now()
	// The interval at which A checks silent streams, plus slack for a
	// loaded machine. The invalidation from Redis normally takes well
	// under a millisecond; the cache TTL bounds a lost one.
	bound := interceptor.DefaultStreamCheckInterval + 5*time.Second
	for range 2 {
		select {
		case e := <-ends:
			wantRevoked(t, e.what+" on A after Revoke on B", e.err)
			if d := e.at.Sub(revoked); d > bound {
				t.Errorf("%s ended %v after the revocation, want within %v", e.what, d, bound)
			} else {
				t.Logf("%s ended %v after the revocation", e.what, d.Round(time.Millisecond))
			}
		case <-time.After(bound + 10*time.Second):
			t.Fatalf("a stream of the revoked session is still open %v after the revocation", time.Since(revoked))
		}
	}

	chatOnce("after")
	if err := other.CloseSend(); err != nil {
		t.Fatalf("Chat in another session: close: %v", err)
	}
	if _, err := other.Recv(); err != io.EOF {
		t.Errorf("Chat in another session after CloseSend: %v, want io.EOF", err)
	}
}

// callOutcome is one call of TestRedis_KillUnderLoad.
type callOutcome struct {
	start, end time.Time
	code       codes.Code
	revoked    bool // Unauthenticated with reason SESSION_REVOKED
	err        error
}

// loadKey names a session and a replica.
type loadKey struct {
	session string // "live" or "revoked"
	replica string // "A" or "B"
}

// loadLog collects the outcomes of the load's calls.
type loadLog struct {
	mu  sync.Mutex
	out map[loadKey][]callOutcome
}

func (l *loadLog) add(k loadKey, o callOutcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.out[k] = append(l.out[k], o)
}

// find returns the first outcome of k that started at or after since and
// satisfies ok.
func (l *loadLog) find(k loadKey, since time.Time, ok func(callOutcome) bool) (callOutcome, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.out[k] {
		if !o.start.Before(since) && ok(o) {
			return o, true
		}
	}
	return callOutcome{}, false
}

// waitFor polls l until, for each replica, an outcome of session started
// at or after since[replica] satisfies ok, and returns those outcomes. It
// fails the test after limit.
func (l *loadLog) waitFor(t *testing.T, what, session string, since map[string]time.Time, limit time.Duration, ok func(callOutcome) bool) map[string]callOutcome {
	t.Helper()
	deadline := time.Now().Add(limit)
	found := map[string]callOutcome{}
	for len(found) < len(since) {
		for replica, from := range since {
			if o, hit := l.find(loadKey{session, replica}, from, ok); hit {
				found[replica] = o
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen on every replica within %v (seen on %d of %d)", what, limit, len(found), len(since))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return found
}

func both(at time.Time) map[string]time.Time { return map[string]time.Time{"A": at, "B": at} }

// TestRedis_KillUnderLoad: goroutines call A and B with a live session and
// with a revoked one while redis-server is killed (SIGKILL) and started
// again on the same address and data (append-only file, fsync on every
// write, so the kill loses nothing). During the outage calls fail with
// UNAVAILABLE on both replicas; once Redis is back the live session's
// calls succeed again without restarting the servers, and new sessions
// can be started and revoked. Not one call with the revoked session
// succeeds, before, during or after the outage.
func TestRedis_KillUnderLoad(t *testing.T) {
	t.Parallel()
	r := startReplicas(t, []string{"--appendonly", "yes", "--appendfsync", "always"})
	live, revoked := r.a.login(t), r.b.login(t)
	if err := r.a.revoke(t, revoked.GetAccessToken()); err != nil {
		t.Fatalf("Revoke on A: %v", err)
	}
	tokens := map[string]string{"live": live.GetAccessToken(), "revoked": revoked.GetAccessToken()}
	servers := map[string]*server{"A": r.a, "B": r.b}

	log := &loadLog{out: map[loadKey][]callOutcome{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer halt()
	for session, token := range tokens {
		for replica, s := range servers {
			for range 2 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						case <-time.After(10 * time.Millisecond):
						}
						// Far beyond what the server takes to give up on
						// Redis: a deadline here would hide a hang.
						ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
						start := time.Now()
						_, err := s.demo.Echo(withToken(ctx, token), &demov1.EchoRequest{Message: "load"})
						cancel()
						reason, _ := interceptor.ReasonOf(err)
						log.add(loadKey{session, replica}, callOutcome{
							start: start, end: time.Now(), code: status.Code(err), err: err,
							revoked: status.Code(err) == codes.Unauthenticated && reason == interceptor.ReasonSessionRevoked,
						})
					}
				})
			}
		}
	}

	isOK := func(o callOutcome) bool { return o.code == codes.OK }
	isUnavailable := func(o callOutcome) bool { return o.code == codes.Unavailable }
	isRevoked := func(o callOutcome) bool { return o.revoked }

	// Before: the live session is served, the revoked one refused.
	loadStart := time.Now()
	log.waitFor(t, "live session served before the outage", "live", both(loadStart), 15*time.Second, isOK)
	log.waitFor(t, "revoked session refused before the outage", "revoked", both(loadStart), 15*time.Second, isRevoked)
	time.Sleep(500 * time.Millisecond)

	// Outage: UNAVAILABLE on both replicas, and again for a call that
	// started after the first one came back.
	killed := time.Now()
	r.redis.Stop()
	first := log.waitFor(t, "live session UNAVAILABLE after the kill", "live", both(killed), 30*time.Second, isUnavailable)
	since := map[string]time.Time{}
	for replica, o := range first {
		since[replica] = o.end
		t.Logf("replica %s: first UNAVAILABLE %v after the kill", replica, o.end.Sub(killed).Round(time.Millisecond))
	}
	log.waitFor(t, "live session still UNAVAILABLE", "live", since, 30*time.Second, isUnavailable)

	// Calls without a deadline fail too, rather than wait for Redis: the
	// server bounds its own wait. Login and Refresh need the store as well.
	probeCtx, cancelProbes := context.WithCancel(context.Background()) // no deadline
	defer cancelProbes()
	probes := map[string]func() error{
		"Echo on A without a deadline": func() error {
			_, err := r.a.demo.Echo(withToken(probeCtx, live.GetAccessToken()), &demov1.EchoRequest{Message: "probe"})
			return err
		},
		"Login on B": func() error {
			resp, err := r.b.demo.Login(probeCtx, &demov1.LoginRequest{Username: "alice", Password: "alice-password"})
			see(resp.GetTokens().GetAccessToken(), resp.GetTokens().GetRefreshToken())
			return err
		},
		"Refresh on A": func() error {
			resp, err := r.a.tokens.Refresh(probeCtx, &slidejwtv1.RefreshRequest{RefreshToken: live.GetRefreshToken()})
			see(resp.GetTokens().GetAccessToken(), resp.GetTokens().GetRefreshToken())
			return err
		},
	}
	type probeResult struct {
		what string
		err  error
	}
	results := make(chan probeResult, len(probes))
	for what, call := range probes {
		go func() { results <- probeResult{what, call()} }()
	}
	for range probes {
		select {
		case res := <-results:
			if code := status.Code(res.err); code != codes.Unavailable {
				t.Errorf("%s in the outage: %v; want UNAVAILABLE", res.what, res.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("a call without a deadline is still waiting 20s into the outage")
		}
	}

	// Back: the same address, the same data.
	restarting := time.Now()
	r.redis.Start()
	restarted := time.Now()
	back := log.waitFor(t, "live session served again after the restart", "live", both(restarted), 30*time.Second, isOK)
	for replica, o := range back {
		t.Logf("replica %s: first success %v after Redis answered again", replica, o.end.Sub(restarted).Round(time.Millisecond))
	}
	log.waitFor(t, "revoked session refused after the restart", "revoked", both(restarted), 30*time.Second, isRevoked)
	time.Sleep(300 * time.Millisecond)
	halt()

	// Every call's outcome, before, during and after the outage.
	log.mu.Lock()
	for k, outs := range log.out {
		counts := map[string]int{}
		var unexpected []string
		for _, o := range outs {
			switch {
			case o.code == codes.OK && k.session == "revoked":
				counts["OK"]++
				t.Errorf("%s session on %s: a call started %v after the load began succeeded", k.session, k.replica, o.start.Sub(loadStart))
			case o.code == codes.OK:
				counts["OK"]++
				if !o.start.Before(since[k.replica]) && !o.end.After(restarting) {
					t.Errorf("live session on %s: a call in the outage (started %v after the kill) succeeded", k.replica, o.start.Sub(killed))
				}
			case o.code == codes.Unavailable:
				counts["UNAVAILABLE"]++
			case o.revoked:
				counts["SESSION_REVOKED"]++
				if k.session == "live" {
					unexpected = append(unexpected, o.err.Error())
				}
			default:
				counts[o.code.String()]++
				unexpected = append(unexpected, o.err.Error())
			}
		}
		t.Logf("%s session on %s: %d calls: %v", k.session, k.replica, len(outs), counts)
		if len(unexpected) > 0 {
			t.Errorf("%s session on %s: %d calls failed otherwise than UNAVAILABLE or SESSION_REVOKED, the first: %s",
				k.session, k.replica, len(unexpected), unexpected[0])
		}
	}
	log.mu.Unlock()

	// After: the data survived the kill, and writes work again (the
	// scripts are loaded again after the restart).
	for name, s := range servers {
		_, err := s.echoWith(t, revoked.GetAccessToken())
		wantRevoked(t, "Echo on "+name+" with the revoked session after the restart", err)
		if _, err := s.echoWith(t, live.GetAccessToken()); err != nil {
			t.Errorf("Echo on %s with the live session after the restart: %v", name, err)
		}
	}
	fresh := r.b.login(t)
	if _, err := r.a.echoWith(t, fresh.GetAccessToken()); err != nil {
		t.Fatalf("Echo on A in a session started on B after the restart: %v", err)
	}
	if err := r.a.revoke(t, fresh.GetAccessToken()); err != nil {
		t.Fatalf("Revoke on A after the restart: %v", err)
	}
	_, err := r.b.echoWith(t, fresh.GetAccessToken())
	wantRevoked(t, "Echo on B in a session revoked on A after the restart", err)
}

// TestRedis_StartupErrors: with nothing listening at --redis, the server
// stops at start-up with status 1 and one line naming --redis; a --redis
// it cannot parse stops it with status 2 (a bad flag). Neither line shows
// the password of a URL. No redis-server is needed.
func TestRedis_StartupErrors(t *testing.T) {
	t.Parallel()
	closed := redistest.FreeAddr(t) // nothing listens there
	const password = "pw-e2e-4f1c9b"
	tests := []struct {
		name  string
		value string
		code  int
	}{
		{"unreachable host:port", closed, 1},
		{"unreachable URL with a password", "redis://alice:" + password + "@" + closed + "/0", 1},
		{"URL with a bad port", "redis://alice:" + password + "@127.0.0.1:port/0", 2},
		{"user info without a scheme", "alice:" + password + "@" + closed, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, line := startFailing(t, "--redis", tt.value)
			if code != tt.code {
				t.Errorf("exit status %d, want %d; stderr %q", code, tt.code, line)
			}
			if !namesFlag(line, "redis") {
				t.Errorf("stderr %q does not name --redis", line)
			}
			if strings.Contains(line, password) {
				t.Errorf("stderr %q shows the password", line)
			}
		})
	}
}

// TestRedis_Password: against a Redis that requires a password, a
// redis:// URL with it works and the password appears in no output of the
// server; without it, or with a wrong one, the server stops at start-up
// with status 1, one line naming --redis, and no password.
func TestRedis_Password(t *testing.T) {
	t.Parallel()
	const password, wrong = "pw-e2e-a7d203", "pw-e2e-wrong-55e1"
	// redistest's readiness check is an unauthenticated PING: set the
	// password once the server runs.
	rs := redistest.Start(t)
	if reply, err := redisCommand(rs.Addr(), "CONFIG", "SET", "requirepass", password); err != nil || reply != "+OK" {
		t.Fatalf("CONFIG SET requirepass: %q, %v", reply, err)
	}

	srv := startServer(t, "--redis", "redis://:"+password+"@"+rs.Addr()+"/0")
	pair := srv.login(t)
	if _, err := srv.echoWith(t, pair.GetAccessToken()); err != nil {
		t.Fatalf("Echo: %v", err)
	}
	if out := srv.stdout.String() + srv.stderr.String(); strings.Contains(out, password) {
		t.Errorf("server output shows the password:\n%s", out)
	}

	for _, value := range []string{rs.Addr(), "redis://:" + wrong + "@" + rs.Addr()} {
		code, line := startFailing(t, "--redis", value)
		if code != 1 || !namesFlag(line, "redis") {
			t.Errorf("--redis without the right password: exit status %d, stderr %q; want 1 and a line naming --redis", code, line)
		}
		if strings.Contains(line, password) || strings.Contains(line, wrong) {
			t.Errorf("stderr %q shows a password", line)
		}
	}
}

// redisCommand sends one command to the Redis at addr, unauthenticated,
// and returns the first line of its reply.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
