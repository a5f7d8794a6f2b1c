package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// haproxyFor writes an HAProxy config in front of rs (TCP mode for MQTT
// and HTTP, health checks on /readyz, sessions of a replica marked down
// shut) and runs it until the test ends. It returns the MQTT and HTTP
// frontend addresses.
func haproxyFor(t *testing.T, rs []*testServer) (mqttAddr, httpAddr string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("ECOWATT_TEST_SCALE") == "1" {
			t.Fatal("haproxy not installed under scripts/test-scale.sh")
		}
		t.Skip("haproxy not installed (scripts/test-scale.sh installs it)")
	}
	mqttAddr, httpAddr = freeAddr(t), freeAddr(t)
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 2m
  timeout server 2m
  timeout check 3s
  retries 3
  option redispatch
  default-server inter 500ms fall 3 rise 1
frontend mqtt
  bind %s
  default_backend replicas_mqtt
frontend http
  bind %s
  default_backend replicas_http
backend replicas_mqtt
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz
`, mqttAddr, httpAddr)
	for i, s := range rs {
		_, hp, _ := net.SplitHostPort(strings.TrimPrefix(s.HTTP, "http://"))
		fmt.Fprintf(&b, "  server r%d %s check port %s on-marked-down shutdown-sessions\n", i, s.MQTT, hp)
	}
	b.WriteString("backend replicas_http\n  balance roundrobin\n  option httpchk\n  http-check send meth GET uri /readyz\n")
	for i, s := range rs {
		fmt.Fprintf(&b, "  server r%d %s check\n", i, strings.TrimPrefix(s.HTTP, "http://"))
	}
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	cmd := exec.Command(bin, "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(t, 10*time.Second, "haproxy serving /readyz", func() (bool, string) {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false, err.Error() + "\n" + logs.String()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return mqttAddr, httpAddr
}

// deviceClient is a raw MQTT client holding one device's valid key.
func deviceClient(t *testing.T, addr, id string, psk []byte) mqtt.Client {
	t.Helper()
	k, err := envelope.DeriveKeys(psk)
	if err != nil {
		t.Fatal(err)
	}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetUsername(id).SetPassword(envelope.Password(&k, id, time.Now())).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s through %s: %v", id, addr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// TestReplicaModeHAProxy: three replicas behind HAProxy (TCP, /readyz
// checks). The balancer spreads a fleet over all three; config changes
// and commands through the balancer's HTTP side reach a device on every
// replica; a device with a valid key that connects through the balancer
// cannot subscribe or publish outside its subtree on any replica; when
// one replica stops, its devices come back online on the others.
func TestReplicaModeHAProxy(t *testing.T) {
	rs := startCluster(t, 3, commandArgs...)
	mqttLB, httpLB := haproxyFor(t, rs)
	lb := &testServer{HTTP: "http://" + httpLB, MQTT: mqttLB, Token: rs[0].Token}
	const n = 30
	keys := rs[0].provision(t, "lb", n)
	fleetKeys := map[string][]byte{}
	for id, k := range keys {
		if id != "lb-0001" { // the rogue's key
			fleetKeys[id] = k
		}
	}
	startFleet(t, lb, fleetKeys, "", newFeatureSet().setup)
	waitOnline(t, lb, n-1)
	rdb, prefix := clusterRedis(t, rs[0])
	holder := func(dev string) string {
		return rdb.HGet(context.Background(), prefix+"{dev:"+dev+"}:dev", "replica").Val()
	}
	byReplica := map[string][]string{}
	for id := range fleetKeys {
		byReplica[holder(id)] = append(byReplica[holder(id)], id)
	}
	if len(byReplica) != 3 {
		t.Fatalf("devices by replica %v, want all three", byReplica)
	}

	t.Run("config and commands through the balancer", func(t *testing.T) {
		for r, devs := range byReplica {
			dev := devs[0]
			var res configStateDoc
			if code := lb.api(t, "PUT", "/api/v1/devices/"+dev+"/config", json.RawMessage(`{"sampling_interval":2,"upload_interval":4}`), &res); code != 200 {
				t.Fatalf("PUT config of %s (on %s): %d", dev, r, code)
			}
			waitInSync(t, lb, dev, res.Desired.Version)
			c := lb.submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 33})
			lb.waitCommand(t, c.ID, "succeeded", 30*time.Second)
		}
	})

	t.Run("acl on every replica", func(t *testing.T) {
		victim := byReplica["r1"][0]
		seen := map[string]bool{}
		for try := 0; len(seen) < 3 && try < 12; try++ {
			c := deviceClient(t, mqttLB, "lb-0001", keys["lb-0001"])
			r := holder("lb-0001")
			if seen[r] {
				c.Disconnect(100)
				continue
			}
			seen[r] = true
			tok := c.Subscribe(topics.DeviceDown(victim, "#"), 1, nil)
			if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("on %s: subscribe: %v", r, tok.Error())
			}
			if code := tok.(*mqtt.SubscribeToken).Result()[topics.DeviceDown(victim, "#")]; code != 0x80 {
				t.Fatalf("on %s: SUBACK %#x for another device's downlinks, want 0x80", r, code)
			}
			tok = c.Subscribe(topics.DeviceUp(victim, "#"), 1, nil)
			if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("on %s: subscribe: %v", r, tok.Error())
			}
			if code := tok.(*mqtt.SubscribeToken).Result()[topics.DeviceUp(victim, "#")]; code != 0x80 {
				t.Fatalf("on %s: SUBACK %#x for another device's uplinks, want 0x80", r, code)
			}
			before := rs[0].metric(t, "ecowatt_security_rejections_total", "") + rs[1].metric(t, "ecowatt_security_rejections_total", "") + rs[2].metric(t, "ecowatt_security_rejections_total", "")
			c.Publish(topics.DeviceUp(victim, topics.KindTelemetry), 1, false, []byte(`{}`)).WaitTimeout(2 * time.Second)
			eventually(t, 10*time.Second, "the publish outside its subtree refused on "+r, func() (bool, string) {
				after := rs[0].metric(t, "ecowatt_security_rejections_total", "") + rs[1].metric(t, "ecowatt_security_rejections_total", "") + rs[2].metric(t, "ecowatt_security_rejections_total", "")
				return after > before, fmt.Sprintf("rejections %v -> %v", before, after)
			})
			c.Disconnect(100)
		}
		if len(seen) != 3 {
			t.Fatalf("the rogue reached replicas %v, want all three", seen)
		}
	})

	t.Run("replica loss", func(t *testing.T) {
		gone := byReplica["r2"]
		start := time.Now()
		rs[2].stop(t)
		eventually(t, 30*time.Second, "r2's devices online elsewhere", func() (bool, string) {
			for _, dev := range gone {
				if h := holder(dev); h == "r2" || h == "" {
					return false, dev + " still on " + h
				}
			}
			on, _ := countOnline(t, lb)
			return on == n-1, fmt.Sprintf("%d online", on)
		})
		t.Logf("%d devices of the stopped replica online on the others after %v", len(gone), time.Since(start).Round(time.Millisecond))
	})
}
