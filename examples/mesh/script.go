package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// script is the client side of the mesh command: an end user's client
// (the CA's certificate, no certificate of its own) and the operator who
// rotates the keys.
type script struct {
	out              *transcript
	client, operator tlsFiles
	redis            bool
	authAddr         string
	ordersAddr       string
	admin            string // the rotation endpoint's URL
	auth             *child

	failed []string

	tls      *tlsMaterial
	authConn *grpc.ClientConn
	http     *http.Client // the operator's
}

// expect records a step that did not behave as it should.
func (s *script) expect(ok bool, format string, args ...any) {
	if !ok {
		msg := fmt.Sprintf(format, args...)
		s.failed = append(s.failed, msg)
		s.out.say("mesh", "UNEXPECTED: "+msg)
	}
}

func (s *script) run(ctx context.Context) error {
	var err error
	if s.tls, err = s.client.load(); err != nil {
		return err
	}
	op, err := s.operator.load()
	if err != nil {
		return err
	}
	s.http = &http.Client{Transport: &http.Transport{TLSClientConfig: op.client("auth")}, Timeout: 10 * time.Second}
	defer s.http.CloseIdleConnections()
	if s.authConn, err = grpc.NewClient(s.authAddr, grpc.WithTransportCredentials(credentials.NewTLS(s.tls.client("auth")))); err != nil {
		return err
	}
	defer s.authConn.Close()

	s.out.section("1. alice logs in at auth, the one service that signs")
	alice, err := s.login(ctx, "alice")
	if err != nil {
		return err
	}
	defer alice.close()
	if err := s.slide(ctx, alice); err != nil {
		return err
	}
	if err := s.rotate(ctx, alice); err != nil {
		return err
	}
	if err := s.logout(ctx); err != nil {
		return err
	}

	s.out.section("5. Summary")
	forOrders, forInventory := s.auth.count("renewed", peerKey, "orders"), s.auth.count("renewed", peerKey, "inventory")
	ofOrders := s.auth.count("renewed", peerKey, "inventory", subjectKey, serviceSubject("orders"))
	s.out.say("mesh", fmt.Sprintf("auth renewed %d tokens when orders asked and %d when inventory asked, over TokenService/Renew with mTLS; alice's client swapped in %d",
		forOrders, forInventory, alice.swaps.Load()))
	logins := s.auth.count("login", subjectKey, serviceSubject("orders"))
	s.out.say("mesh", fmt.Sprintf("orders logged in as itself %d times: at its first call, then each time its %v session ended", logins, meshServiceLifetime))
	s.expect(logins >= 2, "orders logged in as itself %d times, want at least 2", logins)
	bound := s.auth.count("service session bound", peerKey, "orders")
	s.out.say("mesh", fmt.Sprintf("orders' own session is bound to orders' certificate (cnf x5t#S256, RFC 8705) at each of its %d logins: inventory accepts its tokens only over orders' mTLS connection, does not renew them (%d renewals), and orders refreshes them at auth", bound, ofOrders))
	s.expect(bound == logins, "%d of orders' %d logins as itself were bound to its certificate", bound, logins)
	s.expect(ofOrders == 0, "inventory had auth renew %d of orders' bound tokens", ofOrders)
	s.expect(forOrders > 0 && forInventory > 0, "auth renewed no token for orders or for inventory")
	s.expect(s.auth.count("renewed", peerKey, noCert) == 0, "auth renewed a token on a call from a client")
	return nil
}

// user is an end user's client session: a holder of its tokens, bound to
// orders, which refreshes at auth.
type user struct {
	name   string
	holder *interceptor.TokenHolder
	conn   *grpc.ClientConn
	orders demov1.DemoServiceClient
	swaps  atomic.Int32
}

func (u *user) close() { u.conn.Close() }

