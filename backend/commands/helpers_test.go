package commands

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

type harness struct {
	t      *testing.T
	ctx    context.Context
	rdb    redis.UniversalClient
	prefix string
	bus    *backendtest.TestBus[backend.Message]
	fleet  *backend.Service
	svc    *Service
	clk    *backendtest.Clock
	keys   map[string]envelope.Keys
	cfg    Config
}

// newHarness builds a backend on the test Redis and a real broker, and
// a commands Service on a fake clock (not running: tests drive deliver and
// sweep themselves unless they call run).
func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	var err error
	h := &harness{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix, bus: backendtest.Bus[backend.Message](t),
		clk: backendtest.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), keys: map[string]envelope.Keys{}}
	h.fleet, err = backend.New(backend.Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.bus,
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
	for _, m := range h.bus.Sent(topics.DeviceDown(dev, topics.KindCommand)) {
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
	for _, m := range h.bus.Sent(topics.Event(dev, topics.EventCommand)) {
		var ev backend.Event
		json.Unmarshal(m.Payload, &ev)
		var d map[string]any
		json.Unmarshal(ev.Data, &d)
		out = append(out, d)
	}
	return out
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
	backendtest.AssertUnchanged(t, h.rdb, h.prefix, before, ":audit", h.svc.keys.Security())
}
