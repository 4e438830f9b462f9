package interceptor

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The issuer and audience that the hostile-input servers require.
const (
	verifyIss = "https://issuer.test"
	verifyAud = "orders"
)

// verifySecrets are the claim and header values that the forged tokens
// carry; no rejection message may contain any of them.
var verifySecrets = []string{
	"alice", "mallory", "sid-4b2e81c0", "jti-7f3a9c11", "role-custom-value",
	"https://evil.test", "evil-aud", "evil-kid", "nOnE",
}

// verifyDrop, as an edit value, removes the member.
type verifyDrop struct{}

// verifyEdit returns a copy of base with edits applied.
func verifyEdit(base, edits map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(edits))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range edits {
		if _, drop := v.(verifyDrop); drop {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}

// verifySeg base64url-encodes v: []byte as is, anything else as JSON.
func verifySeg(t testing.TB, v any) string {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// verifyToken hand-assembles a compact JWS from header and payload and
// signs it with m and key; a nil m leaves the signature segment empty.
func verifyToken(t testing.TB, header, payload any, m jwt.SigningMethod, key any) string {
	t.Helper()
	in := verifySeg(t, header) + "." + verifySeg(t, payload)
	if m == nil {
		return in + "."
	}
	sig, err := m.Sign(in, key)
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// verifyForger builds tokens that a server trusting secret under kid "k1",
// with issuer verifyIss and audience verifyAud, would accept at now, and
// hostile variants of them.
type verifyForger struct {
	t      testing.TB
	secret []byte
	now    time.Time
}

func (f verifyForger) header(edits map[string]any) map[string]any {
	return verifyEdit(map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": "k1"}, edits)
}

// claims are valid at now; exp is within the default renewal window, so an
// accepted token is renewed.
func (f verifyForger) claims(edits map[string]any) map[string]any {
	return verifyEdit(map[string]any{
		"iss":       verifyIss,
		"aud":       []string{verifyAud},
		"sub":       "alice",
		"exp":       f.now.Add(time.Hour).Unix(),
		"iat":       f.now.Unix(),
		"jti":       "jti-7f3a9c11",
		"sid":       "sid-4b2e81c0",
		"auth_time": f.now.Unix(),
		"role":      "role-custom-value",
	}, edits)
}

// hs256 signs header and claim edits with the server's HS256 secret.
func (f verifyForger) hs256(hdr, claims map[string]any) string {
	return verifyToken(f.t, f.header(hdr), f.claims(claims), jwt.SigningMethodHS256, f.secret)
}

// hs256Raw signs a raw payload with the server's secret.
func (f verifyForger) hs256Raw(hdr any, payload []byte) string {
	return verifyToken(f.t, hdr, payload, jwt.SigningMethodHS256, f.secret)
}

func (f verifyForger) unix(d time.Duration) int64 { return f.now.Add(d).Unix() }

// padded returns a token signed with the server's secret that is exactly n
// bytes long; an unprotected header member and a custom claim pad it.
func (f verifyForger) padded(n int) string {
	f.t.Helper()
	tok := func(hp, pl int) string {
		return verifyToken(f.t, f.header(map[string]any{"x-pad": strings.Repeat("h", hp)}),
			f.claims(map[string]any{"exp": f.unix(20 * time.Hour), "pad": strings.Repeat("p", pl)}),
			jwt.SigningMethodHS256, f.secret)
	}
	start := max(0, (n-len(tok(0, 0)))*3/4-4)
	for hp := range 4 {
		for pl := start; pl < start+12; pl++ {
			if t := tok(hp, pl); len(t) == n {
				return t
			}
		}
	}
	f.t.Fatalf("cannot pad a token to %d bytes", n)
	return ""
}

// verifySplit returns the three segments of tok.
func verifySplit(t testing.TB, tok string) (h, p, s string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	return parts[0], parts[1], parts[2]
}

const verifyAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// verifyTrailingBits sets an unused low bit of the last character of the
// signature of an HS256 token (32 bytes = 43 characters, 2 spare bits), so
// that a lenient decoder still yields the same signature.
func verifyTrailingBits(t testing.TB, tok string) string {
	t.Helper()
	h, p, s := verifySplit(t, tok)
	i := strings.IndexByte(verifyAlphabet, s[len(s)-1])
	alt := s[:len(s)-1] + string(verifyAlphabet[i^1])
	a, errA := base64.RawURLEncoding.DecodeString(s)
	b, errB := base64.RawURLEncoding.DecodeString(alt) // lenient on purpose
	if errA != nil || errB != nil || string(a) != string(b) || alt == s {
		t.Fatalf("precondition: the altered signature must decode leniently to the same bytes (%v, %v)", errA, errB)
	}
	return h + "." + p + "." + alt
}

// verifyStdAlphabet returns a valid token re-encoded with '+' and '/' in
// place of '-' and '_' in its signature.
func verifyStdAlphabet(f verifyForger) string {
	f.t.Helper()
	for i := range 200 {
		tok := f.hs256(nil, map[string]any{"jti": fmt.Sprintf("jti-7f3a9c11-%d", i)})
		h, p, s := verifySplit(f.t, tok)
		if strings.ContainsAny(s, "-_") {
			return h + "." + p + "." + strings.NewReplacer("-", "+", "_", "/").Replace(s)
		}
	}
	f.t.Fatal("no signature with '-' or '_' in 200 tries")
	return ""
}

// verifyRejectedCall makes one unary call with md on client and asserts a
// rejection with reason want that leaked nothing and ran no handler.
func verifyRejectedCall(t *testing.T, e *testEnv, client testpb.TestServiceClient, md metadata.MD, want Reason) {
	t.Helper()
	before := e.svc.calls.Load()
	var hdr, tr metadata.MD
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&tr))
	wantReason(t, err, want)
	if got := e.svc.calls.Load(); got != before {
		t.Errorf("handler ran %d times, want 0", got-before)
	}
	verifyNoLeak(t, err, md)
	verifyNoRenewal(t, hdr, tr)
}

// verifyNoLeak fails if the status of err (message or details) contains
// the presented token, one of its segments, or a claim value.
func verifyNoLeak(t *testing.T, err error, md metadata.MD) {
	t.Helper()
	st := status.Convert(err)
	text := st.Message() + " " + fmt.Sprint(st.Proto())
	needles := append([]string(nil), verifySecrets...)
	for _, v := range md.Get("authorization") {
		needles = append(needles, v)
		_, tok, _ := strings.Cut(v, " ")
		for _, seg := range strings.Split(tok, ".") {
			if len(seg) >= 8 {
				needles = append(needles, seg)
			}
		}
	}
	for _, n := range needles {
		if n != "" && strings.Contains(text, n) {
			t.Errorf("status leaks input (%d bytes at %d): %q", len(n), strings.Index(text, n), st.Message())
		}
	}
}

func verifyNoRenewal(t *testing.T, mds ...metadata.MD) {
	t.Helper()
	for _, md := range mds {
		if v := md.Get(DefaultRenewalHeader); len(v) != 0 {
			t.Errorf("rejected call carried %d renewed tokens", len(v))
		}
	}
}

// verifyCase is one request to the hostile-input server. want "" means the
// request must be accepted.
type verifyCase struct {
	name string
	md   func(f verifyForger) metadata.MD
	want Reason
}

func verifyTok(build func(f verifyForger) string) func(verifyForger) metadata.MD {
	return func(f verifyForger) metadata.MD { return bearerMD(build(f)) }
}

func verifyCases() []verifyCase {
	var cs []verifyCase
	add := func(name string, want Reason, build func(f verifyForger) string) {
		cs = append(cs, verifyCase{name, verifyTok(build), want})
	}
	addMD := func(name string, want Reason, md func(f verifyForger) metadata.MD) {
		cs = append(cs, verifyCase{name, md, want})
	}
	const (
		ok      Reason = noReason
		invalid        = ReasonTokenInvalid
		missing        = ReasonTokenMissing
	)

	// Controls: the baseline and the variants the rules allow.
	add("valid", ok, func(f verifyForger) string { return f.hs256(nil, nil) })
	add("valid aud as string", ok, func(f verifyForger) string { return f.hs256(nil, map[string]any{"aud": verifyAud}) })
	for _, typ := range []string{"at+jwt", "at+JWT", "AT+JWT", "application/at+jwt", "Application/AT+JWT"} {
		add("typ "+typ+" accepted", ok, func(f verifyForger) string { return f.hs256(map[string]any{"typ": typ}, nil) })
	}
	for _, scheme := range []string{"bearer", "BEARER", "bEaReR"} {
		addMD("scheme "+scheme+" accepted", ok, func(f verifyForger) metadata.MD {
			return metadata.Pairs("authorization", scheme+" "+f.hs256(nil, nil))
		})
	}
	add("iat at leeway edge accepted", ok, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"iat": f.unix(30 * time.Second)})
	})
	add("exp one tick inside leeway accepted", ok, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"exp": f.unix(-29 * time.Second), "iat": f.unix(-time.Hour), "auth_time": f.unix(-time.Hour)})
	})
	add("session one tick before its end accepted", ok, func(f verifyForger) string {
		at := f.unix(-(DefaultMaxLifetime + 29*time.Second))
		return f.hs256(nil, map[string]any{"auth_time": at, "iat": f.unix(-time.Hour)})
	})
	add("exactly max size accepted", ok, func(f verifyForger) string { return f.padded(DefaultMaxTokenSize) })

	// alg none in any case, with and without the right kid.
	for _, alg := range []string{"none", "NONE", "nOnE", "None"} {
		add("alg "+alg+" with kid", invalid, func(f verifyForger) string {
			return verifyToken(f.t, f.header(map[string]any{"alg": alg}), f.claims(nil), nil, nil)
		})
		add("alg "+alg+" without kid", invalid, func(f verifyForger) string {
			return verifyToken(f.t, f.header(map[string]any{"alg": alg, "kid": verifyDrop{}}), f.claims(nil), nil, nil)
		})
	}
	add("alg none via golang-jwt", invalid, func(f verifyForger) string {
		tk := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(f.claims(nil)))
		tk.Header["typ"], tk.Header["kid"] = "at+jwt", "k1"
		s, err := tk.SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			f.t.Fatal(err)
		}
		return s
	})
	add("alg none keeping the HS256 signature", invalid, func(f verifyForger) string {
		_, p, s := verifySplit(f.t, f.hs256(nil, nil))
		return verifySeg(f.t, f.header(map[string]any{"alg": "none"})) + "." + p + "." + s
	})
	add("alg missing", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"alg": verifyDrop{}}, nil) })
	add("alg lower-case hs256", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"alg": "hs256"}, nil) })
	add("alg HS384 signed with the HS256 secret", invalid, func(f verifyForger) string {
		return verifyToken(f.t, f.header(map[string]any{"alg": "HS384"}), f.claims(nil), jwt.SigningMethodHS384, f.secret)
	})
	add("alg HS512 signed with the HS256 secret", invalid, func(f verifyForger) string {
		return verifyToken(f.t, f.header(map[string]any{"alg": "HS512"}), f.claims(nil), jwt.SigningMethodHS512, f.secret)
	})
	add("alg RS256 on an HMAC kid", invalid, func(f verifyForger) string {
		return verifyToken(f.t, f.header(map[string]any{"alg": "RS256"}), f.claims(nil), jwt.SigningMethodRS256, keysRSA(f.t))
	})

	// kid.
	add("kid unknown", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": "evil-kid"}, nil) })
	add("kid missing", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": verifyDrop{}}, nil) })
	add("kid empty", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": ""}, nil) })
	add("kid other case", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": "K1"}, nil) })
	add("kid number", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": 1}, nil) })
	add("kid array", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": []string{"k1"}}, nil) })
	add("kid null", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"kid": nil}, nil) })
	add("embedded jwk with attacker secret", invalid, func(f verifyForger) string {
		evil := keysSecret(f.t, 32)
		hdr := f.header(map[string]any{"jwk": map[string]any{"kty": "oct", "k": base64.RawURLEncoding.EncodeToString(evil)}})
		return verifyToken(f.t, hdr, f.claims(nil), jwt.SigningMethodHS256, evil)
	})

	// crit and typ.
	add("crit [exp]", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"crit": []string{"exp"}}, nil) })
	add("crit empty", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"crit": []string{}}, nil) })
	add("crit b64 false", invalid, func(f verifyForger) string {
		return f.hs256(map[string]any{"crit": []string{"b64"}, "b64": false}, nil)
	})
	add("typ missing", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"typ": verifyDrop{}}, nil) })
	for _, typ := range []string{"JWT", "jwt", "rt+jwt", "application/jwt", "at+jwt ", "at+jwt+x", ""} {
		add(fmt.Sprintf("typ %q", typ), invalid, func(f verifyForger) string { return f.hs256(map[string]any{"typ": typ}, nil) })
	}
	add("typ number", invalid, func(f verifyForger) string { return f.hs256(map[string]any{"typ": 1}, nil) })

	// exp, iat, nbf, auth_time.
	add("exp missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": verifyDrop{}}) })
	add("exp 0", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": 0}) })
	add("exp negative", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": -1}) })
	add("exp word string", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": "tomorrow"}) })
	add("exp numeric string", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"exp": strconv.FormatInt(f.unix(time.Hour), 10)})
	})
	add("exp null", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": nil}) })
	add("exp 1e400", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": json.RawMessage("1e400")}) })
	add("exp equal to iat", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"exp": f.unix(0)}) })
	add("exp at leeway edge is expired", ReasonTokenExpired, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"exp": f.unix(-30 * time.Second), "iat": f.unix(-time.Hour), "auth_time": f.unix(-time.Hour)})
	})
	add("expired with wrong iss is invalid", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"exp": f.unix(-time.Hour), "iat": f.unix(-2 * time.Hour), "auth_time": f.unix(-2 * time.Hour), "iss": "https://evil.test"})
	})
	add("expired with missing sid is invalid", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"exp": f.unix(-time.Hour), "iat": f.unix(-2 * time.Hour), "auth_time": f.unix(-2 * time.Hour), "sid": verifyDrop{}})
	})
	add("iat beyond leeway in the future", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"iat": f.unix(31 * time.Second)})
	})
	add("iat missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"iat": verifyDrop{}}) })
	add("nbf in the future", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"nbf": f.unix(time.Minute)}) })
	add("auth_time missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"auth_time": verifyDrop{}}) })
	add("auth_time 0", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"auth_time": 0}) })
	add("auth_time after iat", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"auth_time": f.unix(time.Second)})
	})
	add("auth_time word string", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"auth_time": "yesterday"}) })
	add("past the session's absolute end", ReasonSessionExpired, func(f verifyForger) string {
		at := f.unix(-(DefaultMaxLifetime + 30*time.Second))
		return f.hs256(nil, map[string]any{"auth_time": at, "iat": f.unix(-time.Hour)})
	})

	// session_exp: the session's own end, never past the policy's.
	add("session_exp later than exp accepted", ok, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"session_exp": f.unix(2 * time.Hour)})
	})
	add("session_exp equal to exp accepted", ok, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"session_exp": f.unix(time.Hour)})
	})
	add("session_exp one tick before its end + leeway accepted", ok, func(f verifyForger) string {
		end := f.unix(-29 * time.Second)
		return f.hs256(nil, map[string]any{"auth_time": f.unix(-2 * time.Hour), "iat": f.unix(-time.Hour), "exp": end, "session_exp": end})
	})
	add("session_exp at its end + leeway", ReasonSessionExpired, func(f verifyForger) string {
		end := f.unix(-30 * time.Second)
		return f.hs256(nil, map[string]any{"auth_time": f.unix(-2 * time.Hour), "iat": f.unix(-time.Hour), "exp": end, "session_exp": end})
	})
	add("session_exp past the policy's end does not extend it", ReasonSessionExpired, func(f verifyForger) string {
		at := f.unix(-(DefaultMaxLifetime + 30*time.Second))
		return f.hs256(nil, map[string]any{"auth_time": at, "iat": f.unix(-time.Hour), "session_exp": f.unix(24 * time.Hour)})
	})
	add("session_exp before exp", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"session_exp": f.unix(time.Hour - time.Second)})
	})
	add("session_exp equal to auth_time", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"session_exp": f.unix(0), "exp": f.unix(0)})
	})
	add("session_exp 0", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"session_exp": 0}) })
	add("session_exp numeric string", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"session_exp": strconv.FormatInt(f.unix(2*time.Hour), 10)})
	})
	add("session_exp null", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"session_exp": nil}) })
	add("session_exp shadowed in another case", invalid, func(f verifyForger) string {
		return f.hs256(nil, map[string]any{"Session_Exp": f.unix(2 * time.Hour)})
	})

	// iss, aud.
	add("iss wrong", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"iss": "https://evil.test"}) })
	add("iss missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"iss": verifyDrop{}}) })
	add("iss other case", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"iss": "HTTPS://ISSUER.TEST"}) })
	add("aud wrong", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"aud": []string{"evil-aud"}}) })
	add("aud missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"aud": verifyDrop{}}) })
	add("aud empty", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"aud": []string{}}) })
	add("aud number", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{"aud": 7}) })

	// Session claims.
	for _, name := range []string{"sid", "sub", "jti"} {
		add(name+" missing", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{name: verifyDrop{}}) })
		add(name+" empty", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{name: ""}) })
		add(name+" number", invalid, func(f verifyForger) string { return f.hs256(nil, map[string]any{name: 42}) })
	}

	// Signature and encoding.
	add("tampered payload", invalid, func(f verifyForger) string {
		h, _, s := verifySplit(f.t, f.hs256(nil, nil))
		return h + "." + verifySeg(f.t, f.claims(map[string]any{"sub": "mallory"})) + "." + s
	})
	add("tampered header", invalid, func(f verifyForger) string {
		_, p, s := verifySplit(f.t, f.hs256(nil, nil))
		return verifySeg(f.t, f.header(map[string]any{"typ": "AT+JWT"})) + "." + p + "." + s
	})
	add("signature of another secret", invalid, func(f verifyForger) string {
		return verifyToken(f.t, f.header(nil), f.claims(nil), jwt.SigningMethodHS256, keysSecret(f.t, 32))
	})
	add("signature missing", invalid, func(f verifyForger) string {
		h, p, _ := verifySplit(f.t, f.hs256(nil, nil))
		return h + "." + p + "."
	})
	add("signature truncated", invalid, func(f verifyForger) string { tok := f.hs256(nil, nil); return tok[:len(tok)-2] })
	add("signature trailing bits set", invalid, func(f verifyForger) string { return verifyTrailingBits(f.t, f.hs256(nil, nil)) })
	add("signature padded", invalid, func(f verifyForger) string { return f.hs256(nil, nil) + "=" })
	add("payload padded", invalid, func(f verifyForger) string {
		for i := range 4 {
			tok := f.hs256(nil, map[string]any{"jti": "jti-7f3a9c11" + strings.Repeat("x", i)})
			h, p, _ := verifySplit(f.t, tok)
			if len(p)%4 != 0 {
				pad := strings.Repeat("=", 4-len(p)%4)
				// Sign the padded form, so that only the encoding is wrong.
				in := h + "." + p + pad
				sig, err := jwt.SigningMethodHS256.Sign(in, f.secret)
				if err != nil {
					f.t.Fatal(err)
				}
				return in + "." + base64.RawURLEncoding.EncodeToString(sig)
			}
		}
		f.t.Fatal("no payload length to pad")
		return ""
	})
	add("signature standard alphabet", invalid, verifyStdAlphabet)
	add("signature with whitespace", invalid, func(f verifyForger) string {
		tok := f.hs256(nil, nil)
		return tok[:len(tok)-5] + " " + tok[len(tok)-5:]
	})

	// Structure.
	add("empty token after scheme and space", missing, func(verifyForger) string { return "" })
	add("100 000 dots", invalid, func(verifyForger) string { return strings.Repeat(".", 100_000) })
	add("two dots", invalid, func(verifyForger) string { return ".." })
	add("two segments", invalid, func(f verifyForger) string { h, p, _ := verifySplit(f.t, f.hs256(nil, nil)); return h + "." + p })
	add("four segments", invalid, func(f verifyForger) string { return f.hs256(nil, nil) + ".e30" })
	add("JWE-shaped five segments", invalid, func(f verifyForger) string { return "eyJhbGciOiJkaXIifQ..aXY.Y3Q.dGFn" })
	add("one byte over max size", invalid, func(f verifyForger) string { return f.padded(DefaultMaxTokenSize + 1) })
	add("9 KiB of valid base64", invalid, func(verifyForger) string { return strings.Repeat("A", 9<<10) })
	add("payload JSON garbage", invalid, func(f verifyForger) string {
		return f.hs256Raw(f.header(nil), []byte(`{"sub":"alice","exp":`))
	})
	add("payload trailing garbage", invalid, func(f verifyForger) string {
		b, _ := json.Marshal(f.claims(nil))
		return f.hs256Raw(f.header(nil), append(b, " x"...))
	})
	for _, p := range []string{`null`, `[]`, `"alice"`, `42`, ``} {
		add("payload "+p, invalid, func(f verifyForger) string { return f.hs256Raw(f.header(nil), []byte(p)) })
	}
	for _, h := range []string{`null`, `[]`, `"at+jwt"`, `42`, `{`, ``} {
		add("header "+h, invalid, func(f verifyForger) string { return f.hs256Raw([]byte(h), mustJSON(f.t, f.claims(nil))) })
	}
	add("header non-UTF8 bytes", invalid, func(f verifyForger) string {
		return f.hs256Raw(append([]byte{0xff, 0xfe}, mustJSON(f.t, f.header(nil))...), mustJSON(f.t, f.claims(nil)))
	})
	add("payload non-UTF8 bytes", invalid, func(f verifyForger) string {
		return f.hs256Raw(f.header(nil), append([]byte{0xc3, 0x28}, mustJSON(f.t, f.claims(nil))...))
	})
	add("alg with non-UTF8 byte", invalid, func(f verifyForger) string {
		return f.hs256Raw([]byte("{\"alg\":\"HS256\xff\",\"typ\":\"at+jwt\",\"kid\":\"k1\"}"), mustJSON(f.t, f.claims(nil)))
	})
	add("kid with non-UTF8 byte", invalid, func(f verifyForger) string {
		return f.hs256Raw([]byte("{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"kid\":\"k1\xff\"}"), mustJSON(f.t, f.claims(nil)))
	})

	// The authorization metadata itself.
	addMD("no authorization", missing, func(verifyForger) metadata.MD { return metadata.MD{} })
	addMD("empty authorization", missing, func(verifyForger) metadata.MD { return metadata.Pairs("authorization", "") })
	addMD("bare Bearer", missing, func(verifyForger) metadata.MD { return metadata.Pairs("authorization", "Bearer") })
	addMD("Basic scheme", missing, func(verifyForger) metadata.MD {
		return metadata.Pairs("authorization", "Basic YWxpY2U6c2VjcmV0")
	})
	addMD("Token scheme with a valid token", missing, func(f verifyForger) metadata.MD {
		return metadata.Pairs("authorization", "Token "+f.hs256(nil, nil))
	})
	addMD("valid token without scheme", missing, func(f verifyForger) metadata.MD {
		return metadata.Pairs("authorization", f.hs256(nil, nil))
	})
	addMD("token in another header", missing, func(f verifyForger) metadata.MD {
		return metadata.Pairs("x-authorization", "Bearer "+f.hs256(nil, nil))
	})
	addMD("two valid authorization values", invalid, func(f verifyForger) metadata.MD {
		return metadata.Pairs("authorization", "Bearer "+f.hs256(nil, nil), "authorization", "Bearer "+f.hs256(nil, map[string]any{"jti": "jti-7f3a9c11-2"}))
	})
	addMD("same valid token twice", invalid, func(f verifyForger) metadata.MD {
		tok := f.hs256(nil, nil)
		return metadata.Pairs("authorization", "Bearer "+tok, "authorization", "Bearer "+tok)
	})
	addMD("garbage then valid authorization", invalid, func(f verifyForger) metadata.MD {
		return metadata.Pairs("authorization", "Basic x", "authorization", "Bearer "+f.hs256(nil, nil))
	})
	return cs
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVerify_HostileUnary sends every hostile request as a real unary call
// over bufconn with raw metadata to a server that requires an issuer and an
// audience.
func TestVerify_HostileUnary(t *testing.T) {
	e := newEnv(t, withServerOptions(WithIssuer(verifyIss), WithAudience(verifyAud)))
	secret, _ := e.keys.Active().signKey.([]byte)
	f := verifyForger{t: t, secret: secret, now: e.clock.Now()}
	client := testpb.NewTestServiceClient(e.dial(t))
	cases := verifyCases()
	if n := len(cases); n < 25 {
		t.Fatalf("only %d cases", n)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := f
			f.t = t
			md := tc.md(f)
			if tc.want != noReason {
				verifyRejectedCall(t, e, client, md, tc.want)
				return
			}
			before := e.svc.calls.Load()
			var tr metadata.MD
			_, err := client.UnaryCall(metadata.NewOutgoingContext(context.Background(), md), &testpb.SimpleRequest{}, grpc.Trailer(&tr))
			if err != nil {
				t.Fatalf("call rejected: %v", err)
			}
			if got := e.svc.calls.Load() - before; got != 1 {
				t.Errorf("handler ran %d times, want 1", got)
			}
			if c := e.svc.lastClaims.Load(); c == nil || c.Subject != "alice" || c.SessionID != "sid-4b2e81c0" {
				t.Errorf("handler claims = %+v, want sub alice sid sid-4b2e81c0", c)
			}
			// The baseline is in the renewal window: this shows that the
			// rejected cases' "no renewed token" check can fail.
			if tc.name == "valid" && len(tr.Get(DefaultRenewalHeader)) != 1 {
				t.Errorf("valid baseline got %d renewed tokens, want 1", len(tr.Get(DefaultRenewalHeader)))
			}
		})
	}
}

