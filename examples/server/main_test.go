package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
	"github.com/slidejwt/slidejwt/interceptor"
	"github.com/slidejwt/slidejwt/interceptor/memstore"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// TestParseFlags_Errors: every bad value stops the server with one line
// that names the flag at fault.
func TestParseFlags_Errors(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte(strings.Repeat("k", 31)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"--ttl", "-1s"}, "--ttl"},
		{[]string{"--ttl", "0s"}, "--ttl"},
		{[]string{"--max-lifetime", "-5m"}, "--max-lifetime"},
		{[]string{"--refresh-ttl", "-1h"}, "--refresh-ttl"},
		{[]string{"--renew-before", "-1s"}, "--renew-before"},
		{[]string{"--renew-before", "0s"}, "--renew-before"},
		{[]string{"--leeway", "-1s"}, "--leeway"},
		{[]string{"--leeway", "6m"}, "--leeway"},
		{[]string{"--refresh-grace", "-1s"}, "--refresh-grace"},
		{[]string{"--refresh-ttl", "10s", "--refresh-grace", "11s"}, "--refresh-grace"},
		{[]string{"--ttl", "10s", "--renew-before", "10s1ns"}, "--renew-before"},
		{[]string{"--ttl", "10s", "--max-lifetime", "9s"}, "--max-lifetime"},
		{[]string{"--secret-file", short}, "--secret-file"},
		{[]string{"--secret-file", filepath.Join(dir, "missing")}, "--secret-file"},
		{[]string{"--users", "alice"}, "--users"},
		{[]string{"--users", "alice:pw,:pw"}, "--users"},
		{[]string{"--users", "alice:"}, "--users"},
		{[]string{"--ttl", "soon"}, "-ttl"},
		{[]string{"--no-such-flag"}, "-no-such-flag"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *flagError", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.flag) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q: want one line naming %s", msg, tt.flag)
			}
		})
	}
}

// TestParseFlags_Defaults checks the flags' defaults, including
// --renew-before = half of --ttl, and the key file's newline handling.
func TestParseFlags_Defaults(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.addr != "127.0.0.1:50051" || cfg.policy.TTL != 24*time.Hour || cfg.policy.MaxLifetime != 168*time.Hour ||
		cfg.policy.RenewBefore != 12*time.Hour || cfg.refreshTTL != 168*time.Hour || cfg.leeway != 30*time.Second ||
		cfg.issuer != "slidejwt-demo" || cfg.audience != "demo" || cfg.users["alice"] != "alice-password" || cfg.secret != nil {
		t.Fatalf("defaults = %+v", cfg)
	}
	cfg, err = parseFlags([]string{"--ttl", "3s"}, io.Discard)
	if err != nil || cfg.policy.RenewBefore != 1500*time.Millisecond {
		t.Fatalf("renew-before with --ttl 3s = %v, %v; want 1.5s", cfg.policy.RenewBefore, err)
	}

	key := strings.Repeat("s", 32)
	for _, content := range []string{key, key + "\n", key + "\r\n"} {
		f := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := parseFlags([]string{"--secret-file", f}, io.Discard)
		if err != nil || string(cfg.secret) != key {
			t.Fatalf("secret from %q = %q, %v; want %q", content, cfg.secret, err, key)
		}
	}
	cfg, err = parseFlags([]string{"--users", "alice:a,bob:b:c"}, io.Discard)
	if err != nil || cfg.users["alice"] != "a" || cfg.users["bob"] != "b:c" {
		t.Fatalf("users = %v, %v", cfg.users, err)
	}
}

