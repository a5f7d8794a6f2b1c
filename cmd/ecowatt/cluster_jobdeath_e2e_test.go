package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/jobs"
)

// TestReplicaJobDeath (issue 12, "kill -9 of the job-advancing replica
// mid-batch"): three replica processes behind HAProxy run a paced command
// job over 60 devices; the replica holding the jobs lease is SIGKILLed
// after the first parts are issued. Another replica takes the lease, the
// job completes with every part succeeded, and every device executed the
// job's command exactly once (its executor's receipts): a part issued by
// the dead replica is adopted by its request_id, never issued again.
func TestReplicaJobDeath(t *testing.T) {
	ps := startProcCluster(t, 3, append([]string{"--job-tick", "200ms", "--job-lease", "5s"}, commandArgs...)...)
	rs := []*testServer{ps[0].testServer, ps[1].testServer, ps[2].testServer}
	mqttLB, _ := haproxyFor(t, rs)
	lb := &testServer{HTTP: rs[0].HTTP, MQTT: mqttLB, Token: rs[0].Token}
	const n = 60
	keys := rs[0].provision(t, "rj", n)
	feats := newFOTAFleet(t, rs[0])
	startFleet(t, lb, keys, "", feats.setup)
	waitOnline(t, rs[0], n)

	jid := startJob(t, rs[1], "--selector", "id~rj-", "--command", "write_register",
		"--register", "export_power", "--value", "42",
		"--max-per-minute", "240", "--batch-size", "5")
	rdb, prefix := clusterRedis(t, rs[0])
	var holder string
	eventually(t, 30*time.Second, "the first parts issued", func() (bool, string) {
		holder = leaseHolders(t, rdb, prefix, []string{"lease:jobs"})["lease:jobs"]
		j := getJob(t, rs[1], jid)
		done := j.Counts[jobs.DevSucceeded] + j.Counts[jobs.DevInProgress]
		return holder != "" && done >= 10, fmt.Sprintf("holder %q, %v", holder, j.Counts)
	})
	victim := -1
	for i := range ps {
		if fmt.Sprintf("r%d", i) == holder {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("lease:jobs held by %q, not a replica of this test", holder)
	}
	live := rs[(victim+1)%3]
	before := getJob(t, live, jid)
	if before.Counts[jobs.DevQueued] == 0 {
		t.Fatalf("every part was issued before the kill: %v", before.Counts)
	}
	start := time.Now()
	ps[victim].kill()
	t.Logf("killed r%d (jobs lease) with the job at %v", victim, before.Counts)

	eventually(t, 90*time.Second, "the job completed on the other replicas", func() (bool, string) {
		j := getJob(t, live, jid)
		return j.State == jobs.StateCompleted, fmt.Sprintf("%s %v", j.State, j.Counts)
	})
	t.Logf("job completed %v after SIGKILL; lease now %v", time.Since(start).Round(time.Millisecond),
		leaseHolders(t, rdb, prefix, []string{"lease:jobs"}))
	if j := getJob(t, live, jid); j.Counts[jobs.DevSucceeded] != n {
		t.Errorf("job counts %v, want %d succeeded", j.Counts, n)
	}
	for id := range keys {
		if st := feats.features(t, id).Commands.Stats(); st.Executed != 1 {
			t.Errorf("%s executed %d commands, want the job's one", id, st.Executed)
		}
	}
}
