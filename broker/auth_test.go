package broker

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestRefused checks each bad input that the broker handles: it is refused,
// reported through OnReject and counted in the metric, and a refused publish
// reaches nobody.
func TestRefused(t *testing.T) {
	tb := startBroker(t, func(c *Config) { c.MaxPacketSize = 4096 }, "d1", "d2")
	all := tb.inbox(t, "#") // the backend sees every delivered message

	refusedConnect := func(t *testing.T, opts *paho.ClientOptions, reason, detail string) {
		t.Helper()
		if _, err := connect(t, opts); err == nil {
			t.Fatal("connect succeeded")
		}
		tb.expectReject(t, reason, detail)
	}
	refusedPublish := func(t *testing.T, c paho.Client, topic string) {
		t.Helper()
		payload := []byte("refused " + topic)
		if err := waitToken(t, c.Publish(topic, 0, false, payload)); err != nil {
			t.Fatal(err)
		}
		tb.expectReject(t, ReasonACLPublish, topic)
		for _, m := range all.all() {
			if bytes.Equal(m.Payload, payload) {
				t.Fatalf("refused publish delivered on %s", m.Topic)
			}
		}
	}

	t.Run("unknown device", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("ghost", "ghost", "v1.1.abc"), ReasonUnknownDevice, "")
	})
	t.Run("no username", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("anon", "", ""), ReasonUnknownDevice, "no username")
	})
	t.Run("wrong password", func(t *testing.T) {
		other := envelope.Password(tb.auth.devices["d2"], "d1", time.Now()) // d2's key
		refusedConnect(t, tb.clientOpts("d1", "d1", other), ReasonBadPassword, "")
	})
	t.Run("malformed password", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("d1", "d1", "hunter2"), ReasonBadPassword, "malformed")
	})
	t.Run("expired password", func(t *testing.T) {
		old := envelope.Password(tb.auth.devices["d1"], "d1", time.Now().Add(-10*time.Minute))
		refusedConnect(t, tb.clientOpts("d1", "d1", old), ReasonExpiredPassword, "")
	})
	t.Run("password from the future", func(t *testing.T) {
		future := envelope.Password(tb.auth.devices["d1"], "d1", time.Now().Add(10*time.Minute))
		refusedConnect(t, tb.clientOpts("d1", "d1", future), ReasonExpiredPassword, "")
	})
	t.Run("device with another client id", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("d2", "d1", tb.auth.token("d1")), ReasonBadClientID, `"d2"`)
	})
	t.Run("operator wrong password", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("admin-x", "admin", "nope"), ReasonBadPassword, "operator")
	})
	for _, tc := range []struct{ name, user, pass, clientID, detail string }{
		{"operator taking a device's client id", "admin", "admin-pw", "d1", `"d1"`},
		{"operator taking the inline client id", "admin", "admin-pw", "inline", "reserved for the broker"},
		{"operator taking a backend replica's client id", "admin", "admin-pw", "ecowatt-r1", "reserved for the backend"},
		{"operator taking another operator's client id", "viewer", "viewer-pw", "admin-cli", `"admin-cli"`},
		{"operator with a client id that merely starts with its name", "admin", "admin-pw", "administrator", `"administrator"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refusedConnect(t, tb.clientOpts(tc.clientID, tc.user, tc.pass), ReasonBadClientID, tc.detail)
		})
	}
	t.Run("will to a forbidden topic", func(t *testing.T) {
		opts := tb.clientOpts("d1", "d1", tb.auth.token("d1")).
			SetWill(topics.DeviceUp("d2", topics.KindBirth), "offline", 1, false)
		refusedConnect(t, opts, ReasonACLWill, "d2")
	})
	t.Run("will to own telemetry", func(t *testing.T) {
		opts := tb.clientOpts("d1", "d1", tb.auth.token("d1")).
			SetWill(topics.DeviceUp("d1", topics.KindTelemetry), "offline", 1, false)
		refusedConnect(t, opts, ReasonACLWill, "telemetry")
	})
	t.Run("retained will", func(t *testing.T) {
		opts := tb.clientOpts("d1", "d1", tb.auth.token("d1")).
			SetWill(topics.DeviceUp("d1", topics.KindBirth), "offline", 1, true)
		refusedConnect(t, opts, ReasonACLWill, "retain=true")
	})
	t.Run("oversized connect", func(t *testing.T) {
		refusedConnect(t, tb.clientOpts("d1", "d1", strings.Repeat("x", 8000)), ReasonPacketTooLarge, "CONNECT")
	})

	d1 := tb.device(t, "d1")
	for name, topic := range map[string]string{
		"publish to another device":   topics.DeviceUp("d2", topics.KindTelemetry),
		"publish to own down":         topics.DeviceDown("d1", topics.KindCommand),
		"publish to ops":              topics.Ops("d1", topics.KindCommand),
		"publish to events":           topics.Event("d1", topics.EventSecurity),
		"publish to $SYS":             "$SYS/broker/version",
		"publish to an unknown kind":  topics.DeviceUpPrefix("d1") + "nonsense",
		"publish outside the product": "other/app/topic",
	} {
		t.Run(name, func(t *testing.T) { refusedPublish(t, d1, topic) })
	}
	for name, filter := range map[string]string{
		"subscribe to #":                  "#",
		"subscribe to +/...":              "+/v1/dev/d1/down/#",
		"subscribe to $SYS/#":             "$SYS/#",
		"subscribe to another device":     topics.DeviceDownFilter("d2"),
		"subscribe to every device":       topics.Root + "/dev/+/down/#",
		"subscribe to own up":             topics.DeviceUpPrefix("d1") + "#",
		"subscribe to events":             topics.FilterAllEvents,
		"subscribe to a shared own down":  "$share/g/" + topics.DeviceDownFilter("d1"),
		"subscribe to deep own down":      topics.DeviceDownPrefix("d1") + "config/x",
		"subscribe to the whole dev tree": topics.Root + "/#",
	} {
		t.Run(name, func(t *testing.T) {
			if code := subscribeCode(t, d1, filter, nil); code != 0x80 {
				t.Fatalf("SUBACK code %#x, want 0x80", code)
			}
			tb.expectReject(t, ReasonACLSubscribe, filter)
		})
	}

	t.Run("viewer publishing to ops", func(t *testing.T) {
		v := mustConnect(t, tb.clientOpts("viewer-1", "viewer", "viewer-pw"))
		refusedPublish(t, v, topics.Ops("d1", topics.KindCommand))
	})
	t.Run("admin publishing to a device's down", func(t *testing.T) {
		a := mustConnect(t, tb.clientOpts("admin-1", "admin", "admin-pw"))
		refusedPublish(t, a, topics.DeviceDown("d1", topics.KindCommand))
	})
	t.Run("viewer subscribing to device traffic", func(t *testing.T) {
		v := mustConnect(t, tb.clientOpts("viewer-2", "viewer", "viewer-pw"))
		if code := subscribeCode(t, v, topics.FilterAllUp, nil); code != 0x80 {
			t.Fatalf("SUBACK code %#x, want 0x80", code)
		}
		tb.expectReject(t, ReasonACLSubscribe, topics.FilterAllUp)
	})

	t.Run("retained publish", func(t *testing.T) {
		d2 := tb.device(t, "d2")
		topic := topics.DeviceUp("d2", topics.KindTelemetry)
		d2.Publish(topic, 1, true, []byte("retained")).WaitTimeout(time.Second)
		tb.expectReject(t, ReasonACLRetain, topic)
		waitDisconnected(t, d2)
		for _, m := range all.all() {
			if string(m.Payload) == "retained" {
				t.Fatal("retained publish delivered")
			}
		}
	})

	t.Run("oversized packet", func(t *testing.T) {
		d2 := tb.device(t, "d2")
		topic := topics.DeviceUp("d2", topics.KindTelemetry)
		if err := waitToken(t, d2.Publish(topic, 0, false, bytes.Repeat([]byte("x"), 8000))); err != nil {
			t.Fatal(err)
		}
		tb.expectReject(t, ReasonPacketTooLarge, "")
		waitDisconnected(t, d2)
		for _, m := range all.all() {
			if len(m.Payload) == 8000 {
				t.Fatal("oversized publish delivered")
			}
		}
	})
}

func waitDisconnected(t *testing.T, c paho.Client) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.IsConnectionOpen() {
		if time.Now().After(deadline) {
			t.Fatal("client still connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAllowed checks the positive paths: devices and operators use their own
// topics, and the backend reaches them in-process.
func TestAllowed(t *testing.T) {
	tb := startBroker(t, nil, "d1", "d2")
	ctx := context.Background()

	t.Run("device publishes its up topics", func(t *testing.T) {
		in := tb.inbox(t, topics.FilterAllUp)
		d1 := tb.device(t, "d1")
		for _, kind := range []string{topics.KindBirth, topics.KindTelemetry, topics.KindCommandResult} {
			topic := topics.DeviceUp("d1", kind)
			if err := waitToken(t, d1.Publish(topic, 1, false, []byte(kind))); err != nil {
				t.Fatal(err)
			}
			if m := in.wait(t, topic); m.Username != "d1" || string(m.Payload) != kind {
				t.Fatalf("got %+v", m)
			}
		}
	})

	t.Run("device receives its down topics", func(t *testing.T) {
		d2 := tb.device(t, "d2")
		got := make(chan paho.Message, 4)
		for _, f := range []string{topics.DeviceDownFilter("d2"), topics.DeviceDownPrefix("d2") + "+", topics.DeviceDown("d2", topics.KindConfig)} {
			if code := subscribeCode(t, d2, f, func(_ paho.Client, m paho.Message) { got <- m }); code != 1 {
				t.Fatalf("subscribe %s: code %#x", f, code)
			}
		}
		topic := topics.DeviceDown("d2", topics.KindCommand)
		if err := tb.Publish(ctx, topic, []byte("cmd"), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m.Topic() != topic || string(m.Payload()) != "cmd" {
				t.Fatalf("got %s %q", m.Topic(), m.Payload())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no message")
		}
		if err := tb.Publish(ctx, topics.DeviceDown("d1", topics.KindCommand), []byte("not for d2"), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if m.Topic() != topics.DeviceDown("d2", topics.KindCommand) {
				t.Fatalf("d2 received %s", m.Topic())
			}
		case <-time.After(200 * time.Millisecond):
		}
	})

	t.Run("device will on its birth topic", func(t *testing.T) {
		in := tb.inbox(t, topics.DeviceUp("d1", topics.KindBirth))
		opts := tb.clientOpts("d1", "d1", tb.auth.token("d1")).
			SetWill(topics.DeviceUp("d1", topics.KindBirth), "offline", 1, false)
		c := paho.NewClient(opts)
		if err := waitToken(t, c.Connect()); err != nil {
			t.Fatal(err)
		}
		// Drop the connection without DISCONNECT so the will fires.
		cl, ok := tb.mochi.Clients.Get("d1")
		if !ok {
			t.Fatal("d1 not connected")
		}
		_ = cl.Net.Conn.Close()
		if m := in.wait(t, topics.DeviceUp("d1", topics.KindBirth)); string(m.Payload) != "offline" || m.Username != "d1" {
			t.Fatalf("will: %+v", m)
		}
		c.Disconnect(0)
	})

	t.Run("admin publishes ops and reads events", func(t *testing.T) {
		in := tb.inbox(t, topics.FilterAllOps)
		a := mustConnect(t, tb.clientOpts("admin-cli", "admin", "admin-pw"))
		got := make(chan paho.Message, 1)
		if code := subscribeCode(t, a, topics.FilterAllEvents, func(_ paho.Client, m paho.Message) { got <- m }); code != 1 {
			t.Fatalf("subscribe events: %#x", code)
		}
		topic := topics.Ops("d1", topics.KindConfig)
		if err := waitToken(t, a.Publish(topic, 1, false, []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
		if m := in.wait(t, topic); m.Username != "admin" {
			t.Fatalf("ops message username %q", m.Username)
		}
		if err := tb.Publish(ctx, topics.Event("d1", topics.EventConfig), []byte("ev"), 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-got:
			if string(m.Payload()) != "ev" {
				t.Fatalf("got %q", m.Payload())
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
	})

	t.Run("operator uses its name as client id", func(t *testing.T) {
		mustConnect(t, tb.clientOpts("admin", "admin", "admin-pw"))
	})

	t.Run("viewer reads events", func(t *testing.T) {
		v := mustConnect(t, tb.clientOpts("", "viewer", "viewer-pw"))
		for _, f := range []string{topics.FilterAllEvents, topics.Root + "/events/+/security", "$share/dash/" + topics.FilterAllEvents} {
			if code := subscribeCode(t, v, f, nil); code != 1 {
				t.Fatalf("subscribe %s: %#x", f, code)
			}
		}
	})

	t.Run("in-process publish validates", func(t *testing.T) {
		if err := tb.Publish(ctx, "a/+/b", nil, 0); err == nil {
			t.Error("wildcard topic accepted")
		}
		if err := tb.Publish(ctx, "a", nil, 3); err == nil {
			t.Error("qos 3 accepted")
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := tb.Publish(cctx, "a", nil, 0); err == nil {
			t.Error("cancelled context accepted")
		}
	})
}
