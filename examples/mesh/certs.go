package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/slidejwt/slidejwt/interceptor"
)

// trustDomain is the SPIFFE trust domain of the mesh's identities: a
// service named orders holds a certificate whose URI SAN is
// spiffe://slidejwt.test/orders.
const trustDomain = "slidejwt.test"

// certValidity is how long the certificates made at start-up are valid.
// They live in a temporary directory that the mesh removes at exit.
const certValidity = 24 * time.Hour

// meshCA is the mesh's own certificate authority, made at start-up: no
// certificate of it exists anywhere else, and its key never leaves the
// mesh command's memory.
type meshCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

// newCA makes a CA valid from an hour before now (for clock skew) for
// certValidity.
func newCA(now time.Time) (*meshCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "slidejwt mesh CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &meshCA{cert: cert, key: key, der: der}, nil
}

// issue makes a certificate for the workload name, for servers and
// clients alike: its URI SAN spiffe://slidejwt.test/<name> is the
// identity the mesh's services check, its DNS SAN <name> is the name a
// client dialing the service verifies, and it is valid for loopback
// addresses too. It returns the certificate and its key, PEM-encoded.
func (ca *meshCA) issue(name string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{name},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		URIs:         []*url.URL{identityURI(name)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// certPEM is the CA's certificate, PEM-encoded: what every process of the
// mesh trusts.
func (ca *meshCA) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func identityURI(name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/" + name}
}

// tlsFiles names the PEM files of one process: the CA it trusts, and its
// own certificate and key (none for an end-user client).
type tlsFiles struct {
	ca, cert, key string
}

// writeTLSFiles writes the CA's certificate (ca.pem) and, for each name,
// a certificate and key (<name>.pem, <name>-key.pem) into dir, readable
// by the owner only, and returns their names by workload.
func writeTLSFiles(dir string, ca *meshCA, now time.Time, names ...string) (map[string]tlsFiles, error) {
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM(), 0o600); err != nil {
		return nil, err
	}
	files := map[string]tlsFiles{"": {ca: caFile}}
	for _, name := range names {
		certPEM, keyPEM, err := ca.issue(name, now)
		if err != nil {
			return nil, err
		}
		f := tlsFiles{ca: caFile, cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+"-key.pem")}
		if err := os.WriteFile(f.cert, certPEM, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(f.key, keyPEM, 0o600); err != nil {
			return nil, err
		}
		files[name] = f
	}
	return files, nil
}

// tlsMaterial is a process's loaded TLS files.
type tlsMaterial struct {
	roots *x509.CertPool
	cert  *tls.Certificate // nil for a client without a certificate
}

// load reads the files. A process with a certificate must also have its
// key, and the reverse.
func (f tlsFiles) load() (*tlsMaterial, error) {
	caPEM, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", f.ca)
	}
	m := &tlsMaterial{roots: roots}
	if f.cert == "" && f.key == "" {
		return m, nil
	}
	if f.cert == "" || f.key == "" {
		return nil, errors.New("a certificate needs its key, and a key its certificate")
	}
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, err
	}
	m.cert = &cert
	return m, nil
}

// server returns the TLS configuration of a server of the mesh. With
// requireClient, a client must present a certificate of the mesh's CA
// (the services that only other services call); without it, a client may
// present one (end users have none), and it is verified if it does.
func (m *tlsMaterial) server(requireClient bool) *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if requireClient {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*m.cert},
		ClientCAs:    m.roots,
		ClientAuth:   auth,
	}
}

// client returns the TLS configuration to call the workload server: the
// server must present a certificate of the mesh's CA for that name, and
// the client presents its own, if it has one.
func (m *tlsMaterial) client(server string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: m.roots, ServerName: server}
	if m.cert != nil {
		c.Certificates = []tls.Certificate{*m.cert}
	}
	return c
}

// identityOf returns the mesh identity in a verified certificate chain:
// the name in its leaf's URI SAN spiffe://slidejwt.test/<name>, or "".
func identityOf(chains [][]*x509.Certificate) string {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ""
	}
	for _, u := range chains[0][0].URIs {
		if u.Scheme == "spiffe" && u.Host == trustDomain {
			if name := strings.TrimPrefix(u.Path, "/"); name != "" && !strings.Contains(name, "/") {
				return name
			}
		}
	}
	return ""
}

// peerIdentity returns the mesh identity of a gRPC call's peer, from the
// certificate it presented over mTLS, or "" if it presented none.
func peerIdentity(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	return identityOf(info.State.VerifiedChains)
}

// peerThumbprint returns the SHA-256 thumbprint (x5t#S256) of the client
// certificate a gRPC call's peer presented, or "" if it presented none:
// what a session bound to that certificate carries in its cnf claim. A
// thumbprint is no secret; it identifies the certificate, as its serial
// number does.
func peerThumbprint(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return ""
	}
	return interceptor.CertificateThumbprint(info.State.PeerCertificates[0]).String()
}
