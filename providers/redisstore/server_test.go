package redisstore

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// redisServer is a redis-server process of one test, on a loopback port
// of its own, without persistence.
type redisServer struct {
	t    testing.TB
	bin  string
	addr string
	cmd  *exec.Cmd
}

// startRedis starts redis-server from PATH on a free loopback port and
// stops it when the test ends. Without redis-server the test is skipped,
// or fails when the CI environment variable is set.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server is not on PATH, and CI is set: install it (Debian: apt-get install -y redis-server)")
		}
		t.Skip("redis-server is not on PATH: skipping the Redis tests (Debian: apt-get install -y redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	r := &redisServer{t: t, bin: bin, addr: addr}
	r.start()
	t.Cleanup(r.stop)
	return r
}

// start runs redis-server on r.addr and waits until it answers PING.
func (r *redisServer) start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command(r.bin,
		"--bind", "127.0.0.1", "--port", port,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--loglevel", "warning")
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(r.addr) {
			return
		}
		if time.Now().After(deadline) {
			r.stop()
			r.t.Fatalf("redis-server on %s did not answer PING within 10s", r.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop kills the server, if running, and waits for it to exit.
func (r *redisServer) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// ping reports whether a Redis server answers PING at addr.
func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// client returns a new rueidis client of r, closed when the test ends.
func (r *redisServer) client() rueidis.Client {
	r.t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.addr}})
	if err != nil {
		r.t.Fatalf("rueidis.NewClient(%s): %v", r.addr, err)
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
