package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/ecowatt/ecowatt/devicesim/clock"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/commands"
	"github.com/ecowatt/ecowatt/backend/config"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// harness is a backend with the config and command services on real
// Redis and a real broker, raw devices answering on the bus, and a job
// engine on a fake clock that tests tick by hand.
type harness struct {
	t      *testing.T
	ctx    context.Context
	rdb    redis.UniversalClient
	prefix string
	bus    *backendtest.TestBus[backend.Message]
	b      *backend.Service
	cfgs   *config.Service
	cmds   *commands.Service
	clk    *clock.Fake
	log    zerolog.Logger

	mu   sync.Mutex // guards devs and the devices' state
	devs map[string]*rawDevice
	work chan backend.Message
}

// rawDevice is a device as the protocol sees it: keys, a nonce, its
// config, and what it received (its receipts).
type rawDevice struct {
	id       string
	keys     envelope.Keys
	nonce    uint64
	cfg      topics.Config
	failCmd  bool           // answer commands with a failure (inverter fault)
	silent   bool           // receive but never answer
	configs  []int64        // config versions received
	commands map[string]int // command ID -> times executed
	rotated  []string       // key rotations taken (their IDs)
}

// keyOverlap is the harness backend's key overlap (real time): how long
// a silent device's key rotation stays pending before it expires.
const keyOverlap = 3 * time.Second

