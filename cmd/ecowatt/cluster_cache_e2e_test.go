package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/flash"
)

// startWithFeatures is rotDevice.start with the device's config and
// command features attached.
func startWithFeatures(t *testing.T, s *testServer, sd *rotDevice) {
	t.Helper()
	fl, err := flash.Open(sd.dir)
	if err != nil {
		t.Fatal(err)
	}
	sd.d, err = devicesim.New(devicesim.Config{
		ID: sd.id, Key: sd.key, Broker: "tcp://" + s.MQTT, Flash: fl, FirmwareVersion: "1.0.0",
		Log: zerolog.Nop(), MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devicesim.AttachFeatures(sd.d, devicesim.FeatureOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sd.cancel, sd.done = cancel, make(chan error, 1)
	go func() { sd.done <- sd.d.Run(ctx) }()
}

// TestReplicaKeyInvalidation: two replicas on one Redis, devices held by
// B, changes made through A. A replica caches derived keys (5 min TTL);
// a change on one replica must drop them on every other at once:
//   - a key rotation confirmed on B: A's next config downlink to the
//     device is sealed under the new key (the old one is destroyed);
//   - a decommission on A closes the device's session on B, and B refuses
//     its CONNECT; after a purge B does not admit its old credentials.
func TestReplicaKeyInvalidation(t *testing.T) {
	rs := startCluster(t, 2)
	a, b := rs[0], rs[1]
	keys := a.provision(t, "kc", 2)
	rot := &rotDevice{id: "kc-0001", key: keys["kc-0001"], dir: t.TempDir()}
	dec := &rotDevice{id: "kc-0002", key: keys["kc-0002"], dir: t.TempDir()}
	for _, sd := range []*rotDevice{rot, dec} {
		startWithFeatures(t, b, sd)
		t.Cleanup(func() { sd.stop(t) })
	}
	waitOnline(t, a, 2)
	// A seals a downlink to each, so its cache holds their keys.
	cfg := func(id string, interval int) {
		t.Helper()
		var res configStateDoc
		body := json.RawMessage(fmt.Sprintf(`{"sampling_interval":%d,"upload_interval":%d}`, interval, 2*interval))
		if code := a.api(t, "PUT", "/api/v1/devices/"+id+"/config", body, &res); code != 200 {
			t.Fatalf("PUT config of %s on A: %d", id, code)
		}
		waitInSync(t, a, id, res.Desired.Version)
	}
	cfg(rot.id, 2)
	cfg(dec.id, 2)

	t.Run("rotation", func(t *testing.T) {
		var r backend.Rotation
		if st := a.api(t, "POST", "/api/v1/devices/"+rot.id+"/rotate-key", nil, &r); st != 202 {
			t.Fatalf("rotate on A: %d %+v", st, r)
		}
		eventually(t, 20*time.Second, "rotation confirmed by the device on B", func() (bool, string) {
			var r backend.Rotation
			a.api(t, "GET", "/api/v1/devices/"+rot.id+"/rotate-key", nil, &r)
			cur, next := rot.d.Keys()
			return r.State == backend.RotationConfirmed && next == nil && !bytes.Equal(cur, rot.key),
				fmt.Sprintf("rotation %s, holds next key %v", r.State, next != nil)
		})
		// Without the invalidation A seals this under the destroyed key
		// for up to the cache TTL and the device never acknowledges it.
		cfg(rot.id, 3)
	})

	t.Run("decommission", func(t *testing.T) {
		if code := b.metric(t, "ecowatt_route_received_total", `kind="forget"`); code == 0 {
			t.Fatalf("B received no forget before the decommission (the rotation sent one)")
		}
		start := time.Now()
		if code := a.api(t, "DELETE", "/api/v1/devices/"+dec.id, nil, nil); code != 200 {
			t.Fatalf("decommission on A: %d", code)
		}
		eventually(t, 5*time.Second, "the device's session on B closed", func() (bool, string) {
			return !dec.d.Online(), "still connected to B"
		})
		t.Logf("session on B closed %v after the decommission on A", time.Since(start).Round(time.Millisecond))
		dec.stop(t)
		if code, err := connectAs(b, dec.id, dec.key, ""); err == nil || code == 0 {
			t.Fatalf("B admitted the decommissioned device: code %d, %v", code, err)
		}
		if code := a.api(t, "DELETE", "/api/v1/devices/"+dec.id+"?purge=true", nil, nil); code != 200 {
			t.Fatalf("purge on A: %d", code)
		}
		// The purge deleted the device's state too: only the key decides now.
		if code, err := connectAs(b, dec.id, dec.key, ""); err == nil || code == 0 {
			t.Fatalf("B admitted the purged device's old credentials: code %d, %v", code, err)
		}
	})
}
