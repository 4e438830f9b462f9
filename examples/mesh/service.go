package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// runService runs orders or inventory: a verify-only service. It holds no
// private key and cannot mint a token. It verifies every call against the
// JWKS that auth publishes (fetched over HTTPS, trusting the mesh's CA),
// and when a call's renewal is due it asks auth's TokenService/Renew over
// mTLS and relays the answer, so that sessions slide through it as
// through auth itself.
//
// Revocation: with --redis, every call and every open stream checks the
// session in the Redis that auth writes logouts to, so a logout at auth
// is refused here at the next call. Without it, the service has no
// revocation state: a revoked session's current access token is accepted
// until it expires (at most --ttl plus --leeway after the logout), auth
// refuses to renew it, and an open stream lives until the session's end.
func runService(ctx context.Context, role string, cfg serviceConfig, log *slog.Logger) error {
	m, err := cfg.tls.load()
	if err != nil {
		return fmt.Errorf("--ca/--cert/--key: %w", err)
	}
	hc := &http.Client{Transport: &jwksLog{base: &http.Transport{TLSClientConfig: m.client("auth"), ForceAttemptHTTP2: true}, log: log}}
	remote, err := interceptor.NewRemoteKeySet(cfg.jwks,
		interceptor.WithHTTPClient(hc),
		interceptor.WithJWKSRefreshBounds(cfg.refreshMin, max(cfg.refreshMin, interceptor.DefaultJWKSRefreshMax)),
		interceptor.WithJWKSRefetchInterval(cfg.refetch),
		interceptor.OnJWKSError(func(err error) { log.Warn("JWKS", "err", err) }),
	)
	if err != nil {
		return usagef("--jwks: %v", err)
	}
	// Fail fast at start-up rather than at the first call.
	fetchCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = remote.Refresh(fetchCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("--jwks: first fetch: %w", err)
	}
	// The connection on which the service asks auth for renewals: mTLS,
	// with this service's certificate, which tells auth who asks. It must
	// carry no token of its own.
	authConn, err := grpc.NewClient(cfg.auth, grpc.WithTransportCredentials(credentials.NewTLS(m.client("auth"))))
	if err != nil {
		return usagef("--auth: %v", err)
	}
	defer authConn.Close()

	policy := cfg.policy
	opts := []interceptor.ServerOption{
		interceptor.WithIssuer(cfg.issuer),
		interceptor.WithAudience(cfg.audience),
		interceptor.WithLeeway(cfg.leeway),
		interceptor.WithStreamCheckInterval(cfg.streamCheck),
		interceptor.WithEventHook(serviceEvents(log)),
	}
	renewals := "delegated to auth"
	if cfg.noRenew {
		policy.RenewBefore, renewals = interceptor.NeverRenew, "never"
	} else {
		opts = append(opts, interceptor.WithDelegatedRenewal(authConn), interceptor.WithDelegatedRenewalTimeout(cfg.renewTimeout))
	}
	opts = append(opts, interceptor.WithPolicy(policy))
	revocation := "none: a logout is seen when the token expires"
	if cfg.redis != nil {
		rs, closeStore, err := openRedis(cfg.redis)
		if err != nil {
			return err
		}
		defer closeStore()
		// The store that auth writes sessions to, read here as a
		// revocation list (an allow-list): a session it does not hold,
		// or holds as revoked, is refused.
		opts = append(opts, interceptor.WithRevocationList(rs))
		revocation = "redis"
	}
	sessions, err := interceptor.NewServer(remote.KeySet(), opts...)
	if err != nil {
		return err
	}

	var unary []grpc.UnaryServerInterceptor
	var streams []grpc.StreamServerInterceptor
	if len(cfg.allowPeers) > 0 {
		allow := peerCheck(role, cfg.allowPeers)
		unary = append(unary, func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := allow(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		})
		streams = append(streams, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := allow(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		})
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(m.server(len(cfg.allowPeers) > 0))),
		grpc.ChainUnaryInterceptor(append(unary, sessions.UnaryServerInterceptor())...),
		grpc.ChainStreamInterceptor(append(streams, sessions.StreamServerInterceptor())...),
	)
	attrs := []any{"keys", "remote", "jwks", cfg.jwks, "renewals", renewals, "revocation", revocation}
	if len(cfg.allowPeers) > 0 {
		attrs = append(attrs, "allow_peers", strings.Join(cfg.allowPeers, ","))
	}
	switch role {
	case "orders":
		o, closeConns, err := newOrders(role, cfg, m, sessions, authConn, log)
		if err != nil {
			return err
		}
		defer closeConns()
		demov1.RegisterDemoServiceServer(srv, o)
		attrs = append(attrs, "inventory", cfg.inventory)
	default:
		demov1.RegisterDemoServiceServer(srv, &inventoryService{})
	}

	lis, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return usagef("--addr: %v", err)
	}
	log.Info("listening", append([]any{"addr", lis.Addr().String()}, attrs...)...)
	return serve(ctx, log, srv, lis, nil, nil)
}

// peerCheck returns a check that a call comes from one of the allowed
// mesh identities, by the certificate its peer presented (mTLS).
func peerCheck(role string, allowed []string) func(context.Context) error {
	return func(ctx context.Context) error {
		id := peerIdentity(ctx)
		if id == "" {
			return status.Error(codes.Unauthenticated, "mesh: "+role+" needs a client certificate of the mesh")
		}
		if !slices.Contains(allowed, id) {
			return status.Errorf(codes.PermissionDenied, "mesh: %s may not call %s", id, role)
		}
		return nil
	}
}

