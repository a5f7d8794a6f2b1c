package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server of the test's own, on a fixed loopback port, that
// the test can stop and start again to simulate an outage (the shared
// server of scripts/test.sh must never be stopped). It writes an
// append-only file synced on every write, so a restart keeps every key.
type Server struct {
	t    testing.TB
	Port int
	URL  string // redis://127.0.0.1:port/0
	dir  string

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd
}

// StartServer starts a redis-server on a free port and stops it at cleanup.
// It skips the test when redis-server is not installed, except under
// CI=true (see Client).
func StartServer(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &Server{t: t, Port: port, URL: "redis://127.0.0.1:" + strconv.Itoa(port) + "/0", dir: t.TempDir()}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start (re)starts the server and waits until it answers PING.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", s.dir)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.Port), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d not answering: %v", s.Port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (an outage: connections are reset, new ones
// refused) and waits for it to exit. It is safe to call twice.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// String names the server for failure messages.
func (s *Server) String() string { return fmt.Sprintf("redis-server :%d", s.Port) }
