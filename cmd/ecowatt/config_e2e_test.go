package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// simDevices keeps the simulated devices of the current fleet and their
// features, so tests can look inside them (boot count, running config).
type simDevices struct {
	mu sync.Mutex // guards m
	m  map[string]simDevice
}

type simDevice struct {
	d *devicesim.Device
	f *devicesim.Features
}

// fastConfig is the factory config of the simulated devices in these
// tests: sample every second, upload every 2 s.
var fastConfig = topics.Config{SamplingInterval: 1, UploadInterval: 2, Registers: []string{"voltage", "current", "output_power"}}

func (s *simDevices) setup(d *devicesim.Device) error {
	f, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
		Config: devicesim.ConfigOptions{Default: fastConfig},
		Telemetry: devicesim.TelemetryOptions{
			Modbus: modbus.ClientConfig{Timeout: 150 * time.Millisecond, Tries: 3, RetryDelay: 10 * time.Millisecond},
		},
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]simDevice{}
	}
	s.m[d.ID()] = simDevice{d, f}
	return nil
}

func (s *simDevices) get(t *testing.T, id string) simDevice {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	sd, ok := s.m[id]
	if !ok {
		t.Fatalf("no simulated device %s", id)
	}
	return sd
}

// configStateDoc is GET /api/v1/devices/{id}/config.
type configStateDoc struct {
	Desired struct {
		topics.Config
		Version   int64  `json:"version"`
		UpdatedBy string `json:"updated_by"`
		Via       string `json:"via"`
	} `json:"desired"`
	Reported *struct {
		topics.Config
		Version int64 `json:"version"`
	} `json:"reported"`
	Pending bool              `json:"pending"`
	LastAck *topics.ConfigAck `json:"last_ack"`
	Drift   []string          `json:"drift"`
}

type configHistoryDoc struct {
	History []struct {
		Type    string               `json:"type"`
		Version int64                `json:"version"`
		By      string               `json:"by"`
		Via     string               `json:"via"`
		Changes []topics.FieldChange `json:"changes"`
		Ack     *topics.ConfigAck    `json:"ack"`
		Result  string               `json:"result"`
	} `json:"history"`
}

func getConfig(t *testing.T, s *testServer, id string) configStateDoc {
	t.Helper()
	var d configStateDoc
	if code := s.api(t, "GET", "/api/v1/devices/"+id+"/config", nil, &d); code != 200 {
		t.Fatalf("GET config %s: %d", id, code)
	}
	return d
}

func getHistory(t *testing.T, s *testServer, id string) configHistoryDoc {
	t.Helper()
	var h configHistoryDoc
	if code := s.api(t, "GET", "/api/v1/devices/"+id+"/config/history", nil, &h); code != 200 {
		t.Fatalf("GET config history %s: %d", id, code)
	}
	return h
}

// waitInSync waits until id has acknowledged desired version v and
// reports the desired config.
func waitInSync(t *testing.T, s *testServer, id string, v int64) configStateDoc {
	t.Helper()
	var d configStateDoc
	eventually(t, 30*time.Second, id+" acknowledges v"+fmt.Sprint(v), func() (bool, string) {
		d = getConfig(t, s, id)
		ok := d.Desired.Version == v && !d.Pending && d.Reported != nil && d.Reported.Version == v &&
			d.Reported.Equal(d.Desired.Config) && d.LastAck != nil && d.LastAck.Version == v
		return ok, fmt.Sprintf("%+v", d)
	})
	return d
}

func waitOnline(t *testing.T, s *testServer, n int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%d devices online", n), func() (bool, string) {
		on, _ := countOnline(t, s)
		return on == n, fmt.Sprintf("%d online", on)
	})
}

