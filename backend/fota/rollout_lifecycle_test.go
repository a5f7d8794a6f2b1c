package fota

import (
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// A rollout skips a device disabled or decommissioned while it waits for
// its batch, with the state's name as the reason (the same reasons a job
// records), and sends it no manifest.
func TestRolloutSkipsLifecycle(t *testing.T) {
	h := newHarness(t)
	h.devices(3)
	h.upload("1.0.4", 3000, false)
	r, err := h.svc.CreateRollout(h.Ctx, RolloutSpec{Version: "1.0.4", Devices: Selector{IDs: []string{"d00", "d01", "d02"}},
		Canary: ptr(1), BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	h.tick(h.svc) // the canary d00 starts; d01 and d02 wait
	who := backend.Who{By: "tester", Reason: "test"}
	if _, err := h.Fleet.Disable(h.Ctx, "d01", who, false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Fleet.Decommission(h.Ctx, "d02", who); err != nil {
		t.Fatal(err)
	}
	h.finish("d00", "1.0.4", wire.StateSucceeded, "")
	h.tick(h.svc)
	h.tick(h.svc)
	r = h.rollout(r.ID)
	if r.State != RolloutCompleted || r.Counts[DevSucceeded] != 1 || r.Counts[DevSkipped] != 2 {
		t.Fatalf("end: %s %v", r.State, r.Counts)
	}
	want := map[string]string{"d01": backend.StateDisabled, "d02": backend.StateDecommissioned}
	for _, d := range r.Devices {
		if w, ok := want[d.ID]; ok && (d.State != DevSkipped || d.Reason != w) {
			t.Errorf("%s: %s %q, want skipped %q", d.ID, d.State, d.Reason, w)
		}
	}
	for _, id := range []string{"d01", "d02"} {
		if m := h.manifests(id); len(m) != 0 {
			t.Errorf("%s got %d manifests", id, len(m))
		}
	}
}
