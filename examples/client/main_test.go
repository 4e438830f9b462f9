package main

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" for success; else a substring of the error
	}{
		{"defaults", nil, ""},
		{"loopback IPv4", []string{"--addr", "127.0.0.1:9"}, ""},
		{"loopback IPv4 range", []string{"--addr", "127.8.9.10:9"}, ""},
		{"loopback IPv6", []string{"--addr", "[::1]:9"}, ""},
		{"localhost", []string{"--addr", "localhost:9"}, ""},
		{"remote refused", []string{"--addr", "192.0.2.1:50051"}, "--insecure"},
		{"remote name refused", []string{"--addr", "example.com:443"}, "--insecure"},
		{"unspecified address refused", []string{"--addr", "0.0.0.0:50051"}, "--insecure"},
		{"remote with --insecure", []string{"--addr", "192.0.2.1:50051", "--insecure"}, ""},
		{"no port", []string{"--addr", "127.0.0.1"}, "--addr"},
		{"zero calls", []string{"--calls", "0"}, "--calls"},
		{"one call", []string{"--calls", "1"}, ""},
		{"negative interval", []string{"--interval", "-1s"}, "--interval"},
		{"zero interval", []string{"--interval", "0s"}, ""},
		{"unparsable interval", []string{"--interval", "soon"}, "interval"},
		{"negative margin", []string{"--refresh-margin", "-1ns"}, "--refresh-margin"},
		{"zero margin", []string{"--refresh-margin", "0s"}, ""},
		{"zero timeout", []string{"--timeout", "0s"}, "--timeout"},
		{"empty user", []string{"--user", ""}, "--user"},
		{"unknown flag", []string{"--token", "x"}, "token"},
		{"stray argument", []string{"extra"}, "extra"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("parseFlags(%q) = %v, want no error", tt.args, err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("parseFlags(%q) succeeded, want an error naming %q", tt.args, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("parseFlags(%q) = %q, want it to name %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

// TestRunNoServer checks that a failed login is an error (main turns it
// into a one-line message and exit status 1), not a hang or a panic.
func TestRunNoServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now

	err = run(context.Background(), []string{"--addr", addr, "--timeout", "2s"}, io.Discard)
	if err == nil {
		t.Fatal("run against a closed port succeeded, want a login error")
	}
	if got := err.Error(); !strings.HasPrefix(got, "login as alice:") {
		t.Errorf("run error = %q, want it to start with %q", got, "login as alice:")
	}
}

func TestOneLine(t *testing.T) {
	if got, want := oneLine("rpc error:\n  code = Unavailable\tdesc"), "rpc error: code = Unavailable desc"; got != want {
		t.Errorf("oneLine = %q, want %q", got, want)
	}
}

func TestClock(t *testing.T) {
	// A fixed "now", one second before local midnight: the result must not
	// depend on the date or time at which the test runs.
	now := time.Date(2031, 7, 14, 23, 59, 59, 0, time.Local)
	tests := []struct {
		name string
		t    time.Time
		want string
	}{
		{"unset", time.Unix(0, 0), "(none)"},
		{"zero", time.Time{}, "(none)"},
		{"same day", time.Date(2031, 7, 14, 9, 30, 15, 0, time.Local), "09:30:15"},
		{"now itself", now, "23:59:59"},
		{"one second later, the next day", now.Add(time.Second), "2031-07-15 00:00:00"},
		{"previous day", time.Date(2031, 7, 13, 23, 59, 59, 0, time.Local), "2031-07-13 23:59:59"},
		{"next week", time.Date(2031, 7, 21, 9, 30, 15, 0, time.Local), "2031-07-21 09:30:15"},
		{"same day, another year", time.Date(2032, 7, 14, 9, 30, 15, 0, time.Local), "2032-07-14 09:30:15"},
	}
	for _, tt := range tests {
		if got := clockAt(tt.t, now); got != tt.want {
			t.Errorf("%s: clockAt(%v, %v) = %q, want %q", tt.name, tt.t, now, got, tt.want)
		}
	}
}
