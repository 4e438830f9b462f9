package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be a service of the mesh: the mesh
// command starts its children from its own executable, which under go
// test is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && isRole(os.Args[1]) {
		os.Exit(runMain(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestRun runs the whole mesh and its script, as `go run ./examples/mesh`
// does, and checks the transcript's key lines, so that the README's
// command cannot rot unnoticed. The script checks its own expectations
// (no failed call, renewals, the rotation, the logout) and fails run if
// one does not hold.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the mesh's script takes about 30 s")
	}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := runMesh(ctx, nil, &out, &errOut); err != nil {
		t.Fatalf("runMesh: %v\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	got := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`auth +listening .*jwks=https://127\.0\.0\.1:\d+/\.well-known/jwks\.json`),
		regexp.MustCompile(`alice: call 16 ok: orders saw alice; inventory saw service:orders, then alice`),
		regexp.MustCompile(`auth +login +enduser\.id=service:orders`),
		regexp.MustCompile(`auth +renewed +rpc\.method=TokenService/Renew +peer=orders`),
		regexp.MustCompile(`auth +renewed +rpc\.method=TokenService/Renew +peer=inventory`),
		regexp.MustCompile(`orders +JWKS fetched +kids=\S+,\S+`),
		regexp.MustCompile(`alice: \d+ calls during the rotation, 0 failed`),
		regexp.MustCompile(`bob: call refused .* after the logout: Unauthenticated SESSION_REVOKED`),
		regexp.MustCompile(`(?m)all steps behaved as expected$`),
	} {
		if !want.MatchString(got) {
			t.Errorf("transcript lacks %q\n%s", want, got)
		}
	}
	if strings.Contains(got, "eyJ") {
		t.Errorf("transcript contains %q, the start of a JWT", "eyJ")
	}
	if strings.Contains(got, "DATA RACE") {
		t.Errorf("a child found a data race:\n%s", got)
	}
}

// TestParseLogLine: the transcript reads slog's text lines, quoted values
// included, and keeps a line it cannot read as its message.
func TestParseLogLine(t *testing.T) {
	l := parseLogLine(`time=2026-01-02T03:04:05.000Z level=WARN msg="asked auth for a renewal: none" enduser.id=alice err="a \"quoted\" reason"`)
	if l.msg != "asked auth for a renewal: none" {
		t.Errorf("msg = %q", l.msg)
	}
	if got, want := strings.Join(l.keys, ","), "time,level,enduser.id,err"; got != want {
		t.Errorf("keys = %s, want %s", got, want)
	}
	if got := l.attrs["err"]; got != `a "quoted" reason` {
		t.Errorf("err = %q", got)
	}
	if got := parseLogLine("panic: something broke"); got.msg != "panic: something broke" || len(got.keys) != 0 {
		t.Errorf("an unreadable line = %+v, want it kept as the message", got)
	}
}

// TestIdentity: a certificate issued by the mesh's CA names its workload
// in its URI SAN, and loads as a client and server certificate.
func TestIdentity(t *testing.T) {
	now := time.Now()
	ca, err := newCA(now)
	if err != nil {
		t.Fatal(err)
	}
	files, err := writeTLSFiles(t.TempDir(), ca, now, "orders")
	if err != nil {
		t.Fatal(err)
	}
	m, err := files["orders"].load()
	if err != nil {
		t.Fatal(err)
	}
	leaf := m.cert.Leaf
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: m.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatalf("the certificate does not verify against its CA: %v", err)
	}
	if got := identityOf(chains); got != "orders" {
		t.Errorf("identity = %q, want orders", got)
	}
	if _, err := files[""].load(); err != nil {
		t.Errorf("the CA alone (an end user's client) does not load: %v", err)
	}
}

// TestBadFlags: a bad command line exits with status 2 and one line that
// names the problem.
func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"auth"}, "--ca, --cert and --key are required"},
		{[]string{"gateway"}, "unknown role"},
		{[]string{"orders", "--ca", "a", "--cert", "b", "--key", "c", "--jwks", "http://x", "--auth", "y", "--inventory", "z"}, "--jwks: want an https:// URL"},
		{[]string{"auth", "--ca", "a", "--cert", "b", "--key", "c", "--alg", "HS256"}, "--alg must be ES256 or EdDSA"},
		{[]string{"--redis", "user@host"}, "--redis"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := runMain(context.Background(), tt.args, strings.NewReader(""), &out, &errOut); code != 2 {
			t.Errorf("%q: exit status %d, want 2", tt.args, code)
		}
		if lines := strings.Split(strings.TrimSpace(errOut.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
			t.Errorf("%q: stderr %q, want one line with %q", tt.args, errOut.String(), tt.want)
		}
	}
}