// TestVerify_TooLongBeforeParsing: the length cap applies to the raw
// token before any decoding. The status detail is the library's fixed
// phrase for the cap, not the parser's "malformed".
func TestVerify_TooLongBeforeParsing(t *testing.T) {
	e := newEnv(t)
	take := e.events.take
	client := testpb.NewTestServiceClient(e.dial(t))
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"9 KiB of valid base64", strings.Repeat("A", 9<<10)},
		{"9 KiB of dots", strings.Repeat(".", 9<<10)},
		{"one over the cap", strings.Repeat("A", DefaultMaxTokenSize+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			take()
			md := bearerMD(tc.tok)
			verifyRejectedCall(t, e, client, md, ReasonTokenInvalid)
			events := take()
			if len(events) != 1 || events[0].Kind != EventRejected {
				t.Fatalf("events = %v, want one rejection", events)
			}
			if msg := events[0].Err.Error(); !strings.Contains(msg, "too long") {
				t.Errorf("rejection %q does not name the length cap", msg)
			}
		})
	}
	// At the cap, the token reaches the parser (and fails there).
	take()
	verifyRejectedCall(t, e, client, bearerMD(strings.Repeat("A", DefaultMaxTokenSize)), ReasonTokenInvalid)
	if events := take(); len(events) != 1 || strings.Contains(events[0].Err.Error(), "too long") {
		t.Errorf("a token of exactly the cap was refused by the cap: %v", events)
	}
}

