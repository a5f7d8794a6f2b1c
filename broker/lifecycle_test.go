package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/topics"
)

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Devices succeeded")
	}
	if _, err := New(Config{Devices: newFakeAuth(t), TLSCert: "x.pem"}); err == nil {
		t.Error("New with a cert but no key succeeded")
	}
}

// TestCloseTwiceNoLeak closes a broker with clients connected, twice, and
// checks that every goroutine it started has exited.
func TestCloseTwiceNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	tb := startBroker(t, nil, "d1")
	if !tb.Listening() || tb.Addr() == nil || tb.TLSAddr() != nil {
		t.Fatalf("Listening=%v Addr=%v TLSAddr=%v", tb.Listening(), tb.Addr(), tb.TLSAddr())
	}
	d1 := tb.device(t, "d1")
	if code := subscribeCode(t, d1, topics.DeviceDownFilter("d1"), nil); code != 1 {
		t.Fatalf("subscribe: %#x", code)
	}
	admin := mustConnect(t, tb.clientOpts("admin-cli", "admin", "admin-pw"))
	if err := waitToken(t, admin.Publish(topics.Ops("d1", topics.KindCommand), 1, false, []byte("{}"))); err != nil {
		t.Fatal(err)
	}

	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if tb.Listening() {
		t.Error("Listening after Close")
	}
	if err := tb.Start(); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if err := tb.Publish(context.Background(), "a", nil, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
	if err := tb.Subscribe("a", func(Message) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after Close: %v", err)
	}
	waitDisconnected(t, d1)
	waitDisconnected(t, admin)
	settleGoroutines(t, before)
}

// TestCloseUnstarted closes a broker that never started; the listener it
// was given is closed.
func TestCloseUnstarted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{MQTTListener: ln, Devices: newFakeAuth(t), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if s.Listening() {
		t.Error("Listening before Start")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("listener still open")
	}
}

// TestSlowConsumerDisconnected: a device that stops reading is cut off
// after SlowClientTimeout, and the backend's publishes carry on.
func TestSlowConsumerDisconnected(t *testing.T) {
	tb := startBroker(t, func(c *Config) {
		c.SlowClientTimeout = 300 * time.Millisecond
		c.ClientWritesPending = 4
	}, "d1")
	conn := rawSubscriber(t, tb.Addr().String(), "d1", "d1", tb.auth.token("d1"), topics.DeviceDownFilter("d1"))
	defer conn.Close()

	topic := topics.DeviceDown("d1", topics.KindCommand)
	payload := bytes.Repeat([]byte("x"), 64<<10)
	deadline := time.Now().Add(20 * time.Second)
	for !hasReject(tb, ReasonSlowConsumer) {
		if time.Now().After(deadline) {
			t.Fatal("stuck subscriber never disconnected")
		}
		t0 := time.Now()
		if err := tb.Publish(context.Background(), topic, payload, 1); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Fatalf("one publish waited %v for the stuck device", d)
		}
	}
	tb.expectReject(t, ReasonSlowConsumer, "")
	start := time.Now()
	for range 100 {
		if err := tb.Publish(context.Background(), topic, payload, 1); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("publishing after the disconnect took %v", d)
	}
}

func hasReject(tb *testBroker, reason string) bool {
	for _, r := range tb.rejected() {
		if r.Reason == reason {
			return true
		}
	}
	return false
}

// rawSubscriber connects over plain TCP, subscribes to filter at QoS 0 and
// then never reads again, like a stuck device or viewer.
func rawSubscriber(t *testing.T, addr, clientID, user, password, filter string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	var buf bytes.Buffer
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(password),
		},
	}
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	sub := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: filter}},
	}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4+5) // CONNACK, SUBACK
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatal(err)
	}
	if ack[3] != 0 || ack[8] != 0 {
		t.Fatalf("connack/suback: % x", ack)
	}
	return c
}

func TestSlogAdapter(t *testing.T) {
	var (
		mu  sync.Mutex // guards buf
		buf bytes.Buffer
	)
	w := zerolog.SyncWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}))
	l := newSlogLogger(zerolog.New(w).Level(zerolog.InfoLevel))
	l.Debug("hidden")
	l.With("client", "d1").WithGroup("pk").Warn("dropped", "qos", 1, "err", errors.New("boom"), "ok", true)
	mu.Lock()
	defer mu.Unlock()
	got := buf.String()
	for _, want := range []string{`"level":"warn"`, `"client":"d1"`, `"pk.qos":1`, `"pk.err":"boom"`, `"pk.ok":true`, `"message":"dropped"`} {
		if !bytes.Contains([]byte(got), []byte(want)) {
			t.Errorf("log %s lacks %s", got, want)
		}
	}
	if bytes.Contains([]byte(got), []byte("hidden")) {
		t.Error("debug line written at info level")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
