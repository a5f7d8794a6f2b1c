package config

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// memBus is an in-memory MQTT fan-out that records what is published.
type memBus struct {
	mu        sync.Mutex // guards subs and published
	subs      []memSub
	published []backend.Message
}

type memSub struct {
	filter string
	h      func(backend.Message)
}

func (b *memBus) Publish(_ context.Context, topic string, payload []byte, _ byte) error {
	b.mu.Lock()
	b.published = append(b.published, backend.Message{Topic: topic, Payload: bytes.Clone(payload)})
	b.mu.Unlock()
	b.deliver(backend.Message{Topic: topic, Payload: payload})
	return nil
}

func (b *memBus) Subscribe(filter string, h func(backend.Message)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs = append(b.subs, memSub{filter, h})
	return nil
}

func (b *memBus) deliver(m backend.Message) {
	b.mu.Lock()
	var hs []func(backend.Message)
	for _, s := range b.subs {
		if match(s.filter, m.Topic) {
			hs = append(hs, s.h)
		}
	}
	b.mu.Unlock()
	for _, h := range hs {
		h(m)
	}
}

func (b *memBus) sent(topic string) []backend.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []backend.Message
	for _, m := range b.published {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

func (b *memBus) numSubs() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

func match(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, p := range f {
		if p == "#" {
			return true
		}
		if i >= len(t) || (p != "+" && p != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}

// fakeClock is a settable time source.
type fakeClock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type harness struct {
	t      *testing.T
	ctx    context.Context
	b      *backend.Service
	s      *Service
	bus    *memBus
	rdb    redis.UniversalClient
	prefix string
	clock  *fakeClock
	keys   map[string]*envelope.Keys
	nonce  map[string]uint64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: context.Background(), bus: &memBus{}, rdb: rdb, prefix: prefix,
		clock: &fakeClock{t: time.Now()}, keys: map[string]*envelope.Keys{}, nonce: map[string]uint64{}}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	h.b, err = backend.New(backend.Config{
		Redis: rdb, Prefix: prefix, Vault: vault, Bus: h.bus, Logger: log,
		BcryptCost: bcrypt.MinCost, Workers: 2, Now: h.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.s, err = New(Config{Backend: h.b, Logger: log, Now: h.clock.Now, SweepInterval: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
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
	for deadline := time.Now().Add(5 * time.Second); h.bus.numSubs() < 2; {
		if time.Now().After(deadline) {
			t.Fatal("backend did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
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
	h.bus.deliver(backend.Message{Topic: topic, Payload: env, Username: dev})
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
	h.bus.deliver(backend.Message{Topic: topics.Ops(dev, topics.KindConfig), Payload: []byte(body), Username: operator})
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
	for _, m := range h.bus.sent(topic) {
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

// snapshot dumps every key under the prefix except the audit and security
// logs.
func (h *harness) snapshot() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, k := range redistest.Keys(h.t, h.rdb, h.prefix) {
		if strings.HasSuffix(k, ":audit") || strings.HasSuffix(k, "security") {
			continue
		}
		v, err := h.rdb.Dump(h.ctx, k).Result()
		if err != nil {
			h.t.Fatalf("dump %s: %v", k, err)
		}
		out[k] = v
	}
	return out
}

func (h *harness) assertUnchanged(t *testing.T, before map[string]string) {
	t.Helper()
	after := h.snapshot()
	for k, v := range after {
		if bv, ok := before[k]; !ok {
			t.Errorf("key %s was created", k)
		} else if bv != v {
			t.Errorf("key %s changed", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("key %s was deleted", k)
		}
	}
}

func ackBody(a topics.ConfigAck) topics.ConfigAckBody { return topics.ConfigAckBody{ConfigAck: &a} }

// waitDownlinks waits until n config messages have been sent to dev.
func (h *harness) waitDownlinks(dev string, n int) []topics.ConfigUpdate {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ups := h.downlinks(dev)
		if len(ups) >= n {
			return ups
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d config messages sent to %s, want %d", len(ups), dev, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
