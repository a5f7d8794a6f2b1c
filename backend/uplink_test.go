package backend

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

const birthBody = `{"online":true,"firmware_version":"1.0.3","config_version":2,"boot_count":7,"uptime_s":12,"slot":"a"}`

func TestUplinkRejections(t *testing.T) {
	h := newHarness(t)
	kA := h.device("devA")
	kB := h.device("devB")
	birthA := topics.DeviceUp("devA", topics.KindBirth)
	telA := topics.DeviceUp("devA", topics.KindTelemetry)
	h.birth(kA, "devA", 100, birthBody) // window high = 100

	for _, tc := range []struct {
		name   string
		dev    string // device the event is about
		msg    Message
		reason string
	}{
		{"unknown device", "ghost", Message{
			Topic:    topics.DeviceUp("ghost", topics.KindBirth),
			Payload:  h.seal(kA, topics.DeviceUp("ghost", topics.KindBirth), 1, birthBody),
			Username: "ghost"}, ReasonUnknownDevice},
		{"malformed envelope JSON", "devA", Message{Topic: telA, Payload: []byte(`{"nonce":101,"payload":`), Username: "devA"}, ReasonMalformed},
		{"unknown envelope field", "devA", Message{Topic: telA, Payload: []byte(`{"nonce":101,"timestamp":1,"encrypted":false,"payload":"{}","mac":"00","x":1}`), Username: "devA"}, ReasonMalformed},
		{"nonce zero", "devA", Message{Topic: telA, Payload: []byte(`{"nonce":0,"timestamp":1,"encrypted":false,"payload":"{}","mac":"` + strings.Repeat("0", 64) + `"}`), Username: "devA"}, ReasonMalformed},
		{"wrong MAC", "devA", Message{Topic: telA, Payload: h.seal(kB, telA, 101, `{}`), Username: "devA"}, ReasonBadMAC},
		{"replayed nonce", "devA", Message{Topic: birthA, Payload: h.seal(kA, birthA, 100, birthBody), Username: "devA"}, ReasonReplay},
		{"nonce below the window", "devA", Message{Topic: telA, Payload: h.seal(kA, telA, 36, `{}`), Username: "devA"}, ReasonStale},
		{"valid envelope moved to another device's topic", "devB", Message{
			Topic: topics.DeviceUp("devB", topics.KindTelemetry), Payload: h.seal(kA, telA, 150, `{}`), Username: "devB"}, ReasonBadMAC},
		{"valid envelope moved to another kind", "devA", Message{
			Topic: birthA, Payload: h.seal(kA, telA, 151, birthBody), Username: "devA"}, ReasonBadMAC},
		{"publisher is not the topic's device", "devB", Message{
			Topic: topics.DeviceUp("devB", topics.KindTelemetry), Payload: h.seal(kB, topics.DeviceUp("devB", topics.KindTelemetry), 5, `{}`), Username: "devA"}, ReasonTopicMismatch},
		{"oversized", "devA", Message{Topic: telA, Payload: make([]byte, envelope.MaxSize+1), Username: "devA"}, ReasonOversized},
		{"unknown uplink kind", "devA", Message{Topic: "ecowatt/v1/dev/devA/up/bogus", Payload: h.seal(kA, "ecowatt/v1/dev/devA/up/bogus", 160, `{}`), Username: "devA"}, ReasonBadTopic},
		{"will with extra fields", "devA", Message{Topic: birthA, Payload: []byte(`{"online":false,"firmware_version":"9"}`), Username: "devA"}, ReasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			before := h.snapshot()
			n := h.rejections(tc.reason)
			ev := h.publish(tc.dev, topics.EventSecurity, tc.msg)
			var data struct{ Reason, Detail string }
			if err := json.Unmarshal(ev.Data, &data); err != nil {
				t.Fatal(err)
			}
			if data.Reason != tc.reason {
				t.Fatalf("security event reason = %q (%s), want %q", data.Reason, data.Detail, tc.reason)
			}
			if got := h.rejections(tc.reason); got != n+1 {
				t.Errorf("rejections{reason=%s} = %v, want %v", tc.reason, got, n+1)
			}
			h.assertUnchanged(before)
			if tc.dev != "ghost" {
				return
			}
			for _, k := range h.rdbKeys() {
				if strings.Contains(k, "ghost") {
					t.Errorf("a message from an unknown device created %s", k)
				}
			}
			// Emit fans out in-process before it publishes on MQTT.
			h.bus.WaitSent(t, topics.Event("ghost", topics.EventSecurity), 1, 2*time.Second)
		})
	}

	// The window still accepts a fresh nonce inside it afterwards.
	h.birth(kA, "devA", 37, birthBody)
	n, err := h.rdb.XLen(h.ctx, h.s.keys.Security()).Result()
	if err != nil || n == 0 {
		t.Fatalf("security stream length = %d, %v; want entries", n, err)
	}
}