// subject is the verified subject of the call.
func subject(ctx context.Context) string {
	if c, ok := interceptor.ClaimsFromContext(ctx); ok {
		return c.Subject
	}
	return ""
}

// ordersService serves Echo and Watch by calling inventory in the two
// ways of PROTOCOL.md §11: as its caller, forwarding the caller's token,
// and as itself, with a session of its own.
type ordersService struct {
	demov1.UnimplementedDemoServiceServer
	asCaller demov1.DemoServiceClient // a Forwarder's connection
	asSelf   demov1.DemoServiceClient // a ServiceHolder's connection
}

// newOrders connects orders to inventory twice, each connection with the
// interceptors of one principal: a Forwarder's, which sends the token of
// the call being handled and relays inventory's renewals of it to the
// caller, and a ServiceHolder's, which logs orders in at auth as itself
// (by its certificate) when it first needs to, and again whenever its
// session ends.
func newOrders(role string, cfg serviceConfig, m *tlsMaterial, sessions *interceptor.Server, authConn *grpc.ClientConn, log *slog.Logger) (*ordersService, func(), error) {
	creds := grpc.WithTransportCredentials(credentials.NewTLS(m.client("inventory")))
	fwd, err := sessions.NewForwarder(interceptor.BindTarget(cfg.inventory))
	if err != nil {
		return nil, nil, err
	}
	callerConn, err := grpc.NewClient(cfg.inventory, creds,
		grpc.WithChainUnaryInterceptor(fwd.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(fwd.StreamClientInterceptor()))
	if err != nil {
		return nil, nil, usagef("--inventory: %v", err)
	}
	auth := demov1.NewDemoServiceClient(authConn)
	login := interceptor.LoginFunc(func(ctx context.Context) (*slidejwtv1.TokenPair, error) {
		// Client credentials: the certificate on authConn says who
		// orders is; the request names it and carries no password.
		resp, err := auth.Login(ctx, &demov1.LoginRequest{Username: role})
		if err != nil {
			log.Warn("login as itself failed", "err", status.Code(err))
			return nil, err
		}
		p := resp.GetTokens()
		log.Info("logged in as itself", "session_ends", p.GetSessionEndsAt().AsTime())
		return p, nil
	})
	self, err := interceptor.NewServiceHolder(login,
		interceptor.BindTarget(cfg.inventory),
		interceptor.WithTokenService(authConn),
		interceptor.WithRefreshMargin(time.Second))
	if err != nil {
		callerConn.Close()
		return nil, nil, err
	}
	selfConn, err := grpc.NewClient(cfg.inventory, creds,
		grpc.WithChainUnaryInterceptor(self.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(self.StreamClientInterceptor()))
	if err != nil {
		callerConn.Close()
		return nil, nil, usagef("--inventory: %v", err)
	}
	o := &ordersService{asCaller: demov1.NewDemoServiceClient(callerConn), asSelf: demov1.NewDemoServiceClient(selfConn)}
	return o, func() { callerConn.Close(); selfConn.Close() }, nil
}

// Echo asks inventory for the stock level as orders itself, then places
// the order with inventory as the caller, and says whom each call ran as.
// A failure of orders' own call reaches the caller as codes.Unavailable
// with no slidejwt reason: it says nothing about the caller's session.
func (o *ordersService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	stock, err := o.asSelf.Echo(ctx, &demov1.EchoRequest{Message: "stock level"})
	if err != nil {
		return nil, err
	}
	placed, err := o.asCaller.Echo(ctx, &demov1.EchoRequest{Message: req.GetMessage()})
	if err != nil {
		return nil, err
	}
	sub := subject(ctx)
	return &demov1.EchoResponse{
		Message: fmt.Sprintf("orders saw %s; inventory saw %s, then %s", sub, stock.GetSubject(), placed.GetSubject()),
		Subject: sub,
	}, nil
}

// Watch relays inventory's Watch, opened as the caller.
func (o *ordersService) Watch(req *demov1.WatchRequest, stream grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	ctx := stream.Context()
	down, err := o.asCaller.Watch(ctx, req)
	if err != nil {
		return err
	}
	sub := subject(ctx)
	for {
		msg, err := down.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		msg.Subject = fmt.Sprintf("orders saw %s, inventory saw %s", sub, msg.GetSubject())
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
}

// inventoryService is the end of the chain.
type inventoryService struct {
	demov1.UnimplementedDemoServiceServer
}

// Echo returns the message and the caller's subject.
func (inventoryService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	return &demov1.EchoResponse{Message: req.GetMessage(), Subject: subject(ctx)}, nil
}

// Limits of Watch, so that one request cannot hold the service forever.
const (
	maxWatchCount    = 10000
	maxWatchInterval = time.Minute
)

// Watch sends count messages, interval apart.
func (inventoryService) Watch(req *demov1.WatchRequest, stream grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	count, interval := req.GetCount(), req.GetInterval().AsDuration()
	if count < 0 || count > maxWatchCount || interval < 0 || interval > maxWatchInterval {
		return status.Errorf(codes.InvalidArgument, "count must be in [0, %d] and interval in [0, %v]", maxWatchCount, maxWatchInterval)
	}
	sub := subject(stream.Context())
	for i := int32(1); i <= count; i++ {
		if i > 1 && interval > 0 {
			select {
			case <-time.After(interval):
			case <-stream.Context().Done():
				return status.FromContextError(stream.Context().Err()).Err()
			}
		}
		if err := stream.Send(&demov1.WatchResponse{Sequence: i, Subject: sub}); err != nil {
			return err
		}
	}
	return nil
}
