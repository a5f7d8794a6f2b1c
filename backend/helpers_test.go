package backend

import (
	"context"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

type harness struct {
	t      testing.TB
	s      *Service
	bus    *backendtest.TestBus[Message]
	rdb    redis.UniversalClient
	prefix string
	reg    *prometheus.Registry
	ctx    context.Context
}

// newHarness runs a Service against the test Redis and a real broker;
// mods adjust its Config.
func newHarness(t testing.TB, mods ...func(*Config)) *harness {
	t.Helper()
	return newHarnessClock(t, nil, mods...)
}

// newHarnessClock is newHarness with the service's clock (nil: time.Now).
func newHarnessClock(t testing.TB, now func() time.Time, mods ...func(*Config)) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	var err error
	h := &harness{t: t, bus: backendtest.Bus[Message](t), rdb: rdb, prefix: prefix, reg: prometheus.NewRegistry(), ctx: context.Background()}
	cfg := Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.bus,
		Logger:     zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		Registerer: h.reg, BcryptCost: bcrypt.MinCost, Workers: 3, QueueSize: 4, Now: now,
	}
	for _, m := range mods {
		m(&cfg)
	}
	h.s, err = New(cfg)
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
	h.bus.WaitSubscribed(t, 2, 5*time.Second)
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
	h.bus.Deliver(m)
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

// snapshot dumps every key under the test prefix.
func (h *harness) snapshot() map[string]string {
	h.t.Helper()
	return backendtest.Snapshot(h.t, h.rdb, h.prefix)
}

// assertUnchanged checks that no state key changed since before; the audit
// and security streams are logs, not state, and are left out, as is the
// replica heartbeat (renewed on a timer).
func (h *harness) assertUnchanged(before map[string]string) {
	h.t.Helper()
	backendtest.AssertUnchanged(h.t, h.rdb, h.prefix, before, ":audit", h.s.keys.Security(), h.s.keys.Replica(h.s.ReplicaID()))
}

func (h *harness) rejections(reason string) float64 {
	return testutil.ToFloat64(h.s.m.rejections.WithLabelValues(reason))
}
