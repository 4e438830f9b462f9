package interceptor

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// parseRef is what the verifier did before parseJWS: golang-jwt's
// ParseWithClaims, with a key function enforcing the header rules on
// golang-jwt's header map (and looking for duplicate names in the header's
// bytes). parseJWS must decide every token as it does.
func parseRef(raw string, ks *KeySet, typ string, opts []jwt.ParserOption) (*Claims, error) {
	keyFunc := func(t *jwt.Token) (any, error) {
		seg, _, _ := strings.Cut(t.Raw, ".")
		hdr, err := base64.RawURLEncoding.Strict().DecodeString(seg)
		if err != nil {
			return nil, errJSONSyntax
		}
		if err := checkUniqueNames(hdr); err != nil {
			return nil, err
		}
		if _, ok := t.Header["crit"]; ok {
			return nil, errCritHeader
		}
		got, _ := t.Header["typ"].(string)
		if !isType(got, typ) {
			return nil, errWrongType
		}
		kid, _ := t.Header["kid"].(string)
		k := ks.byID[kid]
		if k == nil {
			return nil, errUnknownKey
		}
		if t.Method == nil || t.Method.Alg() != k.method.Alg() {
			return nil, errAlgMismatch
		}
		return k.verifyKey, nil
	}
	c := new(Claims)
	_, err := jwt.NewParser(append(opts, jwt.WithStrictDecoding())...).ParseWithClaims(raw, c, keyFunc)
	return c, err
}

// parseCorpus returns tokens for the differential test: every token of the
// hostile-input cases, the duplicate-name cases, and more header edits.
func parseCorpus(t *testing.T, f verifyForger) []string {
	var toks []string
	for _, tc := range verifyCases() {
		for _, v := range tc.md(f).Get("authorization") {
			if _, tok, ok := strings.Cut(v, " "); ok {
				toks = append(toks, strings.TrimSpace(tok))
			}
		}
	}
	valid := f.hs256(nil, nil)
	for _, typ := range []string{accessTokenType, refreshTokenType} {
		for _, dc := range verifyDupCases(typ) {
			toks = append(toks, verifyResign(t, valid, f.secret, dc.seg, dc.edit))
		}
	}
	for _, h := range []map[string]any{
		{"alg": 1}, {"alg": nil}, {"alg": "HS384"}, {"alg": "ES256"}, {"alg": "none"}, {"alg": "nonexistent"},
		{"typ": nil}, {"typ": 1}, {"typ": []string{"at+jwt"}}, {"kid": nil}, {"kid": 1}, {"kid": "k2"},
		{"crit": nil}, {"crit": []string{}}, {"jwk": map[string]any{"a": []any{1, map[string]any{"b": 2}}}},
	} {
		toks = append(toks, f.hs256(h, nil))
	}
	// Segments as bytes, signed with the key: JSON that encoding/json
	// would not write.
	signRaw := func(hdr, payload string) string {
		in := base64.RawURLEncoding.EncodeToString([]byte(hdr)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
		sig, err := jwt.SigningMethodHS256.Sign(in, f.secret)
		if err != nil {
			t.Fatal(err)
		}
		return in + "." + base64.RawURLEncoding.EncodeToString(sig)
	}
	claims := string(mustJSON(t, f.claims(nil)))
	const hdr = `{"alg":"HS256","typ":"at+jwt","kid":"k1"}`
	for _, h := range []string{
		hdr, `null`, `[]`, `{}`, `"x"`, hdr + ` `, hdr + ` x`, `{"alg":"HS256","typ":"at+jwt","kid":"k1","x":01}`,
		`{"alg":"HS256","typ":"at+jwt","kid":"k1","x":[1,}`, `{"alg":"HS256","typ":"at+jwt","KID":"k2","kid":"k1"}`,
		`{"alg":"HS256","typ":"at+jwt","kid":"k\u0031"}`, "{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"kid\":\"k1\",\"x\":\"\xff\"}",
	} {
		toks = append(toks, signRaw(h, claims))
	}
	for _, p := range []string{`null`, `[]`, `{}`, claims + ` x`, `{"sub":"alice","sub":"bob"}`, claims[:len(claims)-1] + `,"x":01}`} {
		toks = append(toks, signRaw(hdr, p))
	}
	toks = append(toks, "", ".", "..", "a.b.c", valid+".", valid+"=", verifyTrailingBits(t, valid), strings.Replace(valid, ".", "..", 1))
	return toks
}

// TestParseJWS_MatchesGolangJWT: parseJWS accepts exactly the tokens that
// golang-jwt's ParseWithClaims with the old key function accepted, with
// the same claims, and tells an expired token from an invalid one alike.
func TestParseJWS_MatchesGolangJWT(t *testing.T) {
	secret := keysSecret(t, 32)
	ks := keysSet(t, keysMust(t, "k1", jwt.SigningMethodHS256, secret))
	now := t0
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(ks.algs), jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
		jwt.WithLeeway(DefaultLeeway), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithIssuer(verifyIss), jwt.WithAudience(verifyAud),
	}
	validator := jwt.NewValidator(opts...)
	f := verifyForger{t: t, secret: secret, now: now}
	toks := parseCorpus(t, f)
	if len(toks) < 60 {
		t.Fatalf("only %d tokens", len(toks))
	}
	accepted, expired := 0, 0
	for _, tok := range toks {
		for _, typ := range []string{accessTokenType, refreshTokenType} {
			want, werr := parseRef(tok, ks, typ, opts)
			got := new(Claims)
			err := parseJWS(tok, got, ks, typ, validator)
			short := tok[:min(len(tok), 48)]
			if (err == nil) != (werr == nil) {
				t.Errorf("%s %q...: parseJWS err = %v, golang-jwt err = %v", typ, short, err, werr)
				continue
			}
			if onlyExpired(err) != onlyExpired(werr) {
				t.Errorf("%s %q...: parseJWS expired-only = %v (%v), golang-jwt %v (%v)", typ, short, onlyExpired(err), err, onlyExpired(werr), werr)
			}
			if err == nil || onlyExpired(err) {
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s %q...: claims differ:\n got %+v\nwant %+v", typ, short, got, want)
				}
				if err == nil {
					accepted++
				} else {
					expired++
				}
				continue
			}
			// The reason given may differ only where parseJWS calls the
			// token malformed earlier: a header member of the wrong JSON
			// type, or a header or payload that is not an object.
			if d, wd := invalidDetail(err), invalidDetail(werr); d != wd && d != "malformed token" {
				t.Errorf("%s %q...: detail %q, golang-jwt path %q", typ, short, d, wd)
			}
		}
	}
	// The corpus holds accepted and expired tokens, so that the claims
	// comparison runs.
	if accepted < 5 || expired < 1 {
		t.Fatalf("corpus accepted %d, expired %d: too few", accepted, expired)
	}
}

