package fota

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rogue runs the backend with the FOTA handlers attached, so that tests
// publish signed uplinks through the real broker as a rogue holder of a
// device key would (devicesim never sends these).
type rogue struct {
	h *harness
}

func newRogue(t *testing.T, h *harness) *rogue {
	t.Helper()
	h.svc.Attach()
	h.RunFleet(2)
	return &rogue{h: h}
}

// send publishes body on dev's up/kind and waits for the first event of
// eventKind about dev; with eventKind "" it does not wait.
func (r *rogue) send(t *testing.T, dev, kind string, body any, eventKind string) backend.Event {
	t.Helper()
	return r.h.With(t).Uplink(dev, kind, body, eventKind)
}

// refused sends body and requires a security event naming want.
func (r *rogue) refused(t *testing.T, dev, kind string, body any, want string) {
	t.Helper()
	ev := r.send(t, dev, kind, body, topics.EventSecurity)
	if !strings.Contains(string(ev.Data), want) {
		t.Fatalf("security event %s, want it to say %q", ev.Data, want)
	}
}

// unchanged is assertUnchanged for signed uplinks: the nonce window and
// last_seen move with every valid envelope; nothing else may.
func (r *rogue) unchanged(t *testing.T, dev string, before map[string]string, devBefore map[string]string) {
	t.Helper()
	r.h.AssertUnchanged(t, before, ":rxhigh", ":rxbits", ":dev")
	if after := r.devHash(t, dev); !maps.Equal(after, devBefore) {
		t.Fatalf("device hash changed:\n%v\n%v", devBefore, after)
	}
}

func (r *rogue) devHash(t *testing.T, dev string) map[string]string {
	t.Helper()
	m, err := r.h.Redis.HGetAll(r.h.Ctx, r.h.svc.keys.Device(dev)).Result()
	if err != nil {
		t.Fatal(err)
	}
	delete(m, "last_seen")
	return m
}

func statusOf(st wire.Status) wire.StatusBody { return wire.StatusBody{FotaStatus: &st} }

// TestFirmwareOnlyToItsTarget: a fota_request is served only for the
// device's active update target; any other uploaded version, or any
// version on a device without an update, is a security event and no chunk
// goes out.
func TestFirmwareOnlyToItsTarget(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.device("d2")
	h.upload("1.0.4", 5000, false)
	h.upload("1.0.5", 5000, false)
	r := newRogue(t, h)
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	req := func(v string, chunks ...int) wire.RequestBody {
		return wire.RequestBody{FotaRequest: &wire.Request{Version: v, Chunks: chunks}}
	}
	r.refused(t, "d2", topics.KindFOTARequest, req("1.0.4", 0, 1, 2, 3, 4), "not the target")
	r.refused(t, "d1", topics.KindFOTARequest, req("1.0.5", 0), "not the target")
	if n := len(h.Bus.Sent(topics.DeviceDown("d2", topics.KindFOTAChunk))) + len(h.chunks("d1")); n != 0 {
		t.Fatalf("%d chunks sent for requests outside the device's update", n)
	}
	r.send(t, "d1", topics.KindFOTARequest, req("1.0.4", 0), "")
	h.Bus.WaitSent(t, topics.DeviceDown("d1", topics.KindFOTAChunk), 1, 5*time.Second)
}

