package redistest

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// StartReplica starts a server like master (same binary) that replicates
// it (--replicaof), with more options args.
func StartReplica(t testing.TB, master *Server, args ...string) *Server {
	t.Helper()
	return StartReplicaVia(t, master, master.Addr(), args...)
}

// StartReplicaVia is [StartReplica] with the replica connecting to master
// at addr (a loopback host:port), such as a [Proxy] to master.
func StartReplicaVia(t testing.TB, master *Server, addr string, args ...string) *Server {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("StartReplicaVia(%q): %v", addr, err)
	}
	return StartBinary(t, master.bin, append([]string{"--replicaof", host, port}, args...)...)
}

// WaitInSync waits until n replicas of master have acknowledged
// everything master had written when it was called, failing the test
// after limit. It publishes a message (PUBLISH, which replicates and
// touches no key) and then sends WAIT on the same connection, which asks
// the replicas to acknowledge at once. A replica's own INFO would not do:
// after a diskless full sync the master streams nothing to a replica
// until its first acknowledgment, up to a second later.
func WaitInSync(t testing.TB, master *Server, n int, limit time.Duration) {
	t.Helper()
	replies, err := doAll(master.addr, limit+5*time.Second,
		[]string{"PUBLISH", "redistest:sync", "sync"},
		[]string{"WAIT", strconv.Itoa(n), strconv.FormatInt(limit.Milliseconds(), 10)},
	)
	if err != nil {
		t.Fatalf("waiting for %d replicas of %s in sync: %v", n, master.addr, err)
	}
	if acked, _ := replies[1].(int64); acked < int64(n) {
		t.Fatalf("waited %v for %d replicas of %s in sync: %v acknowledged", limit, n, master.addr, replies[1])
	}
}

// Replicas returns the replicas that the text of a master's INFO
// replication lists, each as its fields (ip, port, state, offset, lag).
func Replicas(info string) []map[string]string {
	var rs []map[string]string
	for i := 0; ; i++ {
		// slave0:ip=127.0.0.1,port=6380,state=online,offset=123,lag=0
		v := InfoField(info, "slave"+strconv.Itoa(i))
		if v == "" {
			return rs
		}
		r := map[string]string{}
		for kv := range strings.SplitSeq(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			r[k] = val
		}
		rs = append(rs, r)
	}
}
