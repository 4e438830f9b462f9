package redistest

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// Slots is the number of hash slots of a Redis Cluster.
const Slots = 16384

// StartCluster starts n redis-server masters in cluster mode and makes
// them one cluster: each keeps its cluster config file (nodes.conf) in its
// own directory and its cluster bus on a free port of its own, owns an
// equal range of the hash slots (CLUSTER ADDSLOTSRANGE; the last node's
// range ends at slot 16383), and meets the first (CLUSTER MEET). It waits
// until every node reports cluster_state:ok, knows all n nodes and sees
// every slot assigned. It uses no client library and no redis-cli. args
// are more options for every node. Servers[i] owns the i-th range.
func StartCluster(t testing.TB, n int, args ...string) []*Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartCluster(%d): want at least one node", n)
	}
	bin := Binary(t, "redis-server", "Debian: apt-get install -y redis-server")
	addrs := FreeAddrs(t, 2*n) // a client port and a bus port per node
	nodes := make([]*Server, n)
	for i := range nodes {
		_, bus, _ := net.SplitHostPort(addrs[n+i])
		nodes[i] = start(t, bin, addrs[i], "", append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf", // in the node's --dir
			"--cluster-port", bus,
		}, args...))
		lo, hi := SlotRange(i, n)
		// Distinct config epochs, as redis-cli gives them, so that the
		// nodes need not resolve a collision before they agree.
		nodes[i].Do("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1))
		nodes[i].Do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi))
	}
	for i, node := range nodes[1:] {
		_, bus, _ := net.SplitHostPort(addrs[n+i+1])
		nodes[0].Do("CLUSTER", "MEET", "127.0.0.1", node.Port(), bus)
	}
	want := map[string]string{
		"cluster_state":          "ok",
		"cluster_known_nodes":    strconv.Itoa(n),
		"cluster_slots_assigned": strconv.Itoa(Slots),
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, node := range nodes {
		for {
			info, _ := node.Do("CLUSTER", "INFO").(string)
			diff := ""
			for field, v := range want {
				if got := InfoField(info, field); got != v {
					diff += fmt.Sprintf(" %s:%s (want %s)", field, got, v)
				}
			}
			if diff == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the cluster of %d nodes did not form within 30s; node %s has%s", n, node.Addr(), diff)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nodes
}

// SlotRange is the first and last hash slot that node i of a cluster of n
// started by [StartCluster] owns.
func SlotRange(i, n int) (lo, hi int) {
	return i * Slots / n, (i+1)*Slots/n - 1
}

// StartClusterReplica starts a cluster-enabled server like master (same
// binary), with its cluster bus on a free port of its own, joins it to
// master's cluster (CLUSTER MEET) and makes it master's replica (CLUSTER
// REPLICATE). It waits until master lists it online (a full sync: give
// the masters --repl-diskless-sync no to skip the five-second wait of a
// diskless one). args are more options.
func StartClusterReplica(t testing.TB, master *Server, args ...string) *Server {
	t.Helper()
	addrs := FreeAddrs(t, 2)
	_, bus, _ := net.SplitHostPort(addrs[1])
	r := start(t, master.bin, addrs[0], "", append([]string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-port", bus,
	}, args...))
	cfg, _ := master.Do("CONFIG", "GET", "cluster-port").([]any)
	if len(cfg) != 2 {
		t.Fatalf("CONFIG GET cluster-port on %s = %v", master.Addr(), cfg)
	}
	masterBus, _ := cfg[1].(string)
	if masterBus == "0" { // the default: client port + 10000
		p, _ := strconv.Atoi(master.Port())
		masterBus = strconv.Itoa(p + 10000)
	}
	id, _ := master.Do("CLUSTER", "MYID").(string)
	r.Do("CLUSTER", "MEET", "127.0.0.1", master.Port(), masterBus)
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The replica must know master before it can replicate it.
		if _, err := Do(r.Addr(), "CLUSTER", "REPLICATE", id); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not learn of master %s within 30s", r.Addr(), master.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		reply, _ := Do(master.Addr(), "INFO", "replication")
		text, _ := reply.(string)
		for _, rep := range Replicas(text) {
			if rep["port"] == r.Port() && rep["state"] == "online" {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s of %s not online within 30s; INFO replication:\n%s", r.Addr(), master.Addr(), text)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
