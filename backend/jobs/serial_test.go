package jobs

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// serial_batches holds the next batch while a part of the previous one
// is in flight; without it, pacing alone issues the next batch.
func TestSerialBatchesWaitForTheBatch(t *testing.T) {
	h := newHarness(t)
	for i := range 6 {
		d := h.device(fmt.Sprintf("sb%02d", i), map[string]string{"grp": "sb"})
		d.silent = i == 0 // the first batch never ends
	}
	for i := range 6 {
		h.device(fmt.Sprintf("pb%02d", i), map[string]string{"grp": "pb"}).silent = i == 0
	}
	s := h.engine()
	cmd := `"command":{"action":"read_register","target_register":"voltage"},"max_per_minute":600,"batch_size":2`
	serial := h.create(s, `{"selector":"grp=sb",`+cmd+`,"serial_batches":true}`)
	paced := h.create(s, `{"selector":"grp=pb",`+cmd+`}`)
	h.until(s, paced.ID, time.Second, 20*time.Second, "the paced job issued every batch", func(j Job) bool {
		return j.Counts[DevQueued] == 0 && j.Counts[DevSucceeded] == 5
	})
	j, err := s.Get(h.ctx, serial.ID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Counts[DevQueued] != 4 || j.Counts[DevInProgress] != 1 || j.Counts[DevSucceeded] != 1 {
		t.Fatalf("serial job went past a batch in flight: %v", j.Counts)
	}
}

// count_in_progress judges the failure share over the parts started, as
// rollouts did: one failure among ten started is 10%, not 1 of 1 ended.
func TestAbortCountInProgress(t *testing.T) {
	for _, tc := range []struct {
		flag  string
		abort bool
	}{{"", true}, {`,"count_in_progress":true`, false}} {
		t.Run(fmt.Sprintf("count_in_progress=%v", tc.flag != ""), func(t *testing.T) {
			h := newHarness(t)
			for i := range 10 {
				d := h.device(fmt.Sprintf("ab%02d", i), map[string]string{"grp": "ab"})
				d.failCmd, d.silent = i == 0, i != 0
			}
			s := h.engine()
			j := h.create(s, `{"selector":"grp=ab","command":{"action":"read_register","target_register":"voltage"},
				"max_per_minute":600,"batch_size":10,"abort":{"max_failure_percent":20,"min_executed":1`+tc.flag+`}}`)
			j = h.until(s, j.ID, time.Second, 20*time.Second, "the failure recorded", func(j Job) bool { return j.Counts[DevFailed] == 1 })
			if _, err := s.Tick(h.ctx); err != nil {
				t.Fatal(err)
			}
			j, _ = s.Get(h.ctx, j.ID)
			if got := j.State == StateAborted; got != tc.abort {
				t.Fatalf("job %s (%s) %v; want aborted %v", j.State, j.Reason, j.Counts, tc.abort)
			}
			if tc.abort && !strings.Contains(j.Reason, "failure rate 100.0% above max_failure_percent 20 (1 of 1 parts ended failed)") {
				t.Fatalf("reason %q", j.Reason)
			}
		})
	}
}
