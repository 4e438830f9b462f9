package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/interceptor"
)

// usageError is a bad command line; its message names the flag at fault.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// common is the configuration every service of the mesh shares.
type common struct {
	addr      string
	tls       tlsFiles
	issuer    string
	audience  string
	policy    interceptor.Policy // TTL, MaxLifetime, RenewBefore
	leeway    time.Duration
	redis     *rueidis.ClientOption // nil: no Redis; may hold a password, never print it
	stopOnEOF bool
}

// authConfig is the auth service's command line.
type authConfig struct {
	common
	httpAddr   string
	alg        string
	jwksMaxAge time.Duration
	refreshTTL time.Duration
	users      map[string]string
	operator   string
	// services may log in as themselves, by their certificate; their
	// sessions end after serviceLifetime.
	services        []string
	serviceLifetime time.Duration
}

// serviceConfig is the command line of orders and inventory.
type serviceConfig struct {
	common
	jwks         string
	auth         string
	inventory    string // orders only: the inventory service to call
	refreshMin   time.Duration
	refetch      time.Duration
	noRenew      bool
	renewTimeout time.Duration
	allowPeers   []string // "": any caller, with or without a certificate
	streamCheck  time.Duration
}

// commonFlags registers the flags of every service on fs and returns a
// function that checks them once fs is parsed.
func commonFlags(fs *flag.FlagSet, c *common) func() error {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:0", "gRPC listen address (port 0 picks a free one; the listening line names it)")
	fs.StringVar(&c.tls.ca, "ca", "", "PEM file of the mesh's CA certificate (required)")
	fs.StringVar(&c.tls.cert, "cert", "", "PEM file of this service's certificate, issued by the CA for its name (required)")
	fs.StringVar(&c.tls.key, "key", "", "PEM file of the certificate's private key (required)")
	fs.StringVar(&c.issuer, "issuer", "auth", "iss of the tokens; the same on every service")
	fs.StringVar(&c.audience, "audience", "mesh", "aud of the tokens; the same on every service")
	ttl := fs.Duration("ttl", 4*time.Second, "idle window of an access token; the same on every service")
	renewBefore := fs.Duration("renew-before", 0, "renew when the remaining lifetime is below this (default half of --ttl); the same on every service")
	maxLifetime := fs.Duration("max-lifetime", 2*time.Minute, "absolute session lifetime after login; the same on every service")
	fs.DurationVar(&c.leeway, "leeway", time.Second, "clock-skew allowance")
	redis := fs.String("redis", "", "`address` of a Redis (host:port or redis:// URL) that shares revocation between the services; default: none")
	fs.BoolVar(&c.stopOnEOF, "stop-on-eof", false, "stop when standard input closes (the mesh command starts its children so, so that none outlives it)")
	return func() error {
		if c.tls.ca == "" || c.tls.cert == "" || c.tls.key == "" {
			return usagef("--ca, --cert and --key are required")
		}
		if *ttl < time.Second || *maxLifetime < *ttl {
			return usagef("--ttl must be at least 1s and --max-lifetime at least --ttl")
		}
		if *renewBefore == 0 {
			*renewBefore = *ttl / 2
		}
		if *renewBefore < 0 || *renewBefore > *ttl {
			return usagef("--renew-before must be positive and at most --ttl")
		}
		if c.leeway < 0 || c.leeway > 5*time.Minute {
			return usagef("--leeway must be in [0, 5m]")
		}
		c.policy = interceptor.Policy{TTL: *ttl, MaxLifetime: *maxLifetime, RenewBefore: *renewBefore}
		if *redis != "" {
			opt, err := parseRedis(*redis)
			if err != nil {
				return err
			}
			c.redis = &opt
		}
		return nil
	}
}

// parseRedis turns --redis into a client option. Its errors never quote
// the value, which may carry a password.
func parseRedis(v string) (rueidis.ClientOption, error) {
	if !strings.Contains(v, "://") {
		host, port, err := net.SplitHostPort(v)
		if err != nil || host == "" || port == "" || strings.ContainsAny(v, "@/") {
			return rueidis.ClientOption{}, usagef("--redis: want host:port, or a redis:// or rediss:// URL")
		}
		return rueidis.ClientOption{InitAddress: []string{v}}, nil
	}
	opt, err := rueidis.ParseURL(v)
	if err != nil {
		return rueidis.ClientOption{}, usagef("--redis: not a valid Redis URL")
	}
	return opt, nil
}

// parse parses args with fs, whose output goes to stderr only for -h.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer, check func() error) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return check()
}

