package backend

import (
	"context"
	"encoding/json"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// fakeNow is a settable clock for the overlap.
type fakeNow struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (f *fakeNow) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeNow) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// rotateKeySent opens the last rotate_key sent to dev with k and returns
// the new keys; it checks the downlink is encrypted.
func rotateKeySent(t *testing.T, h *harness, dev string, k *envelope.Keys) (topics.RotateKey, *envelope.Keys) {
	t.Helper()
	topic := topics.DeviceDown(dev, topics.KindRotateKey)
	sent := h.bus.WaitSent(t, topic, 1, 5*time.Second)
	m, err := envelope.Open(k, topic, sent[len(sent)-1].Payload)
	if err != nil {
		t.Fatalf("rotate_key does not open under the current key: %v", err)
	}
	if !m.Encrypted {
		t.Fatal("rotate_key sent in plain")
	}
	r, psk, err := topics.ParseRotateKey(m.Body)
	if err != nil {
		t.Fatal(err)
	}
	nk, err := envelope.DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	return r, &nk
}

func keyAck(t *testing.T, h *harness, dev string, k *envelope.Keys, nonce uint64, id string) Message {
	topic := topics.DeviceUp(dev, topics.KindKeyAck)
	return Message{Topic: topic, Payload: h.seal(k, topic, nonce, `{"key_ack":{"id":"`+id+`"}}`), Username: dev}
}

