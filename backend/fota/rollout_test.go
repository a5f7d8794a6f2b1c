package fota

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/fota"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func ptr[T any](v T) *T { return &v }

func (h *harness) devices(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%02d", i)
		h.device(ids[i])
	}
	return ids
}

func (h *harness) rollout(rid string) Rollout {
	h.T.Helper()
	r, err := h.svc.Rollout(h.Ctx, rid)
	if err != nil {
		h.T.Fatal(err)
	}
	return r
}

// updating returns the devices the rollout is updating now.
func updating(r Rollout) []string {
	var out []string
	for _, d := range r.Devices {
		if d.State == DevUpdating {
			out = append(out, d.ID)
		}
	}
	return out
}

func TestSelectorJSON(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Selector
		ok   bool
	}{
		{`"all"`, Selector{All: true}, true},
		{`["a","b"]`, Selector{IDs: []string{"a", "b"}}, true},
		{`"some"`, Selector{}, false},
		{`7`, Selector{}, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var s Selector
			err := json.Unmarshal([]byte(tc.in), &s)
			if (err == nil) != tc.ok || (tc.ok && fmt.Sprint(s) != fmt.Sprint(tc.want)) {
				t.Fatalf("got %+v %v", s, err)
			}
		})
	}
}

func TestBatchLayout(t *testing.T) {
	for _, tc := range []struct {
		total, canary, size int
		want                string
	}{
		{20, 2, 5, "[0 2 7 12 17]"},
		{10, 0, 5, "[0 5]"},
		{3, 5, 50, "[0]"},
		{1, 1, 1, "[0]"},
		{7, 1, 50, "[0 1]"},
	} {
		if got := fmt.Sprint(BatchLayout(tc.total, tc.canary, tc.size)); got != tc.want {
			t.Errorf("BatchLayout(%d, %d, %d) = %s, want %s", tc.total, tc.canary, tc.size, got, tc.want)
		}
	}
}

// TestRolloutBadInput: each bad rollout is refused with a reason and
// stores nothing.
func TestRolloutBadInput(t *testing.T) {
	h := newHarness(t)
	h.devices(3)
	h.upload("1.0.4", 2000, false)
	h.device("busy")
	h.upload("1.0.3", 2000, false)
	if _, err := h.svc.StartUpdate(h.Ctx, "busy", "1.0.3", ""); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, code, contains string
		spec                 RolloutSpec
	}{
		{"unknown version", backend.CodeInvalid, "no firmware", RolloutSpec{Version: "9.9.9", Devices: Selector{All: true}}},
		{"unknown devices", backend.CodeInvalid, "unknown devices: ghost, x", RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d00", "ghost", "x"}}}},
		{"no devices", backend.CodeInvalid, "at least one", RolloutSpec{Version: "1.0.4"}},
		{"bad device ID", backend.CodeInvalid, "bad device ID", RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"a/b"}}}},
		{"device twice", backend.CodeInvalid, "twice", RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d00", "d00"}}}},
		{"negative canary", backend.CodeInvalid, "canary", RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(-1)}},
		{"batch size", backend.CodeInvalid, "batch_size", RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, BatchSize: -5}},
		{"threshold above 100", backend.CodeInvalid, "max_failure_percent", RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, MaxFailurePercent: ptr(101.0)}},
		{"device busy", backend.CodeConflict, "in progress: busy", RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d01", "busy"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.Snapshot()
			_, err := h.svc.CreateRollout(h.Ctx, tc.spec)
			wantCode(t, err, tc.code, tc.contains)
			h.AssertUnchanged(t, before)
		})
	}
	for _, op := range []func() error{
		func() error { _, err := h.svc.PauseRollout(h.Ctx, "ro-none"); return err },
		func() error { _, err := h.svc.Rollout(h.Ctx, "ro-none"); return err },
		func() error { _, err := h.svc.AbortRollout(h.Ctx, "{bad}"); return err },
	} {
		if err := op(); backend.ErrorCode(err) != backend.CodeNotFound {
			t.Errorf("unknown rollout: %v", err)
		}
	}
}

