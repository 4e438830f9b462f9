package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The mesh's timings: seconds, so that the script shows several idle
// windows, a rotation and a logout in half a minute. Every service gets
// the same policy.
const (
	meshTTL            = 4 * time.Second
	meshRenewBefore    = 2 * time.Second
	meshMaxLifetime    = 2 * time.Minute
	meshLeeway         = time.Second
	meshRefreshTTL     = 6 * time.Second
	meshJWKSMaxAge     = 2 * time.Second
	meshJWKSRefreshMin = time.Second
	meshJWKSRefetch    = time.Second
	meshStreamCheck    = 500 * time.Millisecond
	// orders' own session ends after this: the script shows it log in
	// again by itself.
	meshServiceLifetime = 10 * time.Second
)

// runMesh starts the mesh, runs the script and stops the mesh.
func runMesh(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mesh", flag.ContinueOnError)
	redis := fs.String("redis", "", "`address` of a Redis (host:port or redis:// URL) that auth, orders and inventory share for revocation; default: none")
	err := parse(fs, args, stderr, func() error {
		if *redis == "" {
			return nil
		}
		_, err := parseRedis(*redis)
		return err
	})
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "slidejwt-mesh-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	now := time.Now()
	ca, err := newCA(now)
	if err != nil {
		return err
	}
	files, err := writeTLSFiles(dir, ca, now, "auth", "orders", "inventory", "operator")
	if err != nil {
		return err
	}

	out := newTranscript(stdout)
	m := &mesh{exe: exe, out: out}
	defer m.stop()
	out.say("mesh", "a CA of its own, and certificates for auth, orders, inventory and the operator (ECDSA P-256, in a temporary directory)")
	revocation := "no --redis: orders and inventory learn of a logout when the session's token expires"
	if *redis != "" {
		revocation = "--redis: auth, orders and inventory share revocation through Redis"
	}
	out.say("mesh", fmt.Sprintf("policy on every service: idle window %v, renewed in its last %v, a user's session ends after %v and orders' own after %v, refresh tokens live %v, leeway %v",
		meshTTL, meshRenewBefore, meshMaxLifetime, meshServiceLifetime, meshRefreshTTL, meshLeeway))
	out.say("mesh", revocation)

	common := []string{"--ttl", meshTTL.String(), "--renew-before", meshRenewBefore.String(),
		"--max-lifetime", meshMaxLifetime.String(), "--leeway", meshLeeway.String(), "--stop-on-eof"}
	if *redis != "" {
		common = append(common, "--redis", *redis)
	}
	auth, err := m.start(ctx, "auth", files["auth"], slices.Concat(common, []string{
		"--jwks-max-age", meshJWKSMaxAge.String(), "--refresh-ttl", meshRefreshTTL.String(),
		"--service-max-lifetime", meshServiceLifetime.String()})...)
	if err != nil {
		return err
	}
	svc := slices.Concat(common, []string{"--jwks", auth.attrs["jwks"], "--auth", auth.attrs["addr"],
		"--jwks-refresh-min", meshJWKSRefreshMin.String(), "--jwks-refetch", meshJWKSRefetch.String(),
		"--stream-check", meshStreamCheck.String()})
	inventory, err := m.start(ctx, "inventory", files["inventory"], slices.Concat(svc, []string{"--allow-peers", "orders"})...)
	if err != nil {
		return err
	}
	orders, err := m.start(ctx, "orders", files["orders"], slices.Concat(svc, []string{"--inventory", inventory.attrs["addr"]})...)
	if err != nil {
		return err
	}

	s := &script{
		out: out, client: files[""], operator: files["operator"], redis: *redis != "",
		authAddr: auth.attrs["addr"], ordersAddr: orders.attrs["addr"], admin: auth.attrs["admin"], auth: auth,
	}
	err = s.run(ctx)
	if serr := m.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if len(s.failed) > 0 {
		return fmt.Errorf("%d step(s) did not behave as expected:\n  %s", len(s.failed), strings.Join(s.failed, "\n  "))
	}
	out.say("mesh", "all steps behaved as expected")
	return nil
}

// mesh is the children of the mesh command.
type mesh struct {
	exe      string
	out      *transcript
	children []*child
	stopOnce sync.Once
	stopErr  error
}

// child is one service process.
type child struct {
	role  string
	cmd   *exec.Cmd
	stdin io.Closer
	done  chan struct{} // closed once the process exited and its log is read
	err   error         // cmd.Wait's, set before done is closed
	attrs map[string]string

	mu   sync.Mutex
	msgs []logLine
}

