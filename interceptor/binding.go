package interceptor

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"runtime"
	"sync"
	"weak"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// This file holds certificate-bound sessions (RFC 8705 §3, PROTOCOL.md
// §12): a session bound to the TLS client certificate of its holder
// carries the certificate's SHA-256 thumbprint in a cnf claim, and every
// server refuses its tokens on a call whose TLS client certificate is
// another one, or none.

// Thumbprint is the SHA-256 digest of a certificate's DER encoding: the
// x5t#S256 confirmation method of RFC 8705 §3.1.
type Thumbprint [sha256.Size]byte

// CertificateThumbprint returns the SHA-256 thumbprint of cert's DER
// encoding (cert.Raw).
func CertificateThumbprint(cert *x509.Certificate) Thumbprint { return sha256.Sum256(cert.Raw) }

// String returns t as it travels in a token: base64url without padding,
// 43 characters.
func (t Thumbprint) String() string { return base64.RawURLEncoding.EncodeToString(t[:]) }

// Confirmation is the cnf claim of a certificate-bound session (RFC 7800,
// RFC 8705 §3.1): the key its tokens are bound to.
type Confirmation struct {
	// X5tS256 is the thumbprint of the TLS client certificate that every
	// call presenting a token of the session must come with (x5t#S256).
	X5tS256 Thumbprint
}

// Errors of certificate-bound sessions. Test them with errors.Is.
var (
	// ErrNoClientCertificate is returned by [Server.StartSession] with
	// [BindToPeerCertificate] when the context holds no TLS client
	// certificate (a call without TLS, or whose client presented none), and
	// with [BindToCertificate] given a nil certificate. A login handler
	// answers it with codes.Unauthenticated.
	ErrNoClientCertificate = errors.New("slidejwt: no TLS client certificate to bind the session to")
	// ErrBoundToken is the error, wrapped, of a call through a [Forwarder]
	// whose caller's token is bound to the caller's TLS client certificate
	// ([BindToPeerCertificate]): the downstream service would see the
	// forwarding service's certificate, not the caller's, and refuse it.
	// It is a codes.FailedPrecondition status without a slidejwt reason,
	// returned before anything is sent: only a change of the program can
	// cure it (call as the service itself, with a [ServiceHolder]).
	ErrBoundToken = errors.New("slidejwt: the caller's token is bound to its TLS client certificate and cannot be forwarded")
)

// BindToPeerCertificate binds the session to the TLS client certificate
// of the call whose context is given to [Server.StartSession] (the login
// call): every token of the session, renewals and refresh tokens included,
// carries the certificate's SHA-256 thumbprint in a cnf claim (RFC 8705
// §3.1), and every server refuses them with TOKEN_INVALID on a call whose
// TLS client certificate is another one, or none. A token stolen off its
// workload is then useless without the workload's private key.
//
// StartSession fails with [ErrNoClientCertificate] when the login call
// came without a TLS client certificate. The server must ask for one
// (tls.Config.ClientAuth at least tls.RequestClientCert); TLS proves that
// the client holds the certificate's private key whether or not the
// server verifies its chain.
//
// Bind service identities and clients that call the services themselves,
// not sessions whose tokens a service forwards (a [Forwarder] refuses a
// bound token with [ErrBoundToken]), nor clients behind a proxy that
// terminates TLS. A verify-only server does not ask its renewal service
// to renew a bound token ([WithDelegatedRenewal]): such a session slides
// at the signing service, or by refresh. TLS must end in the gRPC
// servers themselves: behind a proxy or sidecar that terminates it, a
// server sees no client certificate and refuses every bound token. A
// session does not follow its holder to a new certificate: after a
// rotation the holder logs in again ([ServiceHolder] does so by itself).
// Bind sessions only once every server that may see their tokens runs a
// version that enforces cnf; an older one ignores it. Default: a session
// is not bound.
func BindToPeerCertificate() SessionOption {
	return sessionOptionFunc(func(c *sessionConfig) {
		c.bind = func(ctx context.Context) (*Confirmation, error) {
			cert := peerCertificate(ctx)
			if cert == nil {
				return nil, ErrNoClientCertificate
			}
			return &Confirmation{X5tS256: peerThumbprint(cert)}, nil
		}
	})
}

