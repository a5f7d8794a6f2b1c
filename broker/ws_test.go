package broker

import (
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
)

// TestWebSocket connects a device over MQTT-over-WebSocket on a ":0" port
// that the broker reports, and checks its publish arrives and the ACL holds.
func TestWebSocket(t *testing.T) {
	tb := startBroker(t, func(c *Config) { c.WSAddr = "127.0.0.1:0" }, "d1")
	addr := tb.WSAddr()
	if addr == nil || addr.String() == "127.0.0.1:0" {
		t.Fatalf("WSAddr = %v, want the bound port", addr)
	}
	topic := topics.DeviceUp("d1", topics.KindTelemetry)
	in := tb.inbox(t, topic)
	opts := tb.clientOpts("d1", "d1", tb.auth.token("d1"))
	opts.Servers = nil
	opts.AddBroker("ws://" + addr.String())
	c := mustConnect(t, opts)
	if !c.Publish(topic, 1, false, []byte("over ws")).WaitTimeout(5 * time.Second) {
		t.Fatal("publish over ws timed out")
	}
	if m := in.wait(t, topic); string(m.Payload) != "over ws" {
		t.Fatalf("payload %q", m.Payload)
	}
	c.Publish(topics.DeviceUp("d2", topics.KindTelemetry), 1, false, []byte("x"))
	tb.expectReject(t, ReasonACLPublish, "d2")
}

func TestWebSocketAddrNilWithout(t *testing.T) {
	if a := startBroker(t, nil).WSAddr(); a != nil {
		t.Fatalf("WSAddr = %v without a WebSocket listener", a)
	}
}
