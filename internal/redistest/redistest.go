// Package redistest starts real redis-server processes for the tests of the
// repository's modules: the Redis store's own tests, the end-to-end tests
// of the example server and the benchmarks. It never mocks Redis.
//
// Each server listens on a free loopback port, in a temporary directory of
// its own, and is killed when the test ends. Without the binary on PATH the
// test is skipped with a message that says how to install it, or fails when
// the CI environment variable is set, so that CI never passes by skipping.
package redistest

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Binary returns the path of the named program (redis-server,
// valkey-server) on PATH. Without it the test is skipped, or fails when
// CI is set; install says how to get it, for the message.
func Binary(t testing.TB, name, install string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err == nil {
		return bin
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not on PATH, and CI is set: install it (%s)", name, install)
	}
	t.Skipf("%s is not on PATH: skipping this test (%s)", name, install)
	return ""
}

// A Server is one redis-server process started by a test.
type Server struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	args []string
	cmd  *exec.Cmd
}

// Start starts redis-server on a free loopback port, without persistence,
// and waits until it answers PING. args are more command-line options,
// which override the defaults ("--appendonly", "yes" keeps the data over
// a Stop and Start).
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return StartBinary(t, Binary(t, "redis-server", "Debian: apt-get install -y redis-server"), args...)
}

// StartBinary is Start with another binary that speaks the same command
// line, such as valkey-server.
func StartBinary(t testing.TB, bin string, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: bin, addr: FreeAddr(t), dir: t.TempDir(), args: args}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Port is the server's port.
func (s *Server) Port() string {
	_, port, _ := net.SplitHostPort(s.addr)
	return port
}

// Dir is the server's working directory, where its data files go.
func (s *Server) Dir() string { return s.dir }

// Start starts the server again on the same address, with the same
// options and directory, after a Stop. It waits until the server answers
// PING.
func (s *Server) Start() {
	s.t.Helper()
	if s.cmd != nil {
		return
	}
	args := []string{
		"--bind", "127.0.0.1", "--port", s.Port(), "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--loglevel", "warning", "--logfile", "",
	}
	s.cmd = exec.Command(s.bin, append(args, s.args...)...)
	setProcAttr(s.cmd)
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		s.t.Fatalf("starting %s: %v", s.bin, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !Ping(s.addr) {
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("%s on %s did not answer PING within 10s", s.bin, s.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: no shutdown save), if it runs, and waits
// for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Ping reports whether a server answers PING at addr within a second.
func Ping(addr string) bool {
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
