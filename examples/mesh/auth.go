package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/rueidis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// adminPath is where the auth service takes the steps of a key rotation
// (PROTOCOL.md §9): POST adminPath+"publish", "activate" and "drop", from
// the --operator identity only. GET adminPath says where the rotation is.
const adminPath = "/admin/keys/"

// runAuth runs the auth service: the one process of the mesh that holds a
// private key. It starts sessions (demo.v1.DemoService/Login), serves
// slidejwt.v1.TokenService (Refresh, Revoke, and Renew, which orders and
// inventory call for the renewals they relay), and publishes its public
// keys as a JWKS over HTTPS.
func runAuth(ctx context.Context, cfg authConfig, log *slog.Logger) error {
	m, err := cfg.tls.load()
	if err != nil {
		return fmt.Errorf("--ca/--cert/--key: %w", err)
	}
	key, err := newSigningKey(cfg.alg)
	if err != nil {
		return err
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		return err
	}
	sessionStore, closeStore, err := openAuthStore(cfg.redis)
	if err != nil {
		return err
	}
	defer closeStore()
	// A retired refresh token gets its successor for 30 s, or for the
	// refresh TTL if that is shorter.
	grace := min(interceptor.DefaultRefreshGrace, cfg.refreshTTL)
	sessions, err := interceptor.NewServer(keys,
		interceptor.WithPolicy(cfg.policy),
		interceptor.WithIssuer(cfg.issuer),
		interceptor.WithAudience(cfg.audience),
		interceptor.WithLeeway(cfg.leeway),
		interceptor.WithSessionStore(sessionStore),
		interceptor.WithRefreshTTL(cfg.refreshTTL),
		interceptor.WithRefreshGrace(grace),
		interceptor.WithExemptMethods(demov1.DemoService_Login_FullMethodName),
		interceptor.WithEventHook(authEvents(log)),
	)
	if err != nil {
		return err
	}
	jwks, err := sessions.JWKSHandler(interceptor.WithJWKSMaxAge(cfg.jwksMaxAge))
	if err != nil {
		return err
	}
	p := sessions.Policy()
	rot := &rotator{
		sessions: sessions, alg: cfg.alg, active: key, log: log,
		// A new key signs once every verifier can have fetched it: a
		// JWKS is cached for up to its max-age.
		activateAfter: cfg.jwksMaxAge,
		// The old key goes once no token it signed can be accepted: the
		// longer of the two token lifetimes, plus the leeway.
		dropAfter: max(p.TTL, p.RefreshTTL) + p.Leeway,
		operator:  cfg.operator,
	}

	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(m.server(false))),
		grpc.ChainUnaryInterceptor(sessions.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(sessions.StreamServerInterceptor()),
	)
	demov1.RegisterDemoServiceServer(srv, &authService{sessions: sessions, users: cfg.users, services: cfg.services, serviceLifetime: cfg.serviceLifetime, log: log})
	slidejwtv1.RegisterTokenServiceServer(srv, sessions.TokenService())

	mux := http.NewServeMux()
	mux.Handle(interceptor.JWKSPath, jwks)
	mux.Handle(adminPath, rot)
	hs := &http.Server{Handler: mux, TLSConfig: m.server(false), ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	lis, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return usagef("--addr: %v", err)
	}
	hlis, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		lis.Close()
		return usagef("--http-addr: %v", err)
	}
	base := "https://" + hlis.Addr().String()
	log.Info("listening", "addr", lis.Addr().String(), "jwks", base+interceptor.JWKSPath, "admin", base+adminPath,
		"alg", cfg.alg, "kid", key.ID(), "store", storeName(cfg.redis), "ttl", p.TTL, "renew_before", p.RenewBefore,
		"max_lifetime", p.MaxLifetime, "refresh_ttl", p.RefreshTTL, "jwks_max_age", cfg.jwksMaxAge)
	return serve(ctx, log, srv, lis, hs, hlis)
}

