package fota

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func request(t *testing.T, h *harness, dev, version string, chunks ...int) error {
	t.Helper()
	b, _ := json.Marshal(wire.RequestBody{FotaRequest: &wire.Request{Version: version, Chunks: chunks}})
	return h.svc.HandleRequest(h.Ctx, dev, envelope.Message{Body: b})
}

// TestUpdateTransfer: starting an update sends the signed manifest; each
// request is answered with exactly the chunks it names, in its order.
func TestUpdateTransfer(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	img := h.upload("1.0.4", 5000, false)

	f, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", "")
	if err != nil {
		t.Fatal(err)
	}
	if !f.Active || f.State != StatePending || f.Target != "1.0.4" || f.Total != 5 {
		t.Fatalf("after start: %+v", f)
	}
	ms := h.manifests("d1")
	if len(ms) != 1 || ms[0].Verify(h.svc.PublicKey()) != nil {
		t.Fatalf("manifests sent: %+v", ms)
	}
	if len(h.chunks("d1")) != 0 {
		t.Fatal("chunks pushed before any request")
	}
	if err := request(t, h, "d1", "1.0.4", 3, 0, 4); err != nil {
		t.Fatal(err)
	}
	got := h.chunks("d1")
	if len(got) != 3 {
		t.Fatalf("%d chunks sent for a request of 3", len(got))
	}
	for i, want := range []int{3, 0, 4} {
		c := got[i]
		if c.Index != want || c.Version != "1.0.4" || ms[0].CheckChunk(c) != nil {
			t.Fatalf("chunk %d: index %d version %s", i, c.Index, c.Version)
		}
		off, end, _ := ms[0].ChunkBounds(want)
		if string(c.Data) != string(img[off:end]) {
			t.Fatalf("chunk %d data differs", want)
		}
	}
	if n := testutil.ToFloat64(h.svc.m.chunks); n != 3 {
		t.Fatalf("chunks_sent_total %v", n)
	}

	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); backend.ErrorCode(err) != backend.CodeConflict {
		t.Fatalf("second start: %v", err)
	}
}

