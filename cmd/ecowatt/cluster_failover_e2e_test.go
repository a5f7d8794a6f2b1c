package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
)

// TestRedisClusterFailover (issue 15): serve on a Redis Cluster of its own
// (3 masters, one replica each, AOF synced on every write) takes commands
// and config changes over HTTP while one replica is promoted with CLUSTER
// FAILOVER. Every acknowledged (2xx) command ends succeeded, executed by
// its device, and every device ends in sync on a config version at least
// as new as the last one acknowledged to the client: nothing acknowledged
// is lost. The failover time is logged.
func TestRedisClusterFailover(t *testing.T) {
	if os.Getenv("ECOWATT_TEST_SCALE") != "1" {
		t.Skip("a scale test: make test-scale runs it (ECOWATT_TEST_SCALE=1)")
	}
	cl := redistest.StartCluster(t, 3)
	s := startServer(t, append([]string{"--redis", cl.URL}, commandArgs...)...)
	const n = 20
	keys := s.provision(t, "rf", n)
	var sims simDevices
	startFleet(t, s, keys, "", sims.setup)
	waitOnline(t, s, n)
	ids := make([]string, 0, n)
	for id := range keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	var replica string
	for _, node := range cl.Nodes {
		if cl.Role(node) == "slave" {
			replica = node
			break
		}
	}
	if replica == "" {
		t.Fatal("no replica node in the cluster")
	}

	acked := map[string]string{}  // command ID -> device
	attempts := map[string]int{}  // device -> command POSTs, acknowledged or not
	lastCfg := map[string]int64{} // device -> last acknowledged config version
	refused := map[int]int{}      // HTTP status -> count, during the traffic
	var triggered, promoted time.Time
	var firstWrite time.Duration // trigger -> first acknowledged write after it
	start := time.Now()
	for i := 0; i < 3000 && (promoted.IsZero() || time.Since(promoted) < 3*time.Second); i++ {
		if time.Since(start) > 60*time.Second {
			t.Fatalf("the failover did not happen in 60 s (triggered %v)", !triggered.IsZero())
		}
		if triggered.IsZero() && time.Since(start) > 2*time.Second {
			if got := cl.Do(replica, "CLUSTER", "FAILOVER"); got != "OK" {
				t.Fatalf("CLUSTER FAILOVER on %s: %q", replica, got)
			}
			triggered = time.Now()
		}
		if !triggered.IsZero() && promoted.IsZero() && cl.Role(replica) == "master" {
			promoted = time.Now()
		}
		dev := ids[i%n]
		attempts[dev]++
		var c commandDoc
		code := s.api(t, "POST", "/api/v1/devices/"+dev+"/commands",
			map[string]any{"action": "write_register", "target_register": "export_power", "value": i % 100}, &c)
		ok := code == 201
		if ok {
			acked[c.ID] = dev
		} else {
			refused[code]++
		}
		var res configStateDoc
		iv := 1 + i%5
		code = s.api(t, "PUT", "/api/v1/devices/"+dev+"/config",
			json.RawMessage(fmt.Sprintf(`{"sampling_interval":%d,"upload_interval":%d}`, iv, 2*iv)), &res)
		if code == 200 {
			lastCfg[dev] = res.Desired.Version
			ok = true
		} else {
			refused[code]++
		}
		if ok && !triggered.IsZero() && firstWrite == 0 && !promoted.IsZero() {
			firstWrite = time.Since(triggered)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if promoted.IsZero() {
		t.Fatalf("%s was never promoted", replica)
	}
	t.Logf("failover: %s promoted %v after CLUSTER FAILOVER, first acknowledged write after it at %v; "+
		"%d commands acknowledged, refused during the traffic %v",
		replica, promoted.Sub(triggered).Round(time.Millisecond), firstWrite.Round(time.Millisecond), len(acked), refused)

	eventually(t, 60*time.Second, "every acknowledged command succeeded", func() (bool, string) {
		states := map[string]int{}
		for cid := range acked {
			states[s.command(t, cid).State]++
		}
		return states["succeeded"] == len(acked), fmt.Sprint(states)
	})
	executed := map[string]int{}
	for _, dev := range acked {
		executed[dev]++
	}
	for _, dev := range ids {
		st := sims.get(t, dev).f.Commands.Stats()
		if int(st.Executed) < executed[dev] || int(st.Executed) > attempts[dev] {
			t.Errorf("%s executed %d commands; %d acknowledged, %d submitted", dev, st.Executed, executed[dev], attempts[dev])
		}
		var d configStateDoc
		eventually(t, 30*time.Second, dev+" in sync on its last acknowledged config", func() (bool, string) {
			d = getConfig(t, s, dev)
			ok := d.Desired.Version >= lastCfg[dev] && !d.Pending && d.Reported != nil && d.Reported.Version == d.Desired.Version
			return ok, fmt.Sprintf("acknowledged v%d, %+v", lastCfg[dev], d)
		})
		if v, _ := sims.get(t, dev).f.Config.Current(); v != d.Desired.Version {
			t.Errorf("%s runs config v%d, desired v%d", dev, v, d.Desired.Version)
		}
	}
}