// TestRotation: the new key travels encrypted under the old; both
// passwords work during the overlap; the answer under the new key promotes
// it and destroys the old; old messages replayed afterwards are refused.
func TestRotation(t *testing.T) {
	h := newHarness(t)
	const dev = "rot-1"
	old := h.device(dev)
	birth := Message{Topic: topics.DeviceUp(dev, topics.KindBirth), Payload: h.seal(old, topics.DeviceUp(dev, topics.KindBirth), 1, birthBody), Username: dev}
	h.publish(dev, topics.EventPresence, birth)

	r, err := h.s.StartRotation(h.ctx, dev, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if r.State != RotationPending || r.By != "alice" || r.Sent < 1 { // the birth's own handler may send it too
		t.Fatalf("rotation = %+v", r)
	}
	rk, next := rotateKeySent(t, h, dev, old)
	if rk.ID != r.ID {
		t.Fatalf("rotate_key id %s, rotation %s", rk.ID, r.ID)
	}
	now := time.Now()
	for name, k := range map[string]*envelope.Keys{"old": old, "new": next} {
		if err := h.s.VerifyDevicePassword(h.ctx, dev, envelope.Password(k, dev, now), now); err != nil {
			t.Errorf("%s password during the overlap: %v", name, err)
		}
	}

	ack := keyAck(t, h, dev, next, 2, r.ID)
	ev := h.publish(dev, topics.EventKey, ack)
	if d := dataOf(t, ev); d["state"] != RotationConfirmed || d["via"] != topics.KindKeyAck {
		t.Fatalf("first key event after the answer = %v, want confirmed via key_ack", d)
	}
	k, err := h.s.DeviceKeys(h.ctx, dev)
	if err != nil || !k.Equal(next) {
		t.Fatalf("device key after confirmation is not the new key (%v)", err)
	}
	if err := h.s.VerifyDevicePassword(h.ctx, dev, envelope.Password(old, dev, now), now); err == nil {
		t.Error("old password still accepted after the confirmation")
	}
	confirm := h.bus.WaitSent(t, topics.DeviceDown(dev, topics.KindKeyConfirm), 1, 5*time.Second)
	if _, err := envelope.Open(next, confirm[0].Topic, confirm[0].Payload); err != nil {
		t.Fatalf("key_confirm is not sealed under the new key: %v", err)
	}
	if r, _ = h.s.Rotation(h.ctx, dev); r.State != RotationConfirmed || r.ConfirmedBy != topics.KindKeyAck {
		t.Fatalf("rotation = %+v", r)
	}

	badMAC, replay := h.rejections(ReasonBadMAC), h.rejections(ReasonReplay)
	h.publish(dev, topics.EventSecurity, birth) // old key: destroyed
	h.publish(dev, topics.EventSecurity, ack)   // new key, nonce already seen
	topic := topics.DeviceUp(dev, topics.KindTelemetry)
	h.publish(dev, topics.EventSecurity, Message{Topic: topic, Payload: h.seal(old, topic, 10, `{}`), Username: dev})
	if got := h.rejections(ReasonBadMAC) - badMAC; got != 2 {
		t.Errorf("bad_mac rejections = %v, want 2 (old birth, old key with a fresh nonce)", got)
	}
	if got := h.rejections(ReasonReplay) - replay; got != 1 {
		t.Errorf("replay rejections = %v, want 1 (the answer again)", got)
	}
}

// TestRotationBadInput: each refusal is a clear error and changes nothing.
func TestRotationBadInput(t *testing.T) {
	h := newHarness(t)
	const dev = "rot-bad"
	old := h.device(dev)

	before := h.snapshot()
	if _, err := h.s.StartRotation(h.ctx, "nobody", "alice"); ErrorCode(err) != CodeNotFound {
		t.Errorf("unknown device: %v, want not_found", err)
	}
	h.assertUnchanged(before)

	// A disabled device cannot take a new key: refused, nothing written.
	const off = "rot-disabled"
	h.device(off)
	if _, err := h.s.Disable(h.ctx, off, Who{By: "alice"}, false); err != nil {
		t.Fatal(err)
	}
	before = h.snapshot()
	if _, err := h.s.StartRotation(h.ctx, off, "alice"); ErrorCode(err) != CodeConflict {
		t.Errorf("disabled device: %v, want conflict", err)
	}
	h.assertUnchanged(before)

	r, err := h.s.StartRotation(h.ctx, dev, "alice") // offline: sent at its next birth
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 0 {
		t.Errorf("rotate_key sent to an offline device: %+v", r)
	}
	before = h.snapshot()
	if _, err := h.s.StartRotation(h.ctx, dev, "bob"); ErrorCode(err) != CodeConflict {
		t.Errorf("second rotation: %v, want conflict", err)
	}
	h.assertUnchanged(before)

	// The birth sends the pending rotation.
	topic := topics.DeviceUp(dev, topics.KindBirth)
	h.publish(dev, topics.EventPresence, Message{Topic: topic, Payload: h.seal(old, topic, 1, birthBody), Username: dev})
	rk, next := rotateKeySent(t, h, dev, old)

	invalid, badMAC := h.rejections(ReasonInvalidBody), h.rejections(ReasonBadMAC)
	h.publish(dev, topics.EventSecurity, keyAck(t, h, dev, old, 2, rk.ID)) // under the old key
	wrong, _ := envelope.DeriveKeys(make([]byte, 32))
	h.publish(dev, topics.EventSecurity, keyAck(t, h, dev, &wrong, 3, rk.ID)) // under a wrong key
	if h.rejections(ReasonInvalidBody)-invalid != 1 || h.rejections(ReasonBadMAC)-badMAC != 1 {
		t.Errorf("invalid_body +%v, bad_mac +%v; want 1 each",
			h.rejections(ReasonInvalidBody)-invalid, h.rejections(ReasonBadMAC)-badMAC)
	}
	if r, _ := h.s.Rotation(h.ctx, dev); r.State != RotationPending {
		t.Errorf("rotation after bad answers = %+v", r)
	}
	if k, _ := h.s.DeviceKeys(h.ctx, dev); !k.Equal(old) || k.Equal(next) {
		t.Error("device key changed by a bad answer")
	}
}

// TestRotationExpiry: after the overlap the pending key is dropped, the
// old key stays, the new key is refused, and a new rotation can start.
func TestRotationExpiry(t *testing.T) {
	clk := &fakeNow{t: time.Now()}
	h := newHarnessClock(t, clk.now, func(c *Config) { c.KeyOverlap = time.Hour })
	const dev = "rot-exp"
	old := h.device(dev)
	topic := topics.DeviceUp(dev, topics.KindBirth)
	h.publish(dev, topics.EventPresence, Message{Topic: topic, Payload: h.seal(old, topic, 1, birthBody), Username: dev})
	r, err := h.s.StartRotation(h.ctx, dev, "alice")
	if err != nil {
		t.Fatal(err)
	}
	_, next := rotateKeySent(t, h, dev, old)
	clk.add(time.Hour + time.Second)

	got, err := h.s.Rotation(h.ctx, dev)
	if err != nil || got.State != RotationExpired || got.ID != r.ID {
		t.Fatalf("rotation after the overlap = %+v, %v", got, err)
	}
	if evs := h.events(dev, topics.EventKey); len(evs) == 0 || evs[len(evs)-1]["state"] != RotationExpired {
		t.Errorf("no expired event: %v", evs)
	}
	now := clk.now()
	if err := h.s.VerifyDevicePassword(h.ctx, dev, envelope.Password(next, dev, now), now); err == nil {
		t.Error("new key's password accepted after the overlap")
	}
	badMAC := h.rejections(ReasonBadMAC)
	h.publish(dev, topics.EventSecurity, keyAck(t, h, dev, next, 2, r.ID))
	if h.rejections(ReasonBadMAC)-badMAC != 1 {
		t.Error("answer under the expired key not refused as bad_mac")
	}
	if k, _ := h.s.DeviceKeys(h.ctx, dev); !k.Equal(old) {
		t.Error("old key not kept after the overlap")
	}
	if _, err := h.s.StartRotation(h.ctx, dev, "alice"); err != nil {
		t.Errorf("rotating again after expiry: %v", err)
	}
}

// events reads dev's audit timeline of kind, oldest first.
func (h *harness) events(dev, kind string) []map[string]any {
	h.t.Helper()
	evs, err := h.s.Events(h.ctx, dev, 100)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []map[string]any
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == kind {
			out = append(out, dataOf(h.t, evs[i]))
		}
	}
	return out
}

