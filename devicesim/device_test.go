package devicesim

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

func newTestDevice(t *testing.T, b *testBroker, id string, psk []byte, dir string, fl *flash.Store) *Device {
	t.Helper()
	d, err := New(Config{
		ID:              id,
		Key:             psk,
		Broker:          b.url(),
		StateDir:        dir,
		Flash:           fl,
		FirmwareVersion: "1.2.3",
		Log:             testLogger(t),
		MinBackoff:      20 * time.Millisecond,
		MaxBackoff:      200 * time.Millisecond,
		ConnectTimeout:  2 * time.Second,
		PublishTimeout:  2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBirthReconnectShutdown(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	psk := testKey(1)
	keys := mustKeys(t, psk)
	d := newTestDevice(t, b, "dev-1", psk, t.TempDir(), nil)
	r := start(t, d)

	eventually(t, "first birth", func() bool { return len(b.signedBirths("dev-1", keys)) == 1 })
	first := b.signedBirths("dev-1", keys)[0]
	if first.FirmwareVersion != "1.2.3" || first.BootCount != 1 || first.Slot != SlotA {
		t.Fatalf("first birth = %+v", first)
	}

	// Kicked by the broker: the will fires and the device comes back.
	b.kick("dev-1")
	eventually(t, "birth after kick", func() bool { return len(b.signedBirths("dev-1", keys)) == 2 })
	var sawWill bool
	for _, x := range b.births("dev-1", keys) {
		sawWill = sawWill || (!x.Signed && !x.Online)
	}
	if !sawWill {
		t.Error("no will message after the kick")
	}

	// The broker restarts on the same address.
	addr := b.addr
	b.close()
	eventually(t, "device offline", func() bool { return !d.Online() })
	b2 := startBroker(t, addr)
	eventually(t, "birth after broker restart", func() bool { return len(b2.signedBirths("dev-1", keys)) == 1 })

	all := append(b.signedBirths("dev-1", keys), b2.signedBirths("dev-1", keys)...)
	for i := 1; i < len(all); i++ {
		if all[i].Nonce <= all[i-1].Nonce {
			t.Errorf("birth %d nonce %d not above %d", i, all[i].Nonce, all[i-1].Nonce)
		}
		if all[i].BootCount != 1 {
			t.Errorf("reconnect changed boot count: %+v", all[i])
		}
	}
	// The birth is published from the connect handler, so the counters may
	// trail it by a moment.
	eventually(t, "3 connects, 2 reconnects, online", func() bool {
		s := d.Stats()
		return s.Reconnects == 2 && s.Connects == 3 && s.Online
	})

	// Clean shutdown: prompt, with a signed offline birth.
	began := time.Now()
	r.stop(t)
	if el := time.Since(began); el > 2*time.Second {
		t.Errorf("shutdown took %s", el)
	}
	// The device waits up to 1 s for the offline birth's PUBACK; on a
	// loaded machine the broker may record it a moment after stop returns.
	eventually(t, "a signed offline birth at shutdown", func() bool {
		for _, x := range b2.births("dev-1", keys) {
			if x.Signed && !x.Online {
				return true
			}
		}
		return false
	})
	checkNoLeak(t)
}

// TestNonceSurvivesPowerCut restarts a device on the same flash, once after
// an ordinary stop and once after a power cut during a nonce reservation,
// and checks that no nonce is ever used twice.
func TestNonceSurvivesPowerCut(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	psk := testKey(2)
	keys := mustKeys(t, psk)
	dir := t.TempDir()
	ctx := context.Background()

	// Boot 1: block of 4; the birth takes nonce 1; cut the power on the
	// second reservation (nonce 5).
	fl, err := flash.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cut := &flash.PowerCut{Prefix: RecordNonce, Step: flash.StepRename, N: 2}
	fl.SetFault(cut.Fault)
	d := newTestDevice(t, b, "dev-2", psk, "", fl)
	d.cfg.NonceBlock = 4
	r := start(t, d)
	eventually(t, "birth", func() bool { return d.Online() })
	for i := range 3 {
		if err := d.Publish(ctx, topics.KindTelemetry, map[string]int{"i": i}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	err = d.Publish(ctx, topics.KindTelemetry, map[string]int{"i": 3})
	if !errors.Is(err, flash.ErrPowerCut) {
		t.Fatalf("publish across the cut = %v, want a power cut", err)
	}
	r.stop(t)
	if got := b.nonces("dev-2", keys); len(got) < 4 || got[3] != 4 {
		t.Fatalf("boot 1 nonces = %v, want 1..4", got)
	}

	// Boot 2 on the same flash: starts above everything boot 1 reserved.
	d2 := newTestDevice(t, b, "dev-2", psk, dir, nil)
	r2 := start(t, d2)
	eventually(t, "birth 2", func() bool { return len(b.signedBirths("dev-2", keys)) == 2 })
	if err := d2.Publish(ctx, topics.KindTelemetry, "x"); err != nil {
		t.Fatal(err)
	}
	r2.stop(t)

	// Boot 3: a plain restart skips the rest of boot 2's block of 64.
	d3 := newTestDevice(t, b, "dev-2", psk, dir, nil)
	r3 := start(t, d3)
	eventually(t, "birth 3", func() bool { return len(b.signedBirths("dev-2", keys)) == 3 })
	r3.stop(t)

	births := b.signedBirths("dev-2", keys)
	if births[1].Nonce != 5 || births[1].BootCount != 2 {
		t.Errorf("boot 2 birth = %+v, want nonce 5, boot count 2", births[1])
	}
	if births[2].Nonce != 5+DefaultNonceBlock || births[2].BootCount != 3 {
		t.Errorf("boot 3 birth = %+v, want nonce %d, boot count 3", births[2], 5+DefaultNonceBlock)
	}
	seen := map[uint64]bool{}
	var last uint64
	for _, n := range b.nonces("dev-2", keys) {
		if seen[n] || n <= last {
			t.Errorf("nonce %d reused or out of order (after %d)", n, last)
		}
		seen[n], last = true, n
	}
}

func TestDownlink(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	psk := testKey(3)
	keys := mustKeys(t, psk)
	other := mustKeys(t, testKey(4))
	dir := t.TempDir()
	topic := topics.DeviceDown("dev-3", topics.KindCommand)
	seal := func(k *envelope.Keys, topic string, nonce uint64, body string) []byte {
		raw, err := envelope.Seal(k, topic, nonce, time.Now(), []byte(body), false, nil)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}

	got := make(chan string, 10)
	boot := func() (*Device, *running) {
		d := newTestDevice(t, b, "dev-3", psk, dir, nil)
		d.Handle(topics.KindCommand, func(_ context.Context, m envelope.Message) error {
			got <- string(m.Body)
			return nil
		})
		r := start(t, d)
		eventually(t, "online", func() bool { return d.Online() })
		return d, r
	}
	d, r := boot()

	first := seal(keys, topic, 1, `{"n":1}`)
	tampered := bytes.Replace(seal(keys, topic, 2, `{"n":2}`), []byte(`\"n\":2`), []byte(`\"n\":9`), 1)
	if !bytes.Contains(tampered, []byte(`\"n\":9`)) {
		t.Fatalf("tampering failed: %s", tampered)
	}
	cases := []struct {
		name    string
		topic   string
		raw     []byte
		applied string // "" = must be rejected
	}{
		{"valid", topic, first, `{"n":1}`},
		{"replay", topic, first, ""},
		{"tampered", topic, tampered, ""},
		{"other device key", topic, seal(other, topic, 3, `{"n":3}`), ""},
		{"moved from another topic", topic, seal(keys, topics.DeviceDown("dev-3", topics.KindConfig), 4, `{"n":4}`), ""},
		{"binary chunk envelope", topic, mustBinary(t, keys, topic, 5, `{"n":5}`), `{"n":5}`},
		{"next valid", topic, seal(keys, topic, 6, `{"n":6}`), `{"n":6}`},
	}
	rejected := int64(0)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b.publish(tc.topic, tc.raw)
			if tc.applied != "" {
				select {
				case body := <-got:
					if body != tc.applied {
						t.Fatalf("handler got %s, want %s", body, tc.applied)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("handler not called")
				}
				return
			}
			rejected++
			eventually(t, "rejection", func() bool { return d.Stats().Rejected == rejected })
			select {
			case body := <-got:
				t.Fatalf("rejected message reached the handler: %s", body)
			default:
			}
		})
	}
	if s := d.Stats(); s.Received != 3 || s.Rejected != 4 {
		t.Errorf("stats = %+v, want 3 received, 4 rejected", s)
	}
	r.stop(t)

	// After a power cycle the persisted window still refuses the replay.
	d, r = boot()
	b.publish(topic, seal(keys, topic, 6, `{"n":6}`))
	eventually(t, "replay after reboot rejected", func() bool { return d.Stats().Rejected == 1 })
	b.publish(topic, seal(keys, topic, 7, `{"n":7}`))
	select {
	case body := <-got:
		if body != `{"n":7}` {
			t.Fatalf("handler got %s", body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nonce 7 not handled after reboot")
	}
	r.stop(t)
}

func mustBinary(t *testing.T, k *envelope.Keys, topic string, nonce uint64, body string) []byte {
	t.Helper()
	raw, err := envelope.SealBinary(k, topic, nonce, time.Now(), []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestRebootInPlace(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	psk := testKey(5)
	keys := mustKeys(t, psk)
	d := newTestDevice(t, b, "dev-5", psk, t.TempDir(), nil)
	booted := 0
	d.OnBoot(func(br *BootRecord) error {
		booted++
		return nil
	})
	d.OnBirth(func(br *topics.Birth) { br.ConfigVersion = 7 })
	r := start(t, d)
	eventually(t, "birth", func() bool { return len(b.signedBirths("dev-5", keys)) == 1 })
	d.Reboot("test")
	eventually(t, "birth after reboot", func() bool { return len(b.signedBirths("dev-5", keys)) == 2 })
	got := b.signedBirths("dev-5", keys)
	if got[1].BootCount != 2 || got[1].ConfigVersion != 7 || got[1].Nonce <= got[0].Nonce {
		t.Errorf("births = %+v", got)
	}
	r.stop(t)
	if booted != 2 {
		t.Errorf("boot hook ran %d times, want 2", booted)
	}
}

// TestCancelWhileUnreachable checks that a device that cannot reach its
// broker (backing off) still stops promptly.
func TestCancelWhileUnreachable(t *testing.T) {
	b := startBroker(t, "127.0.0.1:0")
	url := b.url()
	b.close()
	d, err := New(Config{ID: "dev-6", Key: testKey(6), Broker: url, StateDir: t.TempDir(),
		Log: testLogger(t), MinBackoff: 10 * time.Second, MaxBackoff: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, d)
	eventually(t, "a failed attempt", func() bool { return d.Stats().ConnectFailures > 0 })
	r.stop(t)
	checkNoLeak(t)
}

func TestPublishOffline(t *testing.T) {
	d, err := New(Config{ID: "dev-7", Key: testKey(7), Broker: "tcp://127.0.0.1:1", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Publish(context.Background(), topics.KindTelemetry, 1); !errors.Is(err, ErrOffline) {
		t.Fatalf("Publish = %v, want ErrOffline", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"bad id", Config{ID: "a/b", Key: testKey(1), Broker: "tcp://x:1", StateDir: dir}},
		{"short key", Config{ID: "a", Key: []byte{1}, Broker: "tcp://x:1", StateDir: dir}},
		{"no broker", Config{ID: "a", Key: testKey(1), StateDir: dir}},
		{"no flash", Config{ID: "a", Key: testKey(1), Broker: "tcp://x:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Error("New succeeded")
			}
		})
	}
}
