package jobs

import (
	"crypto/rand"
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/fota"
	wire "github.com/ecowatt/ecowatt/topics/fota"
)

// A bad rollout through the alias is refused with the rollout's field and
// creates no job.
func TestRolloutAliasBadInput(t *testing.T) {
	h := newHarness(t)
	h.device("ra-1", nil)
	s := h.engine()
	a := NewRollouts(s, nil)
	n := func(v int) *int { return &v }
	f := func(v float64) *float64 { return &v }
	ids := func(x ...string) fota.Selector { return fota.Selector{IDs: x} }
	cases := []struct {
		name        string
		spec        fota.RolloutSpec
		code, field string
		msg         string
	}{
		{"no version", fota.RolloutSpec{Devices: ids("ra-1")}, backend.CodeInvalid, "version", "required"},
		{"negative canary", fota.RolloutSpec{Version: "1.0.4", Devices: ids("ra-1"), Canary: n(-1)}, backend.CodeInvalid, "canary", "canary must be"},
		{"batch size", fota.RolloutSpec{Version: "1.0.4", Devices: ids("ra-1"), BatchSize: -2}, backend.CodeInvalid, "batch_size", "batch_size must be"},
		{"percent", fota.RolloutSpec{Version: "1.0.4", Devices: ids("ra-1"), MaxFailurePercent: f(101)}, backend.CodeInvalid, "max_failure_percent", "0-100"},
		{"no devices", fota.RolloutSpec{Version: "1.0.4", Devices: ids()}, backend.CodeInvalid, "devices", "at least one device"},
		{"unknown devices", fota.RolloutSpec{Version: "1.0.4", Devices: ids("ra-1", "ghost", "ghost2")}, backend.CodeInvalid, "devices", "unknown devices: ghost, ghost2"},
		{"bad device ID", fota.RolloutSpec{Version: "1.0.4", Devices: ids("a b")}, backend.CodeInvalid, "devices", "bad device ID"},
		// This engine has no FOTA service: a valid rollout is refused
		// as the firmware job would be, creating nothing.
		{"no firmware service", fota.RolloutSpec{Version: "1.0.4", Devices: ids("ra-1")}, backend.CodeUnavailable, "firmware", "not served"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.CreateRollout(h.ctx, tc.spec, "tester")
			var be *backend.Error
			if !asErr(err, &be) || be.Code != tc.code || be.Field != tc.field || !strings.Contains(be.Message, tc.msg) {
				t.Fatalf("err %v, want %s %s %q", err, tc.code, tc.field, tc.msg)
			}
		})
	}
	if l, err := a.Rollouts(h.ctx); err != nil || len(l) != 0 {
		t.Fatalf("rollouts after refusals: %v %v", l, err)
	}
	if l, err := s.List(h.ctx, 0); err != nil || len(l) != 0 {
		t.Fatalf("jobs after refusals: %v %v", l, err)
	}
	// Not a rollout: a legacy ID without the legacy engine, a bad ID, and
	// a job that is not a firmware job.
	j := h.create(s, `{"devices":["ra-1"],"command":{"action":"reboot"},"max_per_minute":60}`)
	for _, rid := range []string{"ro-20260101-000000-abcd", "ro-nope", RolloutPrefix + j.ID, j.ID} {
		if _, err := a.Rollout(h.ctx, rid); backend.ErrorCode(err) != backend.CodeNotFound {
			t.Errorf("rollout %s: %v, want not found", rid, err)
		}
		if _, err := a.AbortRollout(h.ctx, rid); backend.ErrorCode(err) != backend.CodeNotFound {
			t.Errorf("abort %s: %v, want not found", rid, err)
		}
	}
	if got, _ := s.Get(h.ctx, j.ID); got.State != StateScheduled {
		t.Fatalf("the command job was touched by a rollout abort: %s", got.State)
	}
}

// Rollouts of the old engine (created before the upgrade) are listed with
// the firmware jobs and still read and driven through it; a new rollout
// is a firmware job, paused and aborted as one.
func TestRolloutAliasLegacyAndJob(t *testing.T) {
	h := newHarness(t)
	h.device("lg-1", nil)
	h.device("lg-2", nil)
	_, key, _ := wire.GenerateKey(rand.Reader)
	fw, err := fota.New(fota.Config{Redis: h.rdb, Keys: h.b.Keys(), Fleet: h.b, Key: key, Now: h.clk.Now, Logger: h.log})
	if err != nil {
		t.Fatal(err)
	}
	img, err := wire.BuildTestImage("1.0.4", 4096, false, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Upload(h.ctx, fota.Upload{Version: "1.0.4", Image: img}); err != nil {
		t.Fatal(err)
	}
	old, err := fw.CreateRollout(h.ctx, fota.RolloutSpec{Version: "1.0.4", Devices: fota.Selector{IDs: []string{"lg-1"}}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Redis: h.rdb, Keys: h.b.Keys(), Fleet: h.b, FOTA: fw, Logger: h.log, Now: h.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	a := NewRollouts(s, fw)
	zero := 0
	ro, err := a.CreateRollout(h.ctx, fota.RolloutSpec{Version: "1.0.4", Devices: fota.Selector{IDs: []string{"lg-2"}}, Canary: &zero}, "tester")
	if err != nil {
		t.Fatal(err)
	}
	jid := strings.TrimPrefix(ro.ID, RolloutPrefix)
	if ro.State != fota.RolloutRunning || ro.Total != 1 || ro.BatchCount != 1 || ro.CurrentBatch != -1 ||
		ro.MaxFailurePercent != fota.DefaultMaxFailurePercent || len(ro.Devices) != 1 || ro.Devices[0].State != fota.DevPending {
		t.Fatalf("new rollout %+v", ro)
	}
	l, err := a.Rollouts(h.ctx)
	if err != nil || len(l) != 2 {
		t.Fatalf("rollouts %v %v", l, err)
	}
	seen := map[string]bool{l[0].ID: true, l[1].ID: true}
	if !seen[old.ID] || !seen[ro.ID] {
		t.Fatalf("rollouts %s, %s; want %s and %s", l[0].ID, l[1].ID, old.ID, ro.ID)
	}
	if r, err := a.PauseRollout(h.ctx, old.ID); err != nil || r.State != fota.RolloutPaused {
		t.Fatalf("pause legacy: %+v %v", r, err)
	}
	if r, _ := fw.Rollout(h.ctx, old.ID); r.State != fota.RolloutPaused {
		t.Fatalf("legacy rollout %s after pause through the alias", r.State)
	}
	if r, err := a.PauseRollout(h.ctx, ro.ID); err != nil || r.State != fota.RolloutPaused {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if j, _ := s.Get(h.ctx, jid); j.State != StatePaused {
		t.Fatalf("job %s after pausing its rollout", j.State)
	}
	r, err := a.AbortRollout(h.ctx, ro.ID)
	if err != nil || r.State != fota.RolloutAborted || r.Counts[fota.DevCancelled] != 1 || r.Reason == "" {
		t.Fatalf("abort: %+v %v", r, err)
	}
	if j, _ := s.Get(h.ctx, jid); j.State != StateCancelled {
		t.Fatalf("job %s after aborting its rollout", j.State)
	}
	if _, err := a.ResumeRollout(h.ctx, ro.ID); backend.ErrorCode(err) != backend.CodeConflict {
		t.Fatalf("resume of an aborted rollout: %v, want a conflict", err)
	}
}
