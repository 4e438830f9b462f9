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
//		interceptor.WithRevocationList(revoked),
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
// With a [SessionStore] ([WithSessionStore]), [Server.StartSession] also
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
// # Cost per call
//
// A token that verified once is served from a bounded cache while it is
// valid, keyed on the exact token string; the session end and the
// revocation list are still checked on every call. Requests presenting the
// same token while its renewal is due share one renewed token. See
// [WithCacheSize].
//
// # Wire contract
//
// Request: metadata "authorization: Bearer <jwt>", exactly one value; the
// scheme matches case-insensitively.
//
// Response: a renewed compact JWT under the metadata key "renewed-token"
// ([WithRenewalHeader]). Unary calls: in the trailer, also when the handler
// fails. Streams: in the header, set before the handler runs so that it
// arrives with the first message, and in the trailer.
//
// Failure: codes.Unauthenticated with a google.rpc.ErrorInfo detail in the
// domain "slidejwt" whose reason is TOKEN_MISSING, TOKEN_INVALID,
// TOKEN_EXPIRED, SESSION_EXPIRED or SESSION_REVOKED (see [Reason], the
// generated slidejwt.v1.ErrorReason enum, and [ReasonOf]). The message never contains the token or its claims, and the
// handler does not run.
//
// # Session model
//
// An access token carries iss, aud, sub, exp, iat, a jti new for every
// token, sid (the session id, random at login and stable across renewals),
// auth_time (the login time, stable across renewals) and the application's
// custom claims, which renewals copy unchanged. The token minted at login
// also carries "fresh": true, which renewed tokens lack ([RequireFresh]).
// The JOSE header has typ "at+jwt" (RFC 9068) and the kid of the signing
// key.
//
// A token is renewed when its remaining lifetime is below
// [Policy].RenewBefore; the renewed token expires at min(now + TTL,
// auth_time + MaxLifetime), and none is sent unless it expires later than
// the presented one. The decision is the pure function [Policy.Decide].
//
// # Verifier rules
//
// A presented token is rejected unless: it is at most [DefaultMaxTokenSize]
// bytes ([WithMaxTokenSize]); it decodes as strict base64url; its kid names
// a key in the [KeySet] and its alg is that key's algorithm ("none" never
// is); its typ is at+jwt and it has no crit header; its signature verifies;
// it has exp, iat, sub, jti, sid and auth_time; exp has not passed and iat
// is not in the future, allowing [DefaultLeeway] of clock skew
// ([WithLeeway]); iss and aud match when configured; the session has not
// passed auth_time + MaxLifetime; and the [RevocationList], if any, does not
// list its sid.
package interceptor