// BindToCertificate binds the session to cert, the TLS client certificate
// its holder presents, as [BindToPeerCertificate] does for the login
// call's: for a login that does not arrive as a gRPC call (an HTTP login
// reads it from http.Request.TLS.PeerCertificates[0]). A nil cert fails
// [Server.StartSession] with [ErrNoClientCertificate].
func BindToCertificate(cert *x509.Certificate) SessionOption {
	return sessionOptionFunc(func(c *sessionConfig) {
		c.bind = func(context.Context) (*Confirmation, error) {
			if cert == nil || len(cert.Raw) == 0 {
				return nil, ErrNoClientCertificate
			}
			return &Confirmation{X5tS256: CertificateThumbprint(cert)}, nil
		}
	})
}

// peerCertificate returns the leaf TLS client certificate of the call in
// ctx, or nil.
func peerCertificate(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// thumbprints memoizes the thumbprints of peer certificates, keyed weakly
// on the certificate: gRPC hands every call on a connection the same
// parsed certificate, so a connection hashes its certificate once rather
// than once per call. An entry goes when its certificate is collected,
// after its connection closed. A weak pointer never equals one made of
// another certificate, even one allocated where a collected one was, so a
// hit is always the thumbprint of this very certificate.
var thumbprints sync.Map // weak.Pointer[x509.Certificate] → Thumbprint

// peerThumbprint returns CertificateThumbprint(cert), memoized.
func peerThumbprint(cert *x509.Certificate) Thumbprint {
	k := weak.Make(cert)
	if t, ok := thumbprints.Load(k); ok {
		return t.(Thumbprint)
	}
	t := CertificateThumbprint(cert)
	if _, loaded := thumbprints.LoadOrStore(k, t); !loaded {
		runtime.AddCleanup(cert, func(k weak.Pointer[x509.Certificate]) { thumbprints.Delete(k) }, k)
	}
	return t
}

// checkBinding returns nil when the call in ctx comes with the TLS client
// certificate whose thumbprint is want, and a TOKEN_INVALID rejection
// otherwise.
func checkBinding(ctx context.Context, want Thumbprint) *authError {
	cert := peerCertificate(ctx)
	switch {
	case cert == nil:
		return reject(ReasonTokenInvalid, "certificate-bound token without a TLS client certificate")
	case peerThumbprint(cert) != want:
		return reject(ReasonTokenInvalid, "certificate binding mismatch")
	}
	return nil
}

// errCnf is the error of a cnf claim that is not one x5t#S256 thumbprint.
var errCnf = errors.New("the cnf claim is not one x5t#S256 thumbprint")

// thumbprintLen is the length of a Thumbprint in base64url.
var thumbprintLen = base64.RawURLEncoding.EncodedLen(sha256.Size)

// parseConfirmation decodes v, the JSON value of a cnf claim: an object
// whose one member is "x5t#S256", a string of 43 base64url characters that
// decodes strictly to 32 bytes. Anything else is errCnf: null, another
// type, no member or another one (this package enforces no other
// confirmation method, so it accepts no token that asks for one), a name
// given twice, a thumbprint of another length or encoding.
func parseConfirmation(v []byte) (Thumbprint, error) {
	_, c := jsonNext(v, 0)
	if c != '{' || checkUniqueNames(v) != nil {
		return Thumbprint{}, errCnf
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(v, &members); err != nil || len(members) != 1 {
		return Thumbprint{}, errCnf
	}
	raw, ok := members["x5t#S256"]
	if !ok {
		return Thumbprint{}, errCnf
	}
	var s string
	if _, c := jsonNext(raw, 0); c != '"' || json.Unmarshal(raw, &s) != nil || len(s) != thumbprintLen {
		return Thumbprint{}, errCnf
	}
	var t Thumbprint
	if n, err := base64.RawURLEncoding.Strict().Decode(t[:], []byte(s)); err != nil || n != len(t) {
		return Thumbprint{}, errCnf
	}
	return t, nil
}

// appendConfirmation appends the JSON of the cnf claim c to b.
func appendConfirmation(b []byte, c *Confirmation) []byte {
	b = append(b, `{"x5t#S256":"`...)
	b = base64.RawURLEncoding.AppendEncode(b, c.X5tS256[:])
	return append(b, `"}`...)
}

// errBoundForward is ErrBoundToken as a gRPC status.
var errBoundForward error = &boundForwardError{}

type boundForwardError struct{}

func (*boundForwardError) Error() string { return ErrBoundToken.Error() }

func (*boundForwardError) Unwrap() error { return ErrBoundToken }

func (e *boundForwardError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// sessionBinding returns the cnf claim of a session started in ctx with
// the options in c, or nil for a session that is not bound.
func (c *sessionConfig) sessionBinding(ctx context.Context) (*Confirmation, error) {
	if c.bind == nil {
		return nil, nil
	}
	return c.bind(ctx)
}