// TestConfigAppliedWithoutReboot: a change of interval and registers made
// with the CLI is applied by the device without a reboot, telemetry then
// follows it, the history lists it, and an idempotent redelivery changes
// nothing.
func TestConfigAppliedWithoutReboot(t *testing.T) {
	s := startServer(t, "--config-sweep", "1s")
	keys := s.provision(t, "cfg", 1)
	const id = "cfg-0001"
	var sims simDevices
	startFleet(t, s, keys, "", sims.setup)
	waitOnline(t, s, 1)
	boots := sims.get(t, id).d.Boot().BootCount

	out, err := s.cli(t, "config", "set", id, "--sampling-interval", "2", "--upload-interval", "4", "--registers", "voltage,frequency", "--as", "carol")
	if err != nil || !strings.Contains(out, "v1") {
		t.Fatalf("config set: %v\n%s", err, out)
	}
	want := topics.Config{SamplingInterval: 2, UploadInterval: 4, Registers: []string{"voltage", "frequency"}}
	d := waitInSync(t, s, id, 1)
	if !d.Desired.Equal(want) || d.Desired.UpdatedBy != "carol" || d.Desired.Via != "http" || len(d.LastAck.Accepted) != 3 {
		t.Fatalf("config after set: %+v", d)
	}
	acked := time.Now()

	sd := sims.get(t, id)
	if v, cfg := sd.f.Config.Current(); v != 1 || !cfg.Equal(want) {
		t.Fatalf("device runs v%d %+v", v, cfg)
	}
	if b := sd.d.Boot().BootCount; b != boots {
		t.Fatalf("boot count %d -> %d: the config change rebooted the device", boots, b)
	}

	// Telemetry from a little after the ack has the new registers, 2 s apart.
	from := acked.Add(5 * time.Second).UTC().Format(time.RFC3339Nano)
	var tm telemetryDoc
	eventually(t, 40*time.Second, "telemetry with the new config", func() (bool, string) {
		tm = telemetryDoc{}
		s.api(t, "GET", "/api/v1/devices/"+id+"/telemetry?from="+from, nil, &tm)
		if len(tm.Registers) == 0 {
			return false, "no telemetry yet"
		}
		for _, r := range tm.Registers {
			if len(r.Points) < 4 {
				return false, fmt.Sprintf("%s: %d points", r.Name, len(r.Points))
			}
		}
		return true, ""
	})
	var names []string
	for _, r := range tm.Registers {
		names = append(names, r.Name)
		for i := 1; i < len(r.Points); i++ {
			if gap := r.Points[i].T.Sub(r.Points[i-1].T); gap != 2*time.Second {
				t.Fatalf("%s: samples %s apart, want the new 2 s interval", r.Name, gap)
			}
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"frequency", "voltage"}) {
		t.Fatalf("telemetry registers %v, want frequency and voltage", names)
	}

	// Idempotent redelivery: mark the version unacknowledged, as if the
	// ack had been lost; the sweep sends v1 again, the device repeats its
	// ack and changes nothing.
	before := sd.f.Config.Stats()
	rdb, prefix := serverRedis(t, s)
	cfgKey := prefix + "{dev:" + id + "}:cfg"
	if err := rdb.HSet(context.Background(), cfgKey, "pending", "1").Err(); err != nil {
		t.Fatal(err)
	}
	rdb.ZAdd(context.Background(), prefix+"cfgpending", redis.Z{Score: float64(time.Now().UnixMilli()), Member: id})
	d = waitInSync(t, s, id, 1)
	after := sd.f.Config.Stats()
	if after.Duplicates != before.Duplicates+1 || after.Versions != before.Versions || after.Changed != before.Changed {
		t.Fatalf("redelivery: device stats %+v -> %+v", before, after)
	}
	if v, cfg := sd.f.Config.Current(); v != 1 || !cfg.Equal(want) || sd.d.Boot().BootCount != boots {
		t.Fatalf("redelivery changed the device: v%d %+v", v, cfg)
	}

	// The history: the change (who, how, what) and both acks, newest first.
	h := getHistory(t, s, id)
	var types []string
	for _, e := range h.History {
		types = append(types, e.Type)
	}
	if strings.Join(types, ",") != "ack,ack,desired" {
		t.Fatalf("history types %v", types)
	}
	if e := h.History[2]; e.Version != 1 || e.By != "carol" || e.Via != "http" || len(e.Changes) != 3 {
		t.Fatalf("history entry of the change: %+v", e)
	}
	out, err = s.cli(t, "config", "show", id)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"desired", "reported", "voltage,frequency", "carol (http)", "pending:  no", "History", "accepted"} {
		if !strings.Contains(out, w) {
			t.Errorf("config show lacks %q:\n%s", w, out)
		}
	}
	out, err = s.cli(t, "config", "show", id, "-o", "json")
	var js struct {
		Config  configStateDoc    `json:"config"`
		History []json.RawMessage `json:"history"`
	}
	if err != nil || json.Unmarshal([]byte(out), &js) != nil || js.Config.Desired.Version != 1 || len(js.History) != 3 {
		t.Fatalf("config show -o json: %v\n%s", err, out)
	}
}

