package interceptor

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// errDuplicateName is returned for a JOSE header or a claims payload in
// which one JSON object names a member twice. RFC 7515 §4 and RFC 7519 §4
// let a parser either reject such a token or keep the last value; two
// parsers that chose differently (a gateway and this server, say) would
// read different claims from one signed token, so it is rejected.
var errDuplicateName = errors.New("duplicate member name")

// errJSONSyntax is returned for input that is not one JSON value: by
// Claims.UnmarshalJSON and readHeader, which validate their input, and by
// checkUniqueNames, whose callers only pass bytes that encoding/json has
// already accepted (there it means a bug rather than hostile input).
var errJSONSyntax = errors.New("malformed JSON")

// dupLinearMax is the number of names in one object up to which a new name
// is compared with each earlier one; beyond it the object's names go into
// a map, so that a payload of many short names costs O(n), not O(n²).
const dupLinearMax = 16

// dupEOF is what jsonNext returns at the end of the data.
const dupEOF = -1

// A dupName is a member name: data[start:end], or arena[start:end] when
// the name had to be unescaped. Its bounds are int32, which halves the
// stack buffers of checkUniqueNames and Claims.unmarshal: they run deep in
// a server handler's goroutine, where a larger frame can cost a stack
// copy on every call. Their callers refuse data of maxJSONLen or more.
type dupName struct {
	start, end int32
	unescaped  bool
}

// maxJSONLen bounds the data that checkUniqueNames and Claims.unmarshal
// take, so that an index fits a dupName: unescaped names fill the arena
// with at most three bytes per byte of data (an invalid byte becomes
// U+FFFD), which stays below 1<<31. A token is far smaller.
const maxJSONLen = 1 << 29

// errJSONTooLarge is returned for data of maxJSONLen bytes or more.
var errJSONTooLarge = errors.New("JSON value too large")

func (n dupName) bytes(data, arena []byte) []byte {
	if n.unescaped {
		return arena[n.start:n.end]
	}
	return data[n.start:n.end]
}

// A dupFrame is an open object or array.
type dupFrame struct {
	object bool
	first  int                 // index in names of the object's first name
	set    map[string]struct{} // the object's names, once there are many
}

// checkUniqueNames returns errDuplicateName if any object in the JSON value
// data, at any depth, has two members whose names are equal once unescaped
// as encoding/json unescapes them ("s\u0075b" is "sub"; invalid UTF-8 and
// lone surrogates are U+FFFD). Names are compared exactly, not folded.
//
// Nested objects are checked too: a custom claim is application data that
// the application decodes later (with encoding/json, which keeps the last
// value, or with anything else) and that every renewal signs again byte
// for byte, so an ambiguous one would stay ambiguous for the session's
// life. The scanner walks nested values anyway to find where they end.
//
// It is one pass over data that allocates nothing for the usual token
// (names without escapes, at most 32 names in scope, 16 open containers).
// It does not validate numbers and literals: its callers pass only bytes
// that encoding/json has accepted. It is one loop over local state, with
// helpers that take and return values, because stores through a pointer
// would move the stack buffers to the heap.
func checkUniqueNames(data []byte) error {
	if len(data) >= maxJSONLen {
		return errJSONTooLarge
	}
	var (
		nameBuf  [32]dupName
		frameBuf [16]dupFrame
		names    = nameBuf[:0]
		frames   = frameBuf[:0]
		arena    []byte // unescaped names
		i        int
		c        int
		err      error
	)
	for {
		// A value starts at the next byte.
		switch i, c = jsonNext(data, i); c {
		case '{':
			frames = append(frames, dupFrame{object: true, first: len(names)})
			if i, c = jsonNext(data, i+1); c != '}' {
				if i, arena, names, err = dupMember(data, i, arena, names, &frames[len(frames)-1]); err != nil {
					return err
				}
				continue
			}
			i++
			frames = frames[:len(frames)-1]
		case '[':
			frames = append(frames, dupFrame{})
			if i, c = jsonNext(data, i+1); c != ']' {
				continue
			}
			i++
			frames = frames[:len(frames)-1]
		case '"':
			var ok bool
			if _, i, _, ok = jsonString(data, i); !ok {
				return errJSONSyntax
			}
		case dupEOF, ',', ':', '}', ']':
			return errJSONSyntax
		default:
			// A number or a literal, which encoding/json has validated:
			// only find its end.
			for i++; i < len(data) && !isDelim(data[i]); i++ {
			}
		}
		// A value ended: close containers until one goes on.
		for {
			if len(frames) == 0 {
				if _, c = jsonNext(data, i); c != dupEOF {
					return errJSONSyntax
				}
				return nil
			}
			f := &frames[len(frames)-1]
			i, c = jsonNext(data, i)
			if c == ',' {
				if f.object {
					if i, arena, names, err = dupMember(data, i+1, arena, names, f); err != nil {
						return err
					}
				} else {
					i++
				}
				break
			}
			if f.object && c == '}' || !f.object && c == ']' {
				i++
				if f.object {
					names = names[:f.first]
				}
				frames = frames[:len(frames)-1]
				continue
			}
			return errJSONSyntax
		}
	}
}

