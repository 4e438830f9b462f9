package interceptor

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// benchAlg is one signing algorithm of the benchmarks, with its signing
// key and the key golang-jwt verifies with.
type benchAlg struct {
	name   string
	method jwt.SigningMethod
	key    func(testing.TB) (sign, verify any)
}

var benchAlgs = []benchAlg{
	{"HS256", jwt.SigningMethodHS256, func(t testing.TB) (any, any) {
		s := testSecret(t)
		return s, s
	}},
	{"ES256", jwt.SigningMethodES256, func(t testing.TB) (any, any) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k, &k.PublicKey
	}},
	{"EdDSA", jwt.SigningMethodEdDSA, func(t testing.TB) (any, any) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return priv, pub
	}},
}

// benchServer is a server with an issuer, an audience, no caches and a
// policy that renews on every call, and a realistic session token of
// its: the session claims and two small custom claims.
type benchServer struct {
	s      *Server
	v      *verifier
	tok    string
	verify any // golang-jwt's verification key
	now    time.Time
	jwtOpt []jwt.ParserOption // the verifier's options, for golang-jwt's own parse
}

func newBenchServer(b testing.TB, a benchAlg) *benchServer {
	b.Helper()
	sign, verify := a.key(b)
	ks := keysSet(b, keysMust(b, "k1", a.method, sign))
	now := t0
	clock := func() time.Time { return now }
	s, err := NewServer(ks,
		WithClock(clock),
		WithIssuer("https://auth.example.com"),
		WithAudience("api.example.com"),
		WithCacheSize(0),
		WithPolicy(Policy{RenewBefore: DefaultTTL}),
	)
	if err != nil {
		b.Fatal(err)
	}
	sess, err := s.StartSession(context.Background(), "user-1234567890", map[string]any{
		"role":   "admin",
		"tenant": 42,
	})
	if err != nil {
		b.Fatal(err)
	}
	now = now.Add(time.Minute)
	return &benchServer{
		s: s, v: s.ver.Load(), tok: sess.AccessToken, verify: verify, now: now,
		jwtOpt: []jwt.ParserOption{
			jwt.WithValidMethods(ks.algs),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(s.cfg.policy.leeway()),
			jwt.WithTimeFunc(clock),
			jwt.WithStrictDecoding(),
			jwt.WithIssuer("https://auth.example.com"),
			jwt.WithAudience("api.example.com"),
		},
	}
}

// BenchmarkVerifyMiss compares a cache miss, the verifier's whole parse,
// with golang-jwt's own ParseWithClaims of the same token into
// jwt.RegisteredClaims under the same parser options.
func BenchmarkVerifyMiss(b *testing.B) {
	for _, a := range benchAlgs {
		bs := newBenchServer(b, a)
		b.Run(a.name+"/golang-jwt", func(b *testing.B) {
			p := jwt.NewParser(bs.jwtOpt...)
			key := func(*jwt.Token) (any, error) { return bs.verify, nil }
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.ParseWithClaims(bs.tok, &jwt.RegisteredClaims{}, key); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(a.name+"/slidejwt", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bs.v.verify(bs.tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMint measures the renewal of a verified token, with no
// renewal de-duplication: one signature and the claims' encoding.
func BenchmarkMint(b *testing.B) {
	for _, a := range benchAlgs {
		bs := newBenchServer(b, a)
		c, _, _, aerr := bs.v.verifyCached(bs.tok, bs.now)
		if aerr != nil {
			b.Fatal(aerr)
		}
		b.Run(a.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r := bs.s.renew(bs.v, c, bs.now)
				if r == nil || r.err != nil {
					b.Fatal("no renewal")
				}
			}
		})
	}
}

// BenchmarkClientDecode measures the holder's decode of a renewed token.
func BenchmarkClientDecode(b *testing.B) {
	bs := newBenchServer(b, benchAlgs[0])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeSession(bs.tok, accessTokenType, DefaultMaxTokenSize); err != nil {
			b.Fatal(err)
		}
	}
}
