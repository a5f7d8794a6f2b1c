package backend

import (
	"bytes"
	"context"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// memBus is an in-memory MQTT fan-out: Publish calls every matching
// subscriber in the caller's goroutine, like mochi's inline subscriptions.
type memBus struct {
	mu        sync.Mutex // guards subs and published
	subs      []memSub
	published []Message
}

type memSub struct {
	filter string
	h      func(Message)
}

func (b *memBus) Publish(_ context.Context, topic string, payload []byte, _ byte) error {
	b.mu.Lock()
	b.published = append(b.published, Message{Topic: topic, Payload: bytes.Clone(payload)})
	var hs []func(Message)
	for _, s := range b.subs {
		if match(s.filter, topic) {
			hs = append(hs, s.h)
		}
	}
	b.mu.Unlock()
	for _, h := range hs {
		h(Message{Topic: topic, Payload: payload})
	}
	return nil
}

func (b *memBus) Subscribe(filter string, h func(Message)) error {
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

// deliver injects a message as if a client with username had published it.
func (b *memBus) deliver(m Message) {
	b.mu.Lock()
	var hs []func(Message)
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

func (b *memBus) sent(prefix string) []Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Message
	for _, m := range b.published {
		if strings.HasPrefix(m.Topic, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// match implements MQTT topic filters (+ and #).
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

type harness struct {
	t      *testing.T
	s      *Service
	bus    *memBus
	rdb    redis.UniversalClient
	prefix string
	reg    *prometheus.Registry
	ctx    context.Context
}

// newHarness runs a Service against the test Redis and an in-memory bus.
func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, bus: &memBus{}, rdb: rdb, prefix: prefix, reg: prometheus.NewRegistry(), ctx: context.Background()}
	h.s, err = New(Config{
		Redis: rdb, Prefix: prefix, Vault: vault, Bus: h.bus,
		Logger:     zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Registerer: h.reg, BcryptCost: bcrypt.MinCost, Workers: 3, QueueSize: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of cancel")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for h.bus.numSubs() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("Service did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return h
}

// with returns a copy of h that reports to t (for subtests).
func (h *harness) with(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

// device provisions id and returns its keys.
func (h *harness) device(id string) *envelope.Keys {
	h.t.Helper()
	psk, err := h.s.Provision(h.ctx, id)
	if err != nil {
		h.t.Fatalf("provision %s: %v", id, err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		h.t.Fatal(err)
	}
	return &k
}

func (h *harness) seal(k *envelope.Keys, topic string, nonce uint64, body string) []byte {
	h.t.Helper()
	b, err := envelope.Seal(k, topic, nonce, time.Now(), []byte(body), false, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// publish delivers a device message and waits for the first event about
// dev of kind; it fails the test if none comes.
func (h *harness) publish(dev, kind string, m Message) Event {
	h.t.Helper()
	ch, cancel := h.s.SubscribeEvents(EventFilter{Device: dev, Kind: kind})
	defer cancel()
	h.bus.deliver(m)
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no %s event for %q after a message on %s", kind, dev, m.Topic)
		return Event{}
	}
}

func (h *harness) birth(k *envelope.Keys, dev string, nonce uint64, body string) Event {
	topic := topics.DeviceUp(dev, topics.KindBirth)
	return h.publish(dev, topics.EventPresence, Message{Topic: topic, Payload: h.seal(k, topic, nonce, body), Username: dev})
}

// snapshot dumps every state key under the test prefix. Audit and security
// streams are logs, not state, and are left out.
func (h *harness) snapshot() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, k := range redistest.Keys(h.t, h.rdb, h.prefix) {
		if strings.HasSuffix(k, ":audit") || k == h.s.keys.Security() {
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

func (h *harness) assertUnchanged(before map[string]string) {
	h.t.Helper()
	after := h.snapshot()
	for k, v := range after {
		if bv, ok := before[k]; !ok {
			h.t.Errorf("key %s was created", k)
		} else if bv != v {
			h.t.Errorf("key %s changed", k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			h.t.Errorf("key %s was deleted", k)
		}
	}
}

func (h *harness) rejections(reason string) float64 {
	return testutil.ToFloat64(h.s.m.rejections.WithLabelValues(reason))
}
