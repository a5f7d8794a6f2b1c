package fota

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
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
	key    ed25519.PrivateKey
	keys   map[string]envelope.Keys
	cfg    Config
}

// newHarness builds a backend on the test Redis and a real broker and a
// FOTA service on a fake clock; tests drive Tick themselves.
func newHarness(t *testing.T) *harness {
	t.Helper()
	rdb, prefix := redistest.Client(t)
	var err error
	h := &harness{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix, bus: backendtest.Bus[backend.Message](t),
		clk: backendtest.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), keys: map[string]envelope.Keys{}}
	h.fleet, err = backend.New(backend.Config{
		Redis: rdb, Prefix: prefix, Vault: backendtest.Vault(t), Bus: h.bus, Now: h.clk.Now,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), BcryptCost: bcrypt.MinCost,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, h.key, _ = wire.GenerateKey(rand.Reader)
	keys, _ := store.NewKeys(prefix)
	h.cfg = Config{
		Redis: rdb, Keys: keys, Fleet: h.fleet, Key: h.key, Now: h.clk.Now,
		Logger:    zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		ChunkSize: 1024, UpdateTimeout: 5 * time.Minute, ManifestResend: 30 * time.Second,
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

// device provisions id, online, running firmware 1.0.0.
func (h *harness) device(id string) {
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
	if err := h.rdb.HSet(h.ctx, h.svc.keys.Device(id), "online", "1", "firmware_version", "1.0.0").Err(); err != nil {
		h.t.Fatal(err)
	}
}

// upload stores a test image of size bytes as version.
func (h *harness) upload(version string, size int, failBoot bool) []byte {
	h.t.Helper()
	img, err := wire.BuildTestImage(version, size, failBoot, 7)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.svc.Upload(h.ctx, Upload{Version: version, Image: img}); err != nil {
		h.t.Fatalf("upload %s: %v", version, err)
	}
	return img
}

// status hands the service a fota_status from dev.
func (h *harness) status(dev string, st wire.Status) {
	h.t.Helper()
	b, _ := json.Marshal(wire.StatusBody{FotaStatus: &st})
	if err := h.svc.HandleStatus(h.ctx, dev, envelope.Message{Body: b}); err != nil {
		h.t.Fatalf("status %s %+v: %v", dev, st, err)
	}
}

// finish reports the end of dev's update to version in state st. For
// succeeded and rolled_back it first does what a genuine device does
// before (the backend refuses them otherwise): it fetches every chunk and
// reports the reboot (once: a repeat after the end needs nothing more).
func (h *harness) finish(dev, version string, st wire.State, reason string) {
	h.t.Helper()
	if (st == wire.StateSucceeded || st == wire.StateRolledBack) && h.fotaOf(dev).Active {
		h.serveAll(dev, version)
		h.status(dev, wire.Status{Version: version, State: wire.StateRebooting, ChunkReceived: 3, TotalChunks: 3})
	}
	h.status(dev, wire.Status{Version: version, State: st, ChunkReceived: 3, TotalChunks: 3, Reason: reason})
}

// serveAll has dev fetch every chunk of version (its active update).
func (h *harness) serveAll(dev, version string) {
	h.t.Helper()
	f, err := h.svc.load(h.ctx, version)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i < f.Chunks; i += wire.MaxWindow {
		var idx []int
		for c := i; c < min(i+wire.MaxWindow, f.Chunks); c++ {
			idx = append(idx, c)
		}
		b, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: version, Chunks: idx}})
		if err := h.svc.HandleRequest(h.ctx, dev, envelope.Message{Body: b}); err != nil {
			h.t.Fatalf("request %s %v: %v", version, idx, err)
		}
	}
}

// manifests returns the manifests sent to dev.
func (h *harness) manifests(dev string) []wire.Manifest {
	h.t.Helper()
	k := h.keys[dev]
	var out []wire.Manifest
	for _, m := range h.bus.Sent(topics.DeviceDown(dev, topics.KindFOTAManifest)) {
		msg, err := envelope.Open(&k, m.Topic, m.Payload)
		if err != nil {
			h.t.Fatal(err)
		}
		man, err := wire.ParseManifestBody(msg.Body)
		if err != nil {
			h.t.Fatalf("manifest body %s: %v", msg.Body, err)
		}
		out = append(out, man)
	}
	return out
}

// chunks opens the chunks sent to dev, in order.
func (h *harness) chunks(dev string) []wire.Chunk {
	h.t.Helper()
	k := h.keys[dev]
	var out []wire.Chunk
	for _, m := range h.bus.Sent(topics.DeviceDown(dev, topics.KindFOTAChunk)) {
		msg, err := envelope.OpenBinary(&k, m.Topic, m.Payload)
		if err != nil {
			h.t.Fatal(err)
		}
		c, err := wire.DecodeChunk(msg.Body)
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// events returns the FOTA events published for dev, decoded.
func (h *harness) events(dev string) []map[string]any {
	var out []map[string]any
	for _, m := range h.bus.Sent(topics.Event(dev, topics.EventFOTA)) {
		var ev backend.Event
		json.Unmarshal(m.Payload, &ev)
		var d map[string]any
		json.Unmarshal(ev.Data, &d)
		out = append(out, d)
	}
	return out
}

// fotaOf returns dev's FOTA progress.
func (h *harness) fotaOf(dev string) backend.DeviceFOTA {
	h.t.Helper()
	f, err := h.svc.DeviceStatus(h.ctx, dev)
	if err != nil {
		h.t.Fatal(err)
	}
	return f
}

func (h *harness) tick(s *Service) bool {
	h.t.Helper()
	ok, err := s.Tick(h.ctx)
	if err != nil {
		h.t.Fatalf("tick: %v", err)
	}
	return ok
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

func wantCode(t *testing.T, err error, code, contains string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %s", code)
	}
	if got := backend.ErrorCode(err); got != code {
		t.Fatalf("error code %s (%v); want %s", got, err, code)
	}
	if msg, _ := backend.ErrorMessage(err); !strings.Contains(msg, contains) {
		t.Fatalf("message %q does not contain %q", msg, contains)
	}
}
