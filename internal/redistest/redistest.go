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
	"path/filepath"
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

// OptionalBinary is [Binary] for a program that CI does not install: without
// it the test is skipped, also when CI is set, with why in the message.
func OptionalBinary(t testing.TB, name, why string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not on PATH: skipping this test, also under CI (%s)", name, why)
	}
	return bin
}

// StartValkey is [Start] with valkey-server. Without it on PATH the test
// is skipped, even when CI is set: CI runs on Debian 12, which has no
// valkey package, so failing there would leave nothing to fix; the tests
// run wherever valkey-server is installed.
func StartValkey(t testing.TB, args ...string) *Server {
	t.Helper()
	bin := OptionalBinary(t, "valkey-server", "Debian 12 has no valkey package; install Valkey 7.2+ to run these tests")
	return StartBinary(t, bin, args...)
}

// A Server is one redis-server process started by a test.
type Server struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	args []string
	// conf, if set, is a config file passed first on the command line
	// (Sentinel needs one it can rewrite).
	conf   string
	cmd    *exec.Cmd
	paused bool
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
	return start(t, bin, FreeAddr(t), "", args)
}

// start starts bin on addr, in a new directory, with the config file
// conf (if not "") written there first, and stops it when the test ends.
func start(t testing.TB, bin, addr, conf string, args []string) *Server {
	t.Helper()
	s := &Server{t: t, bin: bin, addr: addr, dir: t.TempDir(), args: args}
	if conf != "" {
		s.conf = filepath.Join(s.dir, "redis.conf")
		if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			t.Fatalf("writing %s: %v", s.conf, err)
		}
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return FreeAddrs(t, 1)[0]
}

// FreeAddrs returns n loopback addresses with distinct ports that were free
// a moment ago.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		defer l.Close() // held until all are found, so that they differ
		addrs[i] = l.Addr().String()
	}
	return addrs
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
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	args = append(args,
		"--bind", "127.0.0.1", "--port", s.Port(), "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no",
		"--loglevel", "warning", "--logfile", "",
	)
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
	_ = s.cmd.Process.Kill() // SIGKILL ends a paused process too
	_ = s.cmd.Wait()
	s.cmd, s.paused = nil, false
}

// Pause stops the server's process (SIGSTOP) without closing its
// connections or its listening socket: clients connect and write, and
// nothing answers, as with a hung server or a silent network partition.
// The test is skipped where there is no SIGSTOP.
func (s *Server) Pause() {
	s.t.Helper()
	if s.cmd == nil || s.paused {
		return
	}
	if err := stopProcess(s.cmd.Process); err != nil {
		s.t.Skipf("pausing %s: %v", s.bin, err)
	}
	s.paused = true
}

// Resume continues a paused server (SIGCONT): it answers whatever it was
// sent meanwhile.
func (s *Server) Resume() {
	s.t.Helper()
	if s.cmd == nil || !s.paused {
		return
	}
	if err := continueProcess(s.cmd.Process); err != nil {
		s.t.Fatalf("resuming %s: %v", s.bin, err)
	}
	s.paused = false
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
