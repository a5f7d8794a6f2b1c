package devicesim

import (
	"errors"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// bootedDevice makes a Device on dir's flash and powers it on (no broker).
func bootedDevice(t *testing.T, dir string) *Device {
	t.Helper()
	fl, err := flash.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{ID: "rx-1", Key: testKey(9), Broker: "tcp://127.0.0.1:1", StateDir: dir, Flash: fl,
		FirmwareVersion: "1.0.0", Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.powerOn(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDownlinkReorderedMicrosecondsApart: the backend numbers downlinks
// max(last+1, now µs), so a command and a config sent 300 µs apart carry
// nonces 300 apart. Delivered in reverse order, the device accepts both
// (it refused the older one as stale with the 64-value window, and ran it
// 22 s later on resend); duplicates stay refused, also after a reboot.
func TestDownlinkReorderedMicrosecondsApart(t *testing.T) {
	dir := t.TempDir()
	d := bootedDevice(t, dir)
	command := uint64(time.Now().UnixMicro())
	config := command + 300
	for _, n := range []uint64{config, command} {
		if err := d.acceptNonce(n); err != nil {
			t.Fatalf("nonce %d (command %d, config %d): %v", n, command, config, err)
		}
	}
	if err := d.acceptNonce(command); !errors.Is(err, envelope.ErrReplay) {
		t.Errorf("redelivered command: %v, want a replay", err)
	}

	d = bootedDevice(t, dir) // reboot: the window comes back from flash
	for _, n := range []uint64{command, config} {
		if err := d.acceptNonce(n); !errors.Is(err, envelope.ErrReplay) {
			t.Errorf("nonce %d after a reboot: %v, want a replay", n, err)
		}
	}
	if err := d.acceptNonce(config + 1); err != nil {
		t.Errorf("next downlink after a reboot: %v", err)
	}
}

// TestDownlinkWindowLegacyRecord: a window persisted by the old format
// (high, seen) is converted without accepting anything it refused.
func TestDownlinkWindowLegacyRecord(t *testing.T) {
	dir := t.TempDir()
	fl, err := flash.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := fl.Save(RecordRxWindow, rxWindowRecord{High: 1000, Seen: 1 | 1<<5}); err != nil {
		t.Fatal(err)
	}
	d := bootedDevice(t, dir)
	for n, want := range map[uint64]error{1000: envelope.ErrReplay, 995: envelope.ErrReplay, 936: envelope.ErrStale, 999: nil, 1001: nil} {
		if err := d.acceptNonce(n); !errors.Is(err, want) && !(want == nil && err == nil) {
			t.Errorf("nonce %d: %v, want %v", n, err, want)
		}
	}
}
