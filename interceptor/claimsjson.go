package interceptor

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// This file holds the claims' JSON encoding and decoding: one walk over the
// payload's members that fills the session claims directly and keeps the
// custom claims as raw bytes, and an encoder that writes the few members
// itself.

// claimsStorage is what the pointers and the one-element audience of
// decoded Claims point into, so that they take one allocation.
type claimsStorage struct {
	dates [5]jwt.NumericDate // exp, nbf, iat, auth_time, session_exp
	aud   [1]string
	cnf   Confirmation
}

// claimsMember is one top-level member of a claims payload: its value is
// data[start:end]; str tells whether that is a string whose bytes are its
// own unescaped form. Its bounds are int32 for the reason dupName's are.
type claimsMember struct {
	start, end int32
	plain      bool
}

// UnmarshalJSON decodes the registered claims and keeps every other member
// as a custom claim. It refuses anything but one JSON object, an object at
// any depth that names a member twice (encoding/json would keep the last
// value, another parser the first), a member whose name differs from a
// session claim's only in case, a date that is not a JSON number, and a
// cnf that is not one x5t#S256 thumbprint (see parseConfirmation).
//
// It is one walk over the object's members, which validates the JSON
// itself: it does not rely on its caller having done so.
func (c *Claims) UnmarshalJSON(data []byte) error { return c.unmarshal(data, nil) }

// unmarshal is UnmarshalJSON, which also puts into rawDates, if not nil,
// each date's JSON number as it appears in data (nil when absent; indexed
// like verifiedClaims's dates, which claimsStorage's follow too): a
// client reads them as exactly as encoding/json would, where Claims keeps
// golang-jwt's jwt.TimePrecision.
func (c *Claims) unmarshal(data []byte, rawDates *[numDates][]byte) error {
	if len(data) >= maxJSONLen {
		return errJSONTooLarge
	}
	var (
		// A session token has about a dozen members.
		nameBuf   [16]dupName
		memberBuf [16]claimsMember
		names     = nameBuf[:0]
		members   = memberBuf[:0]
		arena     []byte // unescaped names
		frame     = dupFrame{object: true}
	)
	i, more, err := objectStart(data)
	if err != nil {
		return err
	}
	for more {
		var m claimsMember
		if m, arena, names, err = objectMember(data, i, arena, names, &frame); err != nil {
			return err
		}
		members = append(members, m)
		if i, more, err = objectNext(data, int(m.end)); err != nil {
			return err
		}
	}

	// One copy of the payload, of which the names and string claims are
	// substrings.
	str := string(data)
	name := func(k int) string {
		if n := names[k]; n.unescaped {
			return string(arena[n.start:n.end])
		}
		return str[names[k].start:names[k].end]
	}
	// Refuse look-alikes of the session claims before anything else.
	customs, customSize := 0, 0
	for k := range names {
		nm := name(k)
		if reservedClaims[nm] {
			continue
		}
		if mayBeReserved(nm) && isReservedClaim(nm) {
			return errShadowClaim
		}
		customs++
		customSize += int(members[k].end - members[k].start)
	}

	var (
		out Claims
		st  *claimsStorage
		buf []byte
	)
	storage := func() *claimsStorage {
		if st == nil {
			st = new(claimsStorage)
		}
		return st
	}
	if customs > 0 {
		out.Custom = make(map[string]json.RawMessage, customs)
		buf = make([]byte, 0, customSize)
	}
	for k, m := range members {
		nm := name(k)
		v := data[m.start:m.end]
		date := -1
		switch nm {
		case "iss":
			err = decodeClaimString(&out.Issuer, v, m, str)
		case "sub":
			err = decodeClaimString(&out.Subject, v, m, str)
		case "jti":
			err = decodeClaimString(&out.ID, v, m, str)
		case "sid":
			err = decodeClaimString(&out.SessionID, v, m, str)
		case "aud":
			if aud, ok := plainAudience(data, m, str, storage); ok {
				out.Audience = aud
			} else {
				// An array, an escaped string or null: golang-jwt's own
				// decoding, as before.
				var aud jwt.ClaimStrings
				err = aud.UnmarshalJSON(v)
				out.Audience = aud
			}
		case "fresh":
			switch string(v) {
			case "true":
				out.Fresh = true
			case "false", "null":
			default:
				err = errClaimType
			}
		case "exp":
			date = dateExp
		case "nbf":
			date = dateNbf
		case "iat":
			date = dateIat
		case "auth_time":
			date = dateAuthTime
		case "session_exp":
			date = dateSessionExp
		case "cnf":
			st := storage()
			if st.cnf.X5tS256, err = parseConfirmation(v); err == nil {
				out.Confirmation = &st.cnf
			}
		default:
			start := len(buf)
			buf = append(buf, v...)
			// Capped, so that appending to one claim cannot write into
			// the next one's bytes.
			out.Custom[nm] = buf[start:len(buf):len(buf)]
		}
		if err != nil {
			return err
		}
		if date >= 0 {
			d := &storage().dates[date]
			if err := decodeNumericDate(d, v); err != nil {
				return err
			}
			if rawDates != nil {
				rawDates[date] = v
			}
			switch date {
			case dateExp:
				out.ExpiresAt = d
			case dateNbf:
				out.NotBefore = d
			case dateIat:
				out.IssuedAt = d
			case dateAuthTime:
				out.AuthTime = d
			case dateSessionExp:
				out.SessionExpiry = d
			}
		}
	}
	*c = out
	return nil
}

