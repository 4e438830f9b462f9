package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ReplyError is an error reply of a server ("-ERR ...").
type ReplyError string

func (e ReplyError) Error() string { return "redistest: redis replied " + string(e) }

// Do sends one command to the server at addr on a new connection (RESP2,
// no client library) and returns its reply: a string for a simple or bulk
// string, an int64, nil for a null, a []any for an array, or a
// [ReplyError]. It gives up after five seconds.
func Do(addr string, args ...string) (any, error) {
	replies, err := doAll(addr, 5*time.Second, args)
	if err != nil {
		return nil, err
	}
	if e, ok := replies[0].(ReplyError); ok {
		return nil, e
	}
	return replies[0], nil
}

// doAll sends cmds to the server at addr on one new connection, in one
// write, and returns their replies, an error reply as a [ReplyError]
// element. It gives up after timeout.
func doAll(addr string, timeout time.Duration, cmds ...[]string) ([]any, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	for _, args := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	replies := make([]any, len(cmds))
	for i := range replies {
		reply, err := readReply(r)
		if e, ok := err.(ReplyError); ok {
			reply, err = e, nil
		}
		if err != nil {
			return nil, err
		}
		replies[i] = reply
	}
	return replies, nil
}

func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("redistest: empty reply line")
	}
	kind, rest := line[0], line[1:]
	switch kind {
	case '+':
		return rest, nil
	case '-':
		return nil, ReplyError(rest)
	case ':':
		return strconv.ParseInt(rest, 10, 64)
	case '$':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return nil, err
		}
		arr := make([]any, n)
		for i := range arr {
			var err error
			if arr[i], err = readReply(r); err != nil {
				if _, ok := err.(ReplyError); !ok {
					return nil, err
				}
				arr[i] = err
			}
		}
		return arr, nil
	}
	return nil, fmt.Errorf("redistest: unexpected reply %q", line)
}

// Do runs a command on the server (see the package function [Do]) and
// fails the test when it does not answer or answers with an error.
func (s *Server) Do(args ...string) any {
	s.t.Helper()
	reply, err := Do(s.addr, args...)
	if err != nil {
		s.t.Fatalf("%s on %s: %v", strings.Join(args, " "), s.addr, err)
	}
	return reply
}

// Info returns the field of the server's INFO (its section, or all of
// them), "" when there is no such field.
func (s *Server) Info(section, field string) string {
	s.t.Helper()
	reply, err := Do(s.addr, "INFO", section)
	if err != nil {
		s.t.Fatalf("INFO %s on %s: %v", section, s.addr, err)
	}
	text, _ := reply.(string)
	return InfoField(text, field)
}

// InfoField returns field's value in the text of an INFO or CLUSTER INFO
// reply, "" when there is no such field.
func InfoField(text, field string) string {
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), field+":"); ok {
			return v
		}
	}
	return ""
}
