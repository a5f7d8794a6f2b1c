package commands

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
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
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
	var hs []func(backend.Message)
	for _, s := range b.subs {
		if match(s.filter, topic) {
			hs = append(hs, s.h)
		}
	}
	b.mu.Unlock()
	for _, h := range hs {
		h(backend.Message{Topic: topic, Payload: payload})
	}
	return nil
}

func (b *memBus) Subscribe(filter string, h func(backend.Message)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs = append(b.subs, memSub{filter, h})
	return nil
}

func (b *memBus) numSubs() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// sent returns the published messages whose topic starts with prefix.
func (b *memBus) sent(prefix string) []backend.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []backend.Message
	for _, m := range b.published {
		if strings.HasPrefix(m.Topic, prefix) {
			out = append(out, m)
		}
	}
	return out
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

// fakeClock is the injected clock.
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
	rdb    redis.UniversalClient
	prefix string
	bus    *memBus
	fleet  *backend.Service
	svc    *Service
	clk    *fakeClock
	keys   map[string]envelope.Keys
	cfg    Config
}

// newHarness builds a backend on the test Redis and an in-memory bus, and
// a commands Service on a fake clock (not running: tests drive deliver and
// sweep themselves unless they call run).
func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix, bus: &memBus{},
		clk: &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, keys: map[string]envelope.Keys{}}
	h.fleet, err = backend.New(backend.Config{
		Redis: rdb, Prefix: prefix, Vault: vault, Bus: h.bus,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), BcryptCost: bcrypt.MinCost,
	})
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := store.NewKeys(prefix)
	h.cfg = Config{
		Redis: rdb, Keys: keys, Fleet: h.fleet, Now: h.clk.Now,
		Logger:        zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Registerer:    prometheus.NewRegistry(),
		ResultTimeout: time.Minute, ResendAfter: 10 * time.Second, SweepInterval: 20 * time.Millisecond,
	}
	h.svc = h.newService()
	return h
}

func (h *harness) newService() *Service {
	h.t.Helper()
	cfg := h.cfg
	cfg.Registerer = prometheus.NewRegistry()
	s, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// run runs fn(ctx) until the test ends and checks that it returns promptly.
func (h *harness) run(name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("%s: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			h.t.Errorf("%s did not return within 5 s of cancel", name)
		}
	})
}

// device provisions id; online marks it online.
func (h *harness) device(id string, online bool) {
	h.t.Helper()
	psk, err := h.fleet.Provision(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.keys[id] = k
	h.setOnline(id, online)
}

func (h *harness) setOnline(id string, online bool) {
	h.t.Helper()
	v := "0"
	if online {
		v = "1"
	}
	if err := h.rdb.HSet(h.ctx, h.svc.keys.Device(id), "online", v).Err(); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) submit(dev, doc string) Command {
	h.t.Helper()
	c, err := h.svc.Parse([]byte(doc))
	if err != nil {
		h.t.Fatalf("parse %s: %v", doc, err)
	}
	cmd, created, err := h.svc.Submit(h.ctx, dev, "tester", c)
	if err != nil || !created {
		h.t.Fatalf("submit %s: created=%v err=%v", doc, created, err)
	}
	return cmd
}

func (h *harness) get(cid string) Command {
	h.t.Helper()
	c, err := h.svc.Get(h.ctx, cid)
	if err != nil {
		h.t.Fatalf("get %s: %v", cid, err)
	}
	return c
}

func (h *harness) wantState(cid, want string) Command {
	h.t.Helper()
	c := h.get(cid)
	if c.State != want {
		h.t.Fatalf("command %s is %s, want %s (%+v)", cid, c.State, want, c)
	}
	return c
}

// result hands the service a command_result from dev.
func (h *harness) result(dev string, r topics.CommandResult) error {
	b, _ := json.Marshal(topics.CommandResultBody{CommandResult: &r})
	return h.svc.HandleResult(h.ctx, dev, envelope.Message{Body: b})
}

// downlinks opens the commands sent to dev, in order.
func (h *harness) downlinks(dev string) []topics.Command {
	h.t.Helper()
	k := h.keys[dev]
	var out []topics.Command
	for _, m := range h.bus.sent(topics.DeviceDown(dev, topics.KindCommand)) {
		msg, err := envelope.Open(&k, m.Topic, m.Payload)
		if err != nil {
			h.t.Fatal(err)
		}
		var b topics.CommandBody
		if err := json.Unmarshal(msg.Body, &b); err != nil || b.Command == nil {
			h.t.Fatalf("downlink body %s: %v", msg.Body, err)
		}
		out = append(out, *b.Command)
	}
	return out
}

// events returns the command events published for dev, decoded.
func (h *harness) events(dev string) []map[string]any {
	var out []map[string]any
	for _, m := range h.bus.sent(topics.Event(dev, topics.EventCommand)) {
		var ev backend.Event
		json.Unmarshal(m.Payload, &ev)
		var d map[string]any
		json.Unmarshal(ev.Data, &d)
		out = append(out, d)
	}
	return out
}

// snapshot dumps every key under the test prefix except audit streams.
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
