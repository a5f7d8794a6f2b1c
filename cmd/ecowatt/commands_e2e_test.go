package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
)

// commandArgs make the server's command loops quick enough for tests.
var commandArgs = []string{"--command-sweep", "100ms", "--command-resend-after", "2s", "--command-result-timeout", "30s"}

// featureSet wires the device features and remembers each device's.
type featureSet struct {
	mu sync.Mutex // guards m
	m  map[string]*devicesim.Features
}

func newFeatureSet() *featureSet { return &featureSet{m: map[string]*devicesim.Features{}} }

func (f *featureSet) setup(d *devicesim.Device) error {
	feat, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{})
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.m[d.ID()] = feat
	f.mu.Unlock()
	return nil
}

func (f *featureSet) get(t *testing.T, id string) *devicesim.Features {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	feat, ok := f.m[id]
	if !ok {
		t.Fatalf("no features for %s", id)
	}
	return feat
}

type commandDoc struct {
	ID          string     `json:"id"`
	Seq         int64      `json:"seq"`
	State       string     `json:"state"`
	RequestID   string     `json:"request_id"`
	Error       string     `json:"error"`
	Attempts    int        `json:"attempts"`
	DeliveredAt *time.Time `json:"delivered_at"`
	Result      *struct {
		Status     string    `json:"status"`
		Value      *int      `json:"value"`
		Error      string    `json:"error"`
		ExecutedAt time.Time `json:"executed_at"`
	} `json:"result"`
}

func (s *testServer) command(t *testing.T, cid string) commandDoc {
	t.Helper()
	var c commandDoc
	if code := s.api(t, "GET", "/api/v1/commands/"+cid, nil, &c); code != 200 {
		t.Fatalf("GET command %s: %d", cid, code)
	}
	return c
}

func (s *testServer) submitCommand(t *testing.T, dev string, doc map[string]any) commandDoc {
	t.Helper()
	var c commandDoc
	if code := s.api(t, "POST", "/api/v1/devices/"+dev+"/commands", doc, &c); code != 201 {
		t.Fatalf("POST command %v: %d", doc, code)
	}
	return c
}

func (s *testServer) waitCommand(t *testing.T, cid, state string, timeout time.Duration) commandDoc {
	t.Helper()
	var c commandDoc
	eventually(t, timeout, "command "+cid+" "+state, func() (bool, string) {
		c = s.command(t, cid)
		return c.State == state, fmt.Sprintf("state %s error %q", c.State, c.Error)
	})
	return c
}

func cmdWaitOnline(t *testing.T, s *testServer, n int) {
	t.Helper()
	eventually(t, 30*time.Second, "devices online", func() (bool, string) {
		on, total := countOnline(t, s)
		return on == n, fmt.Sprintf("%d/%d online", on, total)
	})
}

