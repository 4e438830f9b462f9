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
		conn, err := grpc.NewClient(cfg.inventory, grpc.WithTransportCredentials(credentials.NewTLS(m.client("inventory"))))
		if err != nil {
			return usagef("--inventory: %v", err)
		}
		defer conn.Close()
		demov1.RegisterDemoServiceServer(srv, &ordersService{inventory: demov1.NewDemoServiceClient(conn)})
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

// ordersService serves Echo and Watch by calling inventory with the
// caller's token: the user's session, not orders', is what inventory
// authenticates.
type ordersService struct {
	demov1.UnimplementedDemoServiceServer
	inventory demov1.DemoServiceClient
}

// Echo asks inventory, on the caller's behalf, and says whom each service
// saw.
func (o *ordersService) Echo(ctx context.Context, req *demov1.EchoRequest) (*demov1.EchoResponse, error) {
	var fwd forwarded
	resp, err := o.inventory.Echo(fwd.context(ctx), &demov1.EchoRequest{Message: req.GetMessage()}, fwd.callOptions()...)
	fwd.relay(ctx)
	if err != nil {
		return nil, err
	}
	sub := subject(ctx)
	return &demov1.EchoResponse{Message: fmt.Sprintf("orders saw %s, inventory saw %s", sub, resp.GetSubject()), Subject: sub}, nil
}

// Watch relays inventory's Watch, opened on the caller's behalf.
func (o *ordersService) Watch(req *demov1.WatchRequest, stream grpc.ServerStreamingServer[demov1.WatchResponse]) error {
	ctx := stream.Context()
	var fwd forwarded
	down, err := o.inventory.Watch(fwd.context(ctx), req, fwd.callOptions()...)
	if err != nil {
		return err
	}
	defer fwd.relayStream(stream)
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
