package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/internal/redistest"
)

// echoReply is what orders answers alice's Echo: it called inventory as
// itself, then as alice.
const echoReply = "orders saw alice; inventory saw service:orders, then alice"

// askedAuth matches a service's log line for a renewal it got from auth.
const askedAuth = `msg="asked auth for a renewal" `

// TestMesh_Slides: a client calls orders, which calls inventory with the
// client's token, for three idle windows without a failure and without a
// refresh: renewals alone keep the session alive, whichever hop asks auth
// for them. With only inventory renewing, every renewal reaches the
// client through orders' relay.
func TestMesh_Slides(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		orders, inventory []string
		renew, quiet      []string // the services that ask auth for alice's renewals, and those that do not
	}{
		{"both renew", nil, nil, []string{"orders", "inventory"}, nil},
		{"only orders renews", nil, []string{"--no-renew"}, []string{"orders"}, []string{"inventory"}},
		{"only inventory renews", []string{"--no-renew"}, nil, []string{"inventory"}, []string{"orders"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := startMesh(t, meshOpts{orders: tt.orders, inventory: tt.inventory})
			pair := m.login(t, "alice")
			h, orders := m.holder(t, pair)
			first, loggedIn := pair.GetAccessTokenExpiresAt().AsTime(), time.Now()
			until := loggedIn.Add(3 * meshTTL)
			calls := 0
			for ; time.Now().Before(until); calls++ {
				var trailer metadata.MD
				resp, err := orders.Echo(rpcContext(t), &demov1.EchoRequest{Message: fmt.Sprint(calls)}, grpc.Trailer(&trailer))
				see(trailer.Get(interceptor.DefaultRenewalHeader)...)
				if err != nil {
					t.Fatalf("call %d, %v after the login: %v", calls, time.Since(loggedIn).Round(time.Millisecond), err)
				}
				if resp.GetMessage() != echoReply {
					t.Fatalf("call %d: %q, want %q", calls, resp.GetMessage(), echoReply)
				}
				time.Sleep(250 * time.Millisecond)
			}
			if got := h.attempts.Load(); got != 0 {
				t.Errorf("the holder tried %d refreshes; want 0: renewals alone keep the session alive", got)
			}
			if got := h.swaps.Load(); got < 3 {
				t.Errorf("%d renewals swapped in over %d calls in 3 idle windows, want at least 3", got, calls)
			}
			if !h.Expiry().After(first.Add(2 * meshTTL)) {
				t.Errorf("held token expires %v, not 2 idle windows after the login token's %v: the session did not slide", h.Expiry(), first)
			}
			procs := map[string]*meshProc{"orders": m.orders, "inventory": m.inventory}
			for _, name := range tt.renew {
				if procs[name].count(askedAuth, "enduser.id=alice ") == 0 {
					t.Errorf("%s never asked auth for a renewal of alice's token", name)
				}
			}
			for _, name := range tt.quiet {
				if n := procs[name].count(askedAuth, "enduser.id=alice "); n != 0 {
					t.Errorf("%s, started with --no-renew, asked auth for %d renewals", name, n)
				}
			}
			if n := m.auth.count("msg=renewed ", "peer=orders ") + m.auth.count("msg=renewed ", "peer=inventory "); n == 0 {
				t.Errorf("auth logged no renewal asked by orders or inventory")
			}
		})
	}
}