// TestParseFlags_Redis: --redis takes host:port or a URL, and without it
// the server keeps the in-memory store.
func TestParseFlags_Redis(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || cfg.redis != nil {
		t.Fatalf("without --redis: redis option set = %t, err %v; want none", cfg.redis != nil, err)
	}
	tests := []struct {
		value          string
		addr           string
		user, password string
		db             int
		tlsServerName  string // "" means no TLS
	}{
		{"127.0.0.1:6379", "127.0.0.1:6379", "", "", 0, ""},
		{"[::1]:6380", "[::1]:6380", "", "", 0, ""},
		{"redis.internal:6379", "redis.internal:6379", "", "", 0, ""},
		{"redis://127.0.0.1:6380/2", "127.0.0.1:6380", "", "", 2, ""},
		{"redis://alice:s3cret@redis.internal:6379", "redis.internal:6379", "alice", "s3cret", 0, ""},
		{"redis://:s3cret@127.0.0.1:6379/0", "127.0.0.1:6379", "", "s3cret", 0, ""},
		{"rediss://redis.internal", "redis.internal:6379", "", "", 0, "redis.internal"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			cfg, err := parseFlags([]string{"--redis", tt.value}, io.Discard)
			if err != nil {
				t.Fatalf("parseFlags: %v", err)
			}
			o := cfg.redis
			if o == nil {
				t.Fatal("no redis option")
			}
			if !slices.Equal(o.InitAddress, []string{tt.addr}) {
				t.Errorf("addresses = %q, want [%q]", o.InitAddress, tt.addr)
			}
			if o.Username != tt.user || o.Password != tt.password || o.SelectDB != tt.db {
				t.Errorf("user %q, password set %t, db %d; want %q, %t, %d",
					o.Username, o.Password != "", o.SelectDB, tt.user, tt.password != "", tt.db)
			}
			switch {
			case tt.tlsServerName == "" && o.TLSConfig != nil:
				t.Errorf("TLS configured, want plaintext")
			case tt.tlsServerName != "" && (o.TLSConfig == nil || o.TLSConfig.ServerName != tt.tlsServerName):
				t.Errorf("TLS config = %+v, want server name %q", o.TLSConfig, tt.tlsServerName)
			}
		})
	}
}

// TestParseFlags_RedisErrors: a bad --redis value stops the server with
// one line naming --redis (exit status 2) that never quotes the value,
// which may carry a password.
func TestParseFlags_RedisErrors(t *testing.T) {
	tests := []struct {
		value  string
		secret string // must not appear in the message
	}{
		{"", ""},
		{"localhost", "localhost"},
		{"127.0.0.1", "127.0.0.1"},
		{":6379", ""},
		{"alice:s3cret@127.0.0.1:6379", "s3cret"},
		{"127.0.0.1:6379/0", "6379/0"},
		{"redis://alice:s3cret@127.0.0.1:port/0", "s3cret"},
		{"redis://alice:s3%zzcret@127.0.0.1:6379", "%zz"},
		{"redis://alice:s3cret@127.0.0.1:6379/x", "s3cret"},
		{"redis://alice:s3cret@127.0.0.1:6379/1/2", "s3cret"},
		{"http://alice:s3cret@127.0.0.1:6379", "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			_, err := parseFlags([]string{"--redis", tt.value}, io.Discard)
			var fe *flagError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *flagError", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "--redis: ") || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line starting with --redis", msg)
			}
			if tt.secret != "" && strings.Contains(msg, tt.secret) {
				t.Errorf("error %q quotes %q from the value", msg, tt.secret)
			}
		})
	}
}

// TestRun_RedisUnreachable: with nothing listening at --redis, the server
// stops before it listens, with one line naming --redis that is not a
// flag error (exit status 1, not 2) and never shows the URL's password.
func TestRun_RedisUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	for _, value := range []string{addr, "redis://alice:s3cret@" + addr + "/0"} {
		t.Run(value, func(t *testing.T) {
			var log bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := run(ctx, []string{"--addr", "127.0.0.1:0", "--redis", value}, &log)
			if err == nil {
				t.Fatal("run succeeded, want a start-up error")
			}
			if _, isFlag := errors.AsType[*flagError](err); isFlag {
				t.Errorf("err %q is a flag error (exit status 2), want exit status 1", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "--redis: ") || !strings.Contains(msg, addr) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line naming --redis and %s", msg, addr)
			}
			if strings.Contains(msg+log.String(), "s3cret") {
				t.Errorf("error %q or log %q shows the password", msg, log.String())
			}
			if strings.Contains(log.String(), "listening") {
				t.Errorf("server listened: %s", log.String())
			}
		})
	}
}

// TestHelp: --help lists --redis and says what replicas must share.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	_, err := parseFlags([]string{"--help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-redis address", "replicas need the same --secret-file, --issuer and --audience"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help does not contain %q:\n%s", want, out.String())
		}
	}
}

// failingStore is an in-memory store whose Create fails, as Redis's does
// while it is unreachable.
type failingStore struct{ memstore.SessionStore }

func (*failingStore) Create(context.Context, string, store.Digest, time.Time, time.Time) error {
	return errors.New("redisstore: create: dial tcp 127.0.0.1:6379: connect: connection refused")
}