func dataOf(t testing.TB, ev Event) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// failPromoteOnce fails the first run of promoteScript with a reset
// connection (a transient store error) and passes everything else through.
type failPromoteOnce struct{ done atomic.Bool }

func (*failPromoteOnce) DialHook(next redis.DialHook) redis.DialHook { return next }
func (*failPromoteOnce) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (f *failPromoteOnce) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); len(a) > 1 && a[0] == "evalsha" && a[1] == promoteScript.Hash() && f.done.CompareAndSwap(false, true) {
			err := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

// TestRotationPromoteRetried: a store error while promoting the new key
// holds the answer for a retry (it is not a bad_mac, and its nonce is not
// spent), and the retry confirms the rotation.
func TestRotationPromoteRetried(t *testing.T) {
	h := newHarness(t)
	fault := &failPromoteOnce{}
	h.rdb.AddHook(fault)
	const dev = "rot-retry"
	old := h.device(dev)
	h.birth(old, dev, 1, birthBody)
	r, err := h.s.StartRotation(h.ctx, dev, "alice")
	if err != nil {
		t.Fatal(err)
	}
	_, next := rotateKeySent(t, h, dev, old)
	badMAC, replay := h.rejections(ReasonBadMAC), h.rejections(ReasonReplay)
	ev := h.publish(dev, topics.EventKey, keyAck(t, h, dev, next, 2, r.ID))
	if !fault.done.Load() {
		t.Fatal("the promotion was not attempted through the faulty client")
	}
	if d := dataOf(t, ev); d["state"] != RotationConfirmed {
		t.Fatalf("key event = %v, want confirmed after the retry", d)
	}
	if k, err := h.s.DeviceKeys(h.ctx, dev); err != nil || !k.Equal(next) {
		t.Fatalf("device key is not the new key after the retry (%v)", err)
	}
	if got := h.rejections(ReasonBadMAC) - badMAC; got != 0 {
		t.Errorf("bad_mac +%v, want 0: a store error is not a bad MAC", got)
	}
	if got := h.rejections(ReasonReplay) - replay; got != 0 {
		t.Errorf("replay +%v, want 0: the retry met its own nonce", got)
	}
}
