package devicesim

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

func sealDown(t *testing.T, k *envelope.Keys, id, kind string, nonce uint64, body string, encrypt bool) []byte {
	t.Helper()
	b, err := envelope.Seal(k, topics.DeviceDown(id, kind), nonce, time.Now(), []byte(body), encrypt, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyAcks returns the rotation ids of the key_acks of id that open under k.
func (b *testBroker) keyAcks(id string, k *envelope.Keys) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.msgs {
		if m.topic != topics.DeviceUp(id, topics.KindKeyAck) {
			continue
		}
		if msg, err := envelope.Open(k, m.topic, m.payload); err == nil {
			if a, err := topics.ParseKeyAck(msg.Body); err == nil {
				out = append(out, a.ID)
			}
		}
	}
	return out
}

// TestRotateKeyOnDevice: a plain rotate_key is refused; an encrypted one
// is written beside the old key and answered under the new key; the
// key_confirm under the new key drops the old one; old downlinks replayed
// afterwards are refused; after a reboot the device runs on the new key.
func TestRotateKeyOnDevice(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	const id = "rk-dev"
	oldPSK, newPSK := testKey(1), testKey(2)
	oldK, newK := mustKeys(t, oldPSK), mustKeys(t, newPSK)
	dir := t.TempDir()
	d := newTestDevice(t, b, id, oldPSK, dir, nil)
	r := start(t, d)
	eventually(t, "birth", func() bool { return len(b.signedBirths(id, oldK)) == 1 })

	n := uint64(time.Now().UnixMicro())
	body := `{"rotate_key":{"id":"r1","key":"` + hex.EncodeToString(newPSK) + `"}}`
	b.publish(topics.DeviceDown(id, topics.KindRotateKey), sealDown(t, oldK, id, topics.KindRotateKey, n, body, false))
	eventually(t, "plain rotate_key refused", func() bool { return d.Stats().HandlerErrors == 1 })
	if _, next := d.Keys(); next != nil {
		t.Fatal("a plain rotate_key staged a key")
	}

	rotate := sealDown(t, oldK, id, topics.KindRotateKey, n+1, body, true)
	b.publish(topics.DeviceDown(id, topics.KindRotateKey), rotate)
	eventually(t, "key_ack under the new key", func() bool { return len(b.keyAcks(id, newK)) == 1 })
	if acks := b.keyAcks(id, oldK); len(acks) != 0 {
		t.Errorf("key_ack under the old key: %v", acks)
	}
	if cur, next := d.Keys(); !bytes.Equal(cur, oldPSK) || !bytes.Equal(next, newPSK) {
		t.Fatalf("keys after rotate_key: cur %x next %x, want both", cur, next)
	}

	confirm := sealDown(t, newK, id, topics.KindKeyConfirm, n+2, `{"key_confirm":{"id":"r1"}}`, false)
	b.publish(topics.DeviceDown(id, topics.KindKeyConfirm), confirm)
	eventually(t, "old key dropped", func() bool {
		cur, next := d.Keys()
		return bytes.Equal(cur, newPSK) && next == nil
	})

	rejected := d.Stats().Rejected
	old := sealDown(t, oldK, id, topics.KindCommand, n+3, `{}`, false) // the old key, a fresh nonce
	b.publish(topics.DeviceDown(id, topics.KindRotateKey), rotate)     // replayed: the old key
	b.publish(topics.DeviceDown(id, topics.KindKeyConfirm), confirm)   // replayed: the new key's window
	b.publish(topics.DeviceDown(id, topics.KindCommand), old)
	eventually(t, "replays refused", func() bool { return d.Stats().Rejected == rejected+3 })

	r.stop(t)
	d = newTestDevice(t, b, id, oldPSK, dir, nil) // same factory key, same flash
	start(t, d)
	eventually(t, "birth under the new key after a reboot", func() bool { return len(b.signedBirths(id, newK)) == 1 })
	if cur, next := d.Keys(); !bytes.Equal(cur, newPSK) || next != nil {
		t.Errorf("keys after reboot: cur %x next %x", cur, next)
	}
}

// TestRotateKeyFallback: holding two keys, the device connects with the
// new key; refused, it tries the old; accepted with the old, it drops the
// new key (the backend's rotation expired) and seals with the old again.
func TestRotateKeyFallback(t *testing.T) {
	dir := t.TempDir()
	fl, err := flash.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	oldPSK, newPSK := testKey(9), testKey(3)
	if err := fl.Save(RecordKeys, keysRecord{Current: hex.EncodeToString(oldPSK), Next: hex.EncodeToString(newPSK), Rotation: "r1"}); err != nil {
		t.Fatal(err)
	}
	d := bootedDevice(t, dir)
	oldK, newK := mustKeys(t, oldPSK), mustKeys(t, newPSK)
	if !d.passwordKeys().Equal(newK) || !d.sealKeys().Equal(newK) {
		t.Fatal("a staged key is not used for the password and uplinks")
	}
	d.connectRefused()
	if !d.passwordKeys().Equal(oldK) {
		t.Fatal("after a refusal the old key is not tried")
	}
	d.connected()
	if cur, next := d.Keys(); !bytes.Equal(cur, oldPSK) || next != nil {
		t.Fatalf("accepted on the old key: cur %x next %x, want the old key alone", cur, next)
	}
	if !d.sealKeys().Equal(oldK) {
		t.Error("uplinks not sealed with the old key again")
	}
	d = bootedDevice(t, dir)
	if cur, next := d.Keys(); !bytes.Equal(cur, oldPSK) || next != nil {
		t.Errorf("after a reboot: cur %x next %x", cur, next)
	}
}