// TestReadHeader: alg, typ, kid and crit as encoding/json would read them
// for an unambiguous header, and refusals of what the verifier refuses
// before any key is looked at.
func TestReadHeader(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want joseHeader
		ok   bool
	}{
		{`{"alg":"HS256","typ":"at+jwt","kid":"k1"}`, joseHeader{alg: "HS256", typ: "at+jwt", kid: "k1", hasAlg: true}, true},
		{` { "typ" : "at+jwt" , "alg" : "ES256" } `, joseHeader{alg: "ES256", typ: "at+jwt", hasAlg: true}, true},
		{`{}`, joseHeader{}, true},
		{`{"alg":null,"typ":null,"kid":null}`, joseHeader{}, true},
		{`{"alg":"HS\u0032\u0035\u0036","typ":"at+jwt"}`, joseHeader{alg: "HS256", typ: "at+jwt", hasAlg: true}, true},
		{`{"\u0061lg":"HS256"}`, joseHeader{alg: "HS256", hasAlg: true}, true},
		{`{"jwk":{"a":[1,{"b":2}]},"alg":"HS256"}`, joseHeader{alg: "HS256", hasAlg: true}, true},
		{`{"ALG":"none","alg":"HS256"}`, joseHeader{alg: "HS256", hasAlg: true}, true}, // names match exactly
		{`{"Alg":"HS256"}`, joseHeader{}, true},
		{`{"crit":null}`, joseHeader{crit: true}, true},
		{`{"crit":["exp"],"alg":"HS256"}`, joseHeader{alg: "HS256", hasAlg: true, crit: true}, true},
		// Refused.
		{`{"alg":"HS256","alg":"none"}`, joseHeader{}, false},
		{`{"alg":"HS256","\u0061lg":"none"}`, joseHeader{}, false},
		{`{"jwk":{"a":1,"a":2},"alg":"HS256"}`, joseHeader{}, false},
		{`{"kid":{"a":1},"alg":"HS256"}`, joseHeader{}, false},
		{`{"alg":1}`, joseHeader{}, false},
		{`{"typ":["at+jwt"]}`, joseHeader{}, false},
		{`{"alg":true}`, joseHeader{}, false},
		{`["alg","HS256"]`, joseHeader{}, false},
		{`null`, joseHeader{}, false},
		{``, joseHeader{}, false},
		{`{"alg":"HS256"`, joseHeader{}, false},
		{`{"alg":"HS256",}`, joseHeader{}, false},
		{`{"alg":"HS256"} {}`, joseHeader{}, false},
		{`{"alg" "HS256"}`, joseHeader{}, false},
		{`{alg:"HS256"}`, joseHeader{}, false},
		{"{\"a\nb\":1}", joseHeader{}, false},
		{"{\"alg\":\"HS\n256\"}", joseHeader{}, false},
		{`{"alg":"HS256","jwk":01}`, joseHeader{}, false},
	} {
		h, err := readHeader([]byte(tc.in))
		if (err == nil) != tc.ok || h != tc.want {
			t.Errorf("readHeader(%q) = %+v, %v; want %+v, ok %v", tc.in, h, err, tc.want, tc.ok)
		}
		if !tc.ok {
			continue
		}
		// The same as encoding/json where exact names leave no room for a
		// difference.
		if strings.Contains(strings.ToLower(tc.in), `"alg"`) != strings.Contains(tc.in, `"alg"`) {
			continue
		}
		var w struct {
			Alg string `json:"alg"`
			Typ string `json:"typ"`
			Kid string `json:"kid"`
		}
		if err := json.Unmarshal([]byte(tc.in), &w); err != nil || w.Alg != h.alg || w.Typ != h.typ || w.Kid != h.kid {
			t.Errorf("%q: encoding/json reads %+v, %v", tc.in, w, err)
		}
	}
}

// TestParseJWS_Allocs bounds a miss's parse of a usual token.
func TestParseJWS_Allocs(t *testing.T) {
	bs := newBenchServer(t, benchAlgs[0])
	got := testing.AllocsPerRun(100, func() {
		if _, err := bs.v.verify(bs.tok); err != nil {
			t.Fatal(err)
		}
	})
	if got > 20 {
		t.Errorf("verify allocates %v times, want at most 20", got)
	}
}