// TestLogin_StoreUnavailable: a login whose session the store cannot
// record fails with codes.Unavailable (try again later), not Internal.
func TestLogin_StoreUnavailable(t *testing.T) {
	key, err := interceptor.NewKey("k", jwt.SigningMethodHS256, []byte(strings.Repeat("s", 32)))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := interceptor.NewKeySet(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		store store.SessionStore
		want  codes.Code
	}{
		{"store down", &failingStore{}, codes.Unavailable},
		{"store up", &memstore.SessionStore{}, codes.OK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sessions, err := interceptor.NewServer(keys, interceptor.WithSessionStore(tt.store))
			if err != nil {
				t.Fatal(err)
			}
			d := &demoService{sessions: sessions, users: map[string]string{"alice": "pw"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			_, err = d.Login(context.Background(), &demov1.LoginRequest{Username: "alice", Password: "pw"})
			if got := status.Code(err); got != tt.want {
				t.Errorf("Login code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

// TestLogin_FailedLoginLog: a failed login for an unknown username logs a
// fixed marker and a coarse length class, never the name itself (which may
// be a password typed into the wrong field, or megabytes long); a known
// user's name is logged as before. The password is never logged.
func TestLogin_FailedLoginLog(t *testing.T) {
	huge := strings.Repeat("x", 3<<20)
	tests := []struct {
		name, user, password string
		wantUser, wantLen    string // wantLen "" means no user_len attribute
		secret               string // must not appear in the log
	}{
		{"3 MiB username", huge, "pw", unknownUser, ">1024", strings.Repeat("x", 64)},
		{"password in the user field", "Tr0ub4dor&3-correct-horse", "", unknownUser, "1-64", "Tr0ub4dor"},
		{"another user's password", "alice-password", "alice-password", unknownUser, "1-64", "alice-password"},
		{"log injection", "bob\nlevel=ERROR msg=forged", "pw", unknownUser, "1-64", "forged"},
		{"100 bytes", strings.Repeat("y", 100), "pw", unknownUser, "65-1024", "yyyyyyyy"},
		{"empty", "", "pw", unknownUser, "0", ""},
		{"known user, wrong password", "alice", "not-her-password", "alice", "", "not-her-password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			d := &demoService{users: map[string]string{"alice": "alice-password"}, log: slog.New(slog.NewTextHandler(&buf, nil))}
			_, err := d.Login(context.Background(), &demov1.LoginRequest{Username: tt.user, Password: tt.password})
			if got := status.Code(err); got != codes.Unauthenticated {
				t.Fatalf("Login code = %v (%v), want Unauthenticated", got, err)
			}
			line := buf.String()
			if n := strings.Count(line, "\n"); n != 1 || len(line) > 256 {
				t.Fatalf("log = %d lines, %d bytes; want one line under 256 bytes", n, len(line))
			}
			if !strings.Contains(line, `msg="login failed"`) {
				t.Errorf("log %q: want msg=\"login failed\"", line)
			}
			attrs := map[string]string{}
			for _, a := range slogAttrs(t, line) {
				attrs[a[0]] = a[1]
			}
			if got := attrs["user"]; got != tt.wantUser {
				t.Errorf("user = %q, want %q", got, tt.wantUser)
			}
			if got := attrs["user_len"]; got != tt.wantLen {
				t.Errorf("user_len = %q, want %q", got, tt.wantLen)
			}
			if tt.secret != "" && strings.Contains(line, tt.secret) {
				t.Errorf("log %q contains the input %q", line, tt.secret)
			}
			if tt.password != "" && strings.Contains(line, tt.password) && tt.password != tt.wantUser {
				t.Errorf("log %q contains the password", line)
			}
		})
	}
}

// slogAttrs splits one slog text line into key/value pairs, unquoting
// quoted values.
func slogAttrs(t *testing.T, line string) [][2]string {
	t.Helper()
	var out [][2]string
	rest := strings.TrimSuffix(line, "\n")
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			t.Fatalf("cannot parse log line %q", line)
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				t.Fatalf("cannot parse log line %q: %v", line, err)
			}
			val, _ = strconv.Unquote(q)
			after = after[len(q):]
		} else {
			val, after, _ = strings.Cut(after, " ")
			after = " " + after
		}
		out = append(out, [2]string{key, val})
		rest = strings.TrimPrefix(after, " ")
	}
	return out
}
