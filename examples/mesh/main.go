// Command mesh is slidejwt's service mesh example: an auth service that
// alone holds a private key, two verify-only services, orders and
// inventory, and a client, on loopback, with TLS everywhere and mTLS
// between the services.
//
//	go run ./examples/mesh                        # the whole mesh and a scripted session
//	go run ./examples/mesh --redis 127.0.0.1:6379 # the same, with revocation shared through Redis
//
// Without a role, the command makes a CA and a certificate for each
// workload in a temporary directory, starts auth, inventory and orders as
// child processes of itself, acts as the client of a scripted session,
// prints what happened (logins, calls from the client to orders to
// inventory, the renewals and which service asked auth for each, a key
// rotation through the JWKS under load, a logout), stops the children and
// exits 0 if every step behaved as expected. It needs nothing but Go.
//
// With a role, it is one service of the mesh:
//
//	mesh auth      --ca ca.pem --cert auth.pem --key auth-key.pem [flags]
//	mesh inventory --ca ca.pem --cert inventory.pem --key inventory-key.pem --jwks URL --auth ADDR --allow-peers orders [flags]
//	mesh orders    --ca ca.pem --cert orders.pem --key orders-key.pem --jwks URL --auth ADDR --inventory ADDR [flags]
//
// auth signs (ES256, or EdDSA with --alg), starts sessions
// (demo.v1.DemoService/Login), serves slidejwt.v1.TokenService over TLS,
// and its public keys as a JWKS at https://<--http-addr>/.well-known/jwks.json,
// beside the key rotation's steps (POST /admin/keys/publish, activate,
// drop, for the --operator identity only). orders and inventory verify
// against that JWKS and ask auth for the renewals they relay
// (TokenService/Renew over mTLS). orders serves demo.v1.DemoService's Echo
// and Watch by calling inventory, in the two ways of PROTOCOL.md §11: as
// its caller, forwarding the caller's token (interceptor.Forwarder), and,
// for Echo, first as itself, with a session of its own that it logs in to
// at auth by its certificate, lazily and again whenever the session ends
// (interceptor.ServiceHolder; auth's --services and
// --service-max-lifetime). auth binds that session to orders' certificate
// (interceptor.BindToPeerCertificate, PROTOCOL.md §12): its tokens are
// refused on a call that comes with another certificate or none, so
// inventory does not renew them and orders refreshes them at auth. Users'
// sessions are not bound: orders forwards their tokens. inventory takes calls from orders only
// (--allow-peers), by its client certificate.
//
// A certificate's identity is its URI SAN spiffe://slidejwt.test/<name>;
// its DNS SAN <name> is what a client dialing the service checks.
//
// Revocation: auth keeps sessions in memory, or in Redis with --redis.
// With --redis, orders and inventory check every call and open stream
// against the same Redis, so a logout at auth is refused everywhere at
// the next call and open streams end. Without it they have no revocation
// state: a revoked session's current access token is still accepted until
// it expires, at most --ttl plus --leeway after the logout; auth refuses
// to renew it and to refresh it, so the session ends there, but an open
// stream lives until the session's absolute end (--max-lifetime).
//
// Every process logs one line per event with slog, never a token; the
// listening line names its addresses.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// roles are the services the command can be.
var roles = []string{"auth", "orders", "inventory"}

// isRole reports whether arg names a role.
func isRole(arg string) bool {
	for _, r := range roles {
		if arg == r {
			return true
		}
	}
	return false
}

// runMain runs the command line args and returns the exit status: 0, 1
// on a failure, 2 on a bad command line.
func runMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	role := "mesh"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		role, args = args[0], args[1:]
	}
	var err error
	switch {
	case role == "mesh":
		err = runMesh(ctx, args, stdout, stderr)
	case role == "auth":
		var cfg authConfig
		if cfg, err = parseAuth(args, stderr); err == nil {
			err = runAuth(stopOnEOF(ctx, cfg.stopOnEOF, stdin), cfg, newLogger(stderr))
		}
	case isRole(role):
		var cfg serviceConfig
		if cfg, err = parseService(role, args, stderr); err == nil {
			err = runService(stopOnEOF(ctx, cfg.stopOnEOF, stdin), role, cfg, newLogger(stderr))
		}
	default:
		err = usagef("unknown role %q: want %s, or none to run the whole mesh", role, strings.Join(roles, ", "))
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "mesh %s: %v\n", role, err)
		return 2
	default:
		fmt.Fprintf(stderr, "mesh %s: %v\n", role, err)
		return 1
	}
}

// stopOnEOF returns ctx, or with on a context that is also cancelled once
// stdin reaches its end: a child of the mesh command stops when its
// parent closes the pipe, or dies.
func stopOnEOF(ctx context.Context, on bool, stdin io.Reader) context.Context {
	if !on {
		return ctx
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	return ctx
}