// objectStart begins the walk of data as one JSON object, the whole of
// data, member by member (Claims.unmarshal and readHeader walk a token's
// payload and header so): it returns the index of the first member, or
// more false for an empty object.
func objectStart(data []byte) (i int, more bool, err error) {
	i, ch := jsonNext(data, 0)
	if ch != '{' {
		return i, false, errNotObject
	}
	if i, ch = jsonNext(data, i+1); ch == '}' {
		return i, false, objectEnd(data, i+1)
	}
	return i, true, nil
}

// objectMember scans the member that starts at data[i]: its name goes into
// names (refused if the object f already has it, or if it holds a raw
// control byte), and it returns the bounds of its value, valid JSON.
func objectMember(data []byte, i int, arena []byte, names []dupName, f *dupFrame) (claimsMember, []byte, []dupName, error) {
	var err error
	// dupMember refuses a name seen before in this object; a plain name is
	// not validated by it, an escaped one is.
	if i, arena, names, err = dupMember(data, i, arena, names, f); err != nil {
		return claimsMember{}, arena, names, err
	}
	if n := names[len(names)-1]; !n.unescaped && hasControl(data[n.start:n.end]) {
		return claimsMember{}, arena, names, errJSONSyntax
	}
	start, _ := jsonNext(data, i)
	end, plain, err := scanValue(data, start)
	if err != nil {
		return claimsMember{}, arena, names, err
	}
	return claimsMember{start: int32(start), end: int32(end), plain: plain}, arena, names, nil
}

// objectNext reads what follows the value that ends at data[end]: it
// returns the index of the next member, or more false at the object's
// end, which must be the end of data.
func objectNext(data []byte, end int) (i int, more bool, err error) {
	i, ch := jsonNext(data, end)
	switch ch {
	case ',':
		return i + 1, true, nil
	case '}':
		return i + 1, false, objectEnd(data, i+1)
	}
	return i, false, errJSONSyntax
}

// objectEnd returns errJSONSyntax unless only white space follows data[i].
func objectEnd(data []byte, i int) error {
	if _, ch := jsonNext(data, i); ch != dupEOF {
		return errJSONSyntax
	}
	return nil
}

