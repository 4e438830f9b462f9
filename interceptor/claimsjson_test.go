package interceptor

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// oracleRegistered is Claims without its custom JSON methods, for the
// oracle below.
type oracleRegistered struct {
	jwt.RegisteredClaims
	SessionID     string           `json:"sid,omitempty"`
	AuthTime      *jwt.NumericDate `json:"auth_time,omitempty"`
	SessionExpiry *jwt.NumericDate `json:"session_exp,omitempty"`
	Cnf           *oracleCnf       `json:"cnf,omitempty"`
	Fresh         bool             `json:"fresh,omitempty"`
}

// oracleCnf encodes a cnf claim with encoding/json. It decodes nothing:
// oracleUnmarshal reads the claim with parseConfirmation, which a
// thumbprint's own tests hold to RFC 8705 (binding_test.go).
type oracleCnf struct {
	X5tS256 string `json:"x5t#S256"`
}

func (*oracleCnf) UnmarshalJSON([]byte) error { return nil }

// oracleUnmarshal is Claims.UnmarshalJSON as it was before the one-pass
// parser: encoding/json twice, then the duplicate scan. The differential
// fuzz target holds the new parser to it.
func oracleUnmarshal(c *Claims, data []byte) error {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	if err := checkUniqueNames(data); err != nil {
		return err
	}
	for name := range all {
		if !reservedClaims[name] && isReservedClaim(name) {
			return errShadowClaim
		}
	}
	var r oracleRegistered
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	for _, name := range [...]string{"exp", "iat", "nbf", "auth_time", "session_exp"} {
		if v, ok := all[name]; ok {
			v = bytes.TrimSpace(v)
			if len(v) == 0 || !(v[0] == '-' || v[0] >= '0' && v[0] <= '9') {
				return errDateNotNumber
			}
		}
	}
	var cnf *Confirmation
	if v, ok := all["cnf"]; ok {
		t, err := parseConfirmation(v)
		if err != nil {
			return err
		}
		cnf = &Confirmation{X5tS256: t}
	}
	for name := range reservedClaims {
		delete(all, name)
	}
	if len(all) == 0 {
		all = nil
	}
	*c = Claims{RegisteredClaims: r.RegisteredClaims, SessionID: r.SessionID, AuthTime: r.AuthTime, SessionExpiry: r.SessionExpiry,
		Confirmation: cnf, Fresh: r.Fresh, Custom: all}
	return nil
}

