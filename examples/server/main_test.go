package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestParseFlags_Defaults checks the defaults, including
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