// start starts the service role with its TLS files and args, relays its
// log to the transcript, and waits for its listening line.
func (m *mesh) start(ctx context.Context, role string, f tlsFiles, args ...string) (*child, error) {
	args = slices.Concat([]string{role, "--ca", f.ca, "--cert", f.cert, "--key", f.key}, args)
	c := &child{role: role, cmd: exec.CommandContext(ctx, m.exe, args...), done: make(chan struct{})}
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	c.stdin = stdin
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	m.children = append(m.children, c)
	listening := make(chan map[string]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := parseLogLine(sc.Text())
			c.mu.Lock()
			c.msgs = append(c.msgs, l)
			c.mu.Unlock()
			if l.msg == "listening" {
				select {
				case listening <- l.attrs:
				default:
				}
			}
			m.out.relay(role, l)
		}
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	select {
	case c.attrs = <-listening:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before listening: %v", role, c.err)
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("%s printed no listening line within 30s", role)
	}
}

// count returns how many of the child's log lines have msg and the
// attributes kv (key, value, key, value, ...).
func (c *child) count(msg string, kv ...string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
lines:
	for _, l := range c.msgs {
		if l.msg != msg {
			continue
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if v, ok := l.attrs[kv[i]]; !ok || v != kv[i+1] {
				continue lines
			}
		}
		n++
	}
	return n
}

// stop closes every child's standard input, on which they stop
// gracefully, and waits for them; it returns an error if one did not
// exit with status 0.
func (m *mesh) stop() error {
	m.stopOnce.Do(func() {
		var errs []error
		for _, c := range m.children {
			c.stdin.Close()
		}
		for _, c := range m.children {
			select {
			case <-c.done:
			case <-time.After(10 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.done
				errs = append(errs, fmt.Errorf("%s did not stop within 10s; killed", c.role))
				continue
			}
			if c.err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", c.role, c.err))
			}
		}
		m.stopErr = errors.Join(errs...)
	})
	return m.stopErr
}

// logLine is one slog text line of a child: its message, its attributes
// in order, and by key.
type logLine struct {
	msg   string
	keys  []string
	attrs map[string]string
}

// parseLogLine reads a line of slog's text handler: key=value pairs, a
// value in double quotes when it needs them. A line it cannot read whole
// is kept as its message.
func parseLogLine(line string) logLine {
	l := logLine{attrs: map[string]string{}}
	rest := line
	for rest = strings.TrimLeft(rest, " "); rest != ""; rest = strings.TrimLeft(rest, " ") {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 || strings.ContainsAny(rest[:eq], " \"") {
			return logLine{msg: line}
		}
		key, v := rest[:eq], rest[eq+1:]
		var val string
		if strings.HasPrefix(v, `"`) {
			q, err := strconv.QuotedPrefix(v)
			if err != nil {
				return logLine{msg: line}
			}
			val, _ = strconv.Unquote(q)
			rest = v[len(q):]
		} else {
			end := strings.IndexByte(v, ' ')
			if end < 0 {
				end = len(v)
			}
			val, rest = v[:end], v[end:]
		}
		if key == "msg" {
			l.msg = val
			continue
		}
		l.keys = append(l.keys, key)
		l.attrs[key] = val
	}
	return l
}

// transcript prints the mesh's story, one line per step or event, with
// the time since the start and who acted.
type transcript struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newTranscript(w io.Writer) *transcript { return &transcript{w: w, start: time.Now()} }

func (t *transcript) say(who, text string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "%6.1fs  %-9s  %s\n", time.Since(t.start).Seconds(), who, text)
}

func (t *transcript) section(title string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "\n== %s\n", title)
}

// relay prints a child's log line, shortened: no time, the level only if
// it is not INFO, methods without their package, session ids cut to 8
// characters, and a token's exp or a session's end as how far it is from
// now.
func (t *transcript) relay(who string, l logLine) {
	var b strings.Builder
	if lvl := l.attrs["level"]; lvl != "" && lvl != "INFO" {
		b.WriteString(lvl + " ")
	}
	b.WriteString(l.msg)
	for _, k := range l.keys {
		v := l.attrs[k]
		switch k {
		case "time", "level":
			continue
		case sessionKey:
			if len(v) > 8 {
				v = v[:8] + "…"
			}
		case "exp", "session_ends":
			if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
				k, v = k+"_in", until(at)
			}
		case methodKey:
			// slidejwt.v1.TokenService/Renew: TokenService/Renew
			if svc, m, ok := strings.Cut(v, "/"); ok {
				v = svc[strings.LastIndexByte(svc, '.')+1:] + "/" + m
			}
		}
		if strings.ContainsAny(v, " =") {
			v = strconv.Quote(v)
		}
		b.WriteString("  " + k + "=" + v)
	}
	t.say(who, b.String())
}

// until says how long until at, to a tenth of a second.
func until(at time.Time) string {
	return time.Until(at).Round(100 * time.Millisecond).String()
}
