package jobs

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// A rotate_key job starts a key rotation per device through the backend;
// a device that takes the new key and answers under it succeeds, one that
// never answers fails when its rotation expires (it keeps its old key), a
// disabled one is skipped, and a second rotate_key job meeting a device
// whose rotation is in flight skips it naming the first.
func TestRotateKeyJob(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"k1", "k2", "k3", "k4"} {
		h.device(id, map[string]string{"g": "k"})
	}
	h.devs["k3"].silent = true
	if _, err := h.b.Disable(h.ctx, "k4", backend.Who{By: "tester"}, false); err != nil {
		t.Fatal(err)
	}
	s := h.engine()
	j := h.create(s, `{"selector":"g=k","rotate_key":{},"max_per_minute":600}`)
	if j.Kind != KindRotateKey {
		t.Fatalf("kind %q", j.Kind)
	}
	h.until(s, j.ID, time.Second, 10*time.Second, "k3 in flight", func(j Job) bool {
		return j.Counts[DevSucceeded] == 2 && j.Counts[DevInProgress] == 1
	})
	j2 := h.create(s, `{"devices":["k3"],"rotate_key":{},"max_per_minute":600}`)
	h.until(s, j2.ID, time.Second, 10*time.Second, "second job completed", func(j Job) bool { return j.State == StateCompleted })
	if rows := h.rows(s, j2.ID, DevSkipped); len(rows) != 1 || !strings.Contains(rows[0].Reason, j.ID) {
		t.Fatalf("second job rows %+v, want k3 skipped naming %s", rows, j.ID)
	}
	j = h.until(s, j.ID, time.Second, 5*keyOverlap, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 2 || j.Counts[DevFailed] != 1 || j.Counts[DevSkipped] != 1 {
		t.Fatalf("counts %v, want 2 succeeded, 1 failed, 1 skipped", j.Counts)
	}
	for _, r := range h.rows(s, j.ID, "") {
		rot, rerr := h.b.Rotation(h.ctx, r.Device)
		switch r.Device {
		case "k1", "k2":
			if r.State != DevSucceeded || rerr != nil || rot.State != backend.RotationConfirmed || rot.By != tag(j.ID) || r.Ref != rot.ID {
				t.Errorf("%s: %+v, rotation %+v %v; want succeeded on a confirmed rotation by %s", r.Device, r, rot, rerr, tag(j.ID))
			}
			h.mu.Lock()
			got := slices.Clone(h.devs[r.Device].rotated)
			h.mu.Unlock()
			if len(got) != 1 || got[0] != rot.ID {
				t.Errorf("%s took rotations %v, want exactly %s", r.Device, got, rot.ID)
			}
		case "k3":
			if r.State != DevFailed || !strings.Contains(r.Reason, "expired") || rot.State != backend.RotationExpired {
				t.Errorf("k3: %+v, rotation %+v; want failed on an expired rotation", r, rot)
			}
		case "k4":
			if r.State != DevSkipped || r.Reason != backend.StateDisabled || backend.ErrorCode(rerr) != backend.CodeNotFound {
				t.Errorf("k4: %+v, rotation %+v %v; want skipped %q and no rotation", r, rot, rerr, backend.StateDisabled)
			}
		}
	}
}

// A rotation refused for the lifecycle state (the device was disabled
// after the engine's check) is the state's name as the reason.
func TestRotationRefusalReason(t *testing.T) {
	h := newHarness(t)
	h.device("z1", nil)
	if _, err := h.b.Disable(h.ctx, "z1", backend.Who{By: "tester"}, false); err != nil {
		t.Fatal(err)
	}
	_, err := h.b.StartRotation(h.ctx, "z1", "tester")
	if backend.ErrorCode(err) != backend.CodeConflict || reasonOf(err) != backend.StateDisabled {
		t.Fatalf("rotate a disabled device: %v (reason %q), want conflict with reason %q", err, reasonOf(err), backend.StateDisabled)
	}
}