// TestVerify_RSAKeyConfusion: an HS256 token whose HMAC key is the bytes
// of the server's RSA public key, and whose kid names the RS256 key, is
// refused, both by a server with only RSA keys and by one that also
// trusts an HS256 key (so that HS256 is an allowed algorithm).
func TestVerify_RSAKeyConfusion(t *testing.T) {
	rsaKey := keysRSA(t)
	rs := keysMust(t, "rsa1", jwt.SigningMethodRS256, rsaKey)
	hsSecret := keysSecret(t, 32)
	hs := keysMust(t, "hs1", jwt.SigningMethodHS256, hsSecret)
	pkix, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)
	pubBytes := map[string][]byte{
		"PEM PKIX":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}),
		"PEM PKCS1": pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pkcs1}),
		"DER PKIX":  pkix,
		"DER PKCS1": pkcs1,
	}
	for _, set := range []struct {
		name string
		ks   *KeySet
	}{
		{"RS256 only", keysSet(t, rs)},
		{"RS256 and HS256", keysSet(t, rs, hs)},
	} {
		t.Run(set.name, func(t *testing.T) {
			e := newEnv(t, withKeys(set.ks))
			client := testpb.NewTestServiceClient(e.dial(t))
			f := verifyForger{t: t, now: e.clock.Now()}
			claims := f.claims(map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{}})
			hdr := func(alg, kid string) map[string]any { return map[string]any{"alg": alg, "typ": "at+jwt", "kid": kid} }

			// Control: the server's own RS256 token is accepted.
			s := e.startSession(t, nil)
			if _, err := unaryCall(t, client, s.AccessToken); err != nil {
				t.Fatalf("control: %v", err)
			}
			for name, b := range pubBytes {
				t.Run("HS256 keyed with "+name, func(t *testing.T) {
					tok := verifyToken(t, hdr("HS256", "rsa1"), claims, jwt.SigningMethodHS256, b)
					verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
				})
			}
			t.Run("HS256 with the real HS secret under the RSA kid", func(t *testing.T) {
				tok := verifyToken(t, hdr("HS256", "rsa1"), claims, jwt.SigningMethodHS256, hsSecret)
				verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
			})
			t.Run("RS256 signed by the RSA key under the HS kid", func(t *testing.T) {
				tok := verifyToken(t, hdr("RS256", "hs1"), claims, jwt.SigningMethodRS256, rsaKey)
				verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
			})
			t.Run("PS256 signed by the RSA key under the RS256 kid", func(t *testing.T) {
				tok := verifyToken(t, hdr("PS256", "rsa1"), claims, jwt.SigningMethodPS256, rsaKey)
				verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
			})
			t.Run("alg none under the RS256 kid", func(t *testing.T) {
				tok := verifyToken(t, hdr("none", "rsa1"), claims, nil, nil)
				verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
			})
			if got := e.svc.calls.Load(); got != 1 {
				t.Errorf("handler calls = %d, want 1 (the control)", got)
			}
		})
	}
}

