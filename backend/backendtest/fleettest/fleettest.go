// Package fleettest is the harness the tests of the backend services
// (commands, config, fota) share: a backend.Service on the test Redis and
// a real embedded broker, a fake clock, and helpers to provision devices,
// send their signed uplinks and operator messages, read what was sent down
// to them and the events about them, and check that a refused request left
// Redis as it was.
//
// It is a package of its own rather than part of backendtest because it
// imports backend, whose own tests import backendtest.
package fleettest

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// Start is where the fake clock starts unless Options say otherwise.
var Start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Wait bounds every wait of the harness for something asynchronous.
const Wait = 5 * time.Second

// Options adjust New.
type Options struct {
	// Start is the fake clock's start; zero means Start.
	Start time.Time
	// FleetOnClock makes the backend.Service read the fake clock too
	// (otherwise it runs on real time).
	FleetOnClock bool
	// Workers is backend.Config.Workers (zero: its default).
	Workers int
}

// Harness is one test's backend. Its fields are set by New and read-only.
type Harness struct {
	T      *testing.T
	Ctx    context.Context
	Redis  redis.UniversalClient
	Prefix string
	Keys   store.Keys
	Bus    *backendtest.TestBus[backend.Message]
	Fleet  *backend.Service
	Clock  *clock.Fake
	Log    zerolog.Logger // to the test's log, warnings and up

	devs *devices // shared by the copies With makes
}

// devices is what the harness knows of the devices it provisioned.
type devices struct {
	mu    sync.Mutex // guards the maps
	keys  map[string]*envelope.Keys
	nonce map[string]uint64
}

// New builds a backend.Service on the test Redis and a real broker. The
// Service does not run: a test that needs its subscriptions calls RunFleet.
func New(t *testing.T, o Options) *Harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	if o.Start.IsZero() {
		o.Start = Start
	}
	h := &Harness{
		T: t, Ctx: context.Background(), Redis: rdb, Prefix: prefix,
		Bus: backendtest.Bus[backend.Message](t), Clock: clock.NewFake(o.Start),
		Log:  zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		devs: &devices{keys: map[string]*envelope.Keys{}, nonce: map[string]uint64{}},
	}
	cfg := backend.Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.Bus, Logger: h.Log,
		BcryptCost: bcrypt.MinCost, Workers: o.Workers,
	}
	if o.FleetOnClock {
		cfg.Now = h.Clock.Now
	}
	var err error
	if h.Fleet, err = backend.New(cfg); err != nil {
		t.Fatal(err)
	}
	h.Keys = h.Fleet.Keys()
	return h
}

// With returns a copy of h that reports to t (for subtests); it shares the
// devices and their nonces with h.
func (h *Harness) With(t *testing.T) *Harness {
	c := *h
	c.T = t
	return &c
}

// Run runs fn until the test ends, then cancels it and fails the test if
// it returns an error or does not return within Wait.
func (h *Harness) Run(name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t := h.T
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(Wait):
			t.Errorf("%s did not return within %v of cancel", name, Wait)
		}
	})
}

// RunFleet runs the backend.Service until the test ends and waits until
// subs subscriptions are made on the bus (the fleet makes two: uplinks
// and operator messages).
func (h *Harness) RunFleet(subs int) {
	h.T.Helper()
	h.Run("backend run", h.Fleet.Run)
	h.Bus.WaitSubscribed(h.T, subs, Wait)
}

// Device provisions id and returns its keys.
func (h *Harness) Device(id string) *envelope.Keys {
	h.T.Helper()
	psk, err := h.Fleet.Provision(h.Ctx, id)
	if err != nil {
		h.T.Fatalf("provision %s: %v", id, err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		h.T.Fatal(err)
	}
	h.devs.mu.Lock()
	defer h.devs.mu.Unlock()
	h.devs.keys[id] = &k
	return &k
}

// KeysOf returns the keys of a device Device provisioned.
func (h *Harness) KeysOf(id string) *envelope.Keys {
	h.T.Helper()
	h.devs.mu.Lock()
	defer h.devs.mu.Unlock()
	k, ok := h.devs.keys[id]
	if !ok {
		h.T.Fatalf("device %s was not provisioned by the harness", id)
	}
	return k
}

// SetDevice sets fields of id's device hash (field, value, ...), as the
// backend's presence and birth handling would.
func (h *Harness) SetDevice(id string, fieldValues ...any) {
	h.T.Helper()
	if err := h.Redis.HSet(h.Ctx, h.Keys.Device(id), fieldValues...).Err(); err != nil {
		h.T.Fatal(err)
	}
}

// Seal signs body (JSON-encoded unless it is []byte) as dev's uplink of
// kind, with dev's next nonce and the real time (the backend checks both).
func (h *Harness) Seal(dev, kind string, body any) backend.Message {
	h.T.Helper()
	raw, ok := body.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			h.T.Fatal(err)
		}
	}
	k := h.KeysOf(dev)
	h.devs.mu.Lock()
	h.devs.nonce[dev]++
	nonce := h.devs.nonce[dev]
	h.devs.mu.Unlock()
	topic := topics.DeviceUp(dev, kind)
	env, err := envelope.Seal(k, topic, nonce, time.Now(), raw, false, nil)
	if err != nil {
		h.T.Fatal(err)
	}
	return backend.Message{Topic: topic, Payload: env, Username: dev}
}