func parseAuth(args []string, stderr io.Writer) (authConfig, error) {
	var c authConfig
	fs := flag.NewFlagSet("auth", flag.ContinueOnError)
	checkCommon := commonFlags(fs, &c.common)
	fs.StringVar(&c.httpAddr, "http-addr", "127.0.0.1:0", "HTTPS listen address of the JWKS ("+interceptor.JWKSPath+") and of the key-rotation endpoint ("+adminPath+")")
	fs.StringVar(&c.alg, "alg", "ES256", "signing algorithm: ES256 or EdDSA")
	fs.DurationVar(&c.jwksMaxAge, "jwks-max-age", interceptor.DefaultJWKSMaxAge, "Cache-Control max-age of the JWKS: a new key signs no sooner than this after it was published")
	fs.DurationVar(&c.refreshTTL, "refresh-ttl", 6*time.Second, "idle lifetime of a refresh token")
	users := fs.String("users", "alice:alice-password,bob:bob-password", "comma-separated user:password pairs")
	fs.StringVar(&c.operator, "operator", "operator", "mesh identity allowed to rotate the keys ("+adminPath+")")
	services := fs.String("services", "orders", "comma-separated mesh identities that may log in as themselves, by their certificate")
	fs.DurationVar(&c.serviceLifetime, "service-max-lifetime", 0, "absolute lifetime of a service's own session, at most --max-lifetime (default 1h, or --max-lifetime if shorter)")
	err := parse(fs, args, stderr, func() error {
		if err := checkCommon(); err != nil {
			return err
		}
		if c.alg != "ES256" && c.alg != "EdDSA" {
			return usagef("--alg must be ES256 or EdDSA")
		}
		if c.jwksMaxAge < 0 || c.refreshTTL < time.Second {
			return usagef("--jwks-max-age must not be negative, --refresh-ttl must be at least 1s")
		}
		if c.serviceLifetime == 0 {
			c.serviceLifetime = min(time.Hour, c.policy.MaxLifetime)
		}
		if c.serviceLifetime < c.policy.TTL || c.serviceLifetime > c.policy.MaxLifetime {
			return usagef("--service-max-lifetime must be at least --ttl and at most --max-lifetime")
		}
		if *services != "" {
			c.services = strings.Split(*services, ",")
		}
		c.users = map[string]string{}
		for _, pair := range strings.Split(*users, ",") {
			user, pass, ok := strings.Cut(pair, ":")
			if !ok || user == "" || pass == "" {
				return usagef("--users: want comma-separated user:password pairs")
			}
			c.users[user] = pass
		}
		return nil
	})
	return c, err
}

func parseService(role string, args []string, stderr io.Writer) (serviceConfig, error) {
	var c serviceConfig
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	checkCommon := commonFlags(fs, &c.common)
	fs.StringVar(&c.jwks, "jwks", "", "https:// URL of the auth service's JWKS (required)")
	fs.StringVar(&c.auth, "auth", "", "host:port of the auth service, asked for renewals over mTLS (required)")
	if role == "orders" {
		fs.StringVar(&c.inventory, "inventory", "", "host:port of the inventory service (required)")
	}
	fs.DurationVar(&c.refreshMin, "jwks-refresh-min", interceptor.DefaultJWKSRefreshMin, "fetch the JWKS again no sooner than this, whatever its max-age")
	fs.DurationVar(&c.refetch, "jwks-refetch", interceptor.DefaultJWKSRefetchInterval, "least time between two JWKS fetches (a token naming an unknown kid makes one)")
	fs.BoolVar(&c.noRenew, "no-renew", false, "never renew a token, nor ask auth to (default: ask auth when a renewal is due)")
	fs.DurationVar(&c.renewTimeout, "renew-timeout", interceptor.DefaultDelegatedRenewalTimeout, "how long a call waits for auth's renewal")
	peers := fs.String("allow-peers", "", "comma-separated mesh identities allowed to call; when set, a caller must present a certificate of the mesh (default: anyone, end users without a certificate included)")
	fs.DurationVar(&c.streamCheck, "stream-check", interceptor.DefaultStreamCheckInterval, "how often a silent open stream checks that its session is live")
	err := parse(fs, args, stderr, func() error {
		if err := checkCommon(); err != nil {
			return err
		}
		if u, err := url.Parse(c.jwks); err != nil || u.Scheme != "https" || u.Host == "" {
			return usagef("--jwks: want an https:// URL")
		}
		if c.auth == "" || role == "orders" && c.inventory == "" {
			return usagef("--auth is required, and for orders --inventory")
		}
		if c.refreshMin <= 0 || c.refetch <= 0 || c.renewTimeout <= 0 || c.streamCheck <= 0 {
			return usagef("--jwks-refresh-min, --jwks-refetch, --renew-timeout and --stream-check must be positive")
		}
		if *peers != "" {
			c.allowPeers = strings.Split(*peers, ",")
		}
		return nil
	})
	return c, err
}