// newSigningKey makes a private key for alg (ES256 or EdDSA) with a random
// key id.
func newSigningKey(alg string) (*interceptor.Key, error) {
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	kid := strings.ToLower(alg) + "-" + hex.EncodeToString(id)
	if alg == "EdDSA" {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return interceptor.NewKey(kid, jwt.SigningMethodEdDSA, priv)
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return interceptor.NewKey(kid, jwt.SigningMethodES256, priv)
}

// openAuthStore returns the auth service's session store: Redis with
// --redis, shared with the revocation checks of orders and inventory; or
// one in this process's memory, and then only auth knows of a logout.
func openAuthStore(opt *rueidis.ClientOption) (store.SessionStore, func(), error) {
	if opt == nil {
		return &memstore.SessionStore{}, func() {}, nil
	}
	return openRedis(opt)
}

func storeName(opt *rueidis.ClientOption) string {
	if opt == nil {
		return "memory"
	}
	return "redis"
}

// authService serves demo.v1.DemoService/Login: the one place where
// sessions start, for users and for services.
type authService struct {
	demov1.UnimplementedDemoServiceServer
	sessions        *interceptor.Server
	users           map[string]string
	services        []string
	serviceLifetime time.Duration
	log             *slog.Logger
}

// serviceSubject is the subject of a service's own session.
func serviceSubject(name string) string { return "service:" + name }

// Login starts a session. A user presents a password, which Login checks
// in constant time. A service presents its name and no password, over
// mTLS: the certificate it presented must name it, and it must be one of
// --services; its session ends after --service-max-lifetime.
func (a *authService) Login(ctx context.Context, req *demov1.LoginRequest) (*demov1.LoginResponse, error) {
	if id := peerIdentity(ctx); id != "" && req.GetPassword() == "" {
		if req.GetUsername() != id || !slices.Contains(a.services, id) {
			a.log.InfoContext(ctx, "service login refused", peerKey, id)
			return nil, status.Error(codes.PermissionDenied, "this certificate may not log in as a service")
		}
		// The service's session is bound to the certificate it logged in
		// with (RFC 8705, PROTOCOL.md §12): its tokens are refused on any
		// call that does not come with that certificate. A user's session
		// is not: orders forwards users' tokens to inventory.
		resp, err := a.start(ctx, serviceSubject(id), interceptor.WithMaxLifetime(a.serviceLifetime), interceptor.BindToPeerCertificate())
		if err == nil {
			a.log.InfoContext(ctx, "service session bound", peerKey, id, "x5t_s256", peerThumbprint(ctx))
		}
		return resp, err
	}
	want, known := a.users[req.GetUsername()]
	if !known {
		want = "\x00" // compare anyway, so that timing does not reveal which users exist
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(req.GetPassword())) != 1 || !known {
		a.log.InfoContext(ctx, "login failed", peerKey, caller(ctx))
		return nil, status.Error(codes.Unauthenticated, "invalid username or password")
	}
	return a.start(ctx, req.GetUsername())
}

// start starts a session of subject.
func (a *authService) start(ctx context.Context, subject string, opts ...interceptor.SessionOption) (*demov1.LoginResponse, error) {
	s, err := a.sessions.StartSession(ctx, subject, nil, opts...)
	if errors.Is(err, interceptor.ErrStoreUnavailable) {
		return nil, status.Error(codes.Unavailable, "session store unavailable")
	}
	if errors.Is(err, interceptor.ErrNoClientCertificate) {
		return nil, status.Error(codes.Unauthenticated, "a service logs in with its client certificate")
	}
	if err != nil {
		a.log.ErrorContext(ctx, "cannot start session", subjectKey, subject, "err", err)
		return nil, status.Error(codes.Internal, "cannot start session")
	}
	return &demov1.LoginResponse{Tokens: s.TokenPair()}, nil
}

// rotator takes the steps of a key rotation through the JWKS, and
// refuses a step taken too early: activating a key before every verifier
// can have fetched it would fail calls, and dropping the old key while a
// token it signed can still be accepted would log sessions out.
type rotator struct {
	sessions      *interceptor.Server
	alg           string
	log           *slog.Logger
	operator      string
	activateAfter time.Duration
	dropAfter     time.Duration

	mu     sync.Mutex
	active *interceptor.Key
	next   *interceptor.Key // published, verify-only, not yet signing
	old    *interceptor.Key // retired, still verifying
	since  time.Time        // when next was published, or old retired
}

// keyState is the answer of the rotation endpoint.
type keyState struct {
	Active string   `json:"active"`
	Keys   []string `json:"keys"` // every kid in the JWKS, the active one first
	// Next is the step that comes next ("publish", "activate" or
	// "drop"), and NextAfter how long until auth takes it, in seconds.
	Next      string  `json:"next"`
	NextAfter float64 `json:"next_after_seconds"`
	Error     string  `json:"error,omitempty"`
}

func (r *rotator) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var who string
	if req.TLS != nil {
		who = identityOf(req.TLS.VerifiedChains)
	}
	if who != r.operator {
		// An identified caller without access, or none at all.
		http.Error(w, "key rotation needs the operator's certificate", http.StatusForbidden)
		return
	}
	step := strings.TrimPrefix(req.URL.Path, adminPath)
	r.mu.Lock()
	defer r.mu.Unlock()
	code := http.StatusOK
	var err error
	switch {
	case step == "" && (req.Method == http.MethodGet || req.Method == http.MethodHead):
	case req.Method != http.MethodPost:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	case step == "publish" || step == "activate" || step == "drop":
		code, err = r.step(step)
	default:
		http.NotFound(w, req)
		return
	}
	st := r.stateLocked()
	if err != nil {
		st.Error = err.Error()
		if st.NextAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(st.NextAfter))))
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(st)
}

