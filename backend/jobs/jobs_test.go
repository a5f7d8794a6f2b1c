package jobs

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
)

// A config job on 200 devices selected by label issues at most
// max_per_minute parts a minute (visible in the issue timestamps on the
// fake clock), and ends completed with every device running the desired
// config, publishing its progress.
func TestConfigJobPacedCompletes(t *testing.T) {
	h := newHarness(t)
	const n = 200
	for i := range n {
		h.device(fmt.Sprintf("inv-%03d", i), map[string]string{"site": "colombo"})
	}
	h.device("other-1", map[string]string{"site": "galle"})
	s := h.engine()
	j := h.create(s, `{"selector":"site=colombo","config":{"sampling_interval":3},"max_per_minute":100,"batch_size":10}`)
	if j.Total != n || j.State != StateScheduled {
		t.Fatalf("created %s with %d devices, want scheduled with %d", j.State, j.Total, n)
	}
	start := h.clk.Now()
	j = h.until(s, j.ID, 2*time.Second, 90*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != n {
		t.Fatalf("counts %v, want %d succeeded", j.Counts, n)
	}
	rows := h.rows(s, j.ID, "")
	var at []time.Time
	for _, r := range rows {
		at = append(at, *r.IssuedAt)
		st, err := h.cfgs.Get(h.ctx, r.Device)
		if err != nil {
			t.Fatal(err)
		}
		if st.Pending || st.Reported == nil || st.Reported.SamplingInterval != 3 {
			t.Errorf("%s: config %+v, want sampling_interval 3 acknowledged", r.Device, st)
		}
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	// 100 a minute in batches of 10: batch k is issued no earlier than k*6 s.
	for i, t0 := range at {
		if min := start.Add(time.Duration(i/10) * 6 * time.Second); t0.Before(min) {
			t.Errorf("part %d issued at +%s, before the pacing bound +%s", i, t0.Sub(start), min.Sub(start))
		}
	}
	if last := at[n-1].Sub(start); last < 114*time.Second || last > 130*time.Second {
		t.Errorf("last part issued at +%s; 200 at 100/min in batches of 10 is due at +114s", last)
	}
	if ev := h.bus.Sent(Topic(j.ID)); len(ev) < 20 || !strings.Contains(string(ev[len(ev)-1].Payload), `"state":"completed"`) {
		t.Errorf("%d progress events on %s; want one per batch and a final completed", len(ev), Topic(j.ID))
	}
	if d := h.devs["other-1"]; len(d.configs) != 0 {
		t.Errorf("a device outside the selector got config %v", d.configs)
	}
}

// Pause stops new parts; resume goes on; a completed job cannot be paused.
func TestPauseResumeCancel(t *testing.T) {
	h := newHarness(t)
	for i := range 10 {
		h.device(fmt.Sprintf("d%02d", i), map[string]string{"site": "a"})
	}
	s := h.engine()
	j := h.create(s, `{"selector":"site=a","config":{"sampling_interval":1},"max_per_minute":60,"batch_size":2}`)
	j = h.until(s, j.ID, time.Second, 10*time.Second, "first batch", func(j Job) bool { return j.Counts[DevQueued] <= 8 })
	if _, err := s.Pause(h.ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	queued := h.until(s, j.ID, 0, 10*time.Second, "in flight settled", func(j Job) bool { return j.Counts[DevInProgress] == 0 }).Counts[DevQueued]
	for range 20 {
		h.clk.Advance(10 * time.Second)
		s.Tick(h.ctx)
	}
	if j, _ = s.Get(h.ctx, j.ID); j.State != StatePaused || j.Counts[DevQueued] != queued {
		t.Fatalf("paused job moved on: %s %v (queued was %d)", j.State, j.Counts, queued)
	}
	if _, err := s.Resume(h.ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	j = h.until(s, j.ID, time.Second, 30*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 10 {
		t.Fatalf("counts %v", j.Counts)
	}
	for _, op := range []func() (Job, error){
		func() (Job, error) { return s.Pause(h.ctx, j.ID) },
		func() (Job, error) { return s.Resume(h.ctx, j.ID) },
		func() (Job, error) { return s.Cancel(h.ctx, j.ID) },
	} {
		if _, err := op(); backend.ErrorCode(err) != backend.CodeConflict {
			t.Errorf("operation on a completed job: %v, want conflict", err)
		}
	}

	// Cancel: the devices not reached are not_run and get nothing.
	j2 := h.create(s, `{"selector":"site=a","config":{"sampling_interval":15},"max_per_minute":60,"batch_size":2}`)
	j2 = h.until(s, j2.ID, time.Second, 10*time.Second, "first batch", func(j Job) bool { return j.Counts[DevQueued] <= 8 })
	if _, err := s.Cancel(h.ctx, j2.ID); err != nil {
		t.Fatal(err)
	}
	j2 = h.until(s, j2.ID, time.Second, 10*time.Second, "cleaned up", func(j Job) bool { return j.Counts[DevQueued] == 0 })
	if j2.State != StateCancelled || j2.Counts[DevNotRun] < 8 {
		t.Fatalf("cancelled job %s %v", j2.State, j2.Counts)
	}
	for _, r := range h.rows(s, j2.ID, DevNotRun) {
		if st, _ := h.cfgs.Get(h.ctx, r.Device); st.Desired.SamplingInterval == 15 {
			t.Errorf("%s was not_run but got the cancelled job's config", r.Device)
		}
	}
}

// A command job where 30% of the devices' inverters fail aborts by its
// rule and leaves the devices it did not reach untouched.
func TestCommandJobAborts(t *testing.T) {
	h := newHarness(t)
	for i := range 30 {
		d := h.device(fmt.Sprintf("c%02d", i), map[string]string{"model": "SG5K"})
		d.failCmd = i%10 < 3
	}
	s := h.engine()
	j := h.create(s, `{"selector":"model=SG5K","command":{"action":"write_register","target_register":"export_power","value":50},
		"max_per_minute":600,"batch_size":5,"abort":{"max_failure_percent":10,"min_executed":10}}`)
	j = h.until(s, j.ID, time.Second, 30*time.Second, "aborted", func(j Job) bool { return JobFinal(j.State) && j.Counts[DevQueued] == 0 })
	if j.State != StateAborted || !strings.Contains(j.Reason, "max_failure_percent") {
		t.Fatalf("job %s (%s), want aborted by the rule", j.State, j.Reason)
	}
	notRun := h.rows(s, j.ID, DevNotRun)
	if len(notRun) == 0 {
		t.Fatalf("abort left no device unreached: %v", j.Counts)
	}
	for _, r := range notRun {
		if d := h.devs[r.Device]; len(d.commands) != 0 {
			t.Errorf("%s is not_run but executed %v", r.Device, d.commands)
		}
	}
	for _, r := range h.rows(s, j.ID, DevFailed) {
		if !strings.Contains(r.Reason, "inverter_fault") {
			t.Errorf("%s failed with reason %q", r.Device, r.Reason)
		}
	}
}

// include_future: a device provisioned while the job runs gets its part.
func TestIncludeFuture(t *testing.T) {
	h := newHarness(t)
	h.device("f1", map[string]string{"site": "x"})
	s := h.engine()
	exp := h.clk.Now().Add(10 * time.Minute).Format(time.RFC3339)
	j := h.create(s, `{"selector":"site=x","config":{"upload_interval":120},"max_per_minute":60,"include_future":true,"expires_at":"`+exp+`"}`)
	h.until(s, j.ID, time.Second, 10*time.Second, "first device", func(j Job) bool { return j.Counts[DevSucceeded] == 1 })
	h.device("f2", map[string]string{"site": "x"})
	j = h.until(s, j.ID, time.Second, 10*time.Second, "new device", func(j Job) bool { return j.Counts[DevSucceeded] == 2 })
	if j.State != StateRunning {
		t.Fatalf("include_future job %s before its expiry", j.State)
	}
	if st, _ := h.cfgs.Get(h.ctx, "f2"); st.Reported == nil || st.Reported.UploadInterval != 120 {
		t.Fatalf("f2 config %+v", st)
	}
	// A device that joins offline and never comes back: at expiry the
	// job is expired, the device not_run with the reason.
	h.device("f3", map[string]string{"site": "x"})
	h.setOnline("f3", false)
	h.until(s, j.ID, time.Second, 5*time.Second, "f3 joined", func(j Job) bool { return j.Counts[DevQueued] == 1 })
	h.clk.Advance(11 * time.Minute)
	j = h.until(s, j.ID, time.Second, 5*time.Second, "ended", func(j Job) bool { return JobFinal(j.State) && j.Counts[DevQueued] == 0 })
	rows := h.rows(s, j.ID, DevNotRun)
	if j.State != StateExpired || len(rows) != 1 || rows[0].Device != "f3" || !strings.Contains(rows[0].Reason, "expired") {
		t.Fatalf("state %s, not_run %+v", j.State, rows)
	}
	if st, _ := h.cfgs.Get(h.ctx, "f3"); st.Desired.Version != 0 {
		t.Fatalf("f3 got config version %d while offline", st.Desired.Version)
	}

	// With every device done, an include_future job completes at its expiry.
	exp = h.clk.Now().Add(time.Minute).Format(time.RFC3339)
	j2 := h.create(s, `{"selector":"id in (f1,f2)","config":{"upload_interval":60},"max_per_minute":60,"include_future":true,"expires_at":"`+exp+`"}`)
	h.until(s, j2.ID, time.Second, 10*time.Second, "both done", func(j Job) bool { return j.Counts[DevSucceeded] == 2 })
	h.clk.Advance(2 * time.Minute)
	if j2 = h.until(s, j2.ID, time.Second, 5*time.Second, "ended", func(j Job) bool { return JobFinal(j.State) }); j2.State != StateCompleted {
		t.Fatalf("include_future job with nothing left ended %s", j2.State)
	}
}

// An offline device stays queued and gets its part when it is back.
func TestOfflineDeviceWaits(t *testing.T) {
	h := newHarness(t)
	h.device("o1", nil)
	h.device("o2", nil)
	h.setOnline("o2", false)
	s := h.engine()
	j := h.create(s, `{"devices":["o1","o2"],"config":{"sampling_interval":3},"max_per_minute":60}`)
	h.until(s, j.ID, time.Second, 10*time.Second, "o1 done", func(j Job) bool { return j.Counts[DevSucceeded] == 1 })
	for range 5 {
		h.clk.Advance(time.Minute)
		s.Tick(h.ctx)
	}
	if j, _ = s.Get(h.ctx, j.ID); j.Counts[DevQueued] != 1 || j.State != StateRunning {
		t.Fatalf("offline device not waiting: %s %v", j.State, j.Counts)
	}
	h.setOnline("o2", true)
	j = h.until(s, j.ID, time.Second, 10*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 2 {
		t.Fatalf("counts %v", j.Counts)
	}
}

// A device is in one running job per kind: a second config job skips it
// with a reason naming the first.
func TestSameKindSkips(t *testing.T) {
	h := newHarness(t)
	d := h.device("s1", nil)
	d.silent = true // the first job's part never ends
	s := h.engine()
	j1 := h.create(s, `{"devices":["s1"],"config":{"sampling_interval":1},"max_per_minute":60}`)
	h.until(s, j1.ID, time.Second, 5*time.Second, "issued", func(j Job) bool { return j.Counts[DevInProgress] == 1 })
	j2 := h.create(s, `{"devices":["s1"],"config":{"sampling_interval":3},"max_per_minute":60}`)
	j2 = h.until(s, j2.ID, time.Second, 5*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	rows := h.rows(s, j2.ID, DevSkipped)
	if len(rows) != 1 || !strings.Contains(rows[0].Reason, j1.ID) {
		t.Fatalf("second job rows %+v, want s1 skipped naming %s", rows, j1.ID)
	}
}

// A crash after a part is issued and before the job records it: the
// next engine adopts the part and issues nothing twice. Then two engines
// race under the lease on the rest of the job.
func TestRestartDoesNotDoubleIssue(t *testing.T) {
	h := newHarness(t)
	for i := range 12 {
		h.device(fmt.Sprintf("r%02d", i), map[string]string{"g": "r"})
	}
	a := h.engine()
	j := h.create(a, `{"selector":"g=r","command":{"action":"read_register","target_register":"voltage"},"max_per_minute":6000,"batch_size":4}`)
	testCrashAfterIssue.Store(true)
	if _, err := a.Tick(h.ctx); err == nil || !strings.Contains(err.Error(), "crash") {
		t.Fatalf("tick with a crash: %v", err)
	}
	testCrashAfterIssue.Store(false)
	// A fresh engine (the restarted replica), then two engines under the lease.
	b := h.engine()
	b.Tick(h.ctx)
	h.run("engine b", b.Run)
	h.run("engine c", h.engine().Run)
	eventually(t, 30*time.Second, "completed", func() bool {
		h.clk.Advance(time.Second)
		got, _ := b.Get(h.ctx, j.ID)
		return got.State == StateCompleted
	})
	got, _ := b.Get(h.ctx, j.ID)
	if got.Counts[DevSucceeded] != 12 {
		t.Fatalf("counts %v", got.Counts)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, d := range h.devs {
		if len(d.commands) != 1 {
			t.Errorf("%s executed %d distinct commands (%v), want 1", id, len(d.commands), d.commands)
		}
		for cid, n := range d.commands {
			if n != 1 {
				t.Logf("%s: command %s delivered %d times (answered from the journal)", id, cid, n)
			}
		}
	}
}

// TestOnlineField pins the device hash field the engine reads presence
// from to what backend.Device reports.
func TestOnlineField(t *testing.T) {
	h := newHarness(t)
	h.device("p1", nil)
	for _, on := range []bool{false, true} {
		h.setOnline("p1", on)
		d, err := h.b.Device(h.ctx, "p1")
		if err != nil || d.Online != on {
			t.Fatalf("set %q=%v, backend says online=%v (%v)", deviceOnline, on, d.Online, err)
		}
	}
}

// A canary that fails aborts the job before any other device is touched,
// whatever min_executed says.
func TestCanaryFailureAborts(t *testing.T) {
	h := newHarness(t)
	for i := range 10 {
		d := h.device(fmt.Sprintf("k%02d", i), map[string]string{"ring": "1"})
		d.failCmd = i < 2 // the first two, in ID order, are the canary
	}
	s := h.engine()
	j := h.create(s, `{"selector":"ring=1","command":{"action":"reboot"},"max_per_minute":6000,"batch_size":8,"canary":2,
		"abort":{"max_failure_percent":20,"min_executed":50}}`)
	j = h.until(s, j.ID, time.Second, 20*time.Second, "aborted", func(j Job) bool { return JobFinal(j.State) && j.Counts[DevQueued] == 0 })
	if j.State != StateAborted || j.Counts[DevFailed] != 2 || j.Counts[DevNotRun] != 8 {
		t.Fatalf("job %s %v (%s), want aborted after the canary", j.State, j.Counts, j.Reason)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := 2; i < 10; i++ {
		if d := h.devs[fmt.Sprintf("k%02d", i)]; len(d.commands) != 0 {
			t.Errorf("%s outside the canary executed %v", d.id, d.commands)
		}
	}
}

// A crash between issuing config parts and recording them: the restarted
// engine adopts the versions already created; no device gets a second one.
func TestRestartConfigAdopts(t *testing.T) {
	h := newHarness(t)
	for i := range 6 {
		h.device(fmt.Sprintf("q%02d", i), map[string]string{"g": "q"})
	}
	a := h.engine()
	j := h.create(a, `{"selector":"g=q","config":{"sampling_interval":3},"max_per_minute":6000,"batch_size":3}`)
	testCrashAfterIssue.Store(true)
	a.Tick(h.ctx)
	testCrashAfterIssue.Store(false)
	b := h.engine()
	j = h.until(b, j.ID, time.Second, 20*time.Second, "completed", func(j Job) bool { return j.State == StateCompleted })
	if j.Counts[DevSucceeded] != 6 {
		t.Fatalf("counts %v", j.Counts)
	}
	for _, r := range h.rows(b, j.ID, "") {
		st, _ := h.cfgs.Get(h.ctx, r.Device)
		if st.Desired.Version != 1 || r.Ref != "1" {
			t.Errorf("%s: desired version %d, part ref %s; want exactly one version", r.Device, st.Desired.Version, r.Ref)
		}
	}
}

// TestPacingDoesNotDrift: ticks that land late (here every 0.7 s against
// batches due every second) neither stretch the job nor exceed its pace:
// batch k is issued at k s or within a step after, so 100 devices at
// 600 a minute in batches of 10 have all been issued within 9 s + a step.
// Pacing from the late tick instead took 1.4 s a batch (12.6 s).
func TestPacingDoesNotDrift(t *testing.T) {
	h := newHarness(t)
	const n = 100
	for i := range n {
		h.device(fmt.Sprintf("pd-%03d", i), map[string]string{"site": "drift"})
	}
	s := h.engine()
	j := h.create(s, `{"selector":"site=drift","config":{"sampling_interval":3},"max_per_minute":600,"batch_size":10}`)
	start := h.clk.Now()
	j = h.until(s, j.ID, 700*time.Millisecond, 60*time.Second, "every part issued", func(j Job) bool { return j.Counts[DevQueued] == 0 })
	var at []time.Time
	for _, r := range h.rows(s, j.ID, "") {
		at = append(at, *r.IssuedAt)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i, t0 := range at {
		if min := start.Add(time.Duration(i/10) * time.Second); t0.Before(min) {
			t.Errorf("part %d issued at +%s, before the pacing bound +%s", i, t0.Sub(start), min.Sub(start))
		}
	}
	if last := at[n-1].Sub(start); last > 9*time.Second+700*time.Millisecond {
		t.Errorf("last part issued at +%s; 100 at 600/min in batches of 10 is due at +9s (one step late at most)", last)
	}
}

// TestBatchReadsPastOfflinePage: the queue is read a page at a time; a
// batch whose first page holds only offline devices goes on to the next
// page for its online ones, and the offline ones keep their place.
func TestBatchReadsPastOfflinePage(t *testing.T) {
	h := newHarness(t)
	const offline, online = queuePage + 20, 5
	var ids []string
	for i := range offline + online {
		id := fmt.Sprintf("pg-%04d", i)
		h.device(id, nil)
		if i < offline {
			h.setOnline(id, false)
		}
		ids = append(ids, `"`+id+`"`)
	}
	s := h.engine()
	j := h.create(s, `{"devices":[`+strings.Join(ids, ",")+`],"config":{"sampling_interval":3},"max_per_minute":600,"batch_size":10}`)
	j = h.until(s, j.ID, time.Second, 20*time.Second, "the online devices done", func(j Job) bool { return j.Counts[DevSucceeded] == online })
	if j.Counts[DevQueued] != offline || j.State != StateRunning {
		t.Fatalf("%s %v; want %d still queued", j.State, j.Counts, offline)
	}
	for _, r := range h.rows(s, j.ID, DevSucceeded) {
		if r.Device < fmt.Sprintf("pg-%04d", offline) {
			t.Errorf("%s (offline) got a part", r.Device)
		}
	}
}