// TestCommandWriteAndRead: the CLI's write_register export_power 50
// succeeds with the value read back, a read_register then shows 50, the
// inverter's register really changed, and the list shows both.
func TestCommandWriteAndRead(t *testing.T) {
	s := startServer(t, commandArgs...)
	keys := s.provision(t, "cmdw", 1)
	feats := newFeatureSet()
	startFleet(t, s, keys, "", feats.setup)
	cmdWaitOnline(t, s, 1)

	out, err := s.cli(t, "command", "send", "cmdw-0001", "write_register", "export_power", "50", "--ttl", "1m", "--wait", "-o", "json")
	if err != nil {
		t.Fatalf("command send: %v\n%s", err, out)
	}
	var w commandDoc
	if err := json.Unmarshal([]byte(out), &w); err != nil || w.State != "succeeded" || w.Result == nil || *w.Result.Value != 50 {
		t.Fatalf("write: %v %+v\n%s", err, w, out)
	}
	out, err = s.cli(t, "command", "send", "cmdw-0001", "read_register", "export_power", "--wait", "-o", "json")
	var r commandDoc
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r.Result == nil || *r.Result.Value != 50 {
		t.Fatalf("read: %v %+v\n%s", err, r, out)
	}
	// The audit trail has every state, the device's receipt included.
	var audit struct {
		Events []struct {
			Data struct {
				CommandID string `json:"command_id"`
				State     string `json:"state"`
			} `json:"data"`
		} `json:"events"`
	}
	if code := s.api(t, "GET", "/api/v1/devices/cmdw-0001/events?kind=command", nil, &audit); code != 200 {
		t.Fatalf("GET events: %d", code)
	}
	var states []string
	for i := len(audit.Events) - 1; i >= 0; i-- { // newest first
		if ev := audit.Events[i]; ev.Data.CommandID == w.ID {
			states = append(states, ev.Data.State)
		}
	}
	if got := strings.Join(states, ","); got != "queued,sent,delivered,succeeded" {
		t.Errorf("audit states of the write: %s", got)
	}
	if got := feats.get(t, "cmdw-0001").Commands.Stats().Writes; got != 1 {
		t.Errorf("%d register writes, want 1", got)
	}
	out, err = s.cli(t, "command", "list", "cmdw-0001")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "read_register") || !strings.Contains(lines[2], "write_register") ||
		!strings.Contains(lines[2], "succeeded") || !strings.Contains(lines[0], "DELIVERED") {
		t.Fatalf("command list (newest first):\n%s", out)
	}
	// Bad input through the CLI: a clear reason, nothing queued.
	for _, args := range [][]string{
		{"cmdw-0001", "write_register", "export_power", "150"},
		{"cmdw-0001", "write_register", "voltage", "5"},
		{"cmdw-0001", "self_destruct"},
		{"nobody", "ping"},
	} {
		out, err := s.cli(t, append([]string{"command", "send"}, args...)...)
		if err == nil {
			t.Errorf("command send %v accepted:\n%s", args, out)
		}
	}
	out, _ = s.cli(t, "command", "list", "cmdw-0001", "-o", "json")
	var page struct{ Commands []commandDoc }
	if json.Unmarshal([]byte(out), &page); len(page.Commands) != 2 {
		t.Errorf("%d commands after refused sends, want 2", len(page.Commands))
	}
}

