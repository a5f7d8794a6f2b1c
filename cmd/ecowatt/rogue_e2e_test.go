package main

import (
	"encoding/json"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// rogueClient is a raw MQTT client holding one device's valid key: it
// publishes what devicesim never would.
type rogueClient struct {
	id   string
	keys envelope.Keys
	c    mqtt.Client
	down chan mqtt.Message
}

func newRogueClient(t *testing.T, s *testServer, id string, psk []byte) *rogueClient {
	t.Helper()
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	r := &rogueClient{id: id, keys: k, down: make(chan mqtt.Message, 64)}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + s.MQTT).SetClientID(id).
		SetUsername(id).SetPassword(envelope.Password(&k, id, time.Now())).SetAutoReconnect(false)
	r.c = mqtt.NewClient(opts)
	if tok := r.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { r.c.Disconnect(100) })
	if tok := r.c.Subscribe(topics.DeviceDown(id, "#"), 1, func(_ mqtt.Client, m mqtt.Message) { r.down <- m }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return r
}

func (r *rogueClient) publish(t *testing.T, kind string, nonce uint64, body any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	topic := topics.DeviceUp(r.id, kind)
	env, err := envelope.Seal(&r.keys, topic, nonce, time.Now(), raw, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok := r.c.Publish(topic, 1, false, env); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", kind, tok.Error())
	}
}

// TestRogueDeviceE2E: a client with one valid device key, against
// `ecowatt serve`, cannot pull firmware it was not offered, end an update
// with a fake result, or poison its nonce window.
func TestRogueDeviceE2E(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "rogue", 1)
	buildAndUpload(t, s, "1.0.9", "40000", false)
	r := newRogueClient(t, s, "rogue-0001", keys["rogue-0001"])
	rejected := func(reason string) string {
		return metric(t, s, `ecowatt_security_rejections_total{reason="`+reason+`"}`)
	}

	r.publish(t, topics.KindBirth, 1, topics.Birth{Online: true, FirmwareVersion: "1.0.0", Slot: "a"})
	r.publish(t, topics.KindFOTARequest, 2, wire.RequestBody{FotaRequest: &wire.Request{Version: "1.0.9", Chunks: []int{0, 1, 2}}}) // 40000 bytes: 3 chunks of 16 KiB
	r.publish(t, topics.KindFOTAStatus, 3, wire.StatusBody{FotaStatus: &wire.Status{Version: "1.0.9", State: wire.StateSucceeded, ChunkReceived: 3, TotalChunks: 3}})
	eventually(t, 10*time.Second, "two invalid_body rejections", func() (bool, string) {
		v := rejected("invalid_body")
		return v == "2", v
	})
	select {
	case m := <-r.down:
		t.Fatalf("the rogue device was sent %s", m.Topic())
	case <-time.After(500 * time.Millisecond):
	}
	if d := getDevice(t, s, "rogue-0001"); d.FOTA != nil {
		t.Fatalf("a fake status was stored: %+v", d.FOTA)
	}

	r.publish(t, topics.KindTelemetry, envelope.MaxNonce, map[string]any{})
	eventually(t, 10*time.Second, "a nonce_jump rejection", func() (bool, string) {
		v := rejected("nonce_jump")
		return v == "1", v
	})
	r.publish(t, topics.KindBirth, 4, topics.Birth{Online: true, FirmwareVersion: "1.0.0", Slot: "a", BootCount: 2})
	eventually(t, 10*time.Second, "the next genuine nonce accepted", func() (bool, string) {
		var d struct {
			BootCount int64 `json:"boot_count"`
		}
		s.api(t, "GET", "/api/v1/devices/rogue-0001", nil, &d)
		return d.BootCount == 2, rejected("stale_nonce")
	})
}