// verifyPinCase is a token signed with alg and key under kid; ok says
// whether the server must accept it.
type verifyPinCase struct {
	name string
	alg  jwt.SigningMethod
	kid  string
	key  any
	ok   bool
}

// TestVerify_AlgPinnedPerKey: when the set allows several algorithms, a
// token's alg must still be the one its kid's key is bound to, even where
// golang-jwt would accept the key for the other algorithm (any []byte for
// HMAC, one RSA key for RS256 and PS256).
func TestVerify_AlgPinnedPerKey(t *testing.T) {
	rsaKey := keysRSA(t)
	s256, s384 := keysSecret(t, 32), keysSecret(t, 48)
	for _, set := range []struct {
		name  string
		ks    *KeySet
		cases []verifyPinCase
	}{
		{"HS256 and HS384", keysSet(t, keysMust(t, "k1", jwt.SigningMethodHS256, s256), keysMust(t, "k2", jwt.SigningMethodHS384, s384)),
			[]verifyPinCase{
				{"HS256 under k1", jwt.SigningMethodHS256, "k1", s256, true},
				{"HS384 under k2", jwt.SigningMethodHS384, "k2", s384, true},
				{"HS384 under k1 with k1's secret", jwt.SigningMethodHS384, "k1", s256, false},
				{"HS256 under k2 with k2's secret", jwt.SigningMethodHS256, "k2", s384, false},
			}},
		{"RS256 and PS256 on one RSA key", keysSet(t, keysMust(t, "rs", jwt.SigningMethodRS256, rsaKey), keysMust(t, "ps", jwt.SigningMethodPS256, &rsaKey.PublicKey)),
			[]verifyPinCase{
				{"RS256 under rs", jwt.SigningMethodRS256, "rs", rsaKey, true},
				{"PS256 under ps", jwt.SigningMethodPS256, "ps", rsaKey, true},
				{"PS256 under rs", jwt.SigningMethodPS256, "rs", rsaKey, false},
				{"RS256 under ps", jwt.SigningMethodRS256, "ps", rsaKey, false},
			}},
	} {
		t.Run(set.name, func(t *testing.T) {
			e := newEnv(t, withKeys(set.ks))
			client := testpb.NewTestServiceClient(e.dial(t))
			f := verifyForger{t: t, now: e.clock.Now()}
			claims := f.claims(map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{}})
			for _, tc := range set.cases {
				t.Run(tc.name, func(t *testing.T) {
					hdr := map[string]any{"alg": tc.alg.Alg(), "typ": "at+jwt", "kid": tc.kid}
					tok := verifyToken(t, hdr, claims, tc.alg, tc.key)
					if !tc.ok {
						verifyRejectedCall(t, e, client, bearerMD(tok), ReasonTokenInvalid)
						return
					}
					if _, err := unaryCall(t, client, tok); err != nil {
						t.Fatalf("control rejected: %v", err)
					}
				})
			}
		})
	}
}