// TestConfigOfflineAndPowerCycle: a device that is off while its config
// changes three times gets only the latest version when it comes back;
// the config then survives a power cycle without being sent again.
func TestConfigOfflineAndPowerCycle(t *testing.T) {
	s := startServer(t, "--config-sweep", "1s")
	keys := s.provision(t, "cfo", 1)
	const id = "cfo-0001"
	state := t.TempDir()
	var sims simDevices
	fleet := startFleet(t, s, keys, state, sims.setup)
	waitOnline(t, s, 1)
	fleet.stop(t)
	waitOnline(t, s, 0)

	patches := []string{
		`{"sampling_interval":2,"upload_interval":4}`,
		`{"registers":["voltage"]}`,
		`{"upload_interval":6}`,
	}
	for i, p := range patches {
		var res configStateDoc
		if code := s.api(t, "PUT", "/api/v1/devices/"+id+"/config", json.RawMessage(p), &res); code != 200 || res.Desired.Version != int64(i+1) {
			t.Fatalf("PUT %s: %d %+v", p, code, res)
		}
	}
	if d := getConfig(t, s, id); !d.Pending || d.Desired.Version != 3 {
		t.Fatalf("while offline: %+v", d)
	}

	fleet = startFleet(t, s, keys, state, sims.setup)
	d := waitInSync(t, s, id, 3)
	want := topics.Config{SamplingInterval: 2, UploadInterval: 6, Registers: []string{"voltage"}}
	if !d.Reported.Equal(want) {
		t.Fatalf("reported %+v, want %+v", d.Reported, want)
	}
	sd := sims.get(t, id)
	if st := sd.f.Config.Stats(); st.Versions != 1 || st.Stale != 0 {
		t.Fatalf("device processed %+v; want exactly one version (intermediate ones skipped)", st)
	}
	var acks []int64
	for _, e := range getHistory(t, s, id).History {
		if e.Type == "ack" {
			acks = append(acks, e.Version)
		}
	}
	if !slices.Equal(acks, []int64{3}) {
		t.Fatalf("acks in history %v, want only v3", acks)
	}
	boots := sd.d.Boot().BootCount

	// Power cycle: a new fleet on the same flash. The device boots with v3
	// from flash and is not sent anything.
	fleet.stop(t)
	waitOnline(t, s, 0)
	startFleet(t, s, keys, state, sims.setup)
	waitOnline(t, s, 1)
	sd = sims.get(t, id)
	if v, cfg := sd.f.Config.Current(); v != 3 || !cfg.Equal(want) {
		t.Fatalf("after power cycle the device runs v%d %+v", v, cfg)
	}
	if b := sd.d.Boot().BootCount; b != boots+1 {
		t.Fatalf("boot count %d -> %d, want one more", boots, b)
	}
	time.Sleep(2500 * time.Millisecond) // two sweeps
	if st := sd.f.Config.Stats(); st.Versions != 0 || st.Duplicates != 0 {
		t.Fatalf("a device in sync was sent its config again: %+v", st)
	}
	if d := getConfig(t, s, id); d.Pending || d.Reported == nil || d.Reported.Version != 3 || !d.Reported.Equal(want) {
		t.Fatalf("after power cycle: %+v", d)
	}
}

// serverRedis connects to the test server's Redis and returns its key
// prefix.
func serverRedis(t *testing.T, s *testServer) (redis.UniversalClient, string) {
	t.Helper()
	opt, err := redis.ParseURL(os.Getenv(redistest.EnvURL))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	i := slices.Index(s.args, "--redis-prefix")
	if i < 0 || i+1 >= len(s.args) {
		t.Fatal("test server has no --redis-prefix")
	}
	return c, s.args[i+1]
}

