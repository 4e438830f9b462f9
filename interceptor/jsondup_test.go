package interceptor

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// dupReference is the oracle for checkUniqueNames: it walks data with
// encoding/json's tokenizer, whose object keys are unescaped exactly as
// json.Unmarshal unescapes them, and reports whether any object names a
// member twice. ok is false if data is not one JSON value.
func dupReference(data []byte) (dup, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		object  bool
		names   map[string]bool
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return dup, len(stack) == 0
		}
		if err != nil {
			return false, false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			if d, isDelim := tok.(json.Delim); isDelim && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].wantKey = true
				}
				continue
			}
			name := tok.(string)
			if top.names[name] {
				dup = true
			}
			top.names[name] = true
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, names: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the enclosing object wants a key next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].wantKey = true
		}
	}
}

func TestCheckUniqueNames(t *testing.T) {
	tests := []struct {
		name, in string
		want     error
	}{
		{"empty object", `{}`, nil},
		{"flat", `{"sub":"a","sid":"b","exp":1}`, nil},
		{"white space", " \t\r\n{ \"a\" : 1 , \"b\" : [ 1 , { } ] } \n", nil},
		{"same name in sibling objects", `{"a":{"x":1},"b":{"x":2}}`, nil},
		{"same name at two depths", `{"x":{"x":{"x":1}}}`, nil},
		{"same name in array elements", `{"a":[{"x":1},{"x":2}]}`, nil},
		{"names differ in case", `{"sub":"a","SUB":"b","Sub":"c"}`, nil},
		{"names differ by a trailing space", `{"sub":1,"sub ":2}`, nil},
		{"name equal to a string value", `{"a":"b","b":"a"}`, nil},
		{"escaped quote in name", `{"a\"b":1,"a":2,"b":3}`, nil},
		{"not an object", `[1,"a",true,null,-1.5e3]`, nil},
		{"scalar", `"x"`, nil},
		{"many distinct names", manyNames(100, false), nil},

		{"duplicate sub", `{"sub":"mallory","sub":"alice"}`, errDuplicateName},
		{"duplicate after others", `{"a":1,"b":2,"c":3,"a":4}`, errDuplicateName},
		{"duplicate with different values kinds", `{"exp":"x","iat":1,"exp":2}`, errDuplicateName},
		{"escaped duplicate", `{"s\u0075b":"mallory","sub":"alice"}`, errDuplicateName},
		{"escaped both", `{"\u0073ub":1,"s\u0075b":2}`, errDuplicateName},
		{"escaped upper-case hex", `{"\u0053":1,"S":2}`, errDuplicateName},
		{"escaped solidus", `{"a\/b":1,"a/b":2}`, errDuplicateName},
		{"surrogate pair", `{"\ud83c\udf89":1,"🎉":2}`, errDuplicateName},
		{"lone surrogates are U+FFFD", `{"\ud800":1,"\udc00":2}`, errDuplicateName},
		{"invalid UTF-8 is U+FFFD", "{\"\xff\":1,\"\xfe\":2}", errDuplicateName},
		{"invalid UTF-8 and U+FFFD", "{\"\xff\":1,\"\uFFFD\":2}", errDuplicateName},
		{"nested duplicate", `{"perm":{"level":"reader","level":"admin"}}`, errDuplicateName},
		{"duplicate in array element", `{"a":[1,{"x":1,"x":2}]}`, errDuplicateName},
		{"duplicate after nested object closes", `{"a":{"b":1},"c":2,"a":3}`, errDuplicateName},
		{"duplicate at the end of many names", manyNames(100, true), errDuplicateName},
		{"duplicate empty name", `{"":1,"":2}`, errDuplicateName},

		{"empty input", ``, errJSONSyntax},
		{"truncated", `{"a":1`, errJSONSyntax},
		{"truncated name", `{"a`, errJSONSyntax},
		{"trailing data", `{} {}`, errJSONSyntax},
		{"missing colon", `{"a" 1}`, errJSONSyntax},
		{"name not a string", `{1:2}`, errJSONSyntax},
		{"mismatched close", `{"a":[1}`, errJSONSyntax},
		{"stray close", `}`, errJSONSyntax},
		{"trailing backslash", `{"a\`, errJSONSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := checkUniqueNames([]byte(tt.in)); got != tt.want {
				t.Fatalf("checkUniqueNames(%q) = %v, want %v", tt.in, got, tt.want)
			}
			// The oracle agrees wherever the input is JSON.
			if dup, ok := dupReference([]byte(tt.in)); ok && dup != (tt.want == errDuplicateName) {
				t.Fatalf("oracle says duplicate = %v for %q; the table is wrong", dup, tt.in)
			}
		})
	}
}

// manyNames returns an object of n distinct names, enough to use the map,
// and with dup a repeat of the first name at the end.
func manyNames(n int, dup bool) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"n` + strings.Repeat("x", i) + `":1`)
	}
	if dup {
		b.WriteString(`,"n":2`)
	}
	b.WriteString("}")
	return b.String()
}

// TestCheckUniqueNames_Allocs: the usual payload costs no allocation.
func TestCheckUniqueNames_Allocs(t *testing.T) {
	payload := []byte(`{"iss":"https://issuer.test","sub":"alice","aud":["orders"],"exp":1800000000,"iat":1700000000,` +
		`"jti":"jti-1","sid":"sid-1","auth_time":1700000000,"fresh":true,"role":"reader","perm":{"level":1,"tags":["a","b"]}}`)
	if n := testing.AllocsPerRun(100, func() { _ = checkUniqueNames(payload) }); n != 0 {
		t.Errorf("%v allocations per check, want 0", n)
	}
}

// FuzzCheckUniqueNames compares the scanner with encoding/json's
// tokenizer on every input that encoding/json accepts; on any other input
// it must only not panic or hang.
func FuzzCheckUniqueNames(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1,"a":2}`, `{"s\u0075b":1,"sub":2}`, `{"a":{"b":[{"c":1,"c":2}]}}`,
		`{"\ud800":1,"\udc00":2}`, "{\"\xff\":1,\"\xfe\":2}", `[{"a":1},{"a":1}]`, `{"a":"\\","b":"\""}`,
		manyNames(20, true), manyNames(20, false), `{"a":[],"b":{},"c":-0.5E+2,"d":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := checkUniqueNames(data)
		dup, ok := dupReference(data)
		if !ok || !json.Valid(data) {
			return
		}
		if want := dup; (got == errDuplicateName) != want || (got != nil && got != errDuplicateName) {
			t.Fatalf("checkUniqueNames(%q) = %v; encoding/json sees a duplicate: %v", data, got, want)
		}
	})
}
