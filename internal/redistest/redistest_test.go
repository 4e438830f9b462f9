package redistest

import "testing"

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