func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	h := &harness{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix, bus: backendtest.Bus[backend.Message](t),
		clk: clock.NewFake(time.Date(2026, 3, 4, 5, 6, 0, 0, time.UTC)), devs: map[string]*rawDevice{},
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), work: make(chan backend.Message, 4096)}
	var err error
	h.b, err = backend.New(backend.Config{Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.bus,
		Logger: h.log, BcryptCost: bcrypt.MinCost, Workers: 2, KeyOverlap: keyOverlap})
	if err != nil {
		t.Fatal(err)
	}
	h.cfgs, err = config.New(config.Config{Redis: rdb, Keys: h.b.Keys(), Fleet: h.b, Logger: h.log,
		Registerer: prometheus.NewRegistry(), SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	h.cfgs.Attach()
	h.cmds, err = commands.New(commands.Config{Redis: rdb, Keys: h.b.Keys(), Fleet: h.b, Logger: h.log,
		Registerer: prometheus.NewRegistry(), SweepInterval: 50 * time.Millisecond, DeliveryTick: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.cmds.Attach()
	h.run("backend", h.b.Run)
	h.run("commands", h.cmds.Run)
	if err := h.bus.Subscribe(topics.Root+"/dev/+/down/#", func(m backend.Message) { h.work <- m }); err != nil {
		t.Fatal(err)
	}
	h.run("devices", h.answer)
	return h
}

// engine builds a job engine on the harness (several may share Redis).
func (h *harness) engine() *Service {
	h.t.Helper()
	s, err := New(Config{Redis: h.rdb, Keys: h.b.Keys(), Fleet: h.b, Configs: h.cfgs, Commands: h.cmds,
		Rotations: h.b, Bus: h.bus, Logger: h.log, Now: h.clk.Now, LeaseTTL: 300 * time.Millisecond, Tick: 20 * time.Millisecond})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

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

// device provisions id with labels, online.
func (h *harness) device(id string, labels map[string]string) *rawDevice {
	h.t.Helper()
	psk, err := h.b.ProvisionLabeled(h.ctx, id, labels, "tester")
	if err != nil {
		h.t.Fatal(err)
	}
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		h.t.Fatal(err)
	}
	d := &rawDevice{id: id, keys: k, cfg: topics.DefaultConfig(), commands: map[string]int{}}
	h.mu.Lock()
	h.devs[id] = d
	h.mu.Unlock()
	h.setOnline(id, true)
	return d
}

func (h *harness) setOnline(id string, online bool) {
	h.t.Helper()
	v := "0"
	if online {
		v = "1"
	}
	if err := h.rdb.HSet(h.ctx, h.b.Keys().Device(id), deviceOnline, v).Err(); err != nil {
		h.t.Fatal(err)
	}
}

// answer plays every raw device: it applies config updates and acks
// them, executes commands (once per ID, as the firmware's flash journal
// does) and reports their results.
func (h *harness) answer(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-h.work:
			t, err := topics.Parse(m.Topic)
			if err != nil {
				continue
			}
			h.mu.Lock()
			d := h.devs[t.Device]
			h.mu.Unlock()
			if d == nil {
				continue
			}
			msg, err := envelope.Open(&d.keys, m.Topic, m.Payload)
			if err != nil {
				h.t.Errorf("device %s cannot open %s: %v", d.id, m.Topic, err)
				continue
			}
			h.mu.Lock()
			kind, reply := h.react(d, t.Kind, msg.Body)
			h.mu.Unlock()
			if reply != nil {
				h.uplink(d, kind, reply)
			}
		}
	}
}

// react is a device's answer to one downlink; h.mu is held.
func (h *harness) react(d *rawDevice, kind string, body []byte) (string, any) {
	if d.silent {
		return "", nil
	}
	switch kind {
	case topics.KindConfig:
		var b topics.ConfigBody
		if json.Unmarshal(body, &b) != nil || b.ConfigUpdate == nil {
			return "", nil
		}
		u := *b.ConfigUpdate
		d.configs = append(d.configs, u.Version)
		next, ack := topics.ValidateUpdate(d.cfg, u)
		d.cfg, ack.Version = next, u.Version
		return topics.KindConfigAck, topics.ConfigAckBody{ConfigAck: &ack}
	case topics.KindCommand:
		var b topics.CommandBody
		if json.Unmarshal(body, &b) != nil || b.Command == nil {
			return "", nil
		}
		c := *b.Command
		r := topics.CommandResult{ID: c.ID, Status: topics.ResultSuccess, ExecutedAt: time.Now().UTC()}
		if c.Action == topics.ActionReadRegister || c.Action == topics.ActionWriteRegister {
			v := 230
			if c.Value != nil {
				v = *c.Value
			}
			r.Value = &v
		}
		if d.commands[c.ID] > 0 {
			r.Duplicate = true
		} else if d.failCmd {
			r.Status, r.Error = topics.ResultFailed, "inverter_fault"
		}
		d.commands[c.ID]++
		return topics.KindCommandResult, topics.CommandResultBody{CommandResult: &r}
	case topics.KindRotateKey:
		// The firmware's order: keep the new key, answer under it.
		r, psk, err := topics.ParseRotateKey(body)
		if err != nil {
			h.t.Errorf("device %s: bad rotate_key: %v", d.id, err)
			return "", nil
		}
		if slices.Contains(d.rotated, r.ID) {
			return topics.KindKeyAck, map[string]topics.KeyAck{"key_ack": {ID: r.ID}} // a resend: under the new key already
		}
		nk, err := envelope.DeriveKeys(psk)
		if err != nil {
			h.t.Error(err)
			return "", nil
		}
		d.keys = nk
		d.rotated = append(d.rotated, r.ID)
		return topics.KindKeyAck, map[string]topics.KeyAck{"key_ack": {ID: r.ID}}
	}
	return "", nil
}

func (h *harness) uplink(d *rawDevice, kind string, body any) {
	raw, err := json.Marshal(body)
	if err != nil {
		h.t.Error(err)
		return
	}
	topic := topics.DeviceUp(d.id, kind)
	h.mu.Lock()
	d.nonce++
	n := d.nonce
	h.mu.Unlock()
	env, err := envelope.Seal(&d.keys, topic, n, time.Now(), raw, false, nil)
	if err != nil {
		h.t.Error(err)
		return
	}
	h.bus.Deliver(backend.Message{Topic: topic, Payload: env, Username: d.id})
}

// create creates a job from body; it fails the test on an error.
func (h *harness) create(s *Service, body string) Job {
	h.t.Helper()
	j, err := s.Create(h.ctx, []byte(body), "tester")
	if err != nil {
		h.t.Fatalf("create %s: %v", body, err)
	}
	return j
}

// until ticks s, advancing the fake clock by step each time, until
// cond holds of the job; it fails after timeout of real time.
func (h *harness) until(s *Service, jid string, step time.Duration, timeout time.Duration, what string, cond func(Job) bool) Job {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := s.Tick(h.ctx); err != nil {
			h.t.Fatalf("tick: %v", err)
		}
		j, err := s.Get(h.ctx, jid)
		if err != nil {
			h.t.Fatal(err)
		}
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not reached in %s; job %s %v", what, timeout, j.State, j.Counts)
		}
		h.clk.Advance(step)
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) rows(s *Service, jid, state string) []DeviceRow {
	h.t.Helper()
	var out []DeviceRow
	cursor := ""
	for {
		p, err := s.Devices(h.ctx, jid, state, cursor, 100)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, p.Devices...)
		if p.Next == "" {
			return out
		}
		cursor = p.Next
	}
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func asErr(err error, target **backend.Error) bool { return errors.As(err, target) }