// plainAudience decodes v, the value of the aud member m, when it is a
// string or an array of strings without escapes: the usual audience. It
// reports false for anything else, which golang-jwt's own decoding takes.
// v is valid JSON.
func plainAudience(data []byte, m claimsMember, str string, storage func() *claimsStorage) (jwt.ClaimStrings, bool) {
	if m.plain {
		s := storage()
		s.aud[0] = str[m.start+1 : m.end-1]
		return s.aud[:1:1], true
	}
	if data[m.start] != '[' {
		return nil, false
	}
	var (
		buf [4]string
		aud = buf[:0]
	)
	if _, ok := plainStringArray(data, int(m.start), func(start, end int) {
		aud = append(aud, str[start:end])
	}); !ok {
		return nil, false
	}
	if len(aud) == 0 {
		return nil, true // as golang-jwt: an empty array is no audience
	}
	if len(aud) == 1 {
		s := storage()
		s.aud[0] = aud[0]
		return s.aud[:1:1], true
	}
	return slices.Clone(aud), true
}

// plainStringArray walks the JSON array that starts at data[i] ('['),
// whose elements must be strings without escapes, and calls each with the
// bounds of every string's contents, in order. It returns the index after
// the closing ']', and false, having stopped, for anything else.
func plainStringArray(data []byte, i int, each func(start, end int)) (int, bool) {
	i, c := jsonNext(data, i)
	if c != '[' {
		return i, false
	}
	if i, c = jsonNext(data, i+1); c == ']' {
		return i + 1, true
	}
	for {
		if c != '"' {
			return i, false
		}
		end, plain, ok := scanString(data, i)
		if !ok || !plain {
			return i, false
		}
		each(i+1, end-1)
		if i, c = jsonNext(data, end); c == ']' {
			return i + 1, true
		}
		if c != ',' {
			return i, false
		}
		i, c = jsonNext(data, i+1)
	}
}

// mayBeReserved reports whether name can fold to a session claim's name:
// an ASCII name can only if it has the length of one.
func mayBeReserved(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf {
			return true
		}
	}
	switch len(name) {
	case 3, 5, len("auth_time"), len("session_exp"):
		return true
	}
	return false
}

// decodeClaimString decodes v, the value of member m, into *dst as
// encoding/json would: a string, or null for no change.
func decodeClaimString(dst *string, v []byte, m claimsMember, str string) error {
	switch {
	case m.plain:
		*dst = str[m.start+1 : m.end-1]
	case v[0] == '"':
		var s string // not dst, which would then escape
		if err := json.Unmarshal(v, &s); err != nil {
			return errClaimType
		}
		*dst = s
	case string(v) == "null":
	default:
		return errClaimType
	}
	return nil
}

// maxExactDigits is a number of decimal digits that a float64 holds
// exactly, so that reading such an integer directly gives what
// golang-jwt's float conversion gives.
const maxExactDigits = 15

// decodeNumericDate decodes v, a JSON value, into d as golang-jwt does,
// except that it must be a JSON number (RFC 7519 §2): golang-jwt reads
// dates through json.Number, which also takes a quoted number.
func decodeNumericDate(d *jwt.NumericDate, v []byte) error {
	if len(v) == 0 || !(v[0] == '-' || v[0] >= '0' && v[0] <= '9') {
		return errDateNotNumber
	}
	var sec int64
	if len(v) <= maxExactDigits {
		for _, b := range v {
			if b < '0' || b > '9' {
				sec = -1
				break
			}
			sec = sec*10 + int64(b-'0')
		}
	} else {
		sec = -1
	}
	var t time.Time
	if sec >= 0 {
		t = time.Unix(sec, 0)
	} else {
		// golang-jwt's own conversion: json.Number.Float64, then
		// seconds and fraction.
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return errClaimType
		}
		round, frac := math.Modf(f)
		t = time.Unix(int64(round), int64(frac*1e9))
	}
	*d = *jwt.NewNumericDate(t)
	return nil
}