// TestCommandQueuedOfflineAndRestart: commands queued while the device is
// offline, across a backend restart, are all delivered in order and
// executed once when the device comes; a queued one can be cancelled
// (and then no longer).
func TestCommandQueuedOfflineAndRestart(t *testing.T) {
	s := startServer(t, commandArgs...)
	keys := s.provision(t, "cmdq", 1)
	dev := "cmdq-0001"
	var ids []string
	for _, v := range []int{10, 20, 30} {
		ids = append(ids, s.submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": v}).ID)
	}
	gone := s.submitCommand(t, dev, map[string]any{"action": "ping"})
	var cancelled commandDoc
	if code := s.api(t, "DELETE", "/api/v1/commands/"+gone.ID, nil, &cancelled); code != 200 || cancelled.State != "cancelled" {
		t.Fatalf("cancel: %d %+v", code, cancelled)
	}
	if code := s.api(t, "DELETE", "/api/v1/commands/"+gone.ID, nil, nil); code != 409 {
		t.Fatalf("second cancel: %d, want 409", code)
	}
	time.Sleep(300 * time.Millisecond) // a few sweeps against an offline device
	s.restart(t)
	for _, id := range ids {
		if c := s.command(t, id); c.State != "queued" {
			t.Fatalf("command %s is %s before the device came", id, c.State)
		}
	}
	feats := newFeatureSet()
	startFleet(t, s, keys, "", feats.setup)
	var last time.Time
	for _, id := range ids {
		c := s.waitCommand(t, id, "succeeded", 30*time.Second)
		if c.Result.ExecutedAt.Before(last) {
			t.Errorf("command %s executed out of order", id)
		}
		last = c.Result.ExecutedAt
	}
	st := feats.get(t, dev).Commands.Stats()
	if st.Writes != 3 || st.Executed != 3 {
		t.Errorf("device stats %+v, want 3 writes", st)
	}
	if c := s.command(t, ids[2]); *c.Result.Value != 30 {
		t.Errorf("last write read back %d", *c.Result.Value)
	}
	if c := s.command(t, gone.ID); c.State != "cancelled" {
		t.Errorf("cancelled command is %s", c.State)
	}
}

// TestCommandDuplicateDelivery: the backend loses a result (its record is
// put back to sent, as if it crashed before recording it) and delivers the
// command again; the device answers from its flash without executing.
func TestCommandDuplicateDelivery(t *testing.T) {
	s := startServer(t, commandArgs...)
	keys := s.provision(t, "cmdd", 1)
	dev := "cmdd-0001"
	feats := newFeatureSet()
	startFleet(t, s, keys, "", feats.setup)
	cmdWaitOnline(t, s, 1)
	c := s.submitCommand(t, dev, map[string]any{"action": "write_register", "target_register": "export_power", "value": 42})
	s.waitCommand(t, c.ID, "succeeded", 20*time.Second)

	rdb, prefix := s.redis(t)
	ctx := context.Background()
	tag := prefix + "{dev:" + dev + "}:"
	pipe := rdb.TxPipeline()
	pipe.HSet(ctx, tag+"cmd:"+c.ID, "state", "sent", "last_sent_at", 1)
	pipe.HDel(ctx, tag+"cmd:"+c.ID, "finished_at", "result_status")
	pipe.Persist(ctx, tag+"cmd:"+c.ID)
	pipe.ZAdd(ctx, tag+"cmdq", redis.Z{Score: float64(c.Seq), Member: c.ID})
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	rdb.ZAdd(ctx, prefix+"cmdactive", redis.Z{Member: dev})

	d := s.waitCommand(t, c.ID, "succeeded", 20*time.Second)
	if d.Attempts < 2 {
		t.Errorf("attempts %d: not delivered again", d.Attempts)
	}
	st := feats.get(t, dev).Commands.Stats()
	if st.Writes != 1 || st.Executed != 1 || st.Duplicates < 1 {
		t.Fatalf("device stats %+v: want 1 write, 1 execution, a duplicate", st)
	}
}

// redis connects to the server's Redis and returns its key prefix.
func (s *testServer) redis(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	prefix := ""
	for i, a := range s.args {
		if a == "--redis-prefix" && i+1 < len(s.args) {
			prefix = s.args[i+1]
		}
	}
	opt, err := redis.ParseURL(os.Getenv(redistest.EnvURL))
	if err != nil || prefix == "" {
		t.Fatalf("redis of the test server: %v (prefix %q)", err, prefix)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c, prefix
}

// TestCommandReboot: a reboot command succeeds and the device comes back
// with a higher boot count.
func TestCommandReboot(t *testing.T) {
	s := startServer(t, commandArgs...)
	keys := s.provision(t, "cmdr", 1)
	dev := "cmdr-0001"
	startFleet(t, s, keys, "", newFeatureSet().setup)
	cmdWaitOnline(t, s, 1)
	var before struct {
		BootCount int `json:"boot_count"`
	}
	s.api(t, "GET", "/api/v1/devices/"+dev, nil, &before)
	out, err := s.cli(t, "command", "send", dev, "reboot", "--wait")
	if err != nil {
		t.Fatalf("reboot: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "boot count up", func() (bool, string) {
		var d struct {
			BootCount int  `json:"boot_count"`
			Online    bool `json:"online"`
		}
		s.api(t, "GET", "/api/v1/devices/"+dev, nil, &d)
		return d.Online && d.BootCount == before.BootCount+1, fmt.Sprintf("boot count %d (was %d), online %v", d.BootCount, before.BootCount, d.Online)
	})
}

// TestCommandMosquitto: mosquitto_pub on ecowatt/v1/ops/{id}/command with
// a request_id; mosquitto_sub on the events sees the result carrying it,
// and a rejection carrying its own.
func TestCommandMosquitto(t *testing.T) {
	for _, tool := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test.sh installs it)", tool)
		}
	}
	s := startServer(t, append(commandArgs, "--operator", "ops:s3cret-pass")...)
	keys := s.provision(t, "cmdm", 1)
	dev := "cmdm-0001"
	startFleet(t, s, keys, "", newFeatureSet().setup)
	cmdWaitOnline(t, s, 1)
	// bcrypt at its default cost takes seconds under -race on a busy
	// machine, and the broker gives a connect 5 s: rehash the operator's
	// password at the minimum cost so the test measures commands.
	rdb, prefix := s.redis(t)
	fast, _ := bcrypt.GenerateFromPassword([]byte("s3cret-pass"), bcrypt.MinCost)
	if err := rdb.HSet(context.Background(), prefix+"op:ops", "hash", fast).Err(); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(s.MQTT, ":")
	auth := []string{"-h", host, "-p", port, "-u", "ops", "-P", "s3cret-pass", "-V", "mqttv311"}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub := exec.CommandContext(ctx, "mosquitto_sub", append(auth, "-q", "1", "-t", "ecowatt/v1/events/"+dev+"/command")...)
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var subErr strings.Builder
	sub.Stderr = &subErr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); sub.Wait() }()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	time.Sleep(500 * time.Millisecond) // let the subscription settle

	pub := func(msg string) {
		out, err := exec.CommandContext(ctx, "mosquitto_pub", append(auth, "-q", "1", "-t", "ecowatt/v1/ops/"+dev+"/command", "-m", msg)...).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}
	pub(`{"action":"write_register","target_register":"export_power","value":77,"request_id":"req-42"}`)
	pub(`{"action":"write_register","target_register":"export_power","value":150,"request_id":"req-bad"}`)

	type event struct {
		Data struct {
			State     string `json:"state"`
			Status    string `json:"status"`
			RequestID string `json:"request_id"`
			Result    *struct {
				Value *int `json:"value"`
			} `json:"result"`
			Error any `json:"error"`
		} `json:"data"`
	}
	var succeeded, rejected bool
	var seen []string
	for !succeeded || !rejected {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("mosquitto_sub ended: %s\nseen %v", subErr.String(), seen)
			}
			seen = append(seen, line)
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("event %q: %v", line, err)
			}
			switch {
			case ev.Data.RequestID == "req-42" && ev.Data.State == "succeeded":
				if ev.Data.Result == nil || ev.Data.Result.Value == nil || *ev.Data.Result.Value != 77 {
					t.Fatalf("result event %s", line)
				}
				succeeded = true
			case ev.Data.RequestID == "req-bad":
				if ev.Data.Status != "rejected" || !strings.Contains(line, "out of range") {
					t.Fatalf("rejection event %s", line)
				}
				rejected = true
			}
		case <-ctx.Done():
			t.Fatalf("no result/rejection events; seen:\n%s", strings.Join(seen, "\n"))
		}
	}
}

