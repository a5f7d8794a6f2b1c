package mqttbus

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
)

// allowAll admits every client to every topic.
type allowAll struct{ mqtt.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// startBroker runs a bare mochi broker (allow all) on addr ("" for a free
// port) and returns its address and a stop function.
func startBroker(t *testing.T, addr string) (string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 { // the port of a just-stopped broker may take a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := mqtt.New(&mqtt.Options{InlineClient: true})
	if err := s.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddListener(listeners.NewNet("t", ln)); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { s.Close() }) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func dial(t *testing.T, addr, id string) *Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := Dial(ctx, Config{URL: "tcp://" + addr, ClientID: id, Logger: zerolog.Nop(), OperationTimeout: 3 * time.Second,
		MaxReconnectInterval: 500 * time.Millisecond, HandshakeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// collector counts messages per topic.
type collector struct {
	mu  sync.Mutex // guards got
	got map[string]int
	n   int
}

func (c *collector) handle(m backend.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = map[string]int{}
	}
	c.got[m.Topic]++
	c.n++
	if m.Username != "" {
		panic("username on an external broker")
	}
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSharedSplit: two replicas subscribed to device uplinks share them:
// every message reaches exactly one replica, and both get some. A
// non-shared filter reaches both.
func TestSharedSplit(t *testing.T) {
	addr, _ := startBroker(t, "")
	var a, b, ea, eb collector
	ra, rb := dial(t, addr, "replica-a"), dial(t, addr, "replica-b")
	for _, s := range []struct {
		bus *Bus
		c   *collector
		f   string
	}{
		{ra, &a, "ecowatt/v1/dev/+/up/#"}, {rb, &b, "ecowatt/v1/dev/+/up/#"},
		{ra, &ea, "ecowatt/v1/events/#"}, {rb, &eb, "ecowatt/v1/events/#"},
	} {
		if err := s.bus.Subscribe(s.f, s.c.handle); err != nil {
			t.Fatal(err)
		}
	}
	pub := dial(t, addr, "publisher")
	ctx := context.Background()
	const n = 200
	for i := range n {
		if err := pub.Publish(ctx, fmt.Sprintf("ecowatt/v1/dev/d%d/up/telemetry", i%20), []byte("x"), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(ctx, "ecowatt/v1/events/d1/config", []byte("{}"), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all uplinks", func() bool { return a.count()+b.count() >= n })
	waitFor(t, "events on both", func() bool { return ea.count() == 1 && eb.count() == 1 })
	time.Sleep(100 * time.Millisecond)
	if a.count()+b.count() != n || a.count() == 0 || b.count() == 0 {
		t.Fatalf("split %d + %d, want %d in total, both > 0", a.count(), b.count(), n)
	}
}

// TestReconnectResubscribes: after the broker restarts, the bus
// reconnects and its subscriptions work again.
func TestReconnectResubscribes(t *testing.T) {
	addr, stop := startBroker(t, "")
	bus := dial(t, addr, "replica")
	var c collector
	if err := bus.Subscribe("ecowatt/v1/ops/+/+", c.handle); err != nil {
		t.Fatal(err)
	}
	pub := dial(t, addr, "pub")
	ctx := context.Background()
	if err := pub.Publish(ctx, "ecowatt/v1/ops/d1/command", []byte("{}"), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first message", func() bool { return c.count() == 1 })

	stop()
	waitFor(t, "disconnect", func() bool { return !bus.Connected() })
	startBroker(t, addr)
	// A first attempt can hang on the restarting broker; the handshake
	// timeout (2 s here) makes it retry.
	waitFor(t, "reconnect", func() bool { return bus.Connected() && pub.Connected() })
	waitFor(t, "message after reconnect", func() bool {
		_ = pub.Publish(ctx, "ecowatt/v1/ops/d1/command", []byte("{}"), 1)
		return c.count() >= 2
	})
}

func TestBadInput(t *testing.T) {
	addr, _ := startBroker(t, "")
	bus := dial(t, addr, "replica")
	ctx := context.Background()
	cases := []struct {
		name string
		err  error
	}{
		{"qos 3", bus.Publish(ctx, "a/b", nil, 3)},
		{"wildcard topic", bus.Publish(ctx, "a/+", nil, 1)},
		{"empty topic", bus.Publish(ctx, "", nil, 1)},
		{"nil handler", bus.Subscribe("a/#", nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := Dial(ctx, Config{URL: "tcp://" + addr}); err == nil {
		t.Error("Dial without a client ID accepted")
	}
	if _, err := Dial(ctx, Config{URL: "tcp://" + addr, ClientID: "x", Group: "a/b"}); err == nil {
		t.Error("Dial with a multi-level group accepted")
	}
	bus.Close()
	bus.Close() // safe twice
	if err := bus.Publish(ctx, "a/b", nil, 1); err == nil {
		t.Error("publish after Close accepted")
	}
}

// TestDialTimeout: no broker, a bounded wait and a clear error.
func TestDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	_, err = Dial(context.Background(), Config{URL: "tcp://" + addr, ClientID: "x", ConnectTimeout: 500 * time.Millisecond, Logger: zerolog.Nop()})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("Dial to nothing: %v after %s", err, time.Since(start))
	}
}

func TestDefaultShared(t *testing.T) {
	cases := map[string]bool{
		"ecowatt/v1/dev/+/up/#": true,
		"ecowatt/v1/ops/+/+":    true,
		"ecowatt/v1/events/#":   false,
		"other/#":               false,
	}
	for f, want := range cases {
		if got := DefaultShared(f); got != want {
			t.Errorf("DefaultShared(%q) = %t", f, got)
		}
	}
}
