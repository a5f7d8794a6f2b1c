package backend

import (
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// TestDownlinkEncryption: downlinks are plain by default and AES-GCM
// encrypted with Config.EncryptDownlink (serve --encrypt-downlinks); either
// way the device opens them with its keys (PROTOCOL.md section 4).
func TestDownlinkEncryption(t *testing.T) {
	body := []byte(`{"command":{"id":"c1","action":"ping","expires_at":"2026-01-01T00:05:00Z"}}`)
	for _, encrypt := range []bool{false, true} {
		h := newHarness(t, func(c *Config) { c.EncryptDownlink = encrypt })
		k := h.device("dev1")
		if err := h.s.Send(h.ctx, "dev1", topics.KindCommand, body); err != nil {
			t.Fatal(err)
		}
		topic := topics.DeviceDown("dev1", topics.KindCommand)
		sent := h.bus.WaitSent(t, topic, 1, 2*time.Second)
		m, err := envelope.Open(k, topic, sent[0].Payload)
		if err != nil {
			t.Fatalf("encrypt=%t: device cannot open its downlink: %v", encrypt, err)
		}
		if m.Encrypted != encrypt || string(m.Body) != string(body) {
			t.Fatalf("encrypt=%t: opened encrypted=%t body %s", encrypt, m.Encrypted, m.Body)
		}
	}
}

// TestDownlinkNonceFloor: a downlink nonce is max(last+1, now in µs), so a
// backend that lost its counter still sends nonces above any it sent before
// (PROTOCOL.md section 8).
func TestDownlinkNonceFloor(t *testing.T) {
	h := newHarness(t)
	k := h.device("dev1")
	topic := topics.DeviceDown("dev1", topics.KindCommand)
	before := time.Now().UnixMicro()
	var last uint64
	for i := range 3 {
		if err := h.s.Send(h.ctx, "dev1", topics.KindCommand, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		m, err := envelope.Open(k, topic, h.bus.WaitSent(t, topic, i+1, 2*time.Second)[i].Payload)
		if err != nil {
			t.Fatal(err)
		}
		if m.Nonce < uint64(before) || m.Nonce <= last {
			t.Fatalf("nonce %d: want > %d and >= the clock floor %d", m.Nonce, last, before)
		}
		last = m.Nonce
	}
	if err := h.rdb.Del(h.ctx, h.s.keys.TxNonce("dev1")).Err(); err != nil { // the counter is lost
		t.Fatal(err)
	}
	if err := h.s.Send(h.ctx, "dev1", topics.KindCommand, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	m, err := envelope.Open(k, topic, h.bus.WaitSent(t, topic, 4, 2*time.Second)[3].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if m.Nonce <= last {
		t.Fatalf("after losing the counter nonce %d <= %d: the device would refuse it", m.Nonce, last)
	}
}
