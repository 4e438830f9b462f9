package redisstore

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/rueidis"

	"github.com/slidejwt/slidejwt/internal/redistest"
)

// redisServer is a redis-server process of one test, on a loopback port
// of its own, without persistence (internal/redistest).
type redisServer struct {
	*redistest.Server
	t testing.TB
}

// startRedis starts redis-server from PATH on a free loopback port and
// stops it when the test ends. Without redis-server the test is skipped,
// or fails when the CI environment variable is set.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	return &redisServer{Server: redistest.Start(t), t: t}
}

// startValkey is startRedis with valkey-server; without it the test is
// skipped, also under CI (see TestValkey).
func startValkey(t testing.TB) *redisServer {
	t.Helper()
	return &redisServer{Server: redistest.StartValkey(t), t: t}
}

// client returns a new rueidis client of r, closed when the test ends.
func (r *redisServer) client() rueidis.Client {
	r.t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr()}})
	if err != nil {
		r.t.Fatalf("rueidis.NewClient(%s): %v", r.Addr(), err)
	}
	r.t.Cleanup(c.Close)
	return c
}

// do runs a command on a client of the test's own, for the test's checks
// of what Redis holds.
func do(t testing.TB, c rueidis.Client, args ...string) rueidis.RedisResult {
	t.Helper()
	return c.Do(context.Background(), c.B().Arbitrary(args...).Build())
}

// commandCalls returns how many times Redis ran the command name.
func commandCalls(t testing.TB, c rueidis.Client, name string) int {
	t.Helper()
	info, err := do(t, c, "INFO", "commandstats").ToString()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	prefix := "cmdstat_" + name + ":calls="
	for line := range strings.Lines(info) {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			n, _, _ := strings.Cut(rest, ",")
			calls, err := strconv.Atoi(n)
			if err != nil {
				t.Fatalf("INFO commandstats: %q", line)
			}
			return calls
		}
	}
	return 0
}