// TestVerify_SessionEnd: tokens the server minted, presented around the
// absolute end of their session, including a token minted under a longer
// policy whose exp lies beyond this server's cap.
func TestVerify_SessionEnd(t *testing.T) {
	e := newEnv(t)
	client := testpb.NewTestServiceClient(e.dial(t))
	long, err := NewServer(e.keys, WithClock(e.clock.Now), WithPolicy(Policy{TTL: 30 * 24 * time.Hour, MaxLifetime: 30 * 24 * time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	normal := e.startSession(t, map[string]any{"role": "role-custom-value"})
	longS, err := long.StartSession(context.Background(), "alice", map[string]any{"role": "role-custom-value"})
	if err != nil {
		t.Fatal(err)
	}
	if !longS.Expiry.After(t0.Add(DefaultMaxLifetime)) {
		t.Fatalf("precondition: long token expires at %v, not past this server's cap", longS.Expiry)
	}
	for _, tc := range []struct {
		name string
		tok  string
		at   time.Duration // after t0
		want Reason
	}{
		{"normal just expired", normal.AccessToken, DefaultTTL + DefaultLeeway, ReasonTokenExpired},
		{"normal expired one tick before the session end", normal.AccessToken, DefaultMaxLifetime + DefaultLeeway - time.Second, ReasonTokenExpired},
		{"normal expired at the session end", normal.AccessToken, DefaultMaxLifetime + DefaultLeeway, ReasonSessionExpired},
		{"long one tick before the cap", longS.AccessToken, DefaultMaxLifetime + DefaultLeeway - time.Second, noReason},
		{"long at the cap", longS.AccessToken, DefaultMaxLifetime + DefaultLeeway, ReasonSessionExpired},
		{"long well past the cap", longS.AccessToken, 29 * 24 * time.Hour, ReasonSessionExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.clock.Set(t0.Add(tc.at))
			if tc.want != noReason {
				verifyRejectedCall(t, e, client, bearerMD(tc.tok), tc.want)
				return
			}
			renewed, err := unaryCall(t, client, tc.tok)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if renewed != "" {
				t.Errorf("a token with exp far beyond the cap was renewed")
			}
		})
	}
}

// TestVerify_HostileStream: rejections on server-streaming, client-
// streaming and bidi calls; the handler never runs and no renewed token
// arrives in the header or trailer.
func TestVerify_HostileStream(t *testing.T) {
	e := newEnv(t)
	secret, _ := e.keys.Active().signKey.([]byte)
	f := verifyForger{t: t, secret: secret, now: e.clock.Now()}
	client := testpb.NewTestServiceClient(e.dial(t))
	noIssAud := map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{}}
	for _, tc := range []struct {
		name string
		md   metadata.MD
		want Reason
	}{
		{"missing", metadata.MD{}, ReasonTokenMissing},
		{"Basic scheme", metadata.Pairs("authorization", "Basic YWxpY2U6c2VjcmV0"), ReasonTokenMissing},
		{"alg none", bearerMD(verifyToken(t, f.header(map[string]any{"alg": "none"}), f.claims(noIssAud), nil, nil)), ReasonTokenInvalid},
		{"tampered", bearerMD(func() string {
			h, _, s := verifySplit(t, f.hs256(nil, noIssAud))
			return h + "." + verifySeg(t, f.claims(map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{}, "sub": "mallory"})) + "." + s
		}()), ReasonTokenInvalid},
		{"two values", metadata.Pairs("authorization", "Bearer "+f.hs256(nil, noIssAud), "authorization", "Bearer "+f.hs256(nil, noIssAud)), ReasonTokenInvalid},
		{"expired", bearerMD(f.hs256(nil, map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{},
			"exp": f.unix(-time.Hour), "iat": f.unix(-2 * time.Hour), "auth_time": f.unix(-2 * time.Hour)})), ReasonTokenExpired},
	} {
		for _, call := range []struct {
			name string
			open func(ctx context.Context) (grpc.ClientStream, error)
		}{
			{"StreamingOutputCall", func(ctx context.Context) (grpc.ClientStream, error) {
				return client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
			}},
			{"StreamingInputCall", func(ctx context.Context) (grpc.ClientStream, error) {
				s, err := client.StreamingInputCall(ctx)
				if err == nil {
					err = s.CloseSend()
				}
				return s, err
			}},
			{"FullDuplexCall", func(ctx context.Context) (grpc.ClientStream, error) {
				return client.FullDuplexCall(ctx)
			}},
		} {
			t.Run(call.name+"/"+tc.name, func(t *testing.T) {
				before := e.svc.calls.Load()
				ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), tc.md), 10*time.Second)
				defer cancel()
				s, err := call.open(ctx)
				if err == nil {
					err = s.RecvMsg(new(testpb.StreamingOutputCallResponse))
				}
				if err == nil || err == io.EOF {
					t.Fatalf("stream err = %v, want a rejection", err)
				}
				wantReason(t, err, tc.want)
				if got := e.svc.calls.Load(); got != before {
					t.Errorf("handler ran %d times, want 0", got-before)
				}
				verifyNoLeak(t, err, tc.md)
				if s != nil {
					hdr, _ := s.Header()
					verifyNoRenewal(t, hdr, s.Trailer())
				}
			})
		}
	}
}

