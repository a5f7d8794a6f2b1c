package config

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

type harness struct {
	t      *testing.T
	ctx    context.Context
	b      *backend.Service
	s      *Service
	bus    *backendtest.TestBus[backend.Message]
	rdb    redis.UniversalClient
	prefix string
	clock  *backendtest.Clock
	keys   map[string]*envelope.Keys
	nonce  map[string]uint64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	var err error
	h := &harness{t: t, ctx: context.Background(), bus: backendtest.Bus[backend.Message](t), rdb: rdb, prefix: prefix,
		clock: backendtest.NewClock(time.Now()), keys: map[string]*envelope.Keys{}, nonce: map[string]uint64{}}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	h.b, err = backend.New(backend.Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.bus, Logger: log,
		BcryptCost: bcrypt.MinCost, Workers: 2, Now: h.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.s, err = New(Config{Redis: rdb, Keys: h.b.Keys(), Fleet: h.b, Logger: log, Now: h.clock.Now, SweepInterval: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.s.Attach()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("backend Run did not return")
		}
	})
	h.bus.WaitSubscribed(t, 2, 5*time.Second)
	return h
}

// device provisions id.
func (h *harness) device(id string) {
	h.t.Helper()
	psk, err := h.b.Provision(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.keys[id] = &k
}

// uplink publishes a signed device message of kind and waits for the
// first event of eventKind about dev.
func (h *harness) uplink(dev, kind string, body any, eventKind string) backend.Event {
	h.t.Helper()
	raw, ok := body.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			h.t.Fatal(err)
		}
	}
	topic := topics.DeviceUp(dev, kind)
	h.nonce[dev]++
	env, err := envelope.Seal(h.keys[dev], topic, h.nonce[dev], time.Now(), raw, false, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	ch, cancel := h.b.SubscribeEvents(backend.EventFilter{Device: dev, Kind: eventKind})
	defer cancel()
	h.bus.Deliver(backend.Message{Topic: topic, Payload: env, Username: dev})
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no %s event for %s after %s", eventKind, dev, kind)
		return backend.Event{}
	}
}

// ops publishes an operator message and waits for a config event.
func (h *harness) ops(dev, operator, body string) map[string]any {
	h.t.Helper()
	ch, cancel := h.b.SubscribeEvents(backend.EventFilter{Device: dev, Kind: topics.EventConfig})
	defer cancel()
	h.bus.Deliver(backend.Message{Topic: topics.Ops(dev, topics.KindConfig), Payload: []byte(body), Username: operator})
	select {
	case ev := <-ch:
		var m map[string]any
		if err := json.Unmarshal(ev.Data, &m); err != nil {
			h.t.Fatal(err)
		}
		return m
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no config event for %s after an ops message", dev)
		return nil
	}
}

// birth sends an online birth reporting version and cfg.
func (h *harness) birth(dev string, version int64, cfg topics.Config) {
	h.t.Helper()
	h.uplink(dev, topics.KindBirth, topics.Birth{Online: true, FirmwareVersion: "1.0.0", ConfigVersion: version, Config: &cfg}, topics.EventPresence)
}

// downlinks returns the config_updates sent to dev so far.
func (h *harness) downlinks(dev string) []topics.ConfigUpdate {
	h.t.Helper()
	topic := topics.DeviceDown(dev, topics.KindConfig)
	var out []topics.ConfigUpdate
	for _, m := range h.bus.Sent(topic) {
		msg, err := envelope.Open(h.keys[dev], topic, m.Payload)
		if err != nil {
			h.t.Fatalf("open downlink: %v", err)
		}
		var b topics.ConfigBody
		if err := json.Unmarshal(msg.Body, &b); err != nil || b.ConfigUpdate == nil {
			h.t.Fatalf("downlink body %s: %v", msg.Body, err)
		}
		out = append(out, *b.ConfigUpdate)
	}
	return out
}

// set calls Set through the API surface's entry point.
func (h *harness) set(dev, patch string) Result {
	h.t.Helper()
	r, err := h.s.Set(h.ctx, dev, []byte(patch), Who{By: "tester", Via: ViaHTTP})
	if err != nil {
		h.t.Fatalf("set %s %s: %v", dev, patch, err)
	}
	return r
}

func (h *harness) get(dev string) State {
	h.t.Helper()
	st, err := h.s.Get(h.ctx, dev)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// snapshot dumps every key under the test prefix.
func (h *harness) snapshot() map[string]string {
	h.t.Helper()
	return backendtest.Snapshot(h.t, h.rdb, h.prefix)
}

// assertUnchanged checks that no key but the audit and security logs
// changed since before.
func (h *harness) assertUnchanged(t *testing.T, before map[string]string) {
	t.Helper()
	backendtest.AssertUnchanged(t, h.rdb, h.prefix, before, ":audit", h.s.keys.Security())
}

func ackBody(a topics.ConfigAck) topics.ConfigAckBody { return topics.ConfigAckBody{ConfigAck: &a} }

// waitDownlinks waits until n config messages have been sent to dev.
func (h *harness) waitDownlinks(dev string, n int) []topics.ConfigUpdate {
	h.t.Helper()
	h.bus.WaitSent(h.t, topics.DeviceDown(dev, topics.KindConfig), n, 5*time.Second)
	return h.downlinks(dev)
}
