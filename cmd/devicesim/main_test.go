package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowAll lets every client in (the real broker's auth is tested elsewhere).
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool              { return true }

func startBroker(t *testing.T) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + l.Address()
}

func writeKeys(t *testing.T, n int) string {
	t.Helper()
	keys := map[string]string{}
	for i := range n {
		keys[fmt.Sprintf("sim-%d", i)] = hex.EncodeToString(bytes.Repeat([]byte{byte(i + 1)}, 32))
	}
	b, _ := json.Marshal(keys)
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockedBuffer is a bytes.Buffer safe for the fleet's writers.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestRunFleet(t *testing.T) {
	broker := startBroker(t)
	keys := writeKeys(t, 5)
	state := t.TempDir()
	env := map[string]string{"ECOWATT_BROKER": broker, "ECOWATT_STATE_DIR": state}
	var stdout, stderr lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--keys", keys, "--start-spread", "100ms", "--inverter-faults", "crc=0.01"},
			func(k string) string { return env[k] }, &stdout, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "online 5/5") {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("fleet not online; stderr:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v\n%s", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if out := stdout.String(); !strings.Contains(out, "stopped 5 devices: peak online 5, 5 connects") {
		t.Errorf("summary = %q", out)
	}
	for i := range 5 {
		if _, err := os.Stat(filepath.Join(state, fmt.Sprintf("sim-%d", i), "boot.json")); err != nil {
			t.Errorf("no flash for sim-%d: %v", i, err)
		}
	}
}

func TestRunBadInput(t *testing.T) {
	keys := writeKeys(t, 1)
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"x/y":"00"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"missing keys file", []string{"--keys", "/nonexistent/keys.json"}, nil, "--keys"},
		{"bad keys file", []string{"--keys", bad}, nil, "invalid device id"},
		{"bad faults", []string{"--keys", keys, "--inverter-faults", "crc=2"}, nil, "--inverter-faults"},
		{"bad log level", []string{"--keys", keys, "--log-level", "loud"}, nil, "--log-level"},
		{"ca without ssl", []string{"--keys", keys, "--ca", "ca.pem"}, nil, "not ssl://"},
		{"bad env", []string{"--keys", keys}, map[string]string{"ECOWATT_MAX_CONNECTING": "many"}, "ECOWATT_MAX_CONNECTING"},
		{"stray argument", []string{"extra"}, nil, "unexpected argument"},
		{"missing fota key", []string{"--keys", keys, "--fota-pubkey", "/nonexistent/firmware-signing.pub"}, nil, "--fota-pubkey"},
		{"fota key not a key", []string{"--keys", keys, "--fota-pubkey", bad}, nil, "--fota-pubkey"},
		{"negative power cut", []string{"--keys", keys, "--fota-power-cut", "-1"}, nil, "--fota-power-cut"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			err := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, &out, &errw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want error containing %q", err, tc.want)
			}
		})
	}
}
