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
	"sync"
	"syscall"
	"testing"
	"time"
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

// startProcReplica starts replica in its own process with first's flags;
// kill SIGKILLs it.
func startProcReplica(t *testing.T, first *testServer, replica string) (s *testServer, kill func()) {
	t.Helper()
	args := append([]string{}, first.args...)
	for i := range args {
		if args[i] == "--replica-id" && i+1 < len(args) {
			args[i+1] = replica
		}
	}
	ready := filepath.Join(t.TempDir(), "ready.json")
	args = append(args, "--ready-file", ready)
	raw, _ := json.Marshal(args)
	var logs syncBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperReplicaProcess$")
	cmd.Env = append(os.Environ(), childArgsEnv+"="+string(raw))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() { once.Do(func() { cmd.Process.Kill(); cmd.Wait() }) }
	t.Cleanup(kill)
	s = &testServer{Token: first.Token, DataDir: first.DataDir, args: args}
	eventually(t, 30*time.Second, "replica process "+replica+" ready", func() (bool, string) {
		b, err := os.ReadFile(ready)
		var addrs map[string]string
		if err != nil || json.Unmarshal(b, &addrs) != nil {
			return false, logs.String()
		}
		s.HTTP, s.MQTT, s.Addrs = "http://"+addrs["http"], addrs["mqtt"], addrs
		return true, ""
	})
	return s, kill
}

// TestReplicaDeath (issue 15, replica death, bounded): three replicas
// behind HAProxy, the third in its own process; 100 devices; a command per
// device, half submitted before and half after the third replica is
// killed with SIGKILL. Every device is online again on the other two
// within 30 s, every command ends in a final state, and no device ran a
// command twice (its executor's receipts).
func TestReplicaDeath(t *testing.T) {
	rs := startCluster(t, 2, commandArgs...)
	r2, kill := startProcReplica(t, rs[0], "r2")
	mqttLB, httpLB := haproxyFor(t, append(rs, r2))
	lb := &testServer{HTTP: "http://" + httpLB, MQTT: mqttLB, Token: rs[0].Token}
	const n = 100
	keys := rs[0].provision(t, "rd", n)
	feats := newFeatureSet()
	startFleet(t, lb, keys, "", feats.setup)
	waitOnline(t, rs[0], n)
	rdb, prefix := clusterRedis(t, rs[0])
	holder := func(dev string) string {
		return rdb.HGet(context.Background(), prefix+"{dev:"+dev+"}:dev", "replica").Val()
	}
	var ids, gone []string
	for id := range keys {
		ids = append(ids, id)
		if holder(id) == "r2" {
			gone = append(gone, id)
		}
	}
	if len(gone) == 0 {
		t.Fatal("the balancer gave r2 no device")
	}

	cmds := map[string]string{} // command ID -> device
	submit := func(devs []string) {
		for i, dev := range devs {
			c := rs[i%2].submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 40 + i%10})
			cmds[c.ID] = dev
		}
	}
	submit(ids[:n/2])
	start := time.Now()
	kill()
	submit(ids[n/2:])
	eventually(t, 30*time.Second, "every device online on r0 or r1", func() (bool, string) {
		for _, dev := range gone {
			if h := holder(dev); h != "r0" && h != "r1" {
				return false, dev + " held by " + h
			}
		}
		on, _ := countOnline(t, rs[0])
		return on == n, fmt.Sprintf("%d online", on)
	})
	recovery := time.Since(start)
	t.Logf("replica death: %d of %d devices were on the killed replica; all %d online on the others %v after SIGKILL",
		len(gone), n, n, recovery.Round(time.Millisecond))

	final := map[string]bool{"succeeded": true, "failed": true, "expired": true, "cancelled": true}
	states := map[string]int{}
	eventually(t, 60*time.Second, "every command in a final state", func() (bool, string) {
		clear(states)
		for cid := range cmds {
			states[rs[1].command(t, cid).State]++
		}
		for st := range states {
			if !final[st] {
				return false, fmt.Sprint(states)
			}
		}
		return true, ""
	})
	t.Logf("replica death: commands %v, all final %v after SIGKILL", states, time.Since(start).Round(time.Millisecond))
	for cid, dev := range cmds {
		st := feats.get(t, dev).Commands.Stats()
		if st.Executed > 1 {
			t.Errorf("%s executed %d commands, sent one (%s)", dev, st.Executed, cid)
		}
		if c := rs[0].command(t, cid); c.State == "succeeded" && st.Executed != 1 {
			t.Errorf("command %s on %s succeeded but the device executed %d", cid, dev, st.Executed)
		}
	}
}