// TestVerify_RawMetadata calls the server's check path directly with
// metadata that grpc-go's client refuses to send (non-printable, non-ASCII
// bytes, line breaks) but that another client or proxy could deliver.
func TestVerify_RawMetadata(t *testing.T) {
	clock := newFakeClock(t0)
	secret := keysSecret(t, 32)
	srv, err := NewServer(keysSet(t, keysMust(t, "k1", jwt.SigningMethodHS256, secret)), WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	f := verifyForger{t: t, secret: secret, now: t0}
	valid := f.hs256(nil, map[string]any{"iss": verifyDrop{}, "aud": verifyDrop{}})
	h, p, s := verifySplit(t, valid)
	for _, tc := range []struct {
		name  string
		value string
		want  Reason
	}{
		{"control", "Bearer " + valid, noReason},
		{"non-UTF8 token", "Bearer \xff\xfe\xfd", ReasonTokenInvalid},
		{"non-UTF8 scheme", "Be\xffarer " + valid, ReasonTokenMissing},
		{"NUL inside token", "Bearer " + valid[:10] + "\x00" + valid[10:], ReasonTokenInvalid},
		{"non-ASCII dot lookalike", "Bearer " + h + "\u2024" + p + "." + s, ReasonTokenInvalid},
		{"tab separator", "Bearer\t" + valid, ReasonTokenMissing},
		// Go's base64 decoders skip CR and LF even in strict mode, so
		// these are a second spelling of a valid signature.
		{"LF in signature", "Bearer " + h + "." + p + "." + s[:20] + "\n" + s[20:], ReasonTokenInvalid},
		{"CRLF after signature", "Bearer " + valid + "\r\n", ReasonTokenInvalid},
		{"LF in payload", "Bearer " + h + "." + p[:10] + "\n" + p[10:] + "." + s, ReasonTokenInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", tc.value))
			hctx, _, rn, err := srv.authenticate(ctx, "/grpc.testing.TestService/UnaryCall")
			renewed := rn.token()
			if tc.want == noReason {
				if err != nil {
					t.Fatalf("control rejected: %v", err)
				}
				if _, ok := ClaimsFromContext(hctx); !ok {
					t.Fatal("no claims in the handler context")
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %s", tc.want)
			}
			wantReason(t, err, tc.want)
			if renewed != "" {
				t.Error("rejection came with a renewed token")
			}
			verifyNoLeak(t, err, metadata.Pairs("authorization", tc.value))
		})
	}
}

// FuzzServerVerify feeds arbitrary bearer tokens to the server's check
// path. It must never panic, must reject with codes.Unauthenticated and a
// reason, and may accept only a token the server itself minted.
func FuzzServerVerify(f *testing.F) {
	clock := newFakeClock(t0)
	secret := keysSecret(f, 32)
	srv, err := NewServer(keysSet(f, keysMust(f, "k1", jwt.SigningMethodHS256, secret)),
		WithClock(clock.Now), WithIssuer(verifyIss), WithAudience(verifyAud))
	if err != nil {
		f.Fatal(err)
	}
	sess, err := srv.StartSession(context.Background(), "alice", map[string]any{"role": "role-custom-value"})
	if err != nil {
		f.Fatal(err)
	}
	minted := map[string]bool{sess.AccessToken: true}
	fg := verifyForger{t: f, secret: secret, now: t0}
	f.Add(sess.AccessToken)
	for _, seed := range []string{
		"", ".", "..", "...", "a.b.c", "e30.e30.", "\xff\xfe", strings.Repeat(".", 10_000), strings.Repeat("A", 9<<10),
		fg.hs256(nil, nil), // valid, but not minted by the server: forged with its key
		verifyToken(f, fg.header(map[string]any{"alg": "none"}), fg.claims(nil), nil, nil),
		verifyToken(f, fg.header(map[string]any{"alg": "nOnE", "kid": verifyDrop{}}), fg.claims(nil), nil, nil),
		fg.hs256(map[string]any{"kid": "evil-kid"}, nil),
		fg.hs256(map[string]any{"kid": 1}, nil),
		fg.hs256(map[string]any{"crit": []string{"exp"}}, nil),
		fg.hs256(map[string]any{"typ": "jwt"}, nil),
		fg.hs256(nil, map[string]any{"exp": verifyDrop{}}),
		fg.hs256(nil, map[string]any{"exp": "tomorrow"}),
		fg.hs256(nil, map[string]any{"exp": fg.unix(-time.Hour), "iat": fg.unix(-2 * time.Hour), "iss": "https://evil.test"}),
		fg.hs256(nil, map[string]any{"auth_time": fg.unix(-(DefaultMaxLifetime + time.Minute)), "iat": fg.unix(-time.Hour)}),
		fg.hs256Raw([]byte(`[]`), []byte(`{}`)),
		fg.hs256Raw(fg.header(nil), []byte(`{"sub":`)),
		verifyTrailingBits(f, sess.AccessToken),
		sess.AccessToken + "=",
		sess.AccessToken + ".",
	} {
		if !minted[seed] {
			f.Add(seed)
		}
	}
	// The forged-with-the-key seed is accepted: record it as one the
	// server's key made.
	minted[fg.hs256(nil, nil)] = true

	f.Fuzz(func(t *testing.T, tok string) {
		ctx := metadata.NewIncomingContext(context.Background(), bearerMD(tok))
		hctx, _, rn, err := srv.authenticate(ctx, "/grpc.testing.TestService/UnaryCall")
		renewed := rn.token()
		if err == nil {
			if !minted[tok] {
				t.Fatalf("accepted a %d-byte token that the key never signed", len(tok))
			}
			if _, ok := ClaimsFromContext(hctx); !ok {
				t.Fatal("accepted without claims in the context")
			}
			return
		}
		if renewed != "" {
			t.Error("rejection came with a renewed token")
		}
		st, ok := status.FromError(err)
		if !ok || st.Code() != codes.Unauthenticated {
			t.Fatalf("err = %v, want a codes.Unauthenticated status", err)
		}
		if r, ok := ReasonOf(err); !ok || r == noReason {
			t.Fatalf("status %q has no reason", st.Message())
		}
	})
}

// verifyResign returns tok with its segment seg (0 header, 1 payload),
// decoded, rewritten by edit and signed again with secret (HS256), so
// that only the edit differs from a token the server minted.
func verifyResign(t testing.TB, tok string, secret []byte, seg int, edit func(string) string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[seg])
	if err != nil {
		t.Fatal(err)
	}
	parts[seg] = base64.RawURLEncoding.EncodeToString([]byte(edit(string(b))))
	in := parts[0] + "." + parts[1]
	sig, err := jwt.SigningMethodHS256.Sign(in, secret)
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// verifyPrepend returns an edit that inserts member as the first member
// of the object: encoding/json (and golang-jwt's header map) keep the
// last of two equal names, so the token's own value still wins.
func verifyPrepend(member string) func(string) string {
	return func(s string) string { return "{" + member + "," + s[1:] }
}

// verifyDupCase is a token with a duplicate member name, made from a
// token the server minted.
type verifyDupCase struct {
	name string
	seg  int
	edit func(string) string
}

// verifyDupCases are the duplicate-name tokens for a token of JOSE type
// typ, whose custom claims are verifyDupCustom.
func verifyDupCases(typ string) []verifyDupCase {
	otherTyp := map[string]string{accessTokenType: refreshTokenType, refreshTokenType: accessTokenType}[typ]
	far := strconv.FormatInt(t0.Add(100*365*24*time.Hour).Unix(), 10)
	cs := []verifyDupCase{
		{"header kid", 0, verifyPrepend(`"kid":"evil-kid"`)},
		{"header alg", 0, verifyPrepend(`"alg":"none"`)},
		{"header typ", 0, verifyPrepend(`"typ":"` + otherTyp + `"`)},
		{"header escaped kid", 0, verifyPrepend(`"\u006bid":"evil-kid"`)},
		{"header escaped alg", 0, verifyPrepend(`"\u0061\u006c\u0067":"none"`)},
		{"payload sub", 1, verifyPrepend(`"sub":"mallory"`)},
		{"payload sid", 1, verifyPrepend(`"sid":"sid-4b2e81c0"`)},
		{"payload exp", 1, verifyPrepend(`"exp":` + far)},
		{"payload jti", 1, verifyPrepend(`"jti":"jti-7f3a9c11"`)},
		{"payload escaped sub", 1, verifyPrepend(`"s\u0075b":"mallory"`)},
		{"payload escaped exp", 1, verifyPrepend(`"\u0065xp":` + far)},
		{"payload custom claim", 1, verifyPrepend(`"role":"admin"`)},
		{"payload custom claim, escaped", 1, verifyPrepend(`"r\u006fle":"admin"`)},
		{"payload nested in a custom claim", 1, func(s string) string {
			return strings.Replace(s, `{"level":"reader"}`, `{"level":"admin","level":"reader"}`, 1)
		}},
		{"payload nested in a custom claim, escaped", 1, func(s string) string {
			return strings.Replace(s, `{"level":"reader"}`, `{"l\u0065vel":"admin","level":"reader"}`, 1)
		}},
	}
	if typ == accessTokenType {
		// Only the login access token carries fresh.
		cs = append(cs, verifyDupCase{"payload fresh", 1, verifyPrepend(`"fresh":false`)})
	}
	return cs
}

// verifyDupCustom are the custom claims of the sessions that the
// duplicate-name tests tamper with.
var verifyDupCustom = map[string]any{"role": "reader", "perm": map[string]any{"level": "reader"}}

// verifyDupPhrase is the fixed detail of a duplicate-name rejection.
const verifyDupPhrase = "duplicate member name"

// TestVerify_DuplicateNamesAccess: an access token whose header or payload
// names a member twice is TOKEN_INVALID on unary and streaming calls, with
// a fixed phrase, although encoding/json would have read a valid token
// from it (the last value wins). The unchanged token, signed the same
// way, is accepted.
func TestVerify_DuplicateNamesAccess(t *testing.T) {
	e := newEnv(t)
	secret, _ := e.keys.Active().signKey.([]byte)
	client := testpb.NewTestServiceClient(e.dial(t))
	tok := e.startSession(t, verifyDupCustom).AccessToken

	for _, seg := range []int{0, 1} {
		control := verifyResign(t, tok, secret, seg, func(s string) string { return s })
		if _, err := client.UnaryCall(metadata.NewOutgoingContext(context.Background(), bearerMD(control)), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("control token (segment %d re-signed unchanged): %v, want accepted", seg, err)
		}
	}
	for _, tc := range verifyDupCases(accessTokenType) {
		t.Run(tc.name, func(t *testing.T) {
			md := bearerMD(verifyResign(t, tok, secret, tc.seg, tc.edit))
			verifyRejectedCall(t, e, client, md, ReasonTokenInvalid)
			_, err := client.UnaryCall(metadata.NewOutgoingContext(context.Background(), md), &testpb.SimpleRequest{})
			if msg := status.Convert(err).Message(); !strings.HasSuffix(msg, ": "+verifyDupPhrase) {
				t.Errorf("message = %q, want it to end in %q", msg, verifyDupPhrase)
			}
			st, err := client.StreamingOutputCall(metadata.NewOutgoingContext(context.Background(), md),
				&testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}}})
			if err == nil {
				err = drain[*testpb.StreamingOutputCallResponse](st)
			}
			wantReason(t, err, ReasonTokenInvalid)
			verifyNoLeak(t, err, md)
		})
	}
}

