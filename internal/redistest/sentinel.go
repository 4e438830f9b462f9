package redistest

import (
	"fmt"
	"strings"
	"testing"
)

// StartSentinel starts a Redis Sentinel (redis-server <conf> --sentinel,
// same binary as master) on a free loopback port, monitoring master under
// the name masterName with a quorum of one. Its config file, which
// Sentinel rewrites as it learns, is in its own directory. conf are more
// lines of that file, after the monitor line, such as
// "sentinel down-after-milliseconds <name> 1000".
func StartSentinel(t testing.TB, masterName string, master *Server, conf ...string) *Server {
	t.Helper()
	lines := append([]string{fmt.Sprintf("sentinel monitor %s 127.0.0.1 %s 1", masterName, master.Port())}, conf...)
	return start(t, master.bin, FreeAddr(t), strings.Join(lines, "\n")+"\n", []string{"--sentinel"})
}