// TestCommandHTTPBadInput: the HTTP API refuses bad commands with the
// status, field and reason, and queues nothing.
func TestCommandHTTPBadInput(t *testing.T) {
	s := startServer(t, commandArgs...)
	s.provision(t, "cmdh", 1)
	cases := []struct {
		name, path, body string
		status           int
		field            string
	}{
		{"unknown action", "cmdh-0001", `{"action":"melt"}`, 400, "action"},
		{"read-only register", "cmdh-0001", `{"action":"write_register","target_register":"voltage","value":1}`, 400, "target_register"},
		{"out of range", "cmdh-0001", `{"action":"write_register","target_register":"export_power","value":150}`, 400, "value"},
		{"missing value", "cmdh-0001", `{"action":"write_register","target_register":"export_power"}`, 400, "value"},
		{"unknown register", "cmdh-0001", `{"action":"read_register","target_register":"flux"}`, 400, "target_register"},
		{"bad ttl", "cmdh-0001", `{"action":"ping","ttl":"48h"}`, 400, "ttl"},
		{"unknown field", "cmdh-0001", `{"action":"ping","priority":1}`, 400, "priority"},
		{"wrong type", "cmdh-0001", `{"action":"write_register","target_register":"export_power","value":"50"}`, 400, "value"},
		{"not json", "cmdh-0001", `{"action"`, 400, ""},
		{"unknown device", "nobody", `{"action":"ping"}`, 404, "id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e struct {
				Error struct{ Code, Message, Field string }
			}
			code := s.api(t, "POST", "/api/v1/devices/"+tc.path+"/commands", json.RawMessage(tc.body), &e)
			if code != tc.status || e.Error.Field != tc.field || e.Error.Message == "" {
				t.Fatalf("status %d error %+v; want %d field %q", code, e.Error, tc.status, tc.field)
			}
		})
	}
	var page struct{ Commands []commandDoc }
	if code := s.api(t, "GET", "/api/v1/devices/cmdh-0001/commands", nil, &page); code != 200 || len(page.Commands) != 0 {
		t.Fatalf("list: %d, %d commands after bad input", code, len(page.Commands))
	}
	for path, want := range map[string]int{
		"/api/v1/devices/cmdh-0001/commands?limit=0":  400,
		"/api/v1/devices/cmdh-0001/commands?limit=x":  400,
		"/api/v1/devices/nobody/commands":             404,
		"/api/v1/commands/01JNOSUCHCOMMAND0000000000": 404,
	} {
		if code := s.api(t, "GET", path, nil, nil); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
}