// TestRolloutAbortsAtThreshold: canary, then batches while failures stay
// within the threshold, abort above it; devices not reached get nothing.
func TestRolloutAbortsAtThreshold(t *testing.T) {
	h := newHarness(t)
	ids := h.devices(10)
	h.upload("1.0.4", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true},
		Canary: ptr(2), BatchSize: 3, MaxFailurePercent: ptr(20.0)})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != RolloutRunning || r.Total != 10 || r.BatchCount != 4 || r.CurrentBatch != -1 || r.Counts[DevPending] != 10 {
		t.Fatalf("created: %+v", r)
	}
	rid := r.ID

	h.tick(h.svc)
	r = h.rollout(rid)
	if got := fmt.Sprint(updating(r)); got != "[d00 d01]" || r.CurrentBatch != 0 || !r.Batches[0].Canary {
		t.Fatalf("canary: updating %s, batch %d", got, r.CurrentBatch)
	}
	h.tick(h.svc) // nothing finished: no new batch
	if r = h.rollout(rid); r.CurrentBatch != 0 {
		t.Fatalf("batch %d started before the canary finished", r.CurrentBatch)
	}
	h.finish("d00", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	if r = h.rollout(rid); r.CurrentBatch != 0 {
		t.Fatal("next batch started with a canary device still updating")
	}
	h.finish("d01", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	r = h.rollout(rid)
	if got := fmt.Sprint(updating(r)); got != "[d02 d03 d04]" || r.CurrentBatch != 1 {
		t.Fatalf("batch 1: updating %s", got)
	}
	// 1 failure of 5 = 20 %: not above the threshold.
	h.finish("d02", "1.0.4", wire.StateRolledBack, wire.ReasonBootFailed)
	h.tick(h.svc)
	if r = h.rollout(rid); r.State != RolloutRunning || r.FailurePercent != 20 {
		t.Fatalf("at 20%%: %s %.1f", r.State, r.FailurePercent)
	}
	// 2 of 5 = 40 %: abort, even with d04 still updating.
	h.finish("d03", "1.0.4", wire.StateFailed, wire.ReasonHashMismatch)
	h.tick(h.svc)
	r = h.rollout(rid)
	if r.State != RolloutAborted || r.Reason == "" || r.FinishedAt == nil {
		t.Fatalf("above the threshold: %+v", r)
	}
	if r.Counts[DevCancelled] != 5 || r.Counts[DevFailed] != 2 || r.Counts[DevSucceeded] != 2 || r.Counts[DevUpdating] != 1 {
		t.Fatalf("counts %v", r.Counts)
	}
	if r.Devices[2].Reason != "rolled_back: boot_failed" {
		t.Fatalf("d02 reason %q", r.Devices[2].Reason)
	}
	for _, id := range ids[5:] {
		if n := len(h.manifests(id)); n != 0 {
			t.Fatalf("untouched device %s got %d manifests", id, n)
		}
		if f := h.fotaOf(id); f.Active || f.Target != "" {
			t.Fatalf("untouched device %s: %+v", id, f)
		}
	}
	if n := testutil.ToFloat64(h.svc.m.rollouts.WithLabelValues(ResultAborted)); n != 1 {
		t.Fatalf("rollouts_total{aborted} %v", n)
	}
	// The update in flight is still tracked; then the rollout leaves the
	// active set.
	h.finish("d04", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	if r = h.rollout(rid); r.Counts[DevSucceeded] != 3 {
		t.Fatalf("after the abort: %v", r.Counts)
	}
	if n, _ := h.Redis.ZCard(h.Ctx, h.svc.roActive()).Result(); n != 0 {
		t.Fatalf("%d active rollouts", n)
	}
	if _, err := h.svc.ResumeRollout(h.Ctx, rid); backend.ErrorCode(err) != backend.CodeConflict {
		t.Fatalf("resume an aborted rollout: %v", err)
	}
}

// TestRolloutPauseResumeComplete: a paused rollout starts no batch; resumed,
// it runs to completion; devices already on the version are skipped.
func TestRolloutPauseResumeComplete(t *testing.T) {
	h := newHarness(t)
	h.devices(4)
	h.Redis.HSet(h.Ctx, h.svc.keys.Device("d03"), "firmware_version", "1.0.4")
	h.upload("1.0.4", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d00", "d01", "d02", "d03"}},
		Canary: ptr(1), BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	rid := r.ID
	h.tick(h.svc)
	if _, err := h.svc.PauseRollout(h.Ctx, rid); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.PauseRollout(h.Ctx, rid); backend.ErrorCode(err) != backend.CodeConflict {
		t.Fatalf("pause twice: %v", err)
	}
	h.finish("d00", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	if r = h.rollout(rid); r.State != RolloutPaused || r.CurrentBatch != 0 || r.Counts[DevSucceeded] != 1 {
		t.Fatalf("paused: %s batch %d %v", r.State, r.CurrentBatch, r.Counts)
	}
	if _, err := h.svc.ResumeRollout(h.Ctx, rid); err != nil {
		t.Fatal(err)
	}
	h.tick(h.svc)
	r = h.rollout(rid)
	if got := fmt.Sprint(updating(r)); got != "[d01 d02]" {
		t.Fatalf("after resume: updating %s", got)
	}
	h.finish("d01", "1.0.4", wire.StateSucceeded, "")
	h.finish("d02", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	h.tick(h.svc)
	r = h.rollout(rid)
	if r.State != RolloutCompleted || r.Counts[DevSucceeded] != 3 || r.Counts[DevSkipped] != 1 {
		t.Fatalf("end: %s %v", r.State, r.Counts)
	}
	if n := testutil.ToFloat64(h.svc.m.rollouts.WithLabelValues(ResultCompleted)); n != 1 {
		t.Fatalf("rollouts_total{completed} %v", n)
	}
	list, err := h.svc.Rollouts(h.Ctx)
	if err != nil || len(list) != 1 || list[0].ID != rid || list[0].Devices != nil {
		t.Fatalf("list %+v %v", list, err)
	}
}

// TestRolloutLease: with two replicas, only the lease holder advances, so
// each canary device gets one manifest; when the holder stops, the other
// carries on from Redis.
func TestRolloutLease(t *testing.T) {
	h := newHarness(t)
	h.devices(4)
	h.upload("1.0.4", 3000, false)
	a, b := h.newService(), h.newService()
	r, err := a.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(2), BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !h.tick(a) || h.tick(b) {
		t.Fatal("lease: a should hold it, b not")
	}
	h.tick(b)
	h.tick(a)
	for _, id := range []string{"d00", "d01"} {
		if n := len(h.manifests(id)); n != 1 {
			t.Fatalf("%s got %d manifests", id, n)
		}
	}
	// Without the lease, the batch compare-and-set still refuses a
	// second start of the same batch.
	rs, _ := b.loadRollout(h.Ctx, r.ID)
	if n, _ := batchScript.Run(h.Ctx, h.Redis, []string{b.roKey(r.ID)}, rs.CurrentBatch-1, 0).Int(); n != 0 {
		t.Fatal("a stale batch number moved the rollout")
	}
	// a stops (releases); b takes over and advances.
	if _, err := a.lease.Release(h.Ctx); err != nil {
		t.Fatal(err)
	}
	h.finish("d00", "1.0.4", wire.StateSucceeded, "")
	h.finish("d01", "1.0.4", wire.StateSucceeded, "")
	if !h.tick(b) {
		t.Fatal("b did not take the released lease")
	}
	if got := fmt.Sprint(updating(h.rollout(r.ID))); got != "[d02 d03]" {
		t.Fatalf("after takeover: updating %s", got)
	}
}

// TestRolloutRecoversPendingBatch: a crash between moving to a batch and
// starting its devices leaves them pending; the next tick starts them.
func TestRolloutRecoversPendingBatch(t *testing.T) {
	h := newHarness(t)
	h.devices(3)
	h.upload("1.0.4", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(0), BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := batchScript.Run(h.Ctx, h.Redis, []string{h.svc.roKey(r.ID)}, -1, 0).Int(); n != 1 {
		t.Fatal("batch move refused")
	}
	h.tick(h.svc)
	if got := fmt.Sprint(updating(h.rollout(r.ID))); got != "[d00 d01 d02]" {
		t.Fatalf("updating %s", got)
	}
}

// TestRolloutAdvancesOnEvents: with Run holding the lease, a rollout
// starts its first batch when created and its next batch when a device
// finishes, without waiting for a sweep.
func TestRolloutAdvancesOnEvents(t *testing.T) {
	h := newHarness(t)
	h.devices(2)
	h.upload("1.0.4", 3000, false)
	h.cfg.SweepInterval = time.Hour // only the first sweep, at start
	s := h.newService()
	s.Attach()
	ctx, cancel := context.WithCancel(h.Ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitFor("the lease", func() bool {
		owner, _ := h.Redis.Get(h.Ctx, s.keys.Global("lease:fota")).Result()
		return owner == s.lease.Token()
	})
	r, err := s.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d00", "d01"}},
		Canary: ptr(1), BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	waitFor("the canary to start", func() bool { return h.fotaOf("d00").Active })
	if h.fotaOf("d01").Active {
		t.Fatal("second batch started with the canary")
	}
	st := wire.Status{State: wire.StateSucceeded, Version: "1.0.4", Running: "1.0.4"}
	b, _ := json.Marshal(wire.StatusBody{FotaStatus: &st})
	h.serveAll("d00", "1.0.4")
	h.status("d00", wire.Status{State: wire.StateRebooting, Version: "1.0.4", ChunkReceived: 3, TotalChunks: 3})
	if err := s.HandleStatus(h.Ctx, "d00", envelope.Message{Body: b}); err != nil {
		t.Fatal(err)
	}
	waitFor("the next batch to start", func() bool { return h.fotaOf("d01").Active })
	h.serveAll("d01", "1.0.4")
	h.status("d01", wire.Status{State: wire.StateRebooting, Version: "1.0.4", ChunkReceived: 3, TotalChunks: 3})
	s.HandleStatus(h.Ctx, "d01", envelope.Message{Body: b})
	waitFor("completion", func() bool { return h.rollout(r.ID).State == RolloutCompleted })
}

// TestRolloutRefusedManifest: a device that refuses the manifest (the
// image is larger than its slot) reports failed for the offered version:
// its update ends, the rollout counts it failed and moves on. A device
// that only repeats a refusal naming another version (as before the fix)
// still times out: statuses without progress do not keep it alive.
func TestRolloutRefusedManifest(t *testing.T) {
	t.Run("refusal of the offered version", func(t *testing.T) {
		h := newHarness(t)
		h.devices(2)
		h.upload("1.0.4", 3000, false)
		r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true},
			Canary: ptr(1), BatchSize: 1, MaxFailurePercent: ptr(100.0)})
		if err != nil {
			t.Fatal(err)
		}
		h.tick(h.svc)
		h.status("d00", wire.Status{Version: "1.0.4", State: wire.StateFailed, Reason: wire.ReasonTooLarge,
			Detail: "image is 3000 bytes, the slot holds 1024", Running: "1.0.0"})
		if f := h.fotaOf("d00"); f.Active || f.Result != ResultFailed {
			t.Fatalf("after the refusal: %+v", f)
		}
		h.tick(h.svc)
		r = h.rollout(r.ID)
		if r.Counts[DevFailed] != 1 || r.CurrentBatch != 1 || fmt.Sprint(updating(r)) != "[d01]" {
			t.Fatalf("rollout did not count the refusal and advance: batch %d %v", r.CurrentBatch, r.Counts)
		}
		if r.Devices[0].Reason != "failed: "+wire.ReasonTooLarge {
			t.Fatalf("d00 reason %q", r.Devices[0].Reason)
		}
	})
	t.Run("refusals without progress time out", func(t *testing.T) {
		h := newHarness(t)
		h.devices(1)
		h.upload("1.0.4", 3000, false)
		r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(0), BatchSize: 1})
		if err != nil {
			t.Fatal(err)
		}
		h.tick(h.svc)
		for range 12 { // a refusal at every resend, for 6 minutes
			h.status("d00", wire.Status{Version: "1.0.0", State: wire.StateFailed, Reason: wire.ReasonTooLarge, Running: "1.0.0"})
			h.Clock.Advance(30 * time.Second)
			h.tick(h.svc)
		}
		if f := h.fotaOf("d00"); f.Active || f.Result != ResultTimedOut {
			t.Fatalf("after 6 minutes of refusals: %+v", f)
		}
		h.tick(h.svc)
		if r = h.rollout(r.ID); r.State != RolloutAborted || r.Counts[DevFailed] != 1 {
			t.Fatalf("rollout: %s %v", r.State, r.Counts)
		}
	})
	t.Run("progress keeps an update alive", func(t *testing.T) {
		h := newHarness(t)
		h.devices(1)
		h.upload("1.0.4", 5000, false)
		if _, err := h.svc.StartUpdate(h.Ctx, "d00", "1.0.4", ""); err != nil {
			t.Fatal(err)
		}
		h.serveAll("d00", "1.0.4")
		for i := range 4 {
			h.Clock.Advance(2 * time.Minute)
			h.status("d00", wire.Status{Version: "1.0.4", State: wire.StateDownloading, ChunkReceived: i + 1, TotalChunks: 5})
			h.tick(h.svc)
		}
		if f := h.fotaOf("d00"); !f.Active {
			t.Fatalf("an update making progress timed out: %+v", f)
		}
	})
}

// TestRolloutRestartIdempotent: starting a rollout's device again, as a
// rollout does after a crash between starting it and recording it, is a
// no-op, not a conflict that would mark it skipped.
func TestRolloutRestartIdempotent(t *testing.T) {
	h := newHarness(t)
	h.devices(1)
	h.upload("1.0.4", 3000, false)
	h.upload("1.0.5", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(0), BatchSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.StartUpdate(h.Ctx, "d00", "1.0.4", r.ID); err != nil {
		t.Fatal(err)
	}
	if n, _ := batchScript.Run(h.Ctx, h.Redis, []string{h.svc.roKey(r.ID)}, -1, 0).Int(); n != 1 {
		t.Fatal("batch move refused")
	}
	h.tick(h.svc) // d00 is pending in the rollout, already updating
	if r = h.rollout(r.ID); fmt.Sprint(updating(r)) != "[d00]" || r.Counts[DevSkipped] != 0 {
		t.Fatalf("restart: %v", r.Counts)
	}
	if n := len(h.manifests("d00")); n != 1 {
		t.Fatalf("%d manifests, want 1", n)
	}
	for _, tc := range []struct{ name, version, rollout string }{
		{"single update", "1.0.4", ""},
		{"another rollout", "1.0.4", "ro-other"},
		{"another version", "1.0.5", r.ID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.svc.StartUpdate(h.Ctx, "d00", tc.version, tc.rollout)
			wantCode(t, err, backend.CodeConflict, "in progress")
		})
	}
}

// TestRolloutAbortDuringBatchStart: an abort while a batch is being
// started (startPending on a rollout loaded before the abort) starts no
// further device: the rest stay cancelled and get no manifest.
func TestRolloutAbortDuringBatchStart(t *testing.T) {
	h := newHarness(t)
	ids := h.devices(4)
	h.upload("1.0.4", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{All: true}, Canary: ptr(0), BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := batchScript.Run(h.Ctx, h.Redis, []string{h.svc.roKey(r.ID)}, -1, 0).Int(); n != 1 {
		t.Fatal("batch move refused")
	}
	stale, err := h.svc.loadRollout(h.Ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.AbortRollout(h.Ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.startPending(h.Ctx, stale); err != nil {
		t.Fatal(err)
	}
	h.tick(h.svc)
	r = h.rollout(r.ID)
	if r.State != RolloutAborted || r.Counts[DevCancelled] != 4 {
		t.Fatalf("after the abort: %s %v", r.State, r.Counts)
	}
	for _, id := range ids {
		if n := len(h.manifests(id)); n != 0 {
			t.Fatalf("cancelled device %s got %d manifests", id, n)
		}
		if f := h.fotaOf(id); f.Active {
			t.Fatalf("cancelled device %s: %+v", id, f)
		}
	}
}
