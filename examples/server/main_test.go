package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	demov1 "github.com/slidejwt/slidejwt/gen/demo/v1"
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
