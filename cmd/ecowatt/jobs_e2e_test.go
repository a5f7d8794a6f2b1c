package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/topics"
)

// TestJobCLI: a config job created with the CLI over a selector reaches
// every simulated device, `job status --watch` follows it to completed,
// a viewer operator sees its progress on ecowatt/v1/events/jobs/{jid},
// and a bad job or pausing the completed job is refused.
func TestJobCLI(t *testing.T) {
	s := startServer(t, "--job-tick", "100ms", "--operator", "watcher:watcher-pw:viewer")
	keys := s.provision(t, "jobe", 4)
	var sims simDevices
	startFleet(t, s, keys, "", sims.setup)
	waitOnline(t, s, 4)

	var mu sync.Mutex
	var events []jobs.Event
	watch := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + s.MQTT).
		SetClientID("watcher").SetUsername("watcher").SetPassword("watcher-pw").
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := watch.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect watcher: %v", tok.Error())
	}
	defer watch.Disconnect(100)
	tok := watch.Subscribe(topics.Root+"/events/jobs/+", 1, func(_ paho.Client, m paho.Message) {
		var ev jobs.Event
		if err := json.Unmarshal(m.Payload(), &ev); err != nil || m.Topic() != jobs.Topic(ev.Job) {
			t.Errorf("job event on %s: %s (%v)", m.Topic(), m.Payload(), err)
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	out, err := s.cli(t, "job", "create", "--selector", "id~jobe-", "--config", "sampling_interval=2", "--config", "upload_interval=4",
		"--max-per-minute", "600")
	if err != nil {
		t.Fatalf("job create: %v\n%s", err, out)
	}
	jid := regexp.MustCompile(`job (\w+) \(config\) created for 4 devices`).FindStringSubmatch(out)
	if jid == nil {
		t.Fatalf("job create said %q", out)
	}
	out, err = s.cli(t, "job", "status", jid[1], "--watch", "--timeout", "60s")
	if err != nil || !strings.Contains(out, "COMPLETED") || !strings.Contains(out, "succeeded 4") {
		t.Fatalf("job status --watch: %v\n%s", err, out)
	}
	for id := range keys {
		v, cfg := sims.get(t, id).f.Config.Current()
		if cfg.SamplingInterval != 2 || cfg.UploadInterval != 4 || v < 1 {
			t.Errorf("%s runs v%d %+v after the job", id, v, cfg)
		}
	}
	if out, err := s.cli(t, "job", "list"); err != nil || !strings.Contains(out, jid[1]) {
		t.Fatalf("job list: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "job", "pause", jid[1]); err == nil || !strings.Contains(out+err.Error(), "completed") {
		t.Fatalf("pause of a completed job: %v\n%s", err, out)
	}
	var e struct {
		Error struct{ Code, Field, Message string } `json:"error"`
	}
	if code := s.api(t, "POST", "/api/v1/jobs", map[string]any{"selector": "id~jobe-", "max_per_minute": 10,
		"config": map[string]any{"sampling_interval": 2}, "command": map[string]any{"action": "reboot"}}, &e); code != 400 || e.Error.Field != "action" {
		t.Fatalf("two actions: %d %+v", code, e)
	}
	for path, want := range map[string]int{
		"/api/v1/jobs/01J9Z8X7W6V5T4S3R2Q1P0N9M8":             404,
		"/api/v1/jobs/nope":                                   404,
		"/api/v1/jobs?limit=0":                                400,
		"/api/v1/jobs/" + jid[1] + "/devices?state=bogus":     400,
		"/api/v1/jobs/" + jid[1] + "/devices?cursor=abc.def":  400,
		"/api/v1/jobs/" + jid[1] + "/devices?state=succeeded": 200,
	} {
		if code := s.api(t, "GET", path, nil, nil); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	eventually(t, 5*time.Second, "a completed event", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			if ev.Job == jid[1] && ev.State == jobs.StateCompleted && ev.Counts[jobs.DevSucceeded] == 4 {
				return true, ""
			}
		}
		return false, "events " + strings.Repeat("|", len(events))
	})
}

// TestJobCLIOptions: the job options the API has are reachable from the
// CLI and arrive in the job's spec as given.
func TestJobCLIOptions(t *testing.T) {
	s := startServer(t)
	s.provision(t, "jobo", 2)
	out, err := s.cli(t, "job", "create", "--all", "--command", "ping", "--max-per-minute", "60",
		"--serial-batches", "--max-failure-percent", "20", "--min-executed", "3", "--count-in-progress")
	if err != nil {
		t.Fatalf("job create: %v\n%s", err, out)
	}
	jid := regexp.MustCompile(`job (\w+) \(command\) created for 2 devices`).FindStringSubmatch(out)
	if jid == nil {
		t.Fatalf("job create said %q", out)
	}
	var j jobs.Job
	if code := s.api(t, "GET", "/api/v1/jobs/"+jid[1], nil, &j); code != 200 {
		t.Fatalf("GET job: %d", code)
	}
	sp := j.Spec
	if !sp.All || !sp.SerialBatches || sp.Abort == nil || sp.Abort.MaxFailurePercent != 20 ||
		sp.Abort.MinExecuted != 3 || !sp.Abort.CountInProgress {
		t.Fatalf("spec %+v (abort %+v), want all, serial batches and the abort rule given", sp, sp.Abort)
	}
}

// TestJobCLIUsageErrors: a job command missing its target or action, or
// with a malformed --config, fails before it calls the server.
func TestJobCLIUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"job", "create", "--config", "sampling_interval=2", "--max-per-minute", "10"}, "exactly one of --selector, --devices and --all"},
		{"two targets", []string{"job", "create", "--selector", "a=b", "--devices", "d1", "--config", "sampling_interval=2", "--max-per-minute", "10"}, "exactly one of --selector, --devices and --all"},
		{"selector and all", []string{"job", "create", "--selector", "a=b", "--all", "--config", "sampling_interval=2", "--max-per-minute", "10"}, "exactly one of --selector, --devices and --all"},
		{"count-in-progress without a rule", []string{"job", "create", "--all", "--config", "sampling_interval=2", "--max-per-minute", "10", "--count-in-progress"}, "give --max-failure-percent too"},
		{"no action", []string{"job", "create", "--selector", "a=b", "--max-per-minute", "10"}, "exactly one action"},
		{"two actions", []string{"job", "create", "--selector", "a=b", "--config", "sampling_interval=2", "--command", "reboot", "--max-per-minute", "10"}, "exactly one action"},
		{"config without =", []string{"job", "create", "--selector", "a=b", "--config", "sampling_interval", "--max-per-minute", "10"}, "want key=value"},
		{"value not an integer", []string{"job", "create", "--selector", "a=b", "--command", "write_register", "--value", "x", "--max-per-minute", "10"}, "not an integer"},
		{"status without JID", []string{"job", "status"}, "usage: ecowatt job status JID"},
		{"pause without JID", []string{"job", "pause"}, "usage: ecowatt job pause JID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, code, err := cliRun(nowhere, tc.args...)
			if code != exitUsage || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("exit %d, err %v; want exit 2 with %q", code, err, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

// TestJobSurvivesRestart: the backend restarts in the middle of a paced
// config job; the job carries on from Redis and completes, and every
// device was sent exactly one new config version (the device's own
// version counter says so).
func TestJobSurvivesRestart(t *testing.T) {
	// A fixed MQTT port, so that the devices find the restarted broker.
	s := startServer(t, "--job-tick", "100ms", "--config-sweep", "1s", "--mqtt-addr", freeAddr(t))
	keys := s.provision(t, "jrs", 12)
	var sims simDevices
	startFleet(t, s, keys, "", sims.setup)
	waitOnline(t, s, 12)
	jid := startJob(t, s, "--selector", "id~jrs-", "--config", "sampling_interval=2", "--config", "upload_interval=4",
		"--max-per-minute", "120", "--batch-size", "2")
	eventually(t, 20*time.Second, "some parts done", func() (bool, string) {
		j := getJob(t, s, jid)
		return j.Counts[jobs.DevSucceeded] >= 2, fmt.Sprint(j.Counts)
	})
	s.restart(t)
	if j := getJob(t, s, jid); j.Counts[jobs.DevQueued] == 0 {
		t.Fatalf("the job had finished before the restart: %v", j.Counts)
	}
	eventually(t, 60*time.Second, "job completed", func() (bool, string) {
		j := getJob(t, s, jid)
		return j.State == jobs.StateCompleted, fmt.Sprintf("%s %v", j.State, j.Counts)
	})
	if j := getJob(t, s, jid); j.Counts[jobs.DevSucceeded] != 12 {
		t.Fatalf("job %v", j.Counts)
	}
	for id := range keys {
		if v, cfg := sims.get(t, id).f.Config.Current(); v != 1 || cfg.SamplingInterval != 2 {
			t.Errorf("%s runs config v%d %+v; want the job's version 1, once", id, v, cfg)
		}
	}
}