// oracleMarshal is Claims.MarshalJSON as it was before: encoding/json of
// the registered claims, then the custom claims spliced in.
func oracleMarshal(c Claims) ([]byte, error) {
	var cnf *oracleCnf
	if c.Confirmation != nil {
		cnf = &oracleCnf{X5tS256: base64.RawURLEncoding.EncodeToString(c.Confirmation.X5tS256[:])}
	}
	base, err := json.Marshal(oracleRegistered{c.RegisteredClaims, c.SessionID, c.AuthTime, c.SessionExpiry, cnf, c.Fresh})
	if err != nil || len(c.Custom) == 0 {
		return base, err
	}
	var buf bytes.Buffer
	buf.Write(base[:len(base)-1])
	first := len(base) == 2
	for _, name := range slices.Sorted(maps.Keys(c.Custom)) {
		if isReservedClaim(name) {
			return nil, fmt.Errorf("%w: %q", ErrReservedClaim, name)
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		k, _ := json.Marshal(name)
		buf.Write(k)
		buf.WriteByte(':')
		if err := json.Compact(&buf, c.Custom[name]); err != nil {
			return nil, err
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// nest returns n levels of open, then inner, then n levels of close.
func nest(open, inner, close string, n int) string {
	return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
}

// TestClaims_UnmarshalHostile covers what the one-pass parser decides
// itself: syntax, escapes, numbers, types and nesting.
func TestClaims_UnmarshalHostile(t *testing.T) {
	const secret = "sekret-value"
	for _, tc := range []struct {
		name string
		in   string
		want error // nil: accepted; errAnyReject: some error
		// check, if set, inspects the accepted claims.
		check func(*Claims) bool
	}{
		{"null", `null`, errNotObject, nil},
		{"array", `[{"sub":"` + secret + `"}]`, errNotObject, nil},
		{"string", `"` + secret + `"`, errNotObject, nil},
		{"number", `42`, errNotObject, nil},
		{"empty", ``, errNotObject, nil},
		{"white space only", " \n\t", errNotObject, nil},
		{"byte order mark", "\xef\xbb\xbf{}", errNotObject, nil},
		{"empty object", ` { } `, nil, func(c *Claims) bool { return reflect.DeepEqual(*c, Claims{}) }},
		{"trailing garbage", `{"sub":"a"} x`, errJSONSyntax, nil},
		{"trailing object", `{"sub":"a"}{"sub":"b"}`, errJSONSyntax, nil},
		{"trailing comma", `{"sub":"a",}`, errJSONSyntax, nil},
		{"missing comma", `{"sub":"a" "sid":"b"}`, errJSONSyntax, nil},
		{"truncated", `{"sub":"a"`, errJSONSyntax, nil},
		{"truncated string", `{"sub":"a`, errJSONSyntax, nil},
		{"single quotes", `{'sub':'a'}`, errJSONSyntax, nil},
		{"control byte in value", "{\"x\":\"a\nb\"}", errJSONSyntax, nil},
		{"control byte in name", "{\"a\x01\":1}", errJSONSyntax, nil},
		{"bad escape", `{"x":"\x41"}`, errJSONSyntax, nil},
		{"short unicode escape", `{"x":"\u41"}`, errJSONSyntax, nil},
		{"bad escape in name", `{"\q":1}`, errJSONSyntax, nil},
		{"literal typo", `{"fresh":tru}`, errJSONSyntax, nil},
		{"literal with tail", `{"fresh":truex}`, errJSONSyntax, nil},
		{"leading zero", `{"exp":01}`, errJSONSyntax, nil},
		{"bare point", `{"exp":1.}`, errJSONSyntax, nil},
		{"bare exponent", `{"exp":1e}`, errJSONSyntax, nil},
		{"plus sign", `{"exp":+1}`, errJSONSyntax, nil},
		{"hex number", `{"exp":0x10}`, errJSONSyntax, nil},
		{"NaN", `{"exp":NaN}`, errJSONSyntax, nil},
		{"bad nested custom", `{"x":{"a":}}`, errJSONSyntax, nil},
		{"unbalanced nested custom", `{"x":[1,2}`, errJSONSyntax, nil},
		{"name not a string", `{sub:"a"}`, errJSONSyntax, nil},

		{"escaped duplicate name", `{"s\u0075b":"a","sub":"b"}`, errDuplicateName, nil},
		{"escaped custom duplicate", `{"r\u006fle":1,"role":2}`, errDuplicateName, nil},
		{"invalid UTF-8 names that unescape alike", "{\"\xffa\":1,\"\\ufffda\":2}", errDuplicateName, nil},
		{"nested duplicate", `{"x":{"a":1,"b":[{"c":1,"c":2}]}}`, errDuplicateName, nil},
		{"duplicate inside a reserved claim", `{"sub":{"a":1,"a":2}}`, errDuplicateName, nil},
		{"duplicate after a type fault", `{"sub":1,"x":1,"x":2}`, errDuplicateName, nil},
		{"duplicate among many names", manyNames(40, true), errDuplicateName, nil},
		{"many names", manyNames(40, false), nil, func(c *Claims) bool { return len(c.Custom) == 40 }},
		{"escaped reserved name", `{"s\u0075b":"a"}`, nil, func(c *Claims) bool { return c.Subject == "a" && c.Custom == nil }},
		{"escaped look-alike", `{"\u0053ub":"a"}`, errShadowClaim, nil},
		{"long s look-alike", `{"ſub":"a"}`, errShadowClaim, nil},
		{"kelvin look-alike", `{"jtı":"a","auth_time":1,"\u212aey":1}`, nil, nil}, // no fold to a session claim
		{"upper case look-alike", `{"AUTH_TIME":1}`, errShadowClaim, nil},

		{"exponent date", `{"exp":1e3}`, nil, func(c *Claims) bool { return c.ExpiresAt.Unix() == 1000 }},
		{"negative zero date", `{"exp":-0}`, nil, func(c *Claims) bool { return c.ExpiresAt.Unix() == 0 }},
		{"fractional date", `{"iat":1.75}`, nil, func(c *Claims) bool { return c.IssuedAt.Unix() == 1 }},
		{"long integer date", `{"iat":12345678901234567}`, nil, func(c *Claims) bool { return c.IssuedAt.Unix() == 12345678901234568 }},
		{"huge exponent date", `{"exp":1e400}`, errClaimType, nil},
		{"quoted date", `{"exp":"1700000000"}`, errDateNotNumber, nil},
		{"null date", `{"auth_time":null}`, errDateNotNumber, nil},
		{"boolean date", `{"nbf":true}`, errDateNotNumber, nil},
		{"number subject", `{"sub":1}`, errClaimType, nil},
		{"object subject", `{"sub":{"v":"` + secret + `"}}`, errClaimType, nil},
		{"null subject", `{"sub":null}`, nil, func(c *Claims) bool { return c.Subject == "" }},
		{"escaped subject", `{"sub":"a\"\u00e9"}`, nil, func(c *Claims) bool { return c.Subject == "a\"é" }},
		{"invalid UTF-8 subject", "{\"sub\":\"a\xff\"}", nil, func(c *Claims) bool { return c.Subject == "a\uFFFD" }},
		{"number fresh", `{"fresh":1}`, errClaimType, nil},
		{"string fresh", `{"fresh":"true"}`, errClaimType, nil},
		{"audience array", `{"aud":["a","b"]}`, nil, func(c *Claims) bool { return slices.Equal(c.Audience, []string{"a", "b"}) }},
		{"audience with a number", `{"aud":["a",1]}`, jwt.ErrInvalidType, nil},
		{"custom kept byte for byte", "{\"x\" : [ 1 ,\"\xff\" ] , \"y\":\"\\u0041\"}", nil, func(c *Claims) bool {
			return string(c.Custom["x"]) == "[ 1 ,\"\xff\" ]" && string(c.Custom["y"]) == `"\u0041"`
		}},
		{"deep arrays", `{"x":` + nest("[", "", "]", 20000) + `}`, errJSONSyntax, nil},
		{"deep objects", `{"x":` + nest(`{"a":`, "1", "}", 20000) + `}`, errJSONSyntax, nil},
		{"deep unbalanced", `{"x":` + strings.Repeat("[", 100000), errJSONSyntax, nil},
		{"nested duplicate deep down", `{"x":` + nest(`{"a":`, `{"b":1,"b":2}`, "}", 500) + `}`, errDuplicateName, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Claims
			err := c.UnmarshalJSON([]byte(tc.in))
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("UnmarshalJSON = %v, want %v", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Fatalf("error %q quotes a claim value", err)
			}
			if err == nil && tc.check != nil && !tc.check(&c) {
				t.Fatalf("UnmarshalJSON accepted %+v, not what was expected", c)
			}
			// The old decoding agrees on every valid input except null,
			// which only the new one refuses.
			var o Claims
			oerr := oracleUnmarshal(&o, []byte(tc.in))
			if (oerr == nil) != (err == nil) && tc.in != "null" {
				t.Errorf("old decoding: %v; new: %v", oerr, err)
			}
		})
	}
}

// TestClaims_UnmarshalAllocs bounds the allocations of a realistic payload.
func TestClaims_UnmarshalAllocs(t *testing.T) {
	data := []byte(`{"iss":"https://auth.example.com","sub":"user-1","aud":["api"],"exp":1700086400,"iat":1700000000,` +
		`"jti":"AAAAAAAAAAAAAAAAAAAAAA","sid":"BBBBBBBBBBBBBBBBBBBBBB","auth_time":1700000000,"role":"admin","tenant":42}`)
	var c Claims
	got := testing.AllocsPerRun(100, func() {
		if err := c.UnmarshalJSON(data); err != nil {
			t.Fatal(err)
		}
	})
	// The payload's string copy, the dates and audience, the custom bytes
	// and the map.
	if got > 5 {
		t.Errorf("UnmarshalJSON allocates %v times, want at most 5", got)
	}
}

// TestClaims_MarshalMatchesOld holds MarshalJSON to the old encoding,
// byte for byte, on claims that need escaping too.
func TestClaims_MarshalMatchesOld(t *testing.T) {
	d := func(sec int64) *jwt.NumericDate { return jwt.NewNumericDate(time.Unix(sec, 0)) }
	for _, c := range []Claims{
		{},
		{Fresh: true},
		{Custom: map[string]json.RawMessage{"x": json.RawMessage(` [ 1 , 2 ] `)}},
		{
			RegisteredClaims: jwt.RegisteredClaims{
				Issuer: "<iss>&", Subject: "a\"b\\c\u2028\xff", Audience: jwt.ClaimStrings{"x", "y<"},
				ExpiresAt: d(1700000100), NotBefore: d(-5), IssuedAt: d(0), ID: "j\n",
			},
			SessionID: "s", AuthTime: d(1), Fresh: true,
			Custom: map[string]json.RawMessage{"b": json.RawMessage(`"x"`), "a<": json.RawMessage(`{ "k" : null }`), "é": json.RawMessage(`1`)},
		},
		{RegisteredClaims: jwt.RegisteredClaims{Audience: jwt.ClaimStrings{}}},
		{RegisteredClaims: jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"one"}}},
	} {
		got, err := c.MarshalJSON()
		want, werr := oracleMarshal(c)
		if err != nil || werr != nil || !bytes.Equal(got, want) {
			t.Errorf("MarshalJSON = %s, %v; old = %s, %v", got, err, want, werr)
		}
	}
	for _, bad := range []map[string]json.RawMessage{{"SUB": json.RawMessage(`1`)}, {"x": json.RawMessage(`{`)}} {
		if _, err := (Claims{Custom: bad}).MarshalJSON(); err == nil {
			t.Errorf("MarshalJSON of custom %v: no error", slices.Collect(maps.Keys(bad)))
		}
	}
}

// FuzzClaimsUnmarshalJSON holds the one-pass parser to the old two-pass
// decoding: the same verdict, the same claims, the same encoding, and a
// duplicate name reported as one.
func FuzzClaimsUnmarshalJSON(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `{"sub":"a","sid":"b","aud":["x"],"exp":1e3,"iat":-0,"auth_time":1.5,"fresh":true,"x":{"y":[1,"2"]}}`,
		`{"s\u0075b":"a","sub":"b"}`, `{"Sub":1}`, `{"ſid":1}`, `{"exp":"1"}`, `{"exp":null}`, `{"aud":"a","z":null}`,
		`{"a":1,"a":2}`, `{"x":{"a":1,"a":2}}`, "{\"\xff\":1,\"\\ufffd\":2}", `{"exp":1e400}`, `{"iss":"\u00e9\""}`,
		manyNames(20, false), `{"nbf":12345678901234567890}`, `{"x" : [ 1 , 2 ] } `, `{"fresh":null,"aud":null}`,
		`{"auth_time":1,"session_exp":7200}`, `{"session_exp":"7200"}`, `{"Session_exp":1}`, `{"session_exp":1.5e3}`,
		`{"cnf":{"x5t#S256":"` + strings.Repeat("A", 43) + `"}}`, `{"cnf":{"x5t\u0023S256":"` + strings.Repeat("_", 42) + `w"}}`,
		`{"cnf":null}`, `{"cnf":{}}`, `{"CNF":{}}`, `{"cnf":{"x5t#S256":"A","x5t#S256":"B"}}`, `{"cnf":{"jkt":"x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want Claims
		err := got.UnmarshalJSON(data)
		werr := oracleUnmarshal(&want, data)
		switch {
		case err != nil && werr != nil:
			if json.Valid(data) && errors.Is(err, errDuplicateName) != errors.Is(werr, errDuplicateName) {
				t.Fatalf("%q: new %v, old %v", data, err, werr)
			}
			return
		case err != nil && werr == nil:
			if string(bytes.TrimSpace(data)) != "null" {
				t.Fatalf("%q: new refuses (%v), old accepts", data, err)
			}
			return
		case err == nil && werr != nil:
			t.Fatalf("%q: new accepts, old refuses (%v)", data, werr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: new %+v, old %+v", data, got, want)
		}
		m, merr := got.MarshalJSON()
		wm, wmerr := oracleMarshal(want)
		if (merr == nil) != (wmerr == nil) || !bytes.Equal(m, wm) {
			t.Fatalf("%q: new encodes %s (%v), old %s (%v)", data, m, merr, wm, wmerr)
		}
	})
}

// oracleClaims encodes as Claims did before the one-pass encoder.
type oracleClaims struct{ *Claims }

func (o oracleClaims) MarshalJSON() ([]byte, error) { return oracleMarshal(*o.Claims) }

// TestSignCompact holds the direct signer to golang-jwt's
// Token.SignedString of the same header and the old claims encoding: the
// same header and payload bytes, and a signature golang-jwt verifies.
func TestSignCompact(t *testing.T) {
	d := jwt.NewNumericDate(t0)
	c := &Claims{
		RegisteredClaims: jwt.RegisteredClaims{Issuer: "iss<&>", Subject: "s\u2028", Audience: jwt.ClaimStrings{"a"}, ExpiresAt: d, IssuedAt: d, ID: "j"},
		SessionID:        "sid", AuthTime: d,
		Custom: map[string]json.RawMessage{"html": json.RawMessage(`"<b>&amp;\u2028</b>"`), "n": json.RawMessage(` { "x" : 1 } `)},
	}
	for _, a := range benchAlgs {
		t.Run(a.name, func(t *testing.T) {
			sign, verify := a.key(t)
			k := keysMust(t, "k<1>", a.method, sign)
			got, err := signCompact(k, c, accessTokenType)
			if err != nil {
				t.Fatal(err)
			}
			old := jwt.NewWithClaims(a.method, oracleClaims{c})
			old.Header["typ"] = accessTokenType
			old.Header["kid"] = k.id
			want, err := old.SignedString(sign)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := got[:strings.LastIndexByte(got, '.')], want[:strings.LastIndexByte(want, '.')]; g != w {
				t.Errorf("signing input\n got %s\nwant %s", g, w)
			}
			var back Claims
			if _, err := jwt.NewParser(jwt.WithoutClaimsValidation()).ParseWithClaims(got, &back, func(*jwt.Token) (any, error) { return verify, nil }); err != nil {
				t.Fatalf("golang-jwt does not verify the token: %v", err)
			}
		})
	}
}