func TestInvalidBodyIsCounted(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	topic := topics.DeviceUp("d1", topics.KindBirth)
	ev := h.publish("d1", topics.EventSecurity, Message{Topic: topic, Payload: h.seal(k, topic, 1, `not json`)})
	if !strings.Contains(string(ev.Data), ReasonInvalidBody) {
		t.Fatalf("event %s, want reason %s", ev.Data, ReasonInvalidBody)
	}
	d, err := h.s.Device(h.ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Online {
		t.Fatal("an unreadable birth marked the device online")
	}
}

func TestPresence(t *testing.T) {
	h := newHarness(t)
	k := h.device("dev1")
	h.device("dev2")

	d, err := h.s.Device(h.ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Online || d.LastSeen != nil || d.CreatedAt.IsZero() {
		t.Fatalf("new device = %+v, want offline, never seen, created", d)
	}

	ev := h.birth(k, "dev1", 1, birthBody)
	if !strings.Contains(string(ev.Data), `"online":true`) {
		t.Fatalf("presence event %s", ev.Data)
	}
	d, err = h.s.Device(h.ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	if !d.Online || d.LastSeen == nil || d.FirmwareVersion != "1.0.3" || d.ConfigVersion != 2 ||
		d.BootCount != 7 || d.UptimeSeconds < 12 || d.Slot != "a" {
		t.Fatalf("after birth: %+v", d)
	}
	if got := testGauge(t, h, "ecowatt_devices_online"); got != 1 {
		t.Fatalf("ecowatt_devices_online = %v, want 1", got)
	}
	// Emit fans out in-process before it publishes on MQTT: wait for it.
	h.bus.WaitSent(t, topics.Event("dev1", topics.EventPresence), 1, 2*time.Second)
	if pub := h.bus.Sent(topics.Event("dev1", topics.EventPresence)); len(pub) != 1 {
		t.Fatalf("%d presence events published on MQTT, want 1", len(pub))
	}

	t.Run("will marks offline", func(t *testing.T) {
		h := h.with(t)
		ev := h.publish("dev1", topics.EventPresence, Message{Topic: topics.DeviceUp("dev1", topics.KindBirth), Payload: []byte(`{"online":false}`), Username: "dev1"})
		if !strings.Contains(string(ev.Data), `"online":false`) {
			t.Fatalf("presence event %s", ev.Data)
		}
		d, _ := h.s.Device(h.ctx, "dev1")
		if d.Online || d.LastSeen == nil || d.FirmwareVersion != "1.0.3" {
			t.Fatalf("after will: %+v", d)
		}
		if got := testGauge(t, h, "ecowatt_devices_online"); got != 0 {
			t.Fatalf("ecowatt_devices_online = %v, want 0", got)
		}
	})
	t.Run("will of an unknown device changes nothing", func(t *testing.T) {
		h := h.with(t)
		h.bus.Deliver(Message{Topic: topics.DeviceUp("ghost", topics.KindBirth), Payload: []byte(`{"online":false}`)})
		// A later message on the same shard proves the will was processed.
		h.birth(k, "dev1", 2, birthBody)
		after := h.snapshot()
		for key := range after {
			if strings.Contains(key, "ghost") {
				t.Fatalf("will of an unknown device created %s", key)
			}
		}
	})
	t.Run("devices list", func(t *testing.T) {
		ds, err := h.s.Devices(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != 2 || ds[0].ID != "dev1" || ds[1].ID != "dev2" || !ds[0].Online || ds[1].Online {
			t.Fatalf("Devices = %+v", ds)
		}
	})
	t.Run("audit stream", func(t *testing.T) {
		evs, err := h.s.Events(h.ctx, "dev1", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 3 || evs[0].Kind != topics.EventPresence || evs[0].ID == "" {
			t.Fatalf("Events = %+v, want 3 presence events", evs)
		}
	})
}

func TestHandlersAndOps(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	got := make(chan string, 1)
	h.s.Handle(topics.KindTelemetry, func(ctx context.Context, dev string, m envelope.Message) error {
		got <- dev + " " + string(m.Body)
		return nil
	})
	topic := topics.DeviceUp("d1", topics.KindTelemetry)
	h.bus.Deliver(Message{Topic: topic, Payload: h.seal(k, topic, 1, `{"v":1}`), Username: "d1"})
	select {
	case s := <-got:
		if s != `d1 {"v":1}` {
			t.Fatalf("handler got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("telemetry handler not called")
	}

	t.Run("ops without handler", func(t *testing.T) {
		h := h.with(t)
		ev := h.publish("d1", topics.EventConfig, Message{Topic: topics.Ops("d1", topics.KindConfig), Payload: []byte(`{}`), Username: "alice"})
		if !strings.Contains(string(ev.Data), `"status":"rejected"`) || !strings.Contains(string(ev.Data), "alice") {
			t.Fatalf("event %s", ev.Data)
		}
	})
	t.Run("ops handler error", func(t *testing.T) {
		h := h.with(t)
		if err := h.s.EnsureOperator(h.ctx, "alice", "pw", topics.RoleAdmin); err != nil {
			t.Fatal(err)
		}
		h.s.HandleOps(topics.KindCommand, func(ctx context.Context, dev, op string, body []byte) error {
			return Errorf(CodeInvalid, "action", "unknown action")
		})
		ev := h.publish("d1", topics.EventCommand, Message{Topic: topics.Ops("d1", topics.KindCommand), Payload: []byte(`{}`), Username: "alice"})
		if !strings.Contains(string(ev.Data), `"field":"action"`) {
			t.Fatalf("event %s", ev.Data)
		}
	})
}

func TestSend(t *testing.T) {
	h := newHarness(t)
	k := h.device("d1")
	var w envelope.Window
	for i := range 3 {
		if err := h.s.Send(h.ctx, "d1", topics.KindConfig, map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	msgs := h.bus.Sent(topics.DeviceDown("d1", topics.KindConfig))
	if len(msgs) != 3 {
		t.Fatalf("%d messages sent, want 3", len(msgs))
	}
	for i, m := range msgs {
		em, err := envelope.Open(k, m.Topic, m.Payload)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if err := w.Accept(em.Nonce); err != nil {
			t.Fatalf("message %d: device window: %v", i, err)
		}
		if want := `{"i":` + string(rune('0'+i)) + `}`; string(em.Body) != want {
			t.Fatalf("body %s, want %s", em.Body, want)
		}
	}
	for _, tc := range []struct {
		name, dev, kind, code string
	}{
		{"unknown device", "ghost", topics.KindConfig, CodeNotFound},
		{"invalid device", "a/b", topics.KindConfig, CodeInvalid},
		{"uplink kind", "d1", topics.KindBirth, CodeInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			before := h.snapshot()
			err := h.s.Send(h.ctx, tc.dev, tc.kind, map[string]int{})
			if ErrorCode(err) != tc.code {
				t.Fatalf("Send = %v, want code %s", err, tc.code)
			}
			h.assertUnchanged(before)
		})
	}
	if !errors.Is(h.s.Send(h.ctx, "ghost", topics.KindConfig, nil), ErrNotFound) {
		t.Fatal("Send to unknown device does not match ErrNotFound")
	}
}