// addOperator creates an operator account in the server's Redis.
func addOperator(t *testing.T, s *testServer, name, password string, role backend.Role) {
	t.Helper()
	rdb, prefix := serverRedis(t, s)
	master := make([]byte, keyvault.KeySize)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := backend.New(backend.Config{Redis: rdb, Prefix: prefix, Vault: vault, Bus: nopBus{},
		Logger: zerolog.Nop(), BcryptCost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.EnsureOperator(context.Background(), name, password, role); err != nil {
		t.Fatal(err)
	}
}

type nopBus struct{}

func (nopBus) Publish(context.Context, string, []byte, byte) error { return nil }
func (nopBus) Subscribe(string, func(backend.Message)) error       { return nil }

// mqttEvents runs mosquitto_sub on the config events of dev as user and
// returns a channel of the events' data.
func mqttEvents(t *testing.T, s *testServer, user, pass, dev string) <-chan map[string]any {
	t.Helper()
	host, port, _ := strings.Cut(s.MQTT, ":")
	ctx, cancel := context.WithCancel(context.Background())
	// stdbuf: mosquitto_sub's debug lines (the SUBACK) are otherwise
	// block-buffered on a pipe.
	cmd := exec.CommandContext(ctx, "stdbuf", "-oL", "mosquitto_sub", "-h", host, "-p", port, "-u", user, "-P", pass,
		"-q", "1", "-d", "-t", topics.Event(dev, topics.EventConfig))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("mosquitto_sub: %v", err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	ch := make(chan map[string]any, 16)
	subscribed := make(chan struct{})
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.OnceFunc(func() { close(subscribed) })
		for sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, "SUBACK") {
				once()
			}
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var ev backend.Event
			var data map[string]any
			if json.Unmarshal([]byte(line), &ev) == nil && json.Unmarshal(ev.Data, &data) == nil {
				ch <- data
			}
		}
	}()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatalf("mosquitto_sub did not subscribe: %s\n%s", stderr.String(), s.logs)
	}
	return ch
}

// mqttPublish runs mosquitto_pub; it returns its error and output.
func mqttPublish(s *testServer, user, pass, topic, msg string) (string, error) {
	host, port, _ := strings.Cut(s.MQTT, ":")
	out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-u", user, "-P", pass,
		"-q", "1", "-t", topic, "-m", msg).CombinedOutput()
	return string(out), err
}

func nextEvent(t *testing.T, ch <-chan map[string]any, what string) map[string]any {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("event stream ended waiting for %s", what)
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatalf("no event: %s", what)
		return nil
	}
}

