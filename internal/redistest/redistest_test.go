package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestStartStop: a server answers PING while it runs, not after Stop, and
// again after Start on the same address.
func TestStartStop(t *testing.T) {
	s := Start(t)
	if !Ping(s.Addr()) {
		t.Fatal("no PONG from a started server")
	}
	s.Stop()
	if Ping(s.Addr()) {
		t.Fatal("PONG after Stop")
	}
	s.Start()
	if !Ping(s.Addr()) {
		t.Fatal("no PONG after Start again")
	}
}

// TestDo: the raw RESP client reads each kind of reply, and an error
// reply as a ReplyError.
func TestDo(t *testing.T) {
	s := Start(t)
	for _, tc := range []struct {
		args []string
		want any
	}{
		{[]string{"SET", "k", "v\r\nw"}, "OK"},
		{[]string{"GET", "k"}, "v\r\nw"},
		{[]string{"GET", "missing"}, nil},
		{[]string{"RPUSH", "l", "a", "b"}, int64(2)},
	} {
		if got := s.Do(tc.args...); got != tc.want {
			t.Errorf("%q = %#v, want %#v", tc.args, got, tc.want)
		}
	}
	got, ok := s.Do("LRANGE", "l", "0", "-1").([]any)
	if !ok || len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("LRANGE = %#v, want [a b]", got)
	}
	if _, err := Do(s.Addr(), "NOSUCHCOMMAND"); err == nil {
		t.Error("NOSUCHCOMMAND: no error")
	} else if _, ok := err.(ReplyError); !ok {
		t.Errorf("NOSUCHCOMMAND: error %T %v, want a ReplyError", err, err)
	}
	if v := s.Info("server", "tcp_port"); v != s.Port() {
		t.Errorf("INFO server tcp_port = %q, want %q", v, s.Port())
	}
}

// TestPauseResume: a paused server accepts nothing it answers; resumed,
// it answers again, on the same process (its data is still there).
func TestPauseResume(t *testing.T) {
	s := Start(t)
	s.Do("SET", "k", "v")
	s.Pause()
	if Ping(s.Addr()) {
		t.Fatal("PONG from a paused server")
	}
	s.Resume()
	if got := s.Do("GET", "k"); got != "v" {
		t.Fatalf("GET k after Resume = %#v, want \"v\"", got)
	}
	s.Pause()
	s.Stop() // a paused server is killed too
	if Ping(s.Addr()) {
		t.Fatal("PONG after Stop of a paused server")
	}
}

// TestSlotRange: the ranges of n nodes cover every slot once, in order.
func TestSlotRange(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7} {
		next := 0
		for i := range n {
			lo, hi := SlotRange(i, n)
			if lo != next || hi < lo {
				t.Fatalf("SlotRange(%d, %d) = %d, %d; want a non-empty range from %d", i, n, lo, hi, next)
			}
			next = hi + 1
		}
		if next != Slots {
			t.Fatalf("the %d ranges of SlotRange end at %d, want %d", n, next-1, Slots-1)
		}
	}
}

// TestCluster: three masters form one cluster in which each owns a third
// of the slots, and a key is served by the owner of its slot only. A
// replica added to the owner replicates the key.
func TestCluster(t *testing.T) {
	nodes := StartCluster(t, 3, "--repl-diskless-sync", "no")
	slot, ok := nodes[0].Do("CLUSTER", "KEYSLOT", "k").(int64)
	if !ok {
		t.Fatal("CLUSTER KEYSLOT k: not an integer")
	}
	owner := -1
	for i := range nodes {
		if lo, hi := SlotRange(i, len(nodes)); lo <= int(slot) && int(slot) <= hi {
			owner = i
		}
	}
	for i, n := range nodes {
		_, err := Do(n.Addr(), "SET", "k", "v")
		if i == owner && err != nil {
			t.Errorf("SET on the owner of slot %d (node %d): %v", slot, i, err)
		}
		if i != owner && (err == nil || !strings.HasPrefix(err.Error(), "redistest: redis replied MOVED ")) {
			t.Errorf("SET on node %d, which does not own slot %d: %v, want MOVED", i, slot, err)
		}
	}
	replica := StartClusterReplica(t, nodes[owner])
	if role := replica.Info("replication", "role"); role != "slave" {
		t.Fatalf("the cluster replica's role = %q, want slave", role)
	}
	WaitInSync(t, nodes[owner], 1, 30*time.Second)
	if n := replica.Do("DBSIZE"); n != int64(1) {
		t.Fatalf("DBSIZE on the owner's replica = %#v, want 1", n)
	}
}

// TestSentinel: a sentinel monitors the master and finds its replica.
func TestSentinel(t *testing.T) {
	master := Start(t)
	replica := StartReplica(t, master)
	sentinel := StartSentinel(t, "m", master)
	got, ok := sentinel.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "m").([]any)
	if !ok || len(got) != 2 || got[0] != "127.0.0.1" || got[1] != master.Port() {
		t.Fatalf("SENTINEL GET-MASTER-ADDR-BY-NAME = %#v, want [127.0.0.1 %s]", got, master.Port())
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		replicas, _ := sentinel.Do("SENTINEL", "REPLICAS", "m").([]any)
		if len(replicas) == 1 && strings.Contains(fmt.Sprint(replicas[0]), replica.Port()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("SENTINEL REPLICAS m = %#v after 20s, want the replica on port %s", replicas, replica.Port())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestProxy: a command through a proxy is answered; while the proxy is
// stalled the answer is held back, and Resume delivers it; Close ends the
// connection.
func TestProxy(t *testing.T) {
	s := Start(t)
	p := StartProxy(t, s.Addr())
	if got, err := Do(p.Addr(), "SET", "k", "v"); err != nil || got != "OK" {
		t.Fatalf("SET through the proxy = %#v, %v; want OK", got, err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	p.Stall()
	if _, err := io.WriteString(c, "GET k\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("read %q through a stalled proxy, want nothing", line)
	}
	if got := s.Do("GET", "k"); got != "v" {
		t.Fatalf("GET k on the server = %#v; the stalled proxy must still forward to it", got)
	}
	p.Resume()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if reply, err := readReply(r); err != nil || reply != "v" {
		t.Fatalf("GET k after Resume = %#v, %v; want v", reply, err)
	}
	p.Close()
	if _, err := readReply(r); err == nil {
		t.Fatal("a connection through a closed proxy still answers")
	}
}

// TestReplicaVia: a replica through a proxy is in sync; while the proxy
// is stalled it misses the master's writes, and receives them on Resume.
func TestReplicaVia(t *testing.T) {
	master := Start(t, "--repl-diskless-sync", "no")
	p := StartProxy(t, master.Addr())
	replica := StartReplicaVia(t, master, p.Addr())
	master.Do("SET", "k", "1")
	WaitInSync(t, master, 1, 30*time.Second)
	if got := replica.Do("GET", "k"); got != "1" {
		t.Fatalf("GET k on the replica in sync = %#v, want 1", got)
	}
	p.Stall()
	master.Do("SET", "k", "2")
	time.Sleep(100 * time.Millisecond)
	if got := replica.Do("GET", "k"); got != "1" {
		t.Fatalf("GET k on the replica behind a stalled proxy = %#v, want 1", got)
	}
	p.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for replica.Do("GET", "k") != "2" {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not receive the held write within 10s of Resume")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
