package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor"
)

// The mesh tests (mesh_test.go) run examples/mesh's services, auth,
// orders and inventory, as processes of their own, each on 127.0.0.1:0
// with TLS from a CA that the test makes, and mTLS between the services.

// meshBin is the examples/mesh binary, built beside the server's on the
// first call of buildMesh (TestMain builds only the server and client).
var (
	meshOnce   sync.Once
	meshBin    string
	meshBinErr error
)

// buildMesh builds examples/mesh once, with -race if this binary has it,
// into TestMain's directory, which TestMain removes.
func buildMesh(t *testing.T) string {
	t.Helper()
	meshOnce.Do(func() {
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			meshBinErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		bin := filepath.Join(filepath.Dir(serverBin), "mesh")
		args := []string{"build", "-o", bin}
		if raceEnabled() {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./examples/mesh")...)
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		if out, err := cmd.CombinedOutput(); err != nil {
			meshBinErr = fmt.Errorf("go %s ./examples/mesh: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		meshBin = bin
	})
	if meshBinErr != nil {
		t.Fatal(meshBinErr)
	}
	return meshBin
}

// meshTrustDomain is the SPIFFE trust domain examples/mesh reads
// identities from.
const meshTrustDomain = "slidejwt.test"

// meshCA is a CA made by the test, with a certificate for each identity
// the test asked for, written as PEM files into a temporary directory.
type meshCA struct {
	dir   string
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	pool  *x509.CertPool
	certs map[string]tls.Certificate
}

// newMeshCA makes a CA valid from an hour ago for a day (the test passes
// on any date) and a certificate for each name: URI SAN
// spiffe://slidejwt.test/<name>, DNS SAN <name>, loopback IP SANs.
func newMeshCA(t *testing.T, names ...string) *meshCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e mesh CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &meshCA{dir: t.TempDir(), cert: cert, key: key, pool: x509.NewCertPool(), certs: map[string]tls.Certificate{}}
	ca.pool.AddCert(cert)
	writePEM(t, filepath.Join(ca.dir, "ca.pem"), "CERTIFICATE", der)
	for i, name := range names {
		ca.issue(t, name, int64(i+2))
	}
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (ca *meshCA) issue(t *testing.T, name string, serial int64) {
	t.Helper()
	ca.issueAs(t, name, name, serial)
}

// issueAs issues a certificate for the identity name, as issue does, and
// files it under label: label.pem, label-key.pem, and ca.certs[label]. A
// second certificate for an identity is another certificate of the same
// workload, as after a reissue.
func (ca *meshCA) issueAs(t *testing.T, label, name string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		URIs:        []*url.URL{{Scheme: "spiffe", Host: meshTrustDomain, Path: "/" + name}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(ca.dir, label+".pem"), "CERTIFICATE", der)
	writePEM(t, filepath.Join(ca.dir, label+"-key.pem"), "PRIVATE KEY", keyDER)
	ca.certs[label] = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// args are the TLS flags of the service name.
func (ca *meshCA) args(name string) []string {
	return []string{"--ca", filepath.Join(ca.dir, "ca.pem"),
		"--cert", filepath.Join(ca.dir, name+".pem"), "--key", filepath.Join(ca.dir, name+"-key.pem")}
}

// tlsConfig is a client's TLS configuration for the service server,
// presenting the certificate of as ("" for none, as an end user).
func (ca *meshCA) tlsConfig(server, as string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.pool, ServerName: server}
	if as != "" {
		c.Certificates = []tls.Certificate{ca.certs[as]}
	}
	return c
}

// dial connects to the service server at addr over TLS, presenting the
// certificate of as ("" for none), with opts.
func (ca *meshCA) dial(t *testing.T, addr, server, as string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(ca.tlsConfig(server, as)))}, opts...)...)
	if err != nil {
		t.Fatalf("dial %s: %v", server, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// httpClient is an HTTPS client of auth presenting the certificate of as.
func (ca *meshCA) httpClient(t *testing.T, as string) *http.Client {
	tr := &http.Transport{TLSClientConfig: ca.tlsConfig("auth", as)}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// meshProc is one running service of examples/mesh.
type meshProc struct {
	role   string
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan struct{}
	err    error
	attrs  map[string]string // of the listening line
}

// listeningAttr matches key=value on the listening line (slog's text
// handler; the values the tests read have no spaces).
var listeningAttr = regexp.MustCompile(`\b([a-z_]+)=([^\s"]+)`)

// startMeshProc starts the mesh service role with args on a free
// loopback port, waits for its listening line, and stops it when the
// test ends, checking its output as startServer's cleanup does: no token,
// nothing like a JWT, no data race, status 0.
func startMeshProc(t *testing.T, role string, args ...string) *meshProc {
	t.Helper()
	p := &meshProc{role: role, stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(buildMesh(t), append([]string{role, "--addr", "127.0.0.1:0"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	p.cmd.Env = processEnv()
	setProcAttr(p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", role, err)
	}
	track(p.cmd)
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.After(30 * time.Second)
	for p.attrs == nil {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			if strings.Contains(line, "msg=listening ") {
				p.attrs = map[string]string{}
				for _, m := range listeningAttr.FindAllStringSubmatch(line, -1) {
					p.attrs[m[1]] = m[2]
				}
			}
		}
		if p.attrs != nil {
			break
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before listening: %v\n%s", role, p.err, p.stderr)
		case <-deadline:
			t.Fatalf("%s printed no listening line within 30s\n%s", role, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p
}

func (p *meshProc) addr() string { return p.attrs["addr"] }

func (p *meshProc) stop(t *testing.T) {
	stopProc(p.cmd)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		killProc(p.cmd)
		<-p.done
		t.Errorf("%s did not stop within 10s of SIGTERM; killed it", p.role)
	}
	out := p.stderr.String()
	if what := leakedToken(out); what != "" {
		t.Errorf("%s output contains %s", p.role, what)
	}
	if strings.Contains(out, "eyJ") {
		t.Errorf("%s output contains %q, the start of a JWT", p.role, "eyJ")
	}
	if strings.Contains(out, "DATA RACE") {
		t.Errorf("%s found a data race:\n%s", p.role, out)
	}
	if canStopCleanly && p.attrs != nil && p.err != nil {
		t.Errorf("%s exit after SIGTERM: %v, want status 0\n%s", p.role, p.err, out)
	}
}

// count returns how many of the process's log lines contain every one of
// parts.
func (p *meshProc) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if !slices.ContainsFunc(parts, func(s string) bool { return !strings.Contains(line, s) }) {
			n++
		}
	}
	return n
}

// meshOpts configures a mesh: flags for every service, and for each one.
type meshOpts struct {
	common                  []string // every service's, after the defaults
	auth, orders, inventory []string
	// ordersAtOtherAuth starts a second auth service, with a key of its
	// own that no JWKS the mesh reads lists, and points orders' --auth at
	// it: orders then logs in as itself there, and asks it for renewals.
	ordersAtOtherAuth bool
}

// meshTTL is the idle window the mesh tests run with, renewed in its last
// meshRenewBefore; the services wait meshRenewTimeout for auth's renewals
// (more than the 1 s default: a dozen -race processes share the machine).
const (
	meshTTL          = 3 * time.Second
	meshRenewBefore  = 2 * time.Second
	meshLeeway       = time.Second
	meshRenewTimeout = "3s"
)

// mesh is auth, inventory and orders, started in that order.
type mesh struct {
	ca                      *meshCA
	auth, inventory, orders *meshProc
	other                   *meshProc        // with ordersAtOtherAuth, the auth orders talks to
	authConn                *grpc.ClientConn // an end user's connection to auth: no certificate
}

// meshDefaults are the flags of every service of a test mesh.
func meshDefaults() []string {
	return []string{"--ttl", meshTTL.String(), "--renew-before", meshRenewBefore.String(),
		"--max-lifetime", "2m", "--leeway", meshLeeway.String()}
}

// startMesh makes a CA and starts auth, inventory (which takes calls
// from orders only) and orders.
func startMesh(t *testing.T, o meshOpts) *mesh {
	t.Helper()
	m := &mesh{ca: newMeshCA(t, "auth", "orders", "inventory", "operator")}
	common := append(meshDefaults(), o.common...)
	m.auth = startMeshProc(t, "auth", slices.Concat(m.ca.args("auth"), common, o.auth)...)
	svc := slices.Concat(common, []string{"--jwks", m.auth.attrs["jwks"], "--renew-timeout", meshRenewTimeout})
	m.inventory = startMeshProc(t, "inventory", slices.Concat(m.ca.args("inventory"), svc,
		[]string{"--auth", m.auth.addr(), "--allow-peers", "orders"}, o.inventory)...)
	ordersAuth := m.auth
	if o.ordersAtOtherAuth {
		m.other = startMeshProc(t, "auth", slices.Concat(m.ca.args("auth"), common, o.auth)...)
		ordersAuth = m.other
	}
	m.orders = startMeshProc(t, "orders", slices.Concat(m.ca.args("orders"), svc,
		[]string{"--auth", ordersAuth.addr(), "--inventory", m.inventory.addr()}, o.orders)...)
	m.authConn = m.ca.dial(t, m.auth.addr(), "auth", "")
	return m
}

// login logs user in at auth (password user-password) and returns the
// session's first tokens.
func (m *mesh) login(t *testing.T, user string) *slidejwtv1.TokenPair {
	t.Helper()
	resp, err := demov1.NewDemoServiceClient(m.authConn).Login(rpcContext(t), &demov1.LoginRequest{Username: user, Password: user + "-password"})
	if err != nil {
		t.Fatalf("Login %s: %v", user, err)
	}
	p := resp.GetTokens()
	see(p.GetAccessToken(), p.GetRefreshToken())
	return p
}

// holder returns a holder of pair's tokens bound to orders, which
// refreshes at auth (counted in attempts) only after a TOKEN_EXPIRED,
// and a DemoService client of orders through it.
func (m *mesh) holder(t *testing.T, pair *slidejwtv1.TokenPair) (*holder, demov1.DemoServiceClient) {
	t.Helper()
	h := &holder{}
	r := interceptor.TokenServiceRefresher(slidejwtv1.NewTokenServiceClient(m.authConn))
	th, err := interceptor.NewTokenHolder(pair.GetAccessToken(),
		interceptor.BindTarget(m.orders.addr()),
		interceptor.WithSessionEnd(pair.GetSessionEndsAt().AsTime()),
		interceptor.WithRefreshToken(pair.GetRefreshToken()),
		interceptor.WithRefreshMargin(0),
		interceptor.WithRefresher(interceptor.RefreshFunc(func(ctx context.Context, tok string) (*slidejwtv1.TokenPair, error) {
			h.attempts.Add(1)
			return r.Refresh(ctx, tok)
		})),
		interceptor.OnSwap(func(tok string, _ time.Time) { see(tok); h.swaps.Add(1) }),
		interceptor.OnRefresh(func(p *slidejwtv1.TokenPair) {
			see(p.GetAccessToken(), p.GetRefreshToken())
			h.refreshes.Add(1)
		}),
	)
	if err != nil {
		t.Fatalf("NewTokenHolder: %v", err)
	}
	h.TokenHolder = th
	conn := m.ca.dial(t, m.orders.addr(), "orders", "",
		grpc.WithChainUnaryInterceptor(th.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(th.StreamClientInterceptor()))
	return h, demov1.NewDemoServiceClient(conn)
}

// ordersDirect is a DemoService client of orders without a holder, as an
// end user's client: calls carry the token the test gives them.
func (m *mesh) ordersDirect(t *testing.T) demov1.DemoServiceClient {
	return demov1.NewDemoServiceClient(m.ca.dial(t, m.orders.addr(), "orders", ""))
}

// inventoryAs is a DemoService client of inventory, presenting the
// certificate of as ("" for none).
func (m *mesh) inventoryAs(t *testing.T, as string) demov1.DemoServiceClient {
	return demov1.NewDemoServiceClient(m.ca.dial(t, m.inventory.addr(), "inventory", as))
}

// rotate takes a step of auth's key rotation as the identity as, and
// returns the HTTP status and auth's answer.
func (m *mesh) rotate(t *testing.T, as, step string) (int, meshKeys) {
	t.Helper()
	req, err := http.NewRequestWithContext(rpcContext(t), http.MethodPost, m.auth.attrs["admin"]+step, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.ca.httpClient(t, as).Do(req)
	if err != nil {
		t.Fatalf("rotation step %s: %v", step, err)
	}
	defer resp.Body.Close()
	var st meshKeys
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusForbidden {
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatalf("rotation step %s: %s: %v: %q", step, resp.Status, err, body)
		}
	}
	return resp.StatusCode, st
}

// meshKeys is auth's answer at the rotation endpoint.
type meshKeys struct {
	Active    string   `json:"active"`
	Keys      []string `json:"keys"`
	Next      string   `json:"next"`
	NextAfter float64  `json:"next_after_seconds"`
	Error     string   `json:"error"`
}

// jwks fetches auth's JWKS as the identity as.
func (m *mesh) jwks(t *testing.T, as string) []map[string]any {
	t.Helper()
	req, err := http.NewRequestWithContext(rpcContext(t), http.MethodGet, m.auth.attrs["jwks"], nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.ca.httpClient(t, as).Do(req)
	if err != nil {
		t.Fatalf("GET JWKS: %v", err)
	}
	defer resp.Body.Close()
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET JWKS: %s, %v", resp.Status, err)
	}
	return doc.Keys
}
