package config

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/topics"
)

// harness is the shared fleet harness, running, with a config Service
// attached to it.
type harness struct {
	*fleettest.Harness
	s *Service
}

// newHarness runs a backend on the test Redis and a real broker, on a
// fake clock that starts now (uplinks are sealed with the real time), with
// a config Service attached.
func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{Harness: fleettest.New(t, fleettest.Options{Start: time.Now(), FleetOnClock: true, Workers: 2})}
	var err error
	h.s, err = New(Config{Redis: h.Redis, Keys: h.Keys, Fleet: h.Fleet, Logger: h.Log, Now: h.Clock.Now, SweepInterval: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.s.Attach()
	h.RunFleet(2)
	return h
}

// ops publishes an operator message and waits for a config event.
func (h *harness) ops(dev, operator, body string) map[string]any {
	h.T.Helper()
	ev := h.Ops(dev, operator, topics.KindConfig, body, topics.EventConfig)
	var m map[string]any
	if err := json.Unmarshal(ev.Data, &m); err != nil {
		h.T.Fatal(err)
	}
	return m
}

// birth sends an online birth reporting version and cfg.
func (h *harness) birth(dev string, version int64, cfg topics.Config) {
	h.T.Helper()
	h.Uplink(dev, topics.KindBirth, topics.Birth{Online: true, FirmwareVersion: "1.0.0", ConfigVersion: version, Config: &cfg}, topics.EventPresence)
}

// downlinks returns the config_updates sent to dev so far.
func (h *harness) downlinks(dev string) []topics.ConfigUpdate {
	h.T.Helper()
	return fleettest.Downlinks(h.Harness, dev, topics.KindConfig, func(body []byte) (topics.ConfigUpdate, error) {
		var b topics.ConfigBody
		if err := json.Unmarshal(body, &b); err != nil || b.ConfigUpdate == nil {
			return topics.ConfigUpdate{}, errors.Join(errors.New("no config_update"), err)
		}
		return *b.ConfigUpdate, nil
	})
}

// set calls Set through the API surface's entry point.
func (h *harness) set(dev, patch string) Result {
	h.T.Helper()
	r, err := h.s.Set(h.Ctx, dev, []byte(patch), Who{By: "tester", Via: ViaHTTP})
	if err != nil {
		h.T.Fatalf("set %s %s: %v", dev, patch, err)
	}
	return r
}

func (h *harness) get(dev string) State {
	h.T.Helper()
	st, err := h.s.Get(h.Ctx, dev)
	if err != nil {
		h.T.Fatal(err)
	}
	return st
}

func ackBody(a topics.ConfigAck) topics.ConfigAckBody { return topics.ConfigAckBody{ConfigAck: &a} }

// waitDownlinks waits until n config messages have been sent to dev.
func (h *harness) waitDownlinks(dev string, n int) []topics.ConfigUpdate {
	h.T.Helper()
	h.WaitDownlinks(dev, topics.KindConfig, n)
	return h.downlinks(dev)
}
