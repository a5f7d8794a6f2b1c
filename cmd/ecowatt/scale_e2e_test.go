package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics/envelope"
)

// EnvMosquittoURL names the Mosquitto broker scripts/test-scale.sh starts
// (anonymous access: mosquitto-go-auth, which would call our /mqtt/
// callbacks, is not packaged in Debian; the callbacks have their own
// tests in broker/authhttp).
const EnvMosquittoURL = "ECOWATT_TEST_MOSQUITTO_URL"

func mosquittoURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv(EnvMosquittoURL)
	if u == "" {
		if os.Getenv("CI") == "true" && os.Getenv("ECOWATT_TEST_SCALE") == "1" {
			t.Fatalf("%s is not set under scripts/test-scale.sh", EnvMosquittoURL)
		}
		t.Skipf("%s not set; run scripts/test-scale.sh (make test-scale)", EnvMosquittoURL)
	}
	return u
}

// startReplica starts another `ecowatt serve` on the state of first: the
// same Redis prefix and data dir (master key), its own HTTP port.
func startReplica(t *testing.T, first *testServer, replica string) *testServer {
	t.Helper()
	args := append([]string{}, first.args...)
	for i := range args {
		if args[i] == "--replica-id" && i+1 < len(args) {
			args[i+1] = replica
		}
	}
	s := &testServer{Token: first.Token, DataDir: first.DataDir, args: args}
	s.start(t)
	t.Cleanup(func() { s.stop(t) })
	return s
}

// metric returns the sum of the samples of name on s's /metrics whose
// line contains match.
func (s *testServer) metric(t *testing.T, name, match string) float64 {
	t.Helper()
	resp, err := http.Get(s.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	var sum float64
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], match) {
			v, _ := strconv.ParseFloat(m[2], 64)
			sum += v
		}
	}
	return sum
}

// TestScaleExternalBroker: a real Mosquitto as the external broker, two
// backend replicas sharing Redis and the device uplinks (shared
// subscription), a 20-device fleet connected to Mosquitto. All devices
// come online, both replicas take a share of the uplinks, a config change
// made on one replica is acknowledged, a command sent on the other
// completes once, and each replica names itself in /metrics.
func TestScaleExternalBroker(t *testing.T) {
	url := mosquittoURL(t)
	extra := append([]string{"--broker-url", url, "--broker-insecure", "--replica-id", "rep-a", "--config-sweep", "1s"}, commandArgs...)
	a := startServer(t, extra...)
	b := startReplica(t, a, "rep-b")

	const n = 20
	keys := a.provision(t, "scale", n)
	fleetTarget := *a
	fleetTarget.MQTT = strings.TrimPrefix(url, "tcp://")
	var sims simDevices
	startFleet(t, &fleetTarget, keys, "", sims.setup)
	waitOnline(t, a, n)

	for _, s := range []struct {
		srv     *testServer
		replica string
	}{{a, "rep-a"}, {b, "rep-b"}} {
		if v := s.srv.metric(t, "ecowatt_replica_info", `replica="`+s.replica+`"`); v != 1 {
			t.Errorf("%s: ecowatt_replica_info = %v, want 1", s.replica, v)
		}
	}
	eventually(t, 30*time.Second, "both replicas processing uplinks", func() (bool, string) {
		ua, ub := a.metric(t, "ecowatt_uplink_messages_total", ""), b.metric(t, "ecowatt_uplink_messages_total", "")
		return ua > 0 && ub > 0, fmt.Sprintf("rep-a %v, rep-b %v", ua, ub)
	})

	// A config change made through replica b, acknowledged and seen on a.
	const cfgDev = "scale-0003"
	if out, err := b.cli(t, "config", "set", cfgDev, "--sampling-interval", "2", "--upload-interval", "4", "--registers", "voltage,frequency"); err != nil {
		t.Fatalf("config set on rep-b: %v\n%s", err, out)
	}
	waitInSync(t, a, cfgDev, 1)

	// A command sent through replica a completes once.
	const cmdDev = "scale-0011"
	c := a.submitCommand(t, cmdDev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 40})
	done := b.waitCommand(t, c.ID, "succeeded", 40*time.Second)
	if done.Result == nil || done.Result.Value == nil || *done.Result.Value != 40 {
		t.Fatalf("command result %+v", done.Result)
	}
	if w := sims.get(t, cmdDev).f.Commands.Stats().Writes; w != 1 {
		t.Errorf("%d register writes on %s, want exactly 1", w, cmdDev)
	}

	// The auth callbacks an external broker would call are mounted.
	k, err := envelope.DeriveKeys(keys["scale-0001"])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{"username": "scale-0001", "clientid": "scale-0001",
		"password": envelope.Password(&k, "scale-0001", time.Now())})
	resp, err := http.Post(b.HTTP+"/mqtt/emqx/authn", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var res struct{ Result string }
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if res.Result != "allow" {
		t.Errorf("emqx authn for a device on rep-b: %q", res.Result)
	}
}
