package redistest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// A Proxy forwards TCP connections from a free loopback port to a server,
// so that a test can hold back what the server sends: a replica that
// replicates through a Proxy lags on demand, deterministically, which
// neither a paused process (the kernel still buffers the stream for it)
// nor timing can give.
type Proxy struct {
	lis    net.Listener
	target string

	mu      sync.Mutex // guards the fields below
	stalled bool
	closed  bool
	links   []*link
}

// A link is one proxied connection: client is the side that dialed the
// proxy, server the side the proxy dialed.
type link struct {
	client, server net.Conn

	mu      sync.Mutex // guards the fields below
	stalled bool
	held    []byte // from server to client, while stalled
}

// StartProxy listens on a free loopback port and forwards each connection
// to target, until the test ends or Close.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy to %s: %v", target, err)
	}
	p := &Proxy{lis: lis, target: target}
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

func (p *Proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		l := &link{client: c, server: s, stalled: p.stalled}
		p.links = append(p.links, l)
		p.mu.Unlock()
		go p.up(l)
		go p.down(l)
	}
}

// up copies from the client to the server, always.
func (p *Proxy) up(l *link) {
	_, _ = io.Copy(l.server, l.client)
	_ = l.server.Close()
}

// down copies from the server to the client, or holds what it read while
// the proxy is stalled. Whatever is held when the server's side ends is
// dropped with the connection, as a server that dies drops its output
// buffers.
func (p *Proxy) down(l *link) {
	buf := make([]byte, 32<<10)
	for {
		n, err := l.server.Read(buf)
		l.mu.Lock()
		if l.stalled {
			l.held = append(l.held, buf[:n]...)
		} else if n > 0 {
			if _, werr := l.client.Write(buf[:n]); werr != nil && err == nil {
				err = werr
			}
		}
		l.mu.Unlock()
		if err != nil {
			_ = l.client.Close()
			return
		}
	}
}

// Stall holds back, from when it returns, everything the server sends on
// every connection, current or new; the clients' side still reaches the
// server. A replica through a stalled proxy stays connected and receives
// nothing.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
	for _, l := range p.links {
		l.mu.Lock()
		l.stalled = true
		l.mu.Unlock()
	}
}

// Resume delivers what Stall held back, in order, and forwards again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = false
	for _, l := range p.links {
		l.mu.Lock()
		l.stalled = false
		if len(l.held) > 0 {
			_, _ = l.client.Write(l.held)
			l.held = nil
		}
		l.mu.Unlock()
	}
}

// Close stops listening and closes every connection, dropping whatever
// Stall held back.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	links := p.links
	p.links = nil
	p.mu.Unlock()
	_ = p.lis.Close()
	for _, l := range links {
		_ = l.client.Close()
		_ = l.server.Close()
	}
}