// hasControl reports whether b holds a byte that a JSON string must
// escape.
func hasControl(b []byte) bool {
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// scanValue validates the JSON value that starts at data[i] and returns
// the index after it, and whether it is a string whose contents are their
// own unescaped form. An object or an array must also name no member twice
// at any depth.
func scanValue(data []byte, i int) (end int, plain bool, err error) {
	if i >= len(data) {
		return 0, false, errJSONSyntax
	}
	switch c := data[i]; {
	case c == '"':
		end, plain, ok := scanString(data, i)
		if !ok {
			return 0, false, errJSONSyntax
		}
		return end, plain, nil
	case c == '-' || c >= '0' && c <= '9':
		end, ok := scanNumber(data, i)
		if !ok {
			return 0, false, errJSONSyntax
		}
		return end, false, nil
	case c == 't' || c == 'f' || c == 'n':
		for _, lit := range [...]string{"true", "false", "null"} {
			if bytes.HasPrefix(data[i:], []byte(lit)) {
				return i + len(lit), false, nil
			}
		}
		return 0, false, errJSONSyntax
	case c == '{' || c == '[':
		// Find the end, then let encoding/json validate the value and
		// checkUniqueNames look for duplicates: custom claims are small.
		depth := 0
		for end = i; end < len(data); {
			switch data[end] {
			case '"':
				var ok bool
				if end, _, ok = scanString(data, end); !ok {
					return 0, false, errJSONSyntax
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			end++
			if depth == 0 {
				break
			}
		}
		if depth != 0 || !json.Valid(data[i:end]) {
			return 0, false, errJSONSyntax
		}
		if err := checkUniqueNames(data[i:end]); err != nil {
			return 0, false, err
		}
		return end, false, nil
	}
	return 0, false, errJSONSyntax
}

// scanString validates the JSON string whose opening quote is data[i]. It
// returns the index after its closing quote and whether its contents are
// their own unescaped form: no escape, and valid UTF-8 (encoding/json
// turns each invalid byte into U+FFFD).
func scanString(data []byte, i int) (end int, plain, ok bool) {
	start := i + 1
	escaped, ascii := false, true
	for i = start; i < len(data); {
		switch c := data[i]; {
		case c == '"':
			return i + 1, !escaped && (ascii || utf8.Valid(data[start:i])), true
		case c == '\\':
			escaped = true
			if i+1 >= len(data) {
				return 0, false, false
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex4(data[i+2:i+6]) {
					return 0, false, false
				}
				i += 6
			default:
				return 0, false, false
			}
		case c < 0x20:
			return 0, false, false
		default:
			ascii = ascii && c < utf8.RuneSelf
			i++
		}
	}
	return 0, false, false
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// scanNumber validates the JSON number that starts at data[i] and returns
// the index after it.
func scanNumber(data []byte, i int) (int, bool) {
	digits := func(i int) int {
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
		}
		return i
	}
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = digits(i)
	default:
		return 0, false
	}
	if i < len(data) && data[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// MarshalJSON encodes the registered claims, as encoding/json encodes
// their fields, followed by the custom claims in name order, compacted.
func (c Claims) MarshalJSON() ([]byte, error) {
	size := 160
	if c.Confirmation != nil {
		size += len(`,"cnf":{"x5t#S256":""}`) + thumbprintLen
	}
	for name, raw := range c.Custom {
		size += len(name) + len(raw) + 4
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	first := true
	member := func(name string) {
		if !first {
			buf.WriteByte(',')
		}
		first = false
		buf.WriteByte('"')
		buf.WriteString(name) // a session claim's name needs no escape
		buf.WriteString(`":`)
	}
	str := func(name, v string) {
		if v != "" {
			member(name)
			writeJSONString(buf, v)
		}
	}
	date := func(name string, d *jwt.NumericDate) error {
		if d == nil {
			return nil
		}
		member(name)
		if jwt.TimePrecision == time.Second {
			buf.Write(strconv.AppendInt(buf.AvailableBuffer(), d.Truncate(time.Second).Unix(), 10))
			return nil
		}
		b, err := d.MarshalJSON()
		buf.Write(b)
		return err
	}
	buf.WriteByte('{')
	str("iss", c.Issuer)
	str("sub", c.Subject)
	if len(c.Audience) > 0 {
		member("aud")
		if len(c.Audience) == 1 && !jwt.MarshalSingleStringAsArray {
			writeJSONString(buf, c.Audience[0])
		} else {
			buf.WriteByte('[')
			for k, a := range c.Audience {
				if k > 0 {
					buf.WriteByte(',')
				}
				writeJSONString(buf, a)
			}
			buf.WriteByte(']')
		}
	}
	for _, d := range [...]struct {
		name string
		d    *jwt.NumericDate
	}{{"exp", c.ExpiresAt}, {"nbf", c.NotBefore}, {"iat", c.IssuedAt}} {
		if err := date(d.name, d.d); err != nil {
			return nil, err
		}
	}
	str("jti", c.ID)
	str("sid", c.SessionID)
	if err := date("auth_time", c.AuthTime); err != nil {
		return nil, err
	}
	if err := date("session_exp", c.SessionExpiry); err != nil {
		return nil, err
	}
	if c.Confirmation != nil {
		member("cnf")
		buf.Write(appendConfirmation(buf.AvailableBuffer(), c.Confirmation))
	}
	if c.Fresh {
		member("fresh")
		buf.WriteString("true")
	}
	var nameBuf [8]string
	names := nameBuf[:0]
	for name := range c.Custom {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if isReservedClaim(name) {
			return nil, fmt.Errorf("%w: %q", ErrReservedClaim, name)
		}
		if !first {
			buf.WriteByte(',')
		}
		first = false
		writeJSONString(buf, name)
		buf.WriteByte(':')
		if err := json.Compact(buf, c.Custom[name]); err != nil {
			return nil, fmt.Errorf("slidejwt: custom claim %q: %w", name, err)
		}
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// writeJSONString writes s as encoding/json encodes a string, HTML-safe.
func writeJSONString(buf *bytes.Buffer, s string) {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < utf8.RuneSelf && !strings.ContainsRune(`"\<>&`, rune(c))
	}
	if plain {
		buf.WriteByte('"')
		buf.WriteString(s)
		buf.WriteByte('"')
		return
	}
	b, _ := json.Marshal(s) // a string always marshals
	buf.Write(b)
}

// signCompact returns the compact JWS of c under k with the JOSE header
// {"alg","kid","typ"}: the bytes golang-jwt's Token.SignedString makes of
// the same header map and claims, written directly into one buffer.
func signCompact(k *Key, c *Claims, typ string) (string, error) {
	var hdr bytes.Buffer
	hdr.Grow(64)
	hdr.WriteString(`{"alg":`)
	writeJSONString(&hdr, k.method.Alg())
	hdr.WriteString(`,"kid":`)
	writeJSONString(&hdr, k.id)
	hdr.WriteString(`,"typ":`)
	writeJSONString(&hdr, typ)
	hdr.WriteByte('}')
	payload, err := c.MarshalJSON()
	if err != nil {
		return "", err
	}
	// encoding/json, which golang-jwt encodes the claims with, escapes
	// what a Marshaler returns for HTML.
	if bytes.ContainsAny(payload, "<>&\u2028\u2029") {
		var b bytes.Buffer
		json.HTMLEscape(&b, payload)
		payload = b.Bytes()
	}
	enc := base64.RawURLEncoding
	buf := make([]byte, 0, enc.EncodedLen(hdr.Len())+enc.EncodedLen(len(payload))+enc.EncodedLen(132)+2)
	buf = enc.AppendEncode(buf, hdr.Bytes())
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, payload)
	sig, err := k.method.Sign(string(buf), k.signKey)
	if err != nil {
		return "", err
	}
	buf = append(buf, '.')
	buf = enc.AppendEncode(buf, sig)
	return string(buf), nil
}
