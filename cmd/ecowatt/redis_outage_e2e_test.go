package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
)

// startOwnRedis runs `ecowatt serve` on rs, a redis-server of the test's
// own that it may stop.
func startOwnRedis(t *testing.T, rs *redistest.Server, extra ...string) *testServer {
	t.Helper()
	dir := t.TempDir()
	s := &testServer{Token: "test-token-" + filepath.Base(dir), DataDir: filepath.Join(dir, "data")}
	s.args = append([]string{"serve",
		"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
		"--redis", rs.URL, "--redis-prefix", "ecowatt:",
		"--data-dir", s.DataDir, "--admin-token", s.Token, "--log-level", "warn", "--log-format", "json",
	}, extra...)
	s.start(t)
	t.Cleanup(func() { s.stop(t) })
	return s
}

// TestRedisOutageHTTPFast503 stops Redis under a running server: the first
// API requests must answer 503 within 1.5 s (they hung ~7 s), and every log
// line, go-redis's own included, stays JSON (component "redis").
func TestRedisOutageHTTPFast503(t *testing.T) {
	rs := redistest.StartServer(t)
	s := startOwnRedis(t, rs)
	s.provision(t, "out", 1)
	if code := s.api(t, "GET", "/api/v1/devices/out-0001", nil, nil); code != http.StatusOK {
		t.Fatalf("GET device before the outage: %d", code)
	}
	rs.Stop()
	for i := range 3 {
		start := time.Now()
		code := s.api(t, "GET", "/api/v1/devices/out-0001", nil, nil)
		if took := time.Since(start); code != http.StatusServiceUnavailable || took > 1500*time.Millisecond {
			t.Errorf("request %d during the outage: %d after %v, want 503 within 1.5 s", i, code, took)
		}
	}
	time.Sleep(500 * time.Millisecond) // let background loops meet the outage
	rs.Start()
	deadline := time.Now().Add(10 * time.Second)
	for s.api(t, "GET", "/api/v1/devices/out-0001", nil, nil) != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("API did not recover after Redis came back\n%s", s.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sawRedis := false
	sc := bufio.NewScanner(strings.NewReader(s.logs.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		if line["component"] == "redis" {
			sawRedis = true
		}
	}
	if !sawRedis {
		t.Errorf("no go-redis log line (component redis) during the outage:\n%s", s.logs)
	}
}
