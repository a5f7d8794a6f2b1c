package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/rs/zerolog"
)

// testServer is a real `ecowatt serve` started in-process through run, on
// loopback ports chosen by the kernel, against the test Redis.
type testServer struct {
	HTTP, MQTT string
	Addrs      map[string]string // the --ready-file contents
	Token      string
	DataDir    string
	args       []string
	cancel     context.CancelFunc
	done       chan error
	logs       *syncBuffer
}

// syncBuffer collects a command's output for failure messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer runs `ecowatt serve` with extra flags and waits until it is
// serving. It is stopped at cleanup.
func startServer(t *testing.T, extra ...string) *testServer {
	t.Helper()
	_, prefix := redistest.Client(t)
	dir := t.TempDir()
	s := &testServer{Token: "test-token-" + filepath.Base(dir), DataDir: filepath.Join(dir, "data")}
	s.args = append([]string{"serve",
		"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
		"--redis", os.Getenv(redistest.EnvURL), "--redis-prefix", prefix,
		"--data-dir", s.DataDir, "--admin-token", s.Token, "--log-level", "warn",
		// Dozens of servers share this test process: a process-wide soft
		// memory limit set by each (the auto default) would only make the
		// suite's GC busier. Replica processes (startProcCluster) keep it.
		"--memory-limit", "off",
	}, extra...)
	s.start(t)
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *testServer) start(t *testing.T) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready.json")
	args := append(append([]string{}, s.args...), "--ready-file", ready)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done, s.logs = cancel, make(chan error, 1), &syncBuffer{}
	go func() { s.done <- run(ctx, args, func(string) string { return "" }, s.logs, s.logs) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil && len(b) > 0 {
			var addrs map[string]string
			if err := json.Unmarshal(b, &addrs); err == nil {
				s.HTTP, s.MQTT, s.Addrs = "http://"+addrs["http"], addrs["mqtt"], addrs
				return
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("server exited before serving: %v\n%s", err, s.logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready in time\n%s", s.logs)
		}
	}
}

// stop stops the server and checks that it stopped cleanly within 5 s.
func (s *testServer) stop(t *testing.T) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server stopped with %v\n%s", err, s.logs)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("server did not stop within 5 s\n%s", s.logs)
	}
}

// restart stops the server and starts it again with the same state.
func (s *testServer) restart(t *testing.T) {
	t.Helper()
	s.stop(t)
	s.start(t)
}

// cli runs an ecowatt client command against the server and returns stdout.
func (s *testServer) cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut syncBuffer
	env := map[string]string{"ECOWATT_SERVER": s.HTTP, "ECOWATT_ADMIN_TOKEN": s.Token}
	err := run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
	if err != nil {
		return out.String() + errOut.String(), err
	}
	return out.String(), nil
}

// api calls the HTTP API and decodes the JSON answer into out.
func (s *testServer) api(t *testing.T, method, path string, in, out any) int {
	t.Helper()
	var body *bytes.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	} else {
		body = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, s.HTTP+path, body)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil && resp.StatusCode < 300 {
			t.Fatalf("%s %s: decode: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

// provision adds n devices named prefix-0001... through the CLI and returns
// their keys.
func (s *testServer) provision(t *testing.T, prefix string, n int) map[string][]byte {
	t.Helper()
	keysFile := filepath.Join(t.TempDir(), "keys.json")
	if out, err := s.cli(t, "device", "add", "--count", itoa(n), "--prefix", prefix, "--keys-out", keysFile); err != nil {
		t.Fatalf("device add: %v\n%s", err, out)
	}
	raw := map[string]string{}
	if err := readKeys(keysFile, raw); err != nil {
		t.Fatal(err)
	}
	keys := map[string][]byte{}
	for id, h := range raw {
		k, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = k
	}
	if len(keys) != n {
		t.Fatalf("provisioned %d keys, want %d", len(keys), n)
	}
	return keys
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// testFleet is a devicesim fleet running against a test server.
type testFleet struct {
	*devicesim.Fleet
	cancel context.CancelFunc
	done   chan error
}

// startFleet runs the devices of keys against s until stop or cleanup.
// setup, when non-nil, wires device features.
func startFleet(t *testing.T, s *testServer, keys map[string][]byte, stateRoot string, setup func(*devicesim.Device) error) *testFleet {
	t.Helper()
	if stateRoot == "" {
		stateRoot = t.TempDir()
	}
	f, err := devicesim.NewFleet(devicesim.FleetConfig{
		Keys:      keys,
		StateRoot: stateRoot,
		Device: devicesim.Config{
			Broker:          "tcp://" + s.MQTT,
			FirmwareVersion: "1.0.0",
			Log:             zerolog.Nop(),
			MinBackoff:      100 * time.Millisecond,
			MaxBackoff:      time.Second,
		},
		StartSpread: 200 * time.Millisecond,
		Setup:       setup,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tf := &testFleet{Fleet: f, cancel: cancel, done: make(chan error, 1)}
	go func() { tf.done <- f.Run(ctx) }()
	t.Cleanup(func() { tf.stop(t) })
	return tf
}

func (f *testFleet) stop(t *testing.T) {
	t.Helper()
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil
	select {
	case <-f.done:
	case <-time.After(15 * time.Second):
		t.Errorf("fleet did not stop within 15 s")
	}
}

// eventually polls cond until it is true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
}
