package fota

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest/fleettest"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// harness is the shared fleet harness with a FOTA service and its
// signing key.
type harness struct {
	*fleettest.Harness
	svc *Service
	key ed25519.PrivateKey
	cfg Config
}

// newHarness builds a backend on the test Redis and a real broker and a
// FOTA service, both on a fake clock; tests drive Tick themselves.
func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{Harness: fleettest.New(t, fleettest.Options{FleetOnClock: true})}
	_, h.key, _ = wire.GenerateKey(rand.Reader)
	h.cfg = Config{
		Redis: h.Redis, Keys: h.Keys, Fleet: h.Fleet, Key: h.key, Now: h.Clock.Now, Logger: h.Log,
		ChunkSize: 1024, UpdateTimeout: 5 * time.Minute, ManifestResend: 30 * time.Second,
	}
	h.svc = h.newService()
	return h
}

// newService builds another Service on h.cfg (which leaves Registerer
// nil: each gets a metrics registry of its own).
func (h *harness) newService() *Service { return fleettest.Build(h.T, New, h.cfg) }

// device provisions id, online, running firmware 1.0.0.
func (h *harness) device(id string) {
	h.T.Helper()
	h.Device(id)
	h.SetDevice(id, "online", "1", "firmware_version", "1.0.0")
}

// upload stores a test image of size bytes as version.
func (h *harness) upload(version string, size int, failBoot bool) []byte {
	h.T.Helper()
	img, err := wire.BuildTestImage(version, size, failBoot, 7)
	if err != nil {
		h.T.Fatal(err)
	}
	if _, err := h.svc.Upload(h.Ctx, Upload{Version: version, Image: img}); err != nil {
		h.T.Fatalf("upload %s: %v", version, err)
	}
	return img
}

// status hands the service a fota_status from dev.
func (h *harness) status(dev string, st wire.Status) {
	h.T.Helper()
	b, _ := json.Marshal(wire.StatusBody{FotaStatus: &st})
	if err := h.svc.HandleStatus(h.Ctx, dev, envelope.Message{Body: b}); err != nil {
		h.T.Fatalf("status %s %+v: %v", dev, st, err)
	}
}

// finish reports the end of dev's update to version in state st. For
// succeeded and rolled_back it first does what a genuine device does
// before (the backend refuses them otherwise): it fetches every chunk and
// reports the reboot (once: a repeat after the end needs nothing more).
func (h *harness) finish(dev, version string, st wire.State, reason string) {
	h.T.Helper()
	if (st == wire.StateSucceeded || st == wire.StateRolledBack) && h.fotaOf(dev).Active {
		h.serveAll(dev, version)
		h.status(dev, wire.Status{Version: version, State: wire.StateRebooting, ChunkReceived: 3, TotalChunks: 3})
	}
	h.status(dev, wire.Status{Version: version, State: st, ChunkReceived: 3, TotalChunks: 3, Reason: reason})
}

// serveAll has dev fetch every chunk of version (its active update).
func (h *harness) serveAll(dev, version string) {
	h.T.Helper()
	f, err := h.svc.load(h.Ctx, version)
	if err != nil {
		h.T.Fatal(err)
	}
	for i := 0; i < f.Chunks; i += wire.MaxWindow {
		var idx []int
		for c := i; c < min(i+wire.MaxWindow, f.Chunks); c++ {
			idx = append(idx, c)
		}
		b, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: version, Chunks: idx}})
		if err := h.svc.HandleRequest(h.Ctx, dev, envelope.Message{Body: b}); err != nil {
			h.T.Fatalf("request %s %v: %v", version, idx, err)
		}
	}
}

// manifests returns the manifests sent to dev.
func (h *harness) manifests(dev string) []wire.Manifest {
	h.T.Helper()
	return fleettest.Downlinks(h.Harness, dev, topics.KindFOTAManifest, wire.ParseManifestBody)
}

// chunks opens the chunks sent to dev, in order.
func (h *harness) chunks(dev string) []wire.Chunk {
	h.T.Helper()
	return fleettest.Downlinks(h.Harness, dev, topics.KindFOTAChunk, wire.DecodeChunk)
}

// events returns the FOTA events published for dev, decoded.
func (h *harness) events(dev string) []map[string]any {
	h.T.Helper()
	return h.Events(dev, topics.EventFOTA)
}

// fotaOf returns dev's FOTA progress.
func (h *harness) fotaOf(dev string) backend.DeviceFOTA {
	h.T.Helper()
	f, err := h.svc.DeviceStatus(h.Ctx, dev)
	if err != nil {
		h.T.Fatal(err)
	}
	return f
}

func (h *harness) tick(s *Service) bool {
	h.T.Helper()
	ok, err := s.Tick(h.Ctx)
	if err != nil {
		h.T.Fatalf("tick: %v", err)
	}
	return ok
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