// TestMesh_OnlyAuthSigns: a token that auth did not sign is refused by
// orders and by inventory with TOKEN_INVALID, whatever it claims: one
// signed with a fresh ES256 key under auth's kid or a kid of its own,
// one signed with HS256 keyed with auth's public key (the algorithm
// confusion attack), one with alg none, one that another auth service
// (same issuer and audience, another key) minted. The JWKS holds no
// private key. And the mTLS identities: inventory refuses a caller
// without a certificate or with one that is not orders', auth logs a
// service in only under the name its certificate carries, and only the
// operator may rotate keys.
func TestMesh_OnlyAuthSigns(t *testing.T) {
	t.Parallel()
	m := startMesh(t, meshOpts{})
	other := startMeshProc(t, "auth", slices.Concat(m.ca.args("auth"), meshDefaults())...)
	real := m.login(t, "alice").GetAccessToken()

	keys := m.jwks(t, "")
	if len(keys) != 1 {
		t.Fatalf("JWKS has %d keys, want 1", len(keys))
	}
	jwk := keys[0]
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
		if _, ok := jwk[private]; ok {
			t.Errorf("the JWKS key has the private member %q", private)
		}
	}
	kid, _ := jwk["kid"].(string)
	header, claims := splitToken(t, real)
	if header["kid"] != kid || header["alg"] != "ES256" {
		t.Fatalf("auth's token has kid %v, alg %v; want %s, ES256 (the JWKS's)", header["kid"], header["alg"], kid)
	}
	pubPEM, jwkJSON := publicKeyOf(t, jwk)

	resp, err := demov1.NewDemoServiceClient(m.ca.dial(t, other.addr(), "auth", "")).Login(rpcContext(t),
		&demov1.LoginRequest{Username: "alice", Password: "alice-password"})
	if err != nil {
		t.Fatalf("Login at the other auth service: %v", err)
	}
	see(resp.GetTokens().GetAccessToken(), resp.GetTokens().GetRefreshToken())

	forged := []struct{ name, token string }{
		{"ES256 with another key under auth's kid", signWith(t, jwt.SigningMethodES256, newECKey(t), kid, claims)},
		{"ES256 with another key under a kid of its own", signWith(t, jwt.SigningMethodES256, newECKey(t), "es256-forged", claims)},
		{"HS256 keyed with auth's public key (PEM)", signWith(t, jwt.SigningMethodHS256, pubPEM, kid, claims)},
		{"HS256 keyed with auth's public key (JWK)", signWith(t, jwt.SigningMethodHS256, jwkJSON, kid, claims)},
		{"alg none", unsigned(t, kid, claims)},
		{"a session of another auth service", resp.GetTokens().GetAccessToken()},
	}
	orders, inventory := m.ordersDirect(t), m.inventoryAs(t, "orders")
	for name, c := range map[string]demov1.DemoServiceClient{"orders": orders, "inventory": inventory} {
		if _, err := c.Echo(withToken(rpcContext(t), real), &demov1.EchoRequest{}); err != nil {
			t.Fatalf("%s refused auth's own token: %v", name, err)
		}
		for _, f := range forged {
			see(f.token)
			_, err := c.Echo(withToken(rpcContext(t), f.token), &demov1.EchoRequest{})
			wantReason(t, fmt.Sprintf("%s, token %s", name, f.name), err, interceptor.ReasonTokenInvalid)
		}
	}

	// mTLS carries the service identities.
	_, err = m.inventoryAs(t, "").Echo(withToken(rpcContext(t), real), &demov1.EchoRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("inventory, called without a client certificate: %v, want Unavailable (no TLS connection)", err)
	}
	_, err = m.inventoryAs(t, "operator").Echo(withToken(rpcContext(t), real), &demov1.EchoRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("inventory, called with the operator's certificate: %v, want PermissionDenied", err)
	}
	asOrders := demov1.NewDemoServiceClient(m.ca.dial(t, m.auth.addr(), "auth", "orders"))
	_, err = asOrders.Login(rpcContext(t), &demov1.LoginRequest{Username: "inventory"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("service login as inventory with orders' certificate: %v, want PermissionDenied", err)
	}
	_, err = demov1.NewDemoServiceClient(m.authConn).Login(rpcContext(t), &demov1.LoginRequest{Username: "orders"})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("service login as orders without a certificate: %v, want Unauthenticated", err)
	}
	if code, _ := m.rotate(t, "orders", "publish"); code != http.StatusForbidden {
		t.Errorf("key rotation with orders' certificate: HTTP %d, want 403", code)
	}
}

// splitToken returns a token's header and payload, decoded.
func splitToken(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.UseNumber() // dates stay integers
		if err := dec.Decode(dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims
}

// publicKeyOf returns the EC public key of a JWK as PEM, and the JWK as
// JSON: the two forms an attacker keys HS256 with.
func publicKeyOf(t *testing.T, jwk map[string]any) (pemBytes, jwkJSON []byte) {
	t.Helper()
	coord := func(name string) []byte {
		s, _ := jwk[name].(string)
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(b) != 32 {
			t.Fatalf("JWK %s: %d bytes, %v", name, len(b), err)
		}
		return b
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), slices.Concat([]byte{4}, coord("x"), coord("y")))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(jwk)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), j
}

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signWith signs claims with key under method, with the header of an
// access token (typ at+jwt) naming kid.
func signWith(t *testing.T, method jwt.SigningMethod, key any, kid string, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, jwt.MapClaims(claims))
	tok.Header["kid"], tok.Header["typ"] = kid, "at+jwt"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unsigned is claims as an access token with alg none and no signature.
