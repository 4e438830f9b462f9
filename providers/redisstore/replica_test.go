package redisstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// testKeys returns a fresh ES256 key set, the one every replica of a test
// deployment shares.
func testKeys(t testing.TB) *interceptor.KeySet {
	t.Helper()
	pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := interceptor.NewKey("k1", jwt.SigningMethodES256, pk)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := interceptor.NewKeySet(k)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// A replica is one server of a deployment, as a process would run it: an
// interceptor.Server whose session store is a Store on a rueidis client
// of its own, serving grpc's health service in memory (bufconn) behind
// the unary interceptor. The servers' clocks are the wall clock, since
// Redis expires the records by its own.
type replica struct {
	srv   *interceptor.Server
	store *Store
	conn  *grpc.ClientConn
}

// newReplica starts a replica whose store reaches Redis through a client
// with option opt (its InitAddress, Sentinel, ...), with the store options
// opts. Everything stops when the test ends.
func newReplica(t testing.TB, keys *interceptor.KeySet, opt rueidis.ClientOption, opts ...Option) *replica {
	t.Helper()
	return newReplicaOf(t, keys, New(newClient(t, opt), opts...))
}

// newReplicaOf starts a replica over the session store s.
func newReplicaOf(t testing.TB, keys *interceptor.KeySet, s store.SessionStore) *replica {
	t.Helper()
	srv, err := interceptor.NewServer(keys, interceptor.WithSessionStore(s))
	if err != nil {
		t.Fatalf("interceptor.NewServer: %v", err)
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(srv.UnaryServerInterceptor()))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	r := &replica{srv: srv, conn: conn}
	r.store, _ = s.(*Store)
	return r
}

// newClient returns a rueidis client with option opt, closed when the
// test ends.
func newClient(t testing.TB, opt rueidis.ClientOption) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatalf("rueidis.NewClient(%v): %v", opt.InitAddress, err)
	}
	t.Cleanup(c.Close)
	return c
}

// call makes one authenticated RPC (Health.Check) on r with the access
// token of sess and returns its error: nil when the interceptor let it
// through.
func (r *replica) call(ctx context.Context, sess interceptor.Session) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+sess.AccessToken)
	_, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// login starts a session on r, as a login handler would.
func (r *replica) login(t testing.TB) interceptor.Session {
	t.Helper()
	sess, err := r.srv.StartSession(context.Background(), "user", nil)
	if err != nil {
		t.Fatalf("StartSession: %v", err)
	}
	return sess
}

// isRevokedReason reports whether err is the interceptor's rejection of a
// revoked (or unknown) session.
func isRevokedReason(err error) bool {
	reason, ok := interceptor.ReasonOf(err)
	return ok && reason == interceptor.ReasonSessionRevoked
}