// jsonNext skips white space from data[i] and returns the index and value
// of the next byte, or dupEOF.
func jsonNext(data []byte, i int) (int, int) {
	for ; i < len(data); i++ {
		switch c := data[i]; c {
		case ' ', '\t', '\n', '\r':
		default:
			return i, int(c)
		}
	}
	return i, dupEOF
}

// jsonString scans the string whose opening quote is data[i]. It returns
// the index of its closing quote, the index after it, and whether its
// contents are their own unescaped form: no backslash, and valid UTF-8
// (encoding/json turns each invalid byte into U+FFFD).
func jsonString(data []byte, i int) (stop, next int, plain, ok bool) {
	start := i + 1
	escaped, ascii := false, true
	for i = start; i < len(data); {
		switch c := data[i]; {
		case c == '"':
			return i, i + 1, !escaped && (ascii || utf8.Valid(data[start:i])), true
		case c == '\\':
			escaped = true
			i += 2
		default:
			ascii = ascii && c < utf8.RuneSelf
			i++
		}
	}
	return 0, 0, false, false
}

// isDelim reports whether c ends a number or a literal.
func isDelim(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', ',', ':', '{', '}', '[', ']', '"':
		return true
	}
	return false
}

// dupMember scans an object member's name, from the white space before
// it to the colon after it, and records the name in f, the innermost
// object, unless f already has it. It returns the index after the colon.
func dupMember(data []byte, i int, arena []byte, names []dupName, f *dupFrame) (int, []byte, []dupName, error) {
	i, c := jsonNext(data, i)
	if c != '"' {
		return i, arena, names, errJSONSyntax
	}
	quote := i
	stop, i, plain, ok := jsonString(data, quote)
	if !ok {
		return i, arena, names, errJSONSyntax
	}
	n := dupName{start: int32(quote + 1), end: int32(stop)}
	if !plain {
		// Rare: let encoding/json unescape the name, so that equality is
		// exactly encoding/json's. The copy keeps data from escaping.
		var v string
		if err := json.Unmarshal(bytes.Clone(data[quote:stop+1]), &v); err != nil {
			return i, arena, names, errJSONSyntax
		}
		n = dupName{start: int32(len(arena)), end: int32(len(arena) + len(v)), unescaped: true}
		arena = append(arena, v...)
	}
	b := n.bytes(data, arena)
	switch {
	case f.set != nil:
		if _, dup := f.set[string(b)]; dup {
			return i, arena, names, errDuplicateName
		}
		f.set[string(b)] = struct{}{}
	default:
		for _, prev := range names[f.first:] {
			if bytes.Equal(prev.bytes(data, arena), b) {
				return i, arena, names, errDuplicateName
			}
		}
		if len(names)-f.first >= dupLinearMax {
			f.set = make(map[string]struct{}, 2*dupLinearMax)
			for _, prev := range names[f.first:] {
				f.set[string(prev.bytes(data, arena))] = struct{}{}
			}
			f.set[string(b)] = struct{}{}
		}
	}
	names = append(names, n)
	if i, c = jsonNext(data, i); c != ':' {
		return i, arena, names, errJSONSyntax
	}
	return i + 1, arena, names, nil
}