// Uplink delivers dev's signed uplink of kind and waits for the first
// event of eventKind about dev; with eventKind "" it does not wait. The
// fleet must run (RunFleet).
func (h *Harness) Uplink(dev, kind string, body any, eventKind string) backend.Event {
	h.T.Helper()
	return h.Deliver(h.Seal(dev, kind, body), dev, eventKind)
}

// Ops delivers an operator message of kind about dev from operator and
// waits for the first event of eventKind about dev.
func (h *Harness) Ops(dev, operator, kind, body, eventKind string) backend.Event {
	h.T.Helper()
	return h.Deliver(backend.Message{Topic: topics.Ops(dev, kind), Payload: []byte(body), Username: operator}, dev, eventKind)
}

// Deliver injects m into the bus and waits for the first event of
// eventKind about dev that follows; with eventKind "" it does not wait.
func (h *Harness) Deliver(m backend.Message, dev, eventKind string) backend.Event {
	h.T.Helper()
	if eventKind == "" {
		h.Bus.Deliver(m)
		return backend.Event{}
	}
	ch, cancel := h.Fleet.SubscribeEvents(backend.EventFilter{Device: dev, Kind: eventKind})
	defer cancel()
	// Emit fans an event out to SubscribeEvents before it publishes it on
	// the bus: wait for the bus too, so that Events sees it on return.
	topic := topics.Event(dev, eventKind)
	sent := len(h.Bus.Sent(topic))
	h.Bus.Deliver(m)
	select {
	case ev := <-ch:
		if topics.ValidateID(dev) == nil { // else no topic carries it
			h.Bus.WaitSent(h.T, topic, sent+1, Wait)
		}
		return ev
	case <-time.After(Wait):
		h.T.Fatalf("no %s event for %s within %v of %s %.200s", eventKind, dev, Wait, m.Topic, m.Payload)
		return backend.Event{}
	}
}

// Downlinks opens the messages of kind sent to dev so far, in order, and
// decodes each body with decode. Binary kinds (FOTA chunks) are opened as
// binary envelopes.
func Downlinks[T any](h *Harness, dev, kind string, decode func(body []byte) (T, error)) []T {
	h.T.Helper()
	k := h.KeysOf(dev)
	open := envelope.Open
	if kind == topics.KindFOTAChunk {
		open = envelope.OpenBinary
	}
	var out []T
	for _, m := range h.Bus.Sent(topics.DeviceDown(dev, kind)) {
		msg, err := open(k, m.Topic, m.Payload)
		if err != nil {
			h.T.Fatalf("open %s: %v", m.Topic, err)
		}
		v, err := decode(msg.Body)
		if err != nil {
			h.T.Fatalf("%s body %.200s: %v", m.Topic, msg.Body, err)
		}
		out = append(out, v)
	}
	return out
}

// WaitDownlinks waits until at least n messages of kind have been sent to
// dev; it fails the test after Wait.
func (h *Harness) WaitDownlinks(dev, kind string, n int) {
	h.T.Helper()
	h.Bus.WaitSent(h.T, topics.DeviceDown(dev, kind), n, Wait)
}

// Events returns the data of the events of kind published for dev so far,
// decoded, in order.
func (h *Harness) Events(dev, kind string) []map[string]any {
	h.T.Helper()
	var out []map[string]any
	for _, m := range h.Bus.Sent(topics.Event(dev, kind)) {
		var ev backend.Event
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			h.T.Fatalf("event %s %s: %v", m.Topic, m.Payload, err)
		}
		var d map[string]any
		if len(ev.Data) > 0 {
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				h.T.Fatalf("event data %s: %v", ev.Data, err)
			}
		}
		out = append(out, d)
	}
	return out
}

// Snapshot dumps every key under the test prefix.
func (h *Harness) Snapshot() map[string]string {
	h.T.Helper()
	return backendtest.Snapshot(h.T, h.Redis, h.Prefix)
}

// AssertUnchanged fails t for every key under the test prefix created,
// changed or deleted since before, except the audit and security logs
// (which a refused request does append to), the fleet's replica heartbeat
// (renewed on a timer) and keys ending with ignore.
func (h *Harness) AssertUnchanged(t *testing.T, before map[string]string, ignore ...string) {
	t.Helper()
	always := []string{":audit", h.Keys.Security(), h.Keys.Replica(h.Fleet.ReplicaID())}
	backendtest.AssertUnchanged(t, h.Redis, h.Prefix, before, append(always, ignore...)...)
}