// step takes one step of the rotation, or says why not now.
func (r *rotator) step(step string) (int, error) {
	st := r.stateLocked()
	if step != st.Next {
		return http.StatusConflict, fmt.Errorf("the next step is %s, not %s", st.Next, step)
	}
	if st.NextAfter > 0 {
		return http.StatusConflict, fmt.Errorf("too early to %s", step)
	}
	var keys *interceptor.KeySet
	var err error
	switch step {
	case "publish":
		var k *interceptor.Key
		if k, err = newSigningKey(r.alg); err != nil {
			return http.StatusInternalServerError, err
		}
		if keys, err = interceptor.NewKeySet(r.active, k); err == nil {
			r.next = k
		}
	case "activate":
		if keys, err = interceptor.NewKeySet(r.next, r.active); err == nil {
			r.active, r.old, r.next = r.next, r.active, nil
		}
	case "drop":
		if keys, err = interceptor.NewKeySet(r.active); err == nil {
			r.old = nil
		}
	}
	if err == nil {
		err = r.sessions.RotateKeys(keys)
	}
	if err != nil {
		return http.StatusInternalServerError, err
	}
	r.since = time.Now()
	st = r.stateLocked()
	r.log.Info("key "+pastTense(step), "active", st.Active, "kids", strings.Join(st.Keys, ","), "next", st.Next, "next_after", time.Duration(st.NextAfter*float64(time.Second)).Round(time.Millisecond))
	return http.StatusOK, nil
}

func pastTense(step string) string {
	switch step {
	case "publish":
		return "published"
	case "drop":
		return "dropped"
	}
	return step + "d"
}

func (r *rotator) stateLocked() keyState {
	st := keyState{Active: r.active.ID(), Keys: []string{r.active.ID()}}
	var wait time.Duration
	switch {
	case r.next != nil:
		st.Keys = append(st.Keys, r.next.ID())
		st.Next, wait = "activate", r.activateAfter
	case r.old != nil:
		st.Keys = append(st.Keys, r.old.ID())
		st.Next, wait = "drop", r.dropAfter
	default:
		st.Next = "publish"
	}
	if left := wait - time.Since(r.since); left > 0 {
		st.NextAfter = left.Seconds()
	}
	return st
}
