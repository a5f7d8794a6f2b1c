package devicesim

import (
	"context"
	"encoding/hex"
	"fmt"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// PSK rotation on the device (PROTOCOL.md section 15). The device holds one
// key, or during a rotation two: the current (old) one and the next (new)
// one, both in the flash record RecordKeys, written atomically. From the
// moment the new key is on flash the device seals every uplink with it
// and opens downlinks with either; the first downlink that verifies under
// the new key proves the backend has it, so the old one is dropped. If the
// broker refuses the new key's password and takes the old one, the
// backend never got the new key (its rotation expired): the new key is
// dropped. Either way the device ends on exactly one key the backend
// knows, whatever power cut came in between.

// RecordKeys is the flash record of the device's keys (keysRecord). When
// absent the device runs on Config.Key, its factory key.
const RecordKeys = "keys"

type keysRecord struct {
	Current  string `json:"current"`            // hex PSK
	Next     string `json:"next,omitempty"`     // hex PSK of the rotation in progress
	Rotation string `json:"rotation,omitempty"` // its ID
}

// keyRing is the device's keys; guarded by Device.keyMu.
type keyRing struct {
	cur, next       []byte // PSKs; next is nil outside a rotation
	curK, nextK     envelope.Keys
	rotation        string
	passwordWithOld bool // the new key's password was refused: try the old one
}

// Keys returns the device's current PSK and, during a rotation, the next
// one (nil otherwise), as on its flash.
func (d *Device) Keys() (cur, next []byte) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	return append([]byte(nil), d.ring.cur...), append([]byte(nil), d.ring.next...)
}

// loadKeys reads RecordKeys at boot.
func (d *Device) loadKeys() error {
	var rec keysRecord
	if err := loadRecord(d.fl, RecordKeys, &rec); err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	ring := keyRing{cur: d.cfg.Key}
	if rec.Current != "" {
		cur, err := hex.DecodeString(rec.Current)
		if err != nil {
			return fmt.Errorf("load keys: current: %w", err)
		}
		ring.cur = cur
		if rec.Next != "" {
			if ring.next, err = hex.DecodeString(rec.Next); err != nil {
				return fmt.Errorf("load keys: next: %w", err)
			}
			ring.rotation = rec.Rotation
		}
	}
	if err := ring.derive(); err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	d.keyMu.Lock()
	d.ring = ring
	d.keyMu.Unlock()
	return nil
}

func (r *keyRing) derive() error {
	var err error
	if r.curK, err = envelope.DeriveKeys(r.cur); err != nil {
		return err
	}
	if r.next != nil {
		r.nextK, err = envelope.DeriveKeys(r.next)
	}
	return err
}

// saveRing persists r, then makes it the device's keys. Called with keyMu.
func (d *Device) saveRing(r keyRing) error {
	rec := keysRecord{Current: hex.EncodeToString(r.cur), Rotation: r.rotation}
	if r.next != nil {
		rec.Next = hex.EncodeToString(r.next)
	}
	if err := r.derive(); err != nil {
		return err
	}
	if err := d.fl.Save(RecordKeys, rec); err != nil {
		return fmt.Errorf("persist keys: %w", err)
	}
	d.ring = r
	return nil
}

// sealKeys are the keys uplinks are sealed with: the new one as soon as it
// is on flash.
func (d *Device) sealKeys() *envelope.Keys {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.ring.next != nil {
		k := d.ring.nextK
		return &k
	}
	k := d.ring.curK
	return &k
}

// passwordKeys are the keys of the next CONNECT's password.
func (d *Device) passwordKeys() *envelope.Keys {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.ring.next != nil && !d.ring.passwordWithOld {
		k := d.ring.nextK
		return &k
	}
	k := d.ring.curK
	return &k
}

// connectRefused notes that the broker refused the password: during a
// rotation the next attempt uses the other key.
func (d *Device) connectRefused() {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.ring.next != nil {
		d.ring.passwordWithOld = !d.ring.passwordWithOld
	}
}

// connected notes an accepted password. Accepted with the old key after
// the new one was refused means the backend does not know the new key:
// it is dropped.
func (d *Device) connected() {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.ring.next == nil || !d.ring.passwordWithOld {
		return
	}
	r := keyRing{cur: d.ring.cur}
	if err := d.saveRing(r); err != nil {
		d.log.Error().Err(err).Msg("drop refused new key")
		return
	}
	d.log.Warn().Str("rotation", d.ring.rotation).Msg("key rotation abandoned: the backend refused the new key")
}

// openDownlink opens a downlink with the new key, then the current one.
// A downlink under the new key drops the old key first.
func (d *Device) openDownlink(topic string, payload []byte) (envelope.Message, error) {
	open := envelope.Open
	if envelope.IsBinary(payload) {
		open = envelope.OpenBinary
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.ring.next != nil {
		k := d.ring.nextK
		if m, err := open(&k, topic, payload); err == nil {
			r := keyRing{cur: d.ring.next}
			if err := d.saveRing(r); err != nil {
				return m, err
			}
			d.log.Info().Msg("key rotation done: old key dropped")
			return m, nil
		}
	}
	k := d.ring.curK
	return open(&k, topic, payload)
}

// handleRotateKey stages the new key of a rotate_key downlink and answers
// it, sealed under the new key.
func (d *Device) handleRotateKey(ctx context.Context, m envelope.Message) error {
	if !m.Encrypted {
		return fmt.Errorf("rotate_key: refused a plain rotate_key (it must be encrypted)")
	}
	r, psk, err := topics.ParseRotateKey(m.Body)
	if err != nil {
		return err
	}
	d.keyMu.Lock()
	if d.ring.rotation != r.ID || d.ring.next == nil {
		err = d.saveRing(keyRing{cur: d.ring.cur, next: psk, rotation: r.ID})
	}
	d.keyMu.Unlock()
	if err != nil {
		return err
	}
	d.log.Info().Str("rotation", r.ID).Msg("new key written; answering under it")
	return d.Publish(ctx, topics.KindKeyAck, map[string]topics.KeyAck{"key_ack": {ID: r.ID}})
}

// ackPendingRotation answers again after a (re)connect when a rotation is
// staged: the answer may have been lost, or cut off by a power cut.
func (d *Device) ackPendingRotation(ctx context.Context, c mqtt.Client) {
	d.keyMu.Lock()
	rid := ""
	if d.ring.next != nil {
		rid = d.ring.rotation
	}
	d.keyMu.Unlock()
	if rid == "" {
		return
	}
	if err := d.publishOn(ctx, c, topics.KindKeyAck, map[string]topics.KeyAck{"key_ack": {ID: rid}}); err != nil {
		d.log.Warn().Err(err).Msg("key_ack not sent")
	}
}

// handleKeyConfirm: the key switch itself happened in openDownlink (a
// key_confirm is sealed under the new key); one under the old key is
// ignored.
func (d *Device) handleKeyConfirm(_ context.Context, m envelope.Message) error {
	_, err := topics.ParseKeyConfirm(m.Body)
	return err
}