// TestRequestBadInput: a bad request is refused as a bad body and nothing
// is sent.
func TestRequestBadInput(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 5000, false)
	cases := []struct {
		name string
		body string
	}{
		{"unknown version", `{"fota_request":{"version":"9.9.9","chunks":[0]}}`},
		{"index beyond the manifest", `{"fota_request":{"version":"1.0.4","chunks":[5]}}`},
		{"more than the window", `{"fota_request":{"version":"1.0.4","chunks":[0,1,2,3,4,5,6,7,8]}}`},
		{"repeated index", `{"fota_request":{"version":"1.0.4","chunks":[1,1]}}`},
		{"not JSON", `{"fota_request":`},
		{"unknown field", `{"fota_request":{"version":"1.0.4","chunks":[0],"all":true}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := h.svc.HandleRequest(h.Ctx, "d1", envelope.Message{Body: []byte(tc.body)})
			if backend.ErrorCode(err) != backend.CodeInvalid {
				t.Fatalf("err %v, want invalid", err)
			}
			if n := len(h.chunks("d1")); n != 0 {
				t.Fatalf("%d chunks sent", n)
			}
		})
	}
}

// TestStatusTracking: statuses land in the device document, events go out
// on state changes and every 5 %, and a final status ends the update.
func TestStatusTracking(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 100*1024, false) // 100 chunks
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	h.serveAll("d1", "1.0.4")
	h.Bus.Reset()
	for i := 0; i <= 100; i++ {
		h.status("d1", wire.Status{Version: "1.0.4", State: wire.StateDownloading, ChunkReceived: i, TotalChunks: 100, Running: "1.0.0"})
	}
	if n := len(h.events("d1")); n < 20 || n > 22 {
		t.Fatalf("%d events for 0..100%%, want one per 5%% (21)", n)
	}
	d, _ := h.Fleet.Device(h.Ctx, "d1")
	if d.FOTA == nil || d.FOTA.State != "downloading" || d.FOTA.Received != 100 || d.FOTA.Percent != 100 || !d.FOTA.Active {
		t.Fatalf("device doc fota %+v", d.FOTA)
	}
	for _, st := range []wire.State{wire.StateVerifying, wire.StateVerified, wire.StateRebooting, wire.StatePendingVerify} {
		h.status("d1", wire.Status{Version: "1.0.4", State: st, ChunkReceived: 100, TotalChunks: 100})
	}
	if !h.fotaOf("d1").Active {
		t.Fatal("update ended before succeeded")
	}
	// A final status for a version never offered (nor running) is
	// refused and does not end this update.
	b, _ := json.Marshal(wire.StatusBody{FotaStatus: &wire.Status{Version: "1.0.3", State: wire.StateFailed, Reason: wire.ReasonDowngrade}})
	if err := h.svc.HandleStatus(h.Ctx, "d1", envelope.Message{Body: b}); backend.ErrorCode(err) != backend.CodeInvalid {
		t.Fatalf("failed for a version never offered: %v", err)
	}
	if !h.fotaOf("d1").Active {
		t.Fatal("a status about another version ended the update")
	}
	h.finish("d1", "1.0.4", wire.StateSucceeded, "")
	f := h.fotaOf("d1")
	if f.Active || f.Result != ResultSucceeded || f.State != "succeeded" {
		t.Fatalf("after succeeded: %+v", f)
	}
	if n := testutil.ToFloat64(h.svc.m.updates.WithLabelValues(ResultSucceeded)); n != 1 {
		t.Fatalf("updates_total{succeeded} %v", n)
	}
	if n, _ := h.Redis.ZCard(h.Ctx, h.svc.activeKey()).Result(); n != 0 {
		t.Fatalf("%d devices still active", n)
	}
	// A repeated final status is recorded but counted once.
	h.finish("d1", "1.0.4", wire.StateSucceeded, "")
	if n := testutil.ToFloat64(h.svc.m.updates.WithLabelValues(ResultSucceeded)); n != 1 {
		t.Fatalf("updates_total{succeeded} %v after a repeat", n)
	}
	if err := h.svc.HandleStatus(h.Ctx, "d1", envelope.Message{Body: []byte(`{"fota_status":{"state":"exploded"}}`)}); backend.ErrorCode(err) != backend.CodeInvalid {
		t.Fatalf("bad status: %v", err)
	}
}

// TestResendAndTimeout: a birth during a download resends the manifest,
// not after the device rebooted into the new image; a stalled update is
// resent after ManifestResend and timed out after UpdateTimeout.
func TestResendAndTimeout(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.4", 5000, false)
	if _, err := h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	if err := request(t, h, "d1", "1.0.4", 0, 1); err != nil {
		t.Fatal(err)
	}
	h.status("d1", wire.Status{Version: "1.0.4", State: wire.StateDownloading, ChunkReceived: 2, TotalChunks: 5})
	h.svc.HandleBirth(h.Ctx, "d1", envelope.Message{})
	if n := len(h.manifests("d1")); n != 2 {
		t.Fatalf("%d manifests after a birth mid-download, want 2", n)
	}
	if !h.tick(h.svc) || len(h.manifests("d1")) != 2 {
		t.Fatal("tick resent a fresh manifest")
	}
	h.Clock.Advance(31 * time.Second)
	h.tick(h.svc)
	if n := len(h.manifests("d1")); n != 3 {
		t.Fatalf("%d manifests after a stall, want 3", n)
	}
	h.Clock.Advance(5 * time.Minute)
	h.tick(h.svc)
	f := h.fotaOf("d1")
	if f.Active || f.Result != ResultTimedOut {
		t.Fatalf("after the timeout: %+v", f)
	}

	h.device("d2")
	if _, err := h.svc.StartUpdate(h.Ctx, "d2", "1.0.4", ""); err != nil {
		t.Fatal(err)
	}
	h.serveAll("d2", "1.0.4")
	h.status("d2", wire.Status{Version: "1.0.4", State: wire.StatePendingVerify, ChunkReceived: 5, TotalChunks: 5})
	h.Redis.HSet(h.Ctx, h.svc.keys.Device("d2"), "firmware_version", "1.0.4")
	h.svc.HandleBirth(h.Ctx, "d2", envelope.Message{})
	if n := len(h.manifests("d2")); n != 1 {
		t.Fatalf("%d manifests to a device running the new image, want 1", n)
	}
	// Its final status never comes (lost with a dead replica): once stale,
	// the manifest goes again so that the device repeats "succeeded".
	h.Clock.Advance(31 * time.Second)
	h.tick(h.svc)
	if n := len(h.manifests("d2")); n != 2 {
		t.Fatalf("%d manifests to a stale installed device, want 2", n)
	}
}

func TestStartBadInput(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	h.upload("1.0.0", 2000, false)
	h.upload("1.0.4", 2000, false)
	cases := []struct{ name, dev, version, code, contains string }{
		{"unknown device", "nobody", "1.0.4", backend.CodeNotFound, "no device"},
		{"unknown version", "d1", "2.0.0", backend.CodeNotFound, "no firmware"},
		{"same version", "d1", "1.0.0", backend.CodeConflict, "not newer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			_, err := h.svc.StartUpdate(h.Ctx, tc.dev, tc.version, "")
			wantCode(t, err, tc.code, tc.contains)
			h.AssertUnchanged(t, before)
		})
	}
}

func TestRollback(t *testing.T) {
	h := newHarness(t)
	h.device("d1")
	if err := h.svc.Rollback(h.Ctx, "d1", "bad telemetry", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	k := h.KeysOf("d1")
	sent := h.Bus.Sent("ecowatt/v1/dev/d1/down/rollback")
	if len(sent) != 1 {
		t.Fatalf("%d rollback messages", len(sent))
	}
	m, err := envelope.Open(k, sent[0].Topic, sent[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := wire.ParseRollback(m.Body)
	if err != nil || rb.Reason != "bad telemetry" || rb.Version != "1.0.0" {
		t.Fatalf("rollback %+v %v", rb, err)
	}
	wantCode(t, h.svc.Rollback(h.Ctx, "nobody", "", ""), backend.CodeNotFound, "no device")
	wantCode(t, h.svc.Rollback(h.Ctx, "d1", strings.Repeat("x", 513), ""), backend.CodeInvalid, "512")
	h.upload("1.0.4", 2000, false)
	h.svc.StartUpdate(h.Ctx, "d1", "1.0.4", "")
	wantCode(t, h.svc.Rollback(h.Ctx, "d1", "", ""), backend.CodeConflict, "in progress")
}

// TestRunReleasesLease: Run holds the lease while running and gives it up
// when it returns.
func TestRunReleasesLease(t *testing.T) {
	h := newHarness(t)
	h.cfg.SweepInterval = 10 * time.Millisecond
	s := h.newService()
	ctx, cancel := context.WithCancel(h.Ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	other := h.newService()
	deadline := time.Now().Add(5 * time.Second)
	for {
		owner, _ := h.Redis.Get(h.Ctx, h.svc.keys.Global("lease:fota")).Result()
		if owner == s.lease.Token() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not take the lease")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.tick(other) {
		t.Fatal("a second replica took a held lease")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if !h.tick(other) {
		t.Fatal("the lease was not released")
	}
}
