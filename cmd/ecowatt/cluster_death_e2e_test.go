package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
)

const childArgsEnv = "ECOWATT_TEST_CHILD_ARGS"

// TestHelperReplicaProcess is not a test: it is serve in a process of its
// own, started by startProcReplica (so that a test can SIGKILL it).
func TestHelperReplicaProcess(t *testing.T) {
	raw := os.Getenv(childArgsEnv)
	if raw == "" {
		t.Skip("runs only as a replica process of TestReplicaDeath")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, args, func(string) string { return "" }, os.Stderr, os.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// procReplica is a replica in its own process, so that a test can
// SIGKILL it.
type procReplica struct {
	*testServer
	cmd  *exec.Cmd
	logs *syncBuffer
	once sync.Once
}

// kill SIGKILLs the replica (once) and waits for the process to end.
func (p *procReplica) kill() {
	p.once.Do(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
}

// startProcCluster starts n replicas in replica mode, r0 first, each in
// its own process (the test binary running TestHelperReplicaProcess), on
// one Redis prefix, with startServer's flags.
func startProcCluster(t *testing.T, n int, extra ...string) []*procReplica {
	t.Helper()
	_, prefix := redistest.Client(t)
	dir := t.TempDir()
	token := "test-token-" + filepath.Base(dir)
	var out []*procReplica
	for i := range n {
		args := append([]string{"serve",
			"--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
			"--redis", os.Getenv(redistest.EnvURL), "--redis-prefix", prefix,
			"--data-dir", filepath.Join(dir, "data"), "--admin-token", token, "--log-level", "warn",
			"--cluster", "--replica-id", fmt.Sprintf("r%d", i), "--presence-sweep", "1s",
		}, extra...)
		ready := filepath.Join(dir, fmt.Sprintf("ready-%d.json", i))
		raw, _ := json.Marshal(append(args, "--ready-file", ready))
		p := &procReplica{logs: &syncBuffer{}, testServer: &testServer{Token: token, DataDir: filepath.Join(dir, "data"), args: args}}
		p.cmd = exec.Command(os.Args[0], "-test.run=^TestHelperReplicaProcess$")
		p.cmd.Env = append(os.Environ(), childArgsEnv+"="+string(raw))
		p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if p.cmd.ProcessState == nil { // alive: stop it like an operator would
				p.cmd.Process.Signal(syscall.SIGTERM)
				done := make(chan struct{})
				go func() { p.cmd.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Errorf("replica r%d did not stop on SIGTERM\n%s", i, p.logs)
					p.kill()
				}
			}
		})
		eventually(t, 60*time.Second, fmt.Sprintf("replica process r%d ready", i), func() (bool, string) {
			b, err := os.ReadFile(ready)
			var addrs map[string]string
			if err != nil || json.Unmarshal(b, &addrs) != nil {
				return false, p.logs.String()
			}
			p.HTTP, p.MQTT, p.Addrs = "http://"+addrs["http"], addrs["mqtt"], addrs
			return true, ""
		})
		out = append(out, p)
	}
	return out
}

// TestReplicaDeath (issue 15, replica death, bounded): three replicas,
// each in its own process, behind HAProxy; 100 devices; a command per
// device and a rollout to ten of them, the commands half submitted before
// and half after the replica holding the most leases (command delivery and
// sweep, FOTA, jobs) is killed with SIGKILL. Every device is online again
// on the other two within 30 s, the dead replica's leases move to the
// others (after their TTL: 15 s for the command leases, 10 s for FOTA and
// jobs), every command ends in a final state, the rollout completes, and
// no device ran a command twice (its executor's receipts).
func TestReplicaDeath(t *testing.T) {
	// The command leases keep their default TTL (15 s); the config sweep's
	// defaults to 3 × --config-sweep (90 s), cut to 15 s here.
	ps := startProcCluster(t, 3, append([]string{"--config-lease", "15s"}, commandArgs...)...)
	rs := []*testServer{ps[0].testServer, ps[1].testServer, ps[2].testServer}
	mqttLB, httpLB := haproxyFor(t, rs)
	lb := &testServer{HTTP: "http://" + httpLB, MQTT: mqttLB, Token: rs[0].Token}
	const n = 100
	keys := rs[0].provision(t, "rd", n)
	feats := newFOTAFleet(t, rs[0])
	startFleet(t, lb, keys, "", feats.setup)
	buildAndUpload(t, rs[1], "1.0.7", "64KiB", false)
	waitOnline(t, rs[0], n)
	rdb, prefix := clusterRedis(t, rs[0])
	holder := func(dev string) string {
		return rdb.HGet(context.Background(), prefix+"{dev:"+dev+"}:dev", "replica").Val()
	}

	// The victim: the replica holding the most leases (r0, started first,
	// as a rule).
	names := []string{"lease:command-delivery", "lease:command-sweep", "lease:config-sweep", "lease:fota", "lease:jobs"}
	var leases map[string]string
	eventually(t, 20*time.Second, "the command leases held", func() (bool, string) {
		leases = leaseHolders(t, rdb, prefix, names)
		return leases["lease:command-delivery"] != "" && leases["lease:command-sweep"] != "", fmt.Sprint(leases)
	})
	count := map[string]int{}
	for _, h := range leases {
		if h != "" {
			count[h]++
		}
	}
	victim := 0
	for i := range ps {
		if count[fmt.Sprintf("r%d", i)] > count[fmt.Sprintf("r%d", victim)] {
			victim = i
		}
	}
	dead := fmt.Sprintf("r%d", victim)
	var live []*testServer
	for i, s := range rs {
		if i != victim {
			live = append(live, s)
		}
	}
	var ids, gone []string
	for id := range keys {
		ids = append(ids, id)
		if holder(id) == dead {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		t.Fatalf("the balancer gave %s no device", dead)
	}
	t.Logf("killing %s: %d devices, leases %v", dead, len(gone), leases)

	cmds := map[string]string{} // command ID -> device
	submit := func(devs []string) {
		for i, dev := range devs {
			c := live[i%2].submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 40 + i%10})
			cmds[c.ID] = dev
		}
	}
	slices.Sort(ids)
	rid := startRollout(t, live[0], "--version", "1.0.7", "--devices", strings.Join(ids[:10], ","), "--canary", "2", "--batch-size", "4")
	submit(ids[:n/2])
	t.Logf("rollout at the kill: %+v", getRollout(t, live[0], rid).Counts)
	start := time.Now()
	ps[victim].kill()
	submit(ids[n/2:])
	eventually(t, 30*time.Second, "every device online on a live replica", func() (bool, string) {
		for _, dev := range gone {
			if h := holder(dev); h == dead || h == "" {
				return false, dev + " held by " + h
			}
		}
		on, _ := countOnline(t, live[0])
		return on == n, fmt.Sprintf("%d online", on)
	})
	t.Logf("replica death: %d of %d devices were on %s; all online on the others %v after SIGKILL",
		len(gone), n, dead, time.Since(start).Round(time.Millisecond))

	eventually(t, 30*time.Second, "the dead replica's leases taken by the others", func() (bool, string) {
		now := leaseHolders(t, rdb, prefix, names)
		for k, h := range now {
			if h == dead {
				return false, fmt.Sprintf("%s held by %q", k, h)
			}
		}
		// The command leases are taken at every tick: a live replica has them.
		return now["lease:command-delivery"] != "" && now["lease:command-sweep"] != "", fmt.Sprint(now)
	})
	t.Logf("replica death: leases moved %v after SIGKILL: %v", time.Since(start).Round(time.Millisecond), leaseHolders(t, rdb, prefix, names))

	final := map[string]bool{"succeeded": true, "failed": true, "expired": true, "cancelled": true}
	states := map[string]int{}
	eventually(t, 60*time.Second, "every command in a final state", func() (bool, string) {
		clear(states)
		for cid := range cmds {
			states[live[1].command(t, cid).State]++
		}
		for st := range states {
			if !final[st] {
				return false, fmt.Sprint(states)
			}
		}
		return true, ""
	})
	t.Logf("replica death: commands %v, all final %v after SIGKILL", states, time.Since(start).Round(time.Millisecond))
	eventually(t, 60*time.Second, "the rollout completed", func() (bool, string) {
		r := getRollout(t, live[1], rid)
		return r.State == "completed", fmt.Sprintf("%s batch %d %v %v", r.State, r.CurrentBatch, r.Counts, r.DeviceStates)
	})
	t.Logf("replica death: rollout of %d devices completed %v after SIGKILL", 10, time.Since(start).Round(time.Millisecond))
	for cid, dev := range cmds {
		st := feats.features(t, dev).Commands.Stats()
		if st.Executed > 1 {
			t.Errorf("%s executed %d commands, sent one (%s)", dev, st.Executed, cid)
		}
		if c := live[0].command(t, cid); c.State == "succeeded" && st.Executed != 1 {
			t.Errorf("command %s on %s succeeded but the device executed %d", cid, dev, st.Executed)
		}
	}
}