// TestVerify_DuplicateNamesRefresh: the same for refresh tokens
// (verifier.verifyRefresh through Server.Refresh). Unchecked, each would
// be verified and rotated.
func TestVerify_DuplicateNamesRefresh(t *testing.T) {
	e := newEnv(t, withServerOptions(WithSessionStore(&memstore.SessionStore{})))
	secret, _ := e.keys.Active().signKey.([]byte)
	ctx := context.Background()

	for _, seg := range []int{0, 1} {
		tok := e.startSession(t, verifyDupCustom).RefreshToken
		control := verifyResign(t, tok, secret, seg, func(s string) string { return s })
		if _, err := e.server.Refresh(ctx, control); err != nil {
			t.Fatalf("control token (segment %d re-signed unchanged): %v, want refreshed", seg, err)
		}
	}
	for _, tc := range verifyDupCases(refreshTokenType) {
		t.Run(tc.name, func(t *testing.T) {
			s := e.startSession(t, verifyDupCustom)
			tampered := verifyResign(t, s.RefreshToken, secret, tc.seg, tc.edit)
			got, err := e.server.Refresh(ctx, tampered)
			wantReason(t, err, ReasonTokenInvalid)
			if msg := status.Convert(err).Message(); !strings.HasSuffix(msg, ": "+verifyDupPhrase) {
				t.Errorf("message = %q, want it to end in %q", msg, verifyDupPhrase)
			}
			if got.AccessToken != "" || got.RefreshToken != "" {
				t.Error("rejected refresh returned tokens")
			}
			verifyNoLeak(t, err, bearerMD(tampered))
			// The session itself is untouched: its real refresh token works.
			if _, err := e.server.Refresh(ctx, s.RefreshToken); err != nil {
				t.Errorf("the session's own refresh token after the rejection: %v", err)
			}
		})
	}
}

// TestIsCompactJWS_EveryByte: a token may hold base64url's alphabet and
// dots, and no other byte (CR and LF included, which Go's base64 decoders
// would skip).
func TestIsCompactJWS_EveryByte(t *testing.T) {
	const allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
	for c := range 256 {
		raw := "eyJ" + string([]byte{byte(c)}) + ".e30.sig"
		want := strings.IndexByte(allowed, byte(c)) >= 0
		if got := isCompactJWS(raw); got != want {
			t.Errorf("isCompactJWS with byte %#02x = %v, want %v", c, got, want)
		}
	}
	if !isCompactJWS("") {
		t.Error(`isCompactJWS("") = false; the empty token is refused elsewhere, not here`)
	}
}
