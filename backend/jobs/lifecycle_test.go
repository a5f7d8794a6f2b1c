package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// Disabled and decommissioned devices are skipped with the state's name
// as the reason, also when the change comes while the device's part is
// queued (checked at its turn, not only at creation), and get nothing.
func TestLifecycleSkips(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"l1", "l2", "l3", "l4"} {
		h.device(id, map[string]string{"g": "l"})
	}
	who := backend.Who{By: "tester", Reason: "test"}
	if _, err := h.b.Disable(h.ctx, "l2", who, false); err != nil {
		t.Fatal(err)
	}
	h.setOnline("l3", false) // queued until it is back
	h.setOnline("l4", false)
	s := h.engine()
	j := h.create(s, `{"selector":"g=l","config":{"sampling_interval":3},"max_per_minute":60}`)
	if j.Total != 4 {
		t.Fatalf("job has %d devices, want 4 (a disabled device is a target, skipped at its turn)", j.Total)
	}
	j = h.until(s, j.ID, time.Second, 10*time.Second, "l1 done", func(j Job) bool { return j.Counts[DevSucceeded] == 1 })
	if j.Counts[DevQueued] != 2 || j.Counts[DevSkipped] != 1 {
		t.Fatalf("counts %v, want l3 and l4 queued, l2 skipped", j.Counts)
	}
	if _, err := h.b.Disable(h.ctx, "l3", who, false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.b.Decommission(h.ctx, "l4", who); err != nil {
		t.Fatal(err)
	}
	h.setOnline("l3", true) // even when presence says online
	j = h.until(s, j.ID, time.Second, 10*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 1 || j.Counts[DevSkipped] != 3 {
		t.Fatalf("counts %v, want 1 succeeded and 3 skipped", j.Counts)
	}
	want := map[string]string{"l2": backend.StateDisabled, "l3": backend.StateDisabled, "l4": backend.StateDecommissioned}
	for _, r := range h.rows(s, j.ID, DevSkipped) {
		if want[r.Device] != r.Reason {
			t.Errorf("%s skipped with reason %q, want %q", r.Device, r.Reason, want[r.Device])
		}
		delete(want, r.Device)
	}
	if len(want) != 0 {
		t.Errorf("not skipped: %v", want)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range []string{"l2", "l3", "l4"} {
		if got := h.devs[id].configs; len(got) != 0 {
			t.Errorf("%s received config versions %v", id, got)
		}
	}
	for _, id := range []string{"l2", "l3", "l4"} {
		if ok, _ := h.rdb.Exists(h.ctx, h.b.Keys().Dev(id, "jobpart:"+KindConfig)).Result(); ok != 0 {
			t.Errorf("%s keeps a part hold after its skip", id)
		}
	}
}

// The reason of a service refusing for the lifecycle state (the device
// was disabled between the check and the issue) is the state's name.
func TestReasonOfLifecycle(t *testing.T) {
	for err, want := range map[error]string{
		&backend.Error{Code: backend.CodeConflict, Err: backend.ErrDisabled, Message: "device x is disabled"}:             backend.StateDisabled,
		&backend.Error{Code: backend.CodeConflict, Err: backend.ErrDecommissioned, Message: "device x is decommissioned"}: backend.StateDecommissioned,
		&backend.Error{Code: backend.CodeConflict, Message: "another update in progress"}:                                 "another update in progress",
	} {
		if got := reasonOf(err); got != want {
			t.Errorf("reasonOf(%v) = %q, want %q", err, got, want)
		}
	}
}

// A device decommissioned while its config part waits for an ack: the
// part ends failed with a "cancelled" reason at the next tick (like its
// commands and firmware update, which the decommission cancels), not
// abandoned at the job's expiry; its hold is released.
func TestDecommissionCancelsConfigPart(t *testing.T) {
	h := newHarness(t)
	h.device("dc1", map[string]string{"g": "dc"})
	h.device("dc2", map[string]string{"g": "dc"}).silent = true // never acks
	s := h.engine()
	j := h.create(s, `{"selector":"g=dc","config":{"sampling_interval":3},"max_per_minute":60}`)
	j = h.until(s, j.ID, time.Second, 10*time.Second, "dc1 acked, dc2 waiting", func(j Job) bool {
		return j.Counts[DevSucceeded] == 1 && j.Counts[DevInProgress] == 1
	})
	if _, err := h.b.Decommission(h.ctx, "dc2", backend.Who{By: "tester", Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	// Small steps of the fake clock: the job must end long before its
	// expiry would abandon the part.
	j = h.until(s, j.ID, 10*time.Millisecond, 10*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 1 || j.Counts[DevFailed] != 1 || j.Counts[DevAbandoned] != 0 {
		t.Fatalf("counts %v, want dc1 succeeded and dc2 failed (cancelled), none abandoned", j.Counts)
	}
	rows := h.rows(s, j.ID, DevFailed)
	if len(rows) != 1 || rows[0].Device != "dc2" || !strings.Contains(rows[0].Reason, "cancelled") || !strings.Contains(rows[0].Reason, "decommissioned") {
		t.Fatalf("failed rows %+v, want dc2 cancelled: device decommissioned", rows)
	}
	if ok, _ := h.rdb.Exists(h.ctx, h.b.Keys().Dev("dc2", "jobpart:"+KindConfig)).Result(); ok != 0 {
		t.Error("dc2 keeps its part hold after the cancel")
	}
}