// login logs name in at auth and returns a client of orders whose calls
// carry the session's token.
func (s *script) login(ctx context.Context, name string) (*user, error) {
	resp, err := demov1.NewDemoServiceClient(s.authConn).Login(ctx, &demov1.LoginRequest{Username: name, Password: name + "-password"})
	if err != nil {
		return nil, fmt.Errorf("%s: login: %s", name, describe(err))
	}
	pair := resp.GetTokens()
	u := &user{name: name}
	u.holder, err = interceptor.NewTokenHolder(pair.GetAccessToken(),
		interceptor.BindTarget(s.ordersAddr), // the access token goes to orders only
		interceptor.WithSessionEnd(pair.GetSessionEndsAt().AsTime()),
		interceptor.WithRefreshToken(pair.GetRefreshToken()),
		interceptor.WithTokenService(s.authConn), // the refresh token goes to auth only
		interceptor.WithRefreshMargin(0),         // refresh only after a TOKEN_EXPIRED: renewals keep the session alive
		interceptor.OnSwap(func(tok string, exp time.Time) {
			u.swaps.Add(1)
			s.out.say("client", fmt.Sprintf("%s: new access token swapped in, expires in %s, signed by %s", name, until(exp), kidOf(tok)))
		}),
	)
	if err != nil {
		return nil, err
	}
	u.conn, err = grpc.NewClient(s.ordersAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(s.tls.client("orders"))),
		grpc.WithChainUnaryInterceptor(u.holder.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(u.holder.StreamClientInterceptor()),
	)
	if err != nil {
		return nil, err
	}
	u.orders = demov1.NewDemoServiceClient(u.conn)
	s.out.say("client", fmt.Sprintf("%s logged in: access token expires in %s, signed by %s; session ends in %s",
		name, until(u.holder.Expiry()), kidOf(u.holder.Token()), until(u.holder.SessionEnd())))
	return u, nil
}

// echo makes one call through orders, which calls inventory.
func (u *user) echo(ctx context.Context, i int) (*demov1.EchoResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return u.orders.Echo(ctx, &demov1.EchoRequest{Message: fmt.Sprintf("order %d", i)})
}

// slide makes calls for three idle windows: renewals alone keep the
// session alive, whichever service asked auth for them.
func (s *script) slide(ctx context.Context, alice *user) error {
	const calls, every = 16, 500 * time.Millisecond
	s.out.section(fmt.Sprintf("2. alice calls orders, which calls inventory with her token: %d calls over %v, %d idle windows",
		calls, calls*every, calls*every/meshTTL))
	first := alice.holder.Expiry()
	failed := 0
	for i := 1; i <= calls; i++ {
		resp, err := alice.echo(ctx, i)
		if err != nil {
			failed++
			s.out.say("client", fmt.Sprintf("alice: call %d failed: %s", i, describe(err)))
		} else {
			s.out.say("client", fmt.Sprintf("alice: call %d ok: %s", i, resp.GetMessage()))
		}
		if err := sleep(ctx, every); err != nil {
			return err
		}
	}
	s.expect(failed == 0, "%d of alice's calls failed", failed)
	s.expect(alice.swaps.Load() >= 2, "alice's client swapped in %d renewals, want at least 2", alice.swaps.Load())
	s.expect(alice.holder.Expiry().After(first.Add(meshTTL)), "alice's session did not slide: her token expires %v, her first one %v",
		alice.holder.Expiry(), first)
	return nil
}

