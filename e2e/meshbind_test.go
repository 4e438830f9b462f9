package e2e

import (
	"crypto/x509"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// TestMesh_BoundServiceToken: orders' own session, which auth binds to
// the certificate orders logs in with (PROTOCOL.md §12), is useless
// without that certificate. The test logs in as orders over mTLS with
// orders' certificate, as orders' ServiceHolder does, and presents the
// token: inventory and orders refuse it with TOKEN_INVALID from another
// certificate of the mesh (inventory's, or a second certificate issued to
// the identity orders, which inventory's --allow-peers lets through) and
// from no certificate, and accept it from orders' own. The refresh token
// is bound likewise: auth refuses it from another certificate, retiring
// nothing, and refreshes it from orders'.
func TestMesh_BoundServiceToken(t *testing.T) {
	t.Parallel()
	// An idle window longer than the test: the token stays valid, so a
	// refusal is about the certificate only.
	m := startMesh(t, meshOpts{common: []string{"--ttl", "1m"}})
	m.ca.issueAs(t, "orders-reissued", "orders", 100)
	// An inventory that, without --allow-peers, takes calls with no
	// client certificate too, so that the binding alone refuses them.
	open := startMeshProc(t, "inventory", slices.Concat(m.ca.args("inventory"), meshDefaults(), []string{"--ttl", "1m",
		"--jwks", m.auth.attrs["jwks"], "--auth", m.auth.addr(), "--renew-timeout", meshRenewTimeout})...)

	resp, err := demov1.NewDemoServiceClient(m.ca.dial(t, m.auth.addr(), "auth", "orders")).
		Login(rpcContext(t), &demov1.LoginRequest{Username: "orders"})
	if err != nil {
		t.Fatalf("Login as orders with orders' certificate: %v", err)
	}
	pair := resp.GetTokens()
	tok := pair.GetAccessToken()
	see(tok, pair.GetRefreshToken())

	leaf, err := x509.ParseCertificate(m.ca.certs["orders"].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	_, claims := splitToken(t, tok)
	cnf, _ := claims["cnf"].(map[string]any)
	if got, want := cnf["x5t#S256"], interceptor.CertificateThumbprint(leaf).String(); got != want {
		t.Fatalf("orders' token has cnf %v, want x5t#S256 %s: the thumbprint of orders' certificate", claims["cnf"], want)
	}

	refused := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: %v, want Unauthenticated TOKEN_INVALID", what, err)
		}
		wantReason(t, what, err, interceptor.ReasonTokenInvalid)
	}
	echo := func(addr, server, as string) (*demov1.EchoResponse, error) {
		c := demov1.NewDemoServiceClient(m.ca.dial(t, addr, server, as))
		return c.Echo(withToken(rpcContext(t), tok), &demov1.EchoRequest{Message: "stock level"})
	}

	for _, inv := range []struct {
		name string
		p    *meshProc
		from []string // certificates the service lets through its TLS and peer checks
	}{
		{"inventory", m.inventory, []string{"orders-reissued"}},
		{"inventory without --allow-peers", open, []string{"orders-reissued", "inventory", ""}},
	} {
		for _, as := range inv.from {
			_, err := echo(inv.p.addr(), "inventory", as)
			refused(inv.name+": orders' token from certificate "+certName(as), err)
		}
		r, err := echo(inv.p.addr(), "inventory", "orders")
		if err != nil {
			t.Fatalf("%s: orders' token from orders' certificate: %v", inv.name, err)
		}
		if r.GetSubject() != "service:orders" {
			t.Errorf("%s saw %q, want service:orders", inv.name, r.GetSubject())
		}
	}
	if m.inventory.count("msg=rejected ", "slidejwt.reason=TOKEN_INVALID ", "peer=orders ") == 0 {
		t.Errorf("inventory did not log its refusal of orders' token from the reissued certificate")
	}

	// orders takes calls without a client certificate (its end users
	// have none) and from any certificate of the mesh.
	for _, as := range []string{"", "inventory", "orders-reissued"} {
		_, err := echo(m.orders.addr(), "orders", as)
		refused("orders: its own token from certificate "+certName(as), err)
	}
	// From orders' certificate the token passes orders' interceptor; the
	// handler then calls inventory as orders itself, and as its caller,
	// whose token, bound, orders' Forwarder refuses to forward (§11, §12):
	// FailedPrecondition without a slidejwt reason.
	_, err = echo(m.orders.addr(), "orders", "orders")
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition {
		t.Fatalf("orders: its own token from orders' certificate: %v, want FailedPrecondition (accepted, then not forwarded)", err)
	}
	if r, ok := interceptor.ReasonOf(err); ok {
		t.Fatalf("orders: its own token from orders' certificate: reason %s, want none", interceptor.WireReason(r))
	}

	// The refresh token: refused from another certificate or none before
	// auth's store is asked, so it is not retired; refreshed from orders'.
	refresh := &slidejwtv1.RefreshRequest{RefreshToken: pair.GetRefreshToken()}
	for _, as := range []string{"", "inventory", "orders-reissued"} {
		_, err := slidejwtv1.NewTokenServiceClient(m.ca.dial(t, m.auth.addr(), "auth", as)).Refresh(rpcContext(t), refresh)
		refused("Refresh of orders' refresh token from certificate "+certName(as), err)
	}
	r, err := slidejwtv1.NewTokenServiceClient(m.ca.dial(t, m.auth.addr(), "auth", "orders")).Refresh(rpcContext(t), refresh)
	if err != nil {
		t.Fatalf("Refresh of orders' refresh token from orders' certificate: %v", err)
	}
	see(r.GetTokens().GetAccessToken(), r.GetTokens().GetRefreshToken())
}

// certName names the certificate as ("" for none) in a failure message.
func certName(as string) string {
	if as == "" {
		return "(none)"
	}
	return as
}
