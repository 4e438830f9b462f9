package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestParseFlags_MetricsAddr: --metrics-addr takes host:port with a
// named host and a port number; without it there is no metrics server.
func TestParseFlags_MetricsAddr(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil || cfg.metricsAddr != "" {
		t.Fatalf("without --metrics-addr: %q, %v; want none", cfg.metricsAddr, err)
	}
	for _, good := range []string{"127.0.0.1:9464", "127.0.0.1:0", "localhost:9464", "[::1]:9464", "0.0.0.0:9464"} {
		cfg, err := parseFlags([]string{"--metrics-addr", good}, io.Discard)
		if err != nil || cfg.metricsAddr != good {
			t.Errorf("--metrics-addr %s: %q, %v", good, cfg.metricsAddr, err)
		}
	}
	for _, bad := range []string{"", "9464", ":9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "::1:9464"} {
		_, err := parseFlags([]string{"--metrics-addr", bad}, io.Discard)
		var fe *flagError
		if !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), "--metrics-addr: ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("--metrics-addr %q: err %v, want one line starting with --metrics-addr", bad, err)
		}
	}
}

// syncBuffer is a log that one goroutine writes while another reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var metricsURL = regexp.MustCompile(`msg=listening .*\bmetrics=(http://\S+/metrics)`)

// startRun runs the server with args until the test ends, and returns its
// log once the "listening" line is in it.
func startRun(t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	log := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"--addr", "127.0.0.1:0"}, args...), log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("run did not return within 30s of its context's end")
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "msg=listening") {
		select {
		case err := <-done:
			t.Fatalf("run returned before listening: %v\n%s", err, log)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listening line within 30s:\n%s", log)
		}
	}
	return log
}

// TestRun_Metrics: with --metrics-addr the listening line names the
// metrics URL, which serves the Prometheus format (GET only); without
// it, the line names none.
func TestRun_Metrics(t *testing.T) {
	log := startRun(t, "--metrics-addr", "127.0.0.1:0")
	m := metricsURL.FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("listening line names no metrics URL:\n%s", log)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("GET %s: %s, Content-Type %q; want 200 and text/plain", m[1], resp.Status, resp.Header.Get("Content-Type"))
	}
	if want := `service_name="` + serviceName + `"`; !strings.Contains(string(body), want) {
		t.Errorf("scrape lacks %s:\n%s", want, body)
	}
	resp, err = client.Post(m[1], "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %s, want 405", m[1], resp.Status)
	}

	plain := startRun(t)
	if line := plain.String(); strings.Contains(line, "metrics") {
		t.Errorf("without --metrics-addr the log mentions metrics:\n%s", line)
	}
}

// TestRun_MetricsAddrInUse: a --metrics-addr that cannot be listened on
// stops the server before it listens, with a flag error naming the flag.
func TestRun_MetricsAddrInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, []string{"--addr", "127.0.0.1:0", "--metrics-addr", l.Addr().String()}, &log)
	var fe *flagError
	if !errors.As(err, &fe) || !strings.HasPrefix(err.Error(), "--metrics-addr: ") {
		t.Fatalf("err = %v, want a flag error naming --metrics-addr", err)
	}
	if strings.Contains(log.String(), "listening") {
		t.Errorf("server listened: %s", log.String())
	}
}