func unsigned(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	h, err := json.Marshal(map[string]string{"alg": "none", "kid": kid, "typ": "at+jwt"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c) + "."
}

// TestMesh_LogoutWithRedis: with --redis, a logout at auth is refused by
// orders and by inventory at their next call (within the store's
// invalidation, staleBound at worst), and streams open through orders and
// directly on inventory end with SESSION_REVOKED. Another session goes on.
func TestMesh_LogoutWithRedis(t *testing.T) {
	t.Parallel()
	rs := redistest.Start(t)
	m := startMesh(t, meshOpts{common: []string{"--redis", rs.Addr()}})
	if got := m.orders.attrs["revocation"]; got != "redis" {
		t.Fatalf("orders' listening line says revocation=%s, want redis", got)
	}
	pair, bystander := m.login(t, "alice"), m.login(t, "bob")
	tok := pair.GetAccessToken()
	orders, inventory := m.ordersDirect(t), m.inventoryAs(t, "orders")
	clients := []struct {
		name string
		c    demov1.DemoServiceClient
	}{{"orders", orders}, {"inventory", inventory}}

	type end struct {
		name string
		err  error
	}
	ended := make(chan end, len(clients))
	for _, c := range clients {
		if _, err := c.c.Echo(withToken(rpcContext(t), tok), &demov1.EchoRequest{}); err != nil {
			t.Fatalf("%s before the logout: %v", c.name, err)
		}
		stream, err := c.c.Watch(withToken(rpcContext(t), tok), &demov1.WatchRequest{Count: 1000, Interval: durationpb.New(200 * time.Millisecond)})
		if err != nil {
			t.Fatalf("%s: Watch: %v", c.name, err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("%s: Watch's first message: %v", c.name, err)
		}
		go func() {
			for {
				if _, err := stream.Recv(); err != nil {
					ended <- end{c.name, err}
					return
				}
			}
		}()
	}

	if _, err := slidejwtv1.NewTokenServiceClient(m.authConn).Revoke(withToken(rpcContext(t), tok), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatalf("Revoke at auth: %v", err)
	}
	revoked := time.Now()
	for _, c := range clients {
		accepted := 0
		for {
			_, err := c.c.Echo(withToken(rpcContext(t), tok), &demov1.EchoRequest{})
			if err != nil {
				wantRevoked(t, c.name+" after the logout at auth", err)
				break
			}
			if accepted++; time.Since(revoked) > staleBound {
				t.Fatalf("%s still accepts the session %v after the logout", c.name, time.Since(revoked))
			}
		}
		if accepted > 0 {
			t.Logf("%s accepted %d calls in the %v after the logout, before the invalidation arrived", c.name, accepted, time.Since(revoked))
		}
	}
	for range clients {
		select {
		case e := <-ended:
			wantRevoked(t, e.name+": the stream open at the logout", e.err)
		case <-time.After(staleBound):
			t.Fatalf("a stream is still open %v after the logout", time.Since(revoked))
		}
	}
	_, err := slidejwtv1.NewTokenServiceClient(m.authConn).Refresh(rpcContext(t), &slidejwtv1.RefreshRequest{RefreshToken: pair.GetRefreshToken()})
	wantRevoked(t, "Refresh at auth after the logout", err)
	for _, c := range clients {
		if _, err := c.c.Echo(withToken(rpcContext(t), bystander.GetAccessToken()), &demov1.EchoRequest{}); err != nil {
			t.Errorf("%s, another session after the logout: %v", c.name, err)
		}
	}
}

// TestMesh_LogoutWithoutRedis: without --redis, orders and inventory have
// no revocation state, and the example documents the bound: a revoked
// session's calls go on until its current token expires, plus the leeway,
// and never after; auth renews it no more, and the holder's refresh then
// fails with SESSION_REVOKED.
func TestMesh_LogoutWithoutRedis(t *testing.T) {
	t.Parallel()
	m := startMesh(t, meshOpts{})
	pair := m.login(t, "alice")
	h, orders := m.holder(t, pair)
	for i := range 3 {
		if _, err := orders.Echo(rpcContext(t), &demov1.EchoRequest{}); err != nil {
			t.Fatalf("call %d before the logout: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := slidejwtv1.NewTokenServiceClient(m.authConn).Revoke(withToken(rpcContext(t), h.Token()), &slidejwtv1.RevokeRequest{}); err != nil {
		t.Fatalf("Revoke at auth: %v", err)
	}
	out := time.Now()
	bound := out.Add(meshTTL + meshLeeway) // no token of the session expires later than out + TTL
	var lastOK time.Time
	var err error
	midway := 0
	for time.Since(out) < meshTTL+meshLeeway+5*time.Second {
		start := time.Now()
		_, err = orders.Echo(rpcContext(t), &demov1.EchoRequest{})
		if err == nil {
			lastOK = start
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if r, _ := interceptor.ReasonOf(err); r != interceptor.ReasonTokenExpired || midway > 0 {
			break
		}
		// The token expired between orders' check and inventory's:
		// inventory's TOKEN_EXPIRED reaches the client after orders'
		// handler ran, so the holder does not refresh; the next call is
		// refused by orders itself, and refreshed.
		midway++
		t.Logf("a call %v after the logout: %v (expired between the hops)", time.Since(out), err)
	}
	wantReason(t, "the calls after the logout", err, interceptor.ReasonSessionRevoked)
	if !lastOK.Before(bound) {
		t.Errorf("a call that started %v after the logout was accepted; the bound is the TTL plus the leeway, %v", lastOK.Sub(out), meshTTL+meshLeeway)
	}
	if got := h.refreshes.Load(); got != 0 {
		t.Errorf("the holder installed %d refreshes of a revoked session", got)
	}
	refused := `msg="asked auth for a renewal: none" `
	for _, p := range []*meshProc{m.orders, m.inventory} {
		if p.count(refused, "enduser.id=alice ", "SESSION_REVOKED") == 0 {
			t.Errorf("%s did not log auth's refusal to renew the revoked session", p.role)
		}
	}
}

// TestMesh_KeyRotation: auth's key is rotated by the four steps of
// PROTOCOL.md §9 while two clients call orders (and orders inventory)
// without pause: not one call fails, and the clients end up with tokens
// of the new key. auth refuses each step taken too early, and once the
// old key is dropped, orders and inventory refuse tokens it signed.
func TestMesh_KeyRotation(t *testing.T) {
	t.Parallel()
	const maxAge, refetch = time.Second, 500 * time.Millisecond
	verifier := []string{"--jwks-refresh-min", maxAge.String(), "--jwks-refetch", refetch.String()}
	m := startMesh(t, meshOpts{auth: []string{"--jwks-max-age", maxAge.String(), "--refresh-ttl", meshTTL.String()},
		orders: verifier, inventory: verifier})

	oldToken := m.login(t, "alice").GetAccessToken()
	type client struct {
		h      *holder
		orders demov1.DemoServiceClient
	}
	var clients []client
	for _, user := range []string{"alice", "bob"} {
		h, orders := m.holder(t, m.login(t, user))
		clients = append(clients, client{h, orders})
	}
	var calls, failed atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		for range 2 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					calls.Add(1)
					if _, err := c.orders.Echo(rpcContext(t), &demov1.EchoRequest{}); err != nil {
						failed.Add(1)
						t.Errorf("call during the rotation: %v", err)
					}
				}
			})
		}
	}
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()

	code, st := m.rotate(t, "operator", "publish")
	if code != http.StatusOK || len(st.Keys) != 2 {
		t.Fatalf("publish: HTTP %d, %+v", code, st)
	}
	oldKid, newKid := st.Keys[0], st.Keys[1]
	if code, _ := m.rotate(t, "operator", "activate"); code != http.StatusConflict {
		t.Errorf("activate at once after publish: HTTP %d, want 409: verifiers may not have the key yet", code)
	}
	time.Sleep(maxAge + refetch + 300*time.Millisecond)
	if code, st = m.rotate(t, "operator", "activate"); code != http.StatusOK || st.Active != newKid {
		t.Fatalf("activate: HTTP %d, %+v", code, st)
	}
	if code, _ := m.rotate(t, "operator", "drop"); code != http.StatusConflict {
		t.Errorf("drop at once after activate: HTTP %d, want 409: tokens of the old key are still valid", code)
	}
	time.Sleep(time.Duration(st.NextAfter*float64(time.Second)) + 100*time.Millisecond)
	if code, st = m.rotate(t, "operator", "drop"); code != http.StatusOK || !slices.Equal(st.Keys, []string{newKid}) {
		t.Fatalf("drop: HTTP %d, %+v", code, st)
	}
	// The verifiers refresh within the max-age and forget the old key.
	time.Sleep(2 * maxAge)
	stopLoad()

	if failed.Load() != 0 || calls.Load() < 50 {
		t.Errorf("%d of %d calls failed during the rotation, want 0 of at least 50", failed.Load(), calls.Load())
	}
	for i, c := range clients {
		if h, _ := splitToken(t, c.h.Token()); h["kid"] != newKid {
			t.Errorf("client %d holds a token of key %v, want the new key %s", i, h["kid"], newKid)
		}
	}
	if keys := m.jwks(t, ""); len(keys) != 1 || keys[0]["kid"] != newKid {
		t.Errorf("JWKS after the drop lists %v, want %s only", keys, newKid)
	}
	for _, p := range []*meshProc{m.orders, m.inventory} {
		var both, last bool
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(line, `msg="JWKS fetched"`) {
				both = both || strings.HasSuffix(line, "kids="+oldKid+","+newKid)
				last = strings.HasSuffix(line, "kids="+newKid)
			}
		}
		if !both || !last {
			t.Errorf("%s did not log the JWKS with both keys, and then with the new one only:\n%s", p.role, p.stderr)
		}
	}
	// A token of the dropped key (expired by now) names a kid the
	// verifiers no longer know: TOKEN_INVALID, not TOKEN_EXPIRED.
	for name, c := range map[string]demov1.DemoServiceClient{"orders": m.ordersDirect(t), "inventory": m.inventoryAs(t, "orders")} {
		_, err := c.Echo(withToken(rpcContext(t), oldToken), &demov1.EchoRequest{})
		wantReason(t, name+", a token of the dropped key", err, interceptor.ReasonTokenInvalid)
	}
}

