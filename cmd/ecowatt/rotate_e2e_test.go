package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// rotDevice is one devicesim device run by hand, so that a test can cut
// its power and boot it again on the same flash.
type rotDevice struct {
	id     string
	key    []byte // factory key
	dir    string
	d      *devicesim.Device
	cut    *flash.PowerCut
	cancel context.CancelFunc
	done   chan error
}

func (sd *rotDevice) start(t *testing.T, s *testServer, cut *flash.PowerCut) {
	t.Helper()
	fl, err := flash.Open(sd.dir)
	if err != nil {
		t.Fatal(err)
	}
	if cut != nil {
		fl.SetFault(cut.Fault)
	}
	sd.cut = cut
	sd.d, err = devicesim.New(devicesim.Config{
		ID: sd.id, Key: sd.key, Broker: "tcp://" + s.MQTT, Flash: fl, FirmwareVersion: "1.0.0",
		Log: zerolog.Nop(), MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sd.cancel, sd.done = cancel, make(chan error, 1)
	go func() { sd.done <- sd.d.Run(ctx) }()
}

func (sd *rotDevice) stop(t *testing.T) {
	t.Helper()
	if sd.cancel == nil {
		return
	}
	sd.cancel()
	sd.cancel = nil
	select {
	case <-sd.done:
	case <-time.After(10 * time.Second):
		t.Errorf("device %s did not stop", sd.id)
	}
}

// connectAs tries one MQTT CONNECT as device id with a password from psk,
// from source address local ("" for any), and returns the CONNACK return
// code.
func connectAs(s *testServer, id string, psk []byte, local string) (byte, error) {
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		return 0, err
	}
	o := mqtt.NewClientOptions().AddBroker("tcp://" + s.MQTT).SetClientID(id).
		SetUsername(id).SetPassword(envelope.Password(&k, id, time.Now())).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if local != "" {
		o.SetDialer(&net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}})
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(6 * time.Second) {
		return 0, fmt.Errorf("connect timed out")
	}
	code := tok.(*mqtt.ConnectToken).ReturnCode()
	if err := tok.Error(); err != nil {
		return code, err
	}
	c.Disconnect(0)
	return code, nil
}

// TestRotationPowerCutMatrix: 20 devices on the real broker and Redis are
// rotated at once, with a power cut injected into a quarter of them at
// each step of the device's side (before the new key is written; after it
// is written, before the answer; after the answer, before the old key is
// dropped) and none in the rest. Every device comes back online on its new
// key, holds exactly one key, the backend confirmed every rotation, and
// the old keys are refused.
func TestRotationPowerCutMatrix(t *testing.T) {
	s := startServer(t, "--key-resend", "1s")
	keys := s.provision(t, "rot", 20)
	type tc struct {
		name string
		step flash.Step
		n    int // the keys record write to cut at; 0: no cut
	}
	cases := []tc{
		{"before the key is written", flash.StepRename, 1},
		{"after it is written, before the answer", flash.StepSyncDir, 1},
		{"after the answer, before the old key is dropped", flash.StepRename, 2},
		{"no power cut", 0, 0},
	}
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	devs := map[string]*rotDevice{}
	caseOf := map[string]tc{}
	for i, id := range ids {
		sd := &rotDevice{id: id, key: keys[id], dir: t.TempDir()}
		c := cases[i%len(cases)]
		caseOf[id] = c
		var cut *flash.PowerCut
		if c.n > 0 {
			cut = &flash.PowerCut{Prefix: devicesim.RecordKeys, Step: c.step, N: c.n}
		}
		sd.start(t, s, cut)
		devs[id] = sd
		t.Cleanup(func() { sd.stop(t) })
	}
	eventually(t, 15*time.Second, "all devices online", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == total && total == len(ids), fmt.Sprintf("%d of %d online", on, total)
	})

	for _, id := range ids {
		var r backend.Rotation
		if st := s.api(t, "POST", "/api/v1/devices/"+id+"/rotate-key", nil, &r); st != 202 || r.ID == "" || r.State == backend.RotationExpired { // a fast device may have confirmed already
			t.Fatalf("rotate %s: %d %+v", id, st, r)
		}
	}
	// Cut devices lose power at their step and boot again on their flash.
	for _, id := range ids {
		sd := devs[id]
		if sd.cut == nil {
			continue
		}
		eventually(t, 15*time.Second, id+" power cut "+caseOf[id].name, func() (bool, string) { return sd.cut.Hit(), "not hit" })
		sd.stop(t)
		sd.start(t, s, nil)
	}

	for _, id := range ids {
		sd := devs[id]
		eventually(t, 20*time.Second, id+" ("+caseOf[id].name+") confirmed on one key", func() (bool, string) {
			var r backend.Rotation
			s.api(t, "GET", "/api/v1/devices/"+id+"/rotate-key", nil, &r)
			cur, next := sd.d.Keys()
			var evs any
			s.api(t, "GET", "/api/v1/devices/"+id+"/events", nil, &evs)
			return r.State == backend.RotationConfirmed && next == nil && !bytes.Equal(cur, sd.key) && sd.d.Online(),
				fmt.Sprintf("rotation %s, device online %v, holds next key %v, stats %+v; events %v", r.State, sd.d.Online(), next != nil, sd.d.Stats(), evs)
		})
	}
	for _, id := range ids {
		cur, _ := devs[id].d.Keys()
		if code, err := connectAs(s, id, cur, ""); err != nil {
			t.Errorf("%s: the new key's password is refused: %v (code %d)", id, err, code)
		}
	}
	// The broker locks a source address out after 20 failed logins, so
	// each old key is tried from its own loopback address.
	for i, id := range ids {
		if code, err := connectAs(s, id, devs[id].key, fmt.Sprintf("127.0.0.%d", 10+i)); err == nil || code != 5 {
			t.Errorf("%s (%s): the old key's password: %v (code %d), want refused as not authorised", id, caseOf[id].name, err, code)
		}
	}
	eventually(t, 15*time.Second, "all devices online on their new keys", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == total, fmt.Sprintf("%d of %d online", on, total)
	})
}

// TestRotateKeyBadInput: the CLI and API refuse an unknown device and a
// second rotation while one is pending, clearly, changing nothing.
func TestRotateKeyBadInput(t *testing.T) {
	s := startServer(t)
	keys := s.provision(t, "rk", 1)
	const id = "rk-0001"
	_ = keys
	if out, err := s.cli(t, "device", "rotate-key", "nobody"); err == nil || !bytes.Contains([]byte(out+err.Error()), []byte("nobody")) {
		t.Errorf("rotate-key of an unknown device: %v\n%s", err, out)
	}
	out, err := s.cli(t, "device", "rotate-key", id)
	if err != nil || !bytes.Contains([]byte(out), []byte("pending")) {
		t.Fatalf("rotate-key: %v\n%s", err, out)
	}
	var first backend.Rotation
	s.api(t, "GET", "/api/v1/devices/"+id+"/rotate-key", nil, &first)
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if st := s.api(t, "POST", "/api/v1/devices/"+id+"/rotate-key", nil, &e); st != 409 || !bytes.Contains([]byte(e.Error.Message), []byte(first.ID)) {
		t.Errorf("second rotation: %d %+v, want 409 naming %s", st, e, first.ID)
	}
	var after backend.Rotation
	s.api(t, "GET", "/api/v1/devices/"+id+"/rotate-key", nil, &after)
	if after.ID != first.ID || after.State != backend.RotationPending || !after.ExpiresAt.Equal(first.ExpiresAt) {
		t.Errorf("the pending rotation changed: %+v -> %+v", first, after)
	}
}