// TestConfigOverMQTT: an admin operator's mosquitto_pub to the ops topic
// round-trips (desired event, device ack event, state over HTTP); a bad
// document is rejected with an event naming the field; a viewer and an
// unknown account cannot change anything.
func TestConfigOverMQTT(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		t.Skip("mosquitto clients not installed (scripts/test.sh installs them)")
	}
	s := startServer(t, "--config-sweep", "1s", "--operator", "ops-admin:s3cret")
	addOperator(t, s, "watcher", "w4tch", backend.RoleViewer)
	keys := s.provision(t, "cfm", 1)
	const id = "cfm-0001"
	var sims simDevices
	startFleet(t, s, keys, "", sims.setup)
	waitOnline(t, s, 1)
	events := mqttEvents(t, s, "watcher", "w4tch", id)
	opsTopic := topics.Ops(id, topics.KindConfig)

	if out, err := mqttPublish(s, "ops-admin", "s3cret", opsTopic, `{"sampling_interval":2,"upload_interval":4}`); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	ev := nextEvent(t, events, "desired")
	if ev["status"] != "desired" || ev["by"] != "ops-admin" || ev["via"] != "mqtt" || ev["version"] != float64(1) {
		t.Fatalf("first event: %v", ev)
	}
	ev = nextEvent(t, events, "acked")
	if ev["status"] != "acked" || ev["version"] != float64(1) || ev["result"] != "accepted" {
		t.Fatalf("second event: %v", ev)
	}
	d := waitInSync(t, s, id, 1)
	if d.Desired.UpdatedBy != "ops-admin" || d.Desired.Via != "mqtt" || d.Reported.SamplingInterval != 2 {
		t.Fatalf("state: %+v", d)
	}

	// A bad document: a rejected event naming the field, no version.
	mqttPublish(s, "ops-admin", "s3cret", opsTopic, `{"registers":["voltage","flux"]}`)
	ev = nextEvent(t, events, "rejected")
	e, _ := ev["error"].(map[string]any)
	if ev["status"] != "rejected" || e["field"] != "registers" || !strings.Contains(fmt.Sprint(e["message"]), "flux") {
		t.Fatalf("rejection event: %v", ev)
	}

	// A viewer's publish is refused by the broker; an unknown account
	// cannot even connect. Neither creates a version.
	mqttPublish(s, "watcher", "w4tch", opsTopic, `{"sampling_interval":5,"upload_interval":10}`)
	if out, err := mqttPublish(s, "mallory", "guess", opsTopic, `{"sampling_interval":5,"upload_interval":10}`); err == nil {
		t.Errorf("unknown account could publish: %s", out)
	}
	// An admin publish after them: its event is the next one, so the
	// others produced none.
	mqttPublish(s, "ops-admin", "s3cret", opsTopic, `{"upload_interval":6}`)
	ev = nextEvent(t, events, "second change")
	if ev["status"] != "desired" || ev["version"] != float64(2) {
		t.Fatalf("event after the refused publishes: %v", ev)
	}
	d = waitInSync(t, s, id, 2)
	if d.Desired.SamplingInterval != 2 || d.Desired.UploadInterval != 6 {
		t.Fatalf("desired after refused publishes: %+v", d.Desired)
	}
	h := getHistory(t, s, id)
	var desired int
	for _, e := range h.History {
		if e.Type == "desired" {
			desired++
			if e.By != "ops-admin" {
				t.Errorf("change by %q", e.By)
			}
		}
	}
	if desired != 2 {
		t.Errorf("%d changes in history, want 2", desired)
	}
}

// TestConfigBadInputHTTP: over HTTP and the CLI, every bad change is
// refused with 400 naming the field (404 for an unknown device), and no
// version is created.
func TestConfigBadInputHTTP(t *testing.T) {
	s := startServer(t)
	s.provision(t, "cfb", 1)
	const id = "cfb-0001"
	cases := []struct {
		name, dev, body string
		status          int
		field           string
	}{
		{"out of range", id, `{"sampling_interval":0}`, 400, "sampling_interval"},
		{"upload below sampling", id, `{"sampling_interval":30,"upload_interval":10}`, 400, "upload_interval"},
		{"unknown register", id, `{"registers":["flux"]}`, 400, "registers"},
		{"duplicate registers", id, `{"registers":["voltage","voltage"]}`, 400, "registers"},
		{"empty registers", id, `{"registers":[]}`, 400, "registers"},
		{"wrong type", id, `{"upload_interval":"15"}`, 400, "upload_interval"},
		{"unknown field", id, `{"sample_rate":5}`, 400, "sample_rate"},
		{"not JSON", id, `sampling=5`, 400, ""},
		{"unknown device", "cfb-9999", `{"sampling_interval":10,"upload_interval":20}`, 404, "id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e struct {
				Error struct{ Code, Message, Field string } `json:"error"`
			}
			if code := s.api(t, "PUT", "/api/v1/devices/"+tc.dev+"/config", json.RawMessage(tc.body), &e); code != tc.status || e.Error.Field != tc.field || e.Error.Message == "" {
				t.Fatalf("PUT %s: %d %+v; want %d field %q", tc.body, code, e, tc.status, tc.field)
			}
			if d := getConfig(t, s, id); d.Desired.Version != 0 || d.Pending {
				t.Fatalf("state changed: %+v", d)
			}
		})
	}
	out, err := s.cli(t, "config", "set", id, "--registers", "voltage,flux")
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "registers") {
		t.Fatalf("config set with a bad register: %v\n%s", err, out)
	}
	if _, err := s.cli(t, "config", "set", id); err == nil {
		t.Fatal("config set without a change succeeded")
	}
	if h := getHistory(t, s, id); len(h.History) != 0 {
		t.Fatalf("history after refused changes: %+v", h)
	}
}
