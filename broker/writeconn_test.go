package broker

import (
	"context"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ecowatt/ecowatt/topics"
)

// TestStuckDeviceNeverBlocksPublisher: QoS 1 publishes to a device that
// stopped reading return at once (mochi's write loop no longer blocks on the
// socket under the client's lock, which NextPacketID needs), and the device
// is cut off once its socket has accepted nothing for SlowClientTimeout,
// counted once in ecowatt_slow_clients_disconnected_total.
func TestStuckDeviceNeverBlocksPublisher(t *testing.T) {
	tb := startBroker(t, func(c *Config) {
		c.SlowClientTimeout = time.Second
		c.ClientWriteBacklog = 4 << 20 // only the socket stall can cut it off
	}, "d1")
	rc, code := rawConnect(t, tb.Addr().String(), 4, "d1", "d1", tb.auth.token("d1"))
	if code != 0 {
		t.Fatalf("connack %#x", code)
	}
	_ = rc.conn.(*net.TCPConn).SetReadBuffer(1024)
	if codes := rc.subscribe(1, topics.DeviceDownFilter("d1")); len(codes) != 1 || codes[0] != 1 {
		t.Fatalf("suback %v", codes)
	}
	cl := mustClient(t, tb, "d1")
	// From here on d1 never reads.
	topic := topics.DeviceDown("d1", topics.KindFOTAChunk)
	payload := make([]byte, 8<<10)
	start := time.Now()
	var slowest time.Duration
	n := 0
	for !hasReject(tb, ReasonSlowConsumer) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the stuck device was never disconnected")
		}
		t0 := time.Now()
		if err := tb.Publish(context.Background(), topic, payload, 1); err != nil {
			t.Fatal(err)
		}
		slowest = max(slowest, time.Since(t0))
		n++
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("%d publishes; slowest %v; cut off after %v", n, slowest, time.Since(start))
	if slowest > 500*time.Millisecond { // half the slow timeout, which bounded it before
		t.Errorf("a publish to the stuck device waited %v; want < 500ms", slowest)
	}
	tb.expectReject(t, ReasonSlowConsumer, "socket accepted nothing for 1s")
	if got := testutil.ToFloat64(tb.m.slowClients.WithLabelValues("device")); got != 1 {
		t.Errorf("slow device disconnects = %v, want 1", got)
	}
	// The broker stopped the client (its socket is closed; d1 itself would
	// take minutes to read what the kernel still holds through its tiny
	// window).
	if !cl.Closed() {
		t.Error("the stuck device's client is still open")
	}
	if wc := writeConnOf(cl.Net.Conn); wc == nil || !wc.rawClosed() {
		t.Error("the stuck device's socket is still open")
	}
}

func mustClient(t *testing.T, tb *testBroker, id string) *mqtt.Client {
	t.Helper()
	cl, ok := tb.mochi.Clients.Get(id)
	if !ok {
		t.Fatalf("no client %s", id)
	}
	return cl
}