// TestMesh_ServiceTokenRejected: orders logs in as itself at another auth
// service, whose key inventory does not trust, so inventory rejects
// orders' own token. alice, whose call needed it, sees UNAVAILABLE with
// no slidejwt reason and no details: nothing about her own session, so
// her holder neither refreshes nor retries, and her refresh token is not
// rotated. Her session itself is fine: a call that orders makes only as
// her succeeds.
func TestMesh_ServiceTokenRejected(t *testing.T) {
	t.Parallel()
	m := startMesh(t, meshOpts{ordersAtOtherAuth: true})
	pair := m.login(t, "alice")
	h, orders := m.holder(t, pair)
	for i := range 3 {
		_, err := orders.Echo(rpcContext(t), &demov1.EchoRequest{})
		st := status.Convert(err)
		if st.Code() != codes.Unavailable || len(st.Details()) != 0 {
			t.Fatalf("call %d: %v with %d details, want Unavailable without details", i, err, len(st.Details()))
		}
		if r, ok := interceptor.ReasonOf(err); ok {
			t.Fatalf("call %d carries the slidejwt reason %s, which would be about alice's session", i, interceptor.WireReason(r))
		}
	}
	if got := h.attempts.Load(); got != 0 {
		t.Errorf("alice's holder tried %d refreshes after orders' own token was rejected, want 0", got)
	}
	if h.RefreshToken() != pair.GetRefreshToken() {
		t.Errorf("alice's refresh token was rotated")
	}
	if m.inventory.count("msg=rejected ", "slidejwt.reason=TOKEN_INVALID ", "peer=orders ") == 0 {
		t.Errorf("inventory did not log the rejection of orders' token")
	}
	if m.other.count("msg=login ", "enduser.id=service:orders ") == 0 {
		t.Errorf("orders did not log in as itself at the other auth service")
	}

	stream, err := orders.Watch(rpcContext(t), &demov1.WatchRequest{Count: 2})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for n := 0; ; n++ {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if n != 2 {
				t.Errorf("Watch sent %d messages, want 2", n)
			}
			break
		}
		if err != nil {
			t.Fatalf("Watch, which orders makes as alice only: %v", err)
		}
		if want := "orders saw alice, inventory saw alice"; msg.GetSubject() != want {
			t.Errorf("Watch: %q, want %q", msg.GetSubject(), want)
		}
	}
	// alice's refresh token still works at auth.
	r, err := slidejwtv1.NewTokenServiceClient(m.authConn).Refresh(rpcContext(t), &slidejwtv1.RefreshRequest{RefreshToken: pair.GetRefreshToken()})
	if err != nil {
		t.Fatalf("Refresh with alice's untouched refresh token: %v", err)
	}
	see(r.GetTokens().GetAccessToken(), r.GetTokens().GetRefreshToken())
}