// rotate rotates auth's key in the four steps of PROTOCOL.md §9 while
// alice keeps calling, and checks that none of her calls failed.
func (s *script) rotate(ctx context.Context, alice *user) error {
	s.out.section("3. The operator rotates auth's key through the JWKS while alice keeps calling")
	var ok, failed atomic.Int32
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			if _, err := alice.echo(ctx, 100+i); err != nil {
				failed.Add(1)
				s.out.say("client", "alice: call failed: "+describe(err))
			} else {
				ok.Add(1)
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()

	st, err := s.step(ctx, "publish")
	if err != nil {
		return err
	}
	oldKid, newKid := st.Active, st.Keys[1]
	s.out.say("operator", fmt.Sprintf("step 1: publish %s as verify-only; the JWKS lists %s, auth still signs with %s", newKid, strings.Join(st.Keys, " and "), oldKid))
	wait := max(meshJWKSMaxAge, meshJWKSRefreshMin) + meshJWKSRefetch
	s.out.say("operator", fmt.Sprintf("step 2: wait %v: the JWKS's max-age %v, plus the verifiers' refetch interval %v", wait, meshJWKSMaxAge, meshJWKSRefetch))
	if err := sleep(ctx, wait); err != nil {
		return err
	}
	if st, err = s.step(ctx, "activate"); err != nil {
		return err
	}
	s.out.say("operator", fmt.Sprintf("step 3: activate %s: auth signs with it, and %s still verifies", st.Active, oldKid))
	wait = time.Duration(st.NextAfter*float64(time.Second)) + 100*time.Millisecond
	s.out.say("operator", fmt.Sprintf("step 4: wait %v, until no token signed by %s can be accepted (the longer of the access and refresh token lifetimes, plus the leeway), then drop it",
		wait.Round(100*time.Millisecond), oldKid))
	if err := sleep(ctx, wait); err != nil {
		return err
	}
	if st, err = s.step(ctx, "drop"); err != nil {
		return err
	}
	s.out.say("operator", fmt.Sprintf("dropped %s: the JWKS lists %s only", oldKid, strings.Join(st.Keys, ", ")))
	if err := sleep(ctx, wait/2); err != nil { // the verifiers fetch the JWKS again and forget the old key
		return err
	}
	close(stop)
	<-done
	s.out.say("client", fmt.Sprintf("alice: %d calls during the rotation, %d failed; her token is signed by %s", ok.Load()+failed.Load(), failed.Load(), kidOf(alice.holder.Token())))
	s.expect(failed.Load() == 0, "%d of alice's calls failed during the rotation", failed.Load())
	s.expect(ok.Load() > 0, "alice made no call during the rotation")
	s.expect(kidOf(alice.holder.Token()) == newKid, "alice's token is signed by %s, not by the new key %s", kidOf(alice.holder.Token()), newKid)
	return nil
}

// step takes a step of the key rotation at auth, as the operator.
func (s *script) step(ctx context.Context, step string) (keyState, error) {
	var st keyState
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.admin+step, nil)
	if err != nil {
		return st, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return st, fmt.Errorf("rotation step %s: %w", step, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("rotation step %s: %s %s", step, resp.Status, st.Error)
	}
	return st, nil
}

// logout has bob open a stream through orders and inventory, then log out
// at auth, and shows when orders and inventory refuse his session.
func (s *script) logout(ctx context.Context) error {
	s.out.section("4. bob opens a stream through orders and inventory, then logs out at auth")
	bob, err := s.login(ctx, "bob")
	if err != nil {
		return err
	}
	defer bob.close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := bob.orders.Watch(sctx, &demov1.WatchRequest{Count: maxWatchCount, Interval: durationpb.New(500 * time.Millisecond)})
	if err != nil {
		return fmt.Errorf("bob: Watch: %s", describe(err))
	}
	first, ended := make(chan string, 1), make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				ended <- err
				return
			}
			if msg.GetSequence() == 1 {
				first <- msg.GetSubject()
			}
		}
	}()
	select {
	case who := <-first:
		s.out.say("client", "bob: stream open, first message: "+who)
	case err := <-ended:
		return fmt.Errorf("bob: Watch: %s", describe(err))
	}
	if resp, err := bob.echo(ctx, 1); err != nil {
		s.expect(false, "bob's call before the logout failed: %s", describe(err))
	} else {
		s.out.say("client", "bob: call ok: "+resp.GetMessage())
	}

	// A logout is TokenService/Revoke at auth, with the access token.
	rctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+bob.holder.Token())
	if _, err := slidejwtv1.NewTokenServiceClient(s.authConn).Revoke(rctx, &slidejwtv1.RevokeRequest{}); err != nil {
		return fmt.Errorf("bob: logout: %s", describe(err))
	}
	out := time.Now()
	s.out.say("client", fmt.Sprintf("bob logged out at auth; his access token expires in %s", until(bob.holder.Expiry())))
	if !s.redis {
		s.out.say("mesh", fmt.Sprintf("without --redis, orders and inventory have no revocation state: they accept bob's token until it expires, plus the %v leeway; auth refuses to renew or refresh it", meshLeeway))
	}

	// Without Redis, orders accepts the token until it expires, plus
	// the leeway; with it, at once (give the invalidation a moment).
	bound := 2 * time.Second
	if !s.redis {
		bound = time.Until(bob.holder.Expiry()) + meshLeeway + 2*time.Second
	}
	var refused error
	midway := false
	for i := 2; refused == nil && time.Since(out) < bound; i++ {
		resp, err := bob.echo(ctx, i)
		r, _ := interceptor.ReasonOf(err)
		switch {
		case r == interceptor.ReasonTokenExpired && !midway:
			// The token expired after orders let the call through and
			// before inventory saw it: inventory's TOKEN_EXPIRED comes
			// after orders' handler ran, so the holder does not refresh
			// on it. The next call is refused by orders, and refreshed.
			midway = true
			s.out.say("client", fmt.Sprintf("bob: call refused %s after the logout: %s (his token expired between orders and inventory)",
				time.Since(out).Round(100*time.Millisecond), describe(err)))
		case err != nil:
			refused = err
			s.out.say("client", fmt.Sprintf("bob: call refused %s after the logout: %s", time.Since(out).Round(100*time.Millisecond), describe(err)))
		case s.redis:
			s.out.say("client", "bob: call ok: "+resp.GetMessage()+" (before the revocation reached the cache)")
		default:
			s.out.say("client", fmt.Sprintf("bob: call ok %s after the logout", time.Since(out).Round(100*time.Millisecond)))
		}
		if refused == nil {
			if err := sleep(ctx, 500*time.Millisecond); err != nil {
				return err
			}
		}
	}
	r, _ := interceptor.ReasonOf(refused)
	s.expect(refused != nil && r == interceptor.ReasonSessionRevoked, "bob's calls were not refused with SESSION_REVOKED within %v of the logout (last: %v)", bound, describe(refused))

	select {
	case err := <-ended:
		r, _ := interceptor.ReasonOf(err)
		s.out.say("client", fmt.Sprintf("bob: stream ended %s after the logout: %s", time.Since(out).Round(100*time.Millisecond), describe(err)))
		s.expect(s.redis && r == interceptor.ReasonSessionRevoked, "bob's stream ended with %s", describe(err))
	case <-time.After(3 * time.Second):
		if s.redis {
			s.expect(false, "bob's stream is still open %v after the logout", time.Since(out).Round(100*time.Millisecond))
		} else {
			s.out.say("client", "bob: stream still open: without --redis an open stream of a revoked session lives until the session's end; closing it")
		}
	}
	return nil
}

// describe is the gRPC code of err and, for a refusal of slidejwt, its
// reason. Neither ever holds a token.
func describe(err error) string {
	if err == nil {
		return "none"
	}
	st := status.Convert(err)
	if r, ok := interceptor.ReasonOf(err); ok {
		return st.Code().String() + " " + interceptor.WireReason(r)
	}
	return st.Code().String() + ": " + st.Message()
}

// kidOf returns the kid in a token's header: which key signed it. The
// header is public; the token is not printed.
func kidOf(tok string) string {
	head, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return "?"
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(b, &h) != nil || h.Kid == "" {
		return "?"
	}
	return h.Kid
}

// sleep sleeps for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
