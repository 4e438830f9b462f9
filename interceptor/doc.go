// Package interceptor gives JWT-authenticated gRPC services sliding
// sessions.
//
// A user logs in once and receives an access token valid for an idle
// window (24 h by default). While the client keeps calling, any server that
// sees the token hands back a renewed one in response metadata and the
// client interceptor swaps it in: callers never make a second "refresh"
// call. Activity never extends a session past its absolute maximum (168 h
// after login by default).
//
// # Server
//
//	key, err := interceptor.NewKey("2026-11", jwt.SigningMethodHS256, secret) // secret: ≥ 32 random bytes
//	keys, err := interceptor.NewKeySet(key)
//	sessions, err := interceptor.NewServer(keys,
//		interceptor.WithIssuer("auth.example.com"),
//		interceptor.WithAudience("orders"),
//		interceptor.WithPolicy(interceptor.Policy{TTL: 24 * time.Hour, MaxLifetime: 168 * time.Hour}),
//		interceptor.WithRevocationList(&memstore.RevocationList{}),
//		interceptor.WithExemptMethods("/shop.v1.AuthService/Login", healthpb.Health_Check_FullMethodName),
//	)
//	srv := grpc.NewServer(
//		grpc.ChainUnaryInterceptor(logging.UnaryServerInterceptor(logger), sessions.UnaryServerInterceptor()),
//		grpc.ChainStreamInterceptor(logging.StreamServerInterceptor(logger), sessions.StreamServerInterceptor()),
//	)
//
// The login handler, once it has checked the user's password:
//
//	s, err := sessions.StartSession(ctx, user.ID, map[string]any{"role": "admin"})
//	return &pb.LoginResponse{AccessToken: s.AccessToken}, nil
//
// Any other handler:
//
//	func (orders) Get(ctx context.Context, req *pb.GetRequest) (*pb.Order, error) {
//		claims, _ := interceptor.ClaimsFromContext(ctx) // always present behind the interceptor
//		var role string
//		_, _ = claims.Lookup("role", &role)
//		...
//	}
//
// Servers that already chain go-grpc-middleware's auth interceptors can use
// [Server.AuthFunc] instead, and methods can be exempted with
// go-grpc-middleware's selector as well as with [WithExemptMethods].
//
// # Client
//
//	holder, err := interceptor.NewTokenHolder(accessToken,
//		interceptor.OnSwap(func(tok string, exp time.Time) { save(tok) }))
//	conn, err := grpc.NewClient(addr,
//		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
//		grpc.WithChainUnaryInterceptor(holder.UnaryClientInterceptor()),
//		grpc.WithChainStreamInterceptor(holder.StreamClientInterceptor()),
//	)
//
// The holder refuses to send its token over a connection without transport
// security unless [AllowInsecureTransport] is given.
//
// # Refresh tokens
//
// With a session store ([WithSessionStore]; see the store and memstore
// packages below this one), [Server.StartSession] also
// returns a refresh token (typ rt+jwt) and [Server.TokenService] serves
// slidejwt.v1.TokenService: Refresh rotates the refresh token (a retired one
// presented again within [WithRefreshGrace] gets the same successor, later
// it revokes the session) and Revoke ends the caller's session.
//
//	slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())
//
// A holder given the refresh token ([WithRefreshToken]) refreshes inside its
// interceptors: before a call when its token expires within
// [WithRefreshMargin], and after a call rejected with TOKEN_EXPIRED before
// its handler ran, which it retries once; concurrent callers share one
// refresh. It refreshes only at a configured token service
// ([WithTokenService], [WithRefresher]) or on the one target it is bound to
// ([BindTarget]): every server a holder talks to is trusted with its token.
//
//	holder, err := interceptor.NewTokenHolder(pair.GetAccessToken(),
//		interceptor.BindTarget(addr),
//		interceptor.WithSessionEnd(pair.GetSessionEndsAt().AsTime()),
//		interceptor.WithRefreshToken(pair.GetRefreshToken()))
//
// # One signer, verify-only services
//
// In a mesh, only the service that starts sessions holds a private key
// (ES256 or EdDSA) and publishes the public halves as a JWKS; the other
// services verify against it and cannot mint a token:
//
//	// The auth service signs and serves its JWKS.
//	key, err := interceptor.NewKey("2026-11", jwt.SigningMethodES256, ecPrivateKey)
//	keys, err := interceptor.NewKeySet(key)
//	sessions, err := interceptor.NewServer(keys, interceptor.WithIssuer("auth"), interceptor.WithAudience("mesh"))
//	jwks, err := sessions.JWKSHandler()
//	mux.Handle(interceptor.JWKSPath, jwks)
//
//	// Every other service verifies against it.
//	remote, err := interceptor.NewRemoteKeySet("https://auth.internal" + interceptor.JWKSPath)
//	sessions, err := interceptor.NewServer(remote.KeySet(), interceptor.WithIssuer("auth"), interceptor.WithAudience("mesh"))
//
// A verify-only server ([NewVerifyKeySet], [RemoteKeySet]) cannot sign.
// With [WithDelegatedRenewal] it still renews: when a call's renewal is
// due, it asks the signing service's TokenService/Renew with the caller's
// token (one internal call per session per renewal window, shared by
// concurrent calls), checks the answer and returns it in its own response
// metadata, as a signing server would; if the signing service is down the
// call succeeds without a renewal. Without that option it never renews,
// and sessions slide only when their clients call the service that signs.
// To keep a signing server from renewing, use [NeverRenew]. See [RemoteKeySet] for
// how the JWKS is fetched, cached and refused, and PROTOCOL.md §9 for
// rotating keys through it.
//
// # Cost per call
//
// A token that verified once is served from a bounded cache while it is
// valid, keyed on the SHA-256 digest of the exact token (once the cache is
// full, from the token's second presentation on); the session end and the
// revocation list are still checked on every call. Requests presenting the
// same token while its renewal is due share one renewed token. See
// [WithCacheSize]. A miss decodes each segment of the token once, with
// golang-jwt's signing methods and claims validator.
//
// # Events
//
// [WithEventHook] hears every decision of a server (an authenticated,
// renewed or rejected call, a session start, refresh or revocation, each
// call to the session store) and [WithClientEventHook] every step of a
// holder (a renewal swapped in, a refresh, a retry, a reopened stream),
// as [Event]s that never carry a token, with how long the step took and
// whether the verified-token cache held the token. Without a hook, the
// interceptors build no event and read no clock for one. The module
// github.com/slidejwt/slidejwt/providers/otelslidejwt turns them into
// OpenTelemetry metrics and span events:
//
//	interceptor.WithEventHook(otelslidejwt.ServerHook())
//
// # Streams
//
// An open stream lives as long as its session, not as long as the token
// that opened it: it ends with SESSION_EXPIRED at the session's end plus
// the leeway, and with SESSION_REVOKED at its next message after the
// session was revoked, or within [WithStreamCheckInterval] if it is silent.
//
// # Protocol
//
// The wire contract (metadata keys, where a renewal travels, the
// [Reason]s of a refusal and what a client does about each, the
// handler_ran marker), the session model, the verifier rules, stream
// lifetime, what a client trusts, what a session store holds and how to
// rotate keys are specified once, in PROTOCOL.md at the root of the
// repository:
// https://github.com/slidejwt/slidejwt/blob/main/PROTOCOL.md
package interceptor
