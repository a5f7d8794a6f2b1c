package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/jobs"
)

// startJob creates a job with the CLI and returns its ID.
func startJob(t *testing.T, s *testServer, args ...string) string {
	t.Helper()
	out, err := s.cli(t, append([]string{"job", "create"}, args...)...)
	if err != nil {
		t.Fatalf("job create: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`^job (\w+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("job create printed %q", out)
	}
	return m[1]
}

func getJob(t *testing.T, s *testServer, jid string) jobs.Job {
	t.Helper()
	var j jobs.Job
	if code := s.api(t, "GET", "/api/v1/jobs/"+jid, nil, &j); code != 200 {
		t.Fatalf("GET job %s: %d", jid, code)
	}
	return j
}

func getJobDevices(t *testing.T, s *testServer, jid string) []jobs.DeviceRow {
	t.Helper()
	var p jobs.DevicePage
	if code := s.api(t, "GET", "/api/v1/jobs/"+jid+"/devices?limit=1000", nil, &p); code != 200 {
		t.Fatalf("GET job devices %s: %d", jid, code)
	}
	return p.Devices
}

// TestFirmwareJob10Devices is TestFOTARollout10Devices as a firmware job:
// a canary of 2, then batches of 8; every device ends on 1.0.4.
func TestFirmwareJob10Devices(t *testing.T) {
	s := startServer(t, append(fotaArgs, "--job-tick", "100ms")...)
	keys := s.provision(t, "fwj", 10)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.4", "256KiB", false)
	waitOnline(t, s, 10)

	jid := startJob(t, s, "--selector", "id~fwj-", "--firmware", "1.0.4", "--max-per-minute", "600", "--batch-size", "8",
		"--canary", "2", "--max-failure-percent", "10", "--min-executed", "5")
	eventually(t, 3*time.Minute, "job completed", func() (bool, string) {
		j := getJob(t, s, jid)
		return j.State == jobs.StateCompleted, fmt.Sprintf("%s %v", j.State, j.Counts)
	})
	if j := getJob(t, s, jid); j.Counts[jobs.DevSucceeded] != 10 {
		t.Fatalf("job %v", j.Counts)
	}
	for id := range keys {
		if st := ff.stats(id); st.Running != "1.0.4" || st.Downloads != 1 {
			t.Errorf("%s: device side %+v, want 1.0.4 after one download", id, st)
		}
	}
	// The job's tag is the rollout field of each device's update.
	if d := getDevice(t, s, "fwj-0001"); d.FirmwareVersion != "1.0.4" || d.FOTA == nil || d.FOTA.Result != "succeeded" {
		t.Fatalf("fwj-0001: %s %+v", d.FirmwareVersion, d.FOTA)
	}
}

// TestFirmwareJobAbortsOnFailBoot is TestFOTARolloutAbortsOnFailBoot as a
// firmware job: the canary rolls back, the job aborts, and the devices it
// never reached stay on 1.0.0 with no download.
func TestFirmwareJobAbortsOnFailBoot(t *testing.T) {
	s := startServer(t, append(fotaArgs, "--job-tick", "100ms")...)
	keys := s.provision(t, "fwb", 12)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.5", "64KiB", true)
	waitOnline(t, s, 12)

	jid := startJob(t, s, "--selector", "id~fwb-", "--firmware", "1.0.5", "--max-per-minute", "600", "--batch-size", "5",
		"--canary", "2", "--max-failure-percent", "10", "--min-executed", "5")
	eventually(t, 3*time.Minute, "job aborted", func() (bool, string) {
		j := getJob(t, s, jid)
		return j.State == jobs.StateAborted && j.Counts[jobs.DevQueued] == 0, fmt.Sprintf("%s %v", j.State, j.Counts)
	})
	j := getJob(t, s, jid)
	if j.Counts[jobs.DevFailed] != 2 || j.Counts[jobs.DevNotRun] != 10 || !strings.Contains(j.Reason, "max_failure_percent") {
		t.Fatalf("job %v (%s)", j.Counts, j.Reason)
	}
	for _, r := range getJobDevices(t, s, jid) {
		doc := getDevice(t, s, r.Device)
		switch r.State {
		case jobs.DevFailed:
			if !strings.Contains(r.Reason, "rolled_back") || doc.FirmwareVersion != "1.0.0" {
				t.Errorf("canary %s: %q, running %s", r.Device, r.Reason, doc.FirmwareVersion)
			}
		case jobs.DevNotRun:
			if st := ff.stats(r.Device); st.Downloads != 0 || st.Running != "1.0.0" || doc.FOTA != nil {
				t.Errorf("untouched %s: device side %+v, fota %+v", r.Device, st, doc.FOTA)
			}
		default:
			t.Errorf("%s: state %s", r.Device, r.State)
		}
	}
}