// TestChunkRateLimit: chunks served to one device are bounded by a token
// bucket of ChunkBurst bytes refilled at ChunkRate; a request over it gets
// nothing, is counted, and goes through once the bucket has refilled.
func TestChunkRateLimit(t *testing.T) {
	h := newHarness(t)
	h.cfg.ChunkRate, h.cfg.ChunkBurst = 4*1024, 8*1024 // 4 and 8 chunks of 1 KiB
	h.svc = h.newService()
	h.device("d1")
	h.upload("1.0.4", 20*1024, false)
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	if err := request(t, h, "d1", "1.0.4", 0, 1, 2, 3, 4, 5, 6, 7); err != nil {
		t.Fatal(err)
	}
	if err := request(t, h, "d1", "1.0.4", 8); err != nil {
		t.Fatal(err)
	}
	if n := len(h.chunks("d1")); n != 8 {
		t.Fatalf("%d chunks sent past a burst of 8", n)
	}
	if n := testutil.ToFloat64(h.svc.m.limited); n != 1 {
		t.Fatalf("requests_limited_total %v, want 1", n)
	}
	h.Clock.Advance(time.Second) // 4 chunks' worth
	if err := request(t, h, "d1", "1.0.4", 8, 9, 10, 11); err != nil {
		t.Fatal(err)
	}
	if err := request(t, h, "d1", "1.0.4", 12); err != nil {
		t.Fatal(err)
	}
	if n := len(h.chunks("d1")); n != 12 {
		t.Fatalf("%d chunks sent after a refill of 4, want 12", n)
	}
}

// TestFakeStatusRefused: a fota_status for a version never offered, or a
// final state out of the order the update allows (succeeded before every
// chunk was served and a reboot reported), is a security event and changes
// nothing; the genuine sequence still ends the update.
func TestFakeStatusRefused(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 3000, false) // 3 chunks
	r := newRogue(t, h)

	before, dev := h.Snapshot(), r.devHash(t, "d1")
	r.refused(t, "d1", topics.KindFOTAStatus, statusOf(wire.Status{Version: "1.0.4", State: wire.StateSucceeded, ChunkReceived: 3, TotalChunks: 3}), "never offered")
	r.unchanged(t, "d1", before, dev)

	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	before, dev = h.Snapshot(), r.devHash(t, "d1")
	for _, st := range []wire.Status{
		{Version: "1.0.4", State: wire.StateSucceeded, ChunkReceived: 3, TotalChunks: 3},
		{Version: "1.0.4", State: wire.StateRolledBack, Reason: wire.ReasonBootFailed},
		{Version: "1.0.4", State: wire.StateDownloading, ChunkReceived: 3, TotalChunks: 3},
		{Version: "9.9.9", State: wire.StateFailed, Reason: wire.ReasonStorage},
	} {
		r.refused(t, "d1", topics.KindFOTAStatus, statusOf(st), "fota_status")
	}
	r.unchanged(t, "d1", before, dev)
	if f := h.fotaOf("d1"); !f.Active || f.State != StatePending {
		t.Fatalf("after fake statuses: %+v", f)
	}

	// Every chunk served, but no reboot reported: succeeded is still early.
	r.send(t, "d1", topics.KindFOTARequest, wire.RequestBody{FotaRequest: &wire.Request{Version: "1.0.4", Chunks: []int{0, 1, 2}}}, "")
	h.Bus.WaitSent(t, topics.DeviceDown("d1", topics.KindFOTAChunk), 3, 5*time.Second)
	r.send(t, "d1", topics.KindFOTAStatus, statusOf(wire.Status{Version: "1.0.4", State: wire.StateDownloading, ChunkReceived: 3, TotalChunks: 3}), topics.EventFOTA)
	r.refused(t, "d1", topics.KindFOTAStatus, statusOf(wire.Status{Version: "1.0.4", State: wire.StateSucceeded, ChunkReceived: 3, TotalChunks: 3}), "no reboot")
	for _, st := range []wire.State{wire.StateVerifying, wire.StateVerified, wire.StateRebooting, wire.StatePendingVerify, wire.StateSucceeded} {
		r.send(t, "d1", topics.KindFOTAStatus, statusOf(wire.Status{Version: "1.0.4", State: st, ChunkReceived: 3, TotalChunks: 3}), topics.EventFOTA)
	}
	if f := h.fotaOf("d1"); f.Active || f.Result != ResultSucceeded {
		t.Fatalf("after the genuine sequence: %+v", f)
	}
}
