package main

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	backendfota "github.com/ecowatt/ecowatt/backend/fota"
	"github.com/ecowatt/ecowatt/backend/jobs"
	"github.com/ecowatt/ecowatt/devicesim"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// fotaArgs make the server's FOTA loops quick enough for tests.
var fotaArgs = []string{"--fota-sweep", "200ms", "--fota-manifest-resend", "5s", "--fota-update-timeout", "90s"}

// fotaFleet wires the device features with the server's firmware key and
// remembers each device's.
type fotaFleet struct {
	pub ed25519.PublicKey
	mu  sync.Mutex // guards m
	m   map[string]*devicesim.Features
}

// newFOTAFleet fetches the server's public key through the CLI, as an
// operator would for devicesim --fota-pubkey.
func newFOTAFleet(t *testing.T, s *testServer) *fotaFleet {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fw.pub")
	if out, err := s.cli(t, "fota", "pubkey", "--out", path); err != nil {
		t.Fatalf("fota pubkey: %v\n%s", err, out)
	}
	pub, err := fota.LoadPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return &fotaFleet{pub: pub, m: map[string]*devicesim.Features{}}
}

func (f *fotaFleet) setup(d *devicesim.Device) error {
	feat, err := devicesim.AttachFeatures(d, devicesim.FeatureOptions{
		FOTA: devicesim.FOTAOptions{PublicKey: f.pub, FailBootDelay: 500 * time.Millisecond},
	})
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.m[d.ID()] = feat
	f.mu.Unlock()
	return nil
}

func (f *fotaFleet) stats(id string) devicesim.FOTAStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	if feat, ok := f.m[id]; ok {
		return feat.FOTA.Stats()
	}
	return devicesim.FOTAStats{}
}

// buildAndUpload makes a test image with the CLI and uploads it.
func buildAndUpload(t *testing.T, s *testServer, version, size string, failBoot bool) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "fw-"+version+".bin")
	args := []string{"fota", "build-image", "--version", version, "--size", size, "-o", img}
	if failBoot {
		args = append(args, "--fail-boot")
	}
	if out, err := s.cli(t, args...); err != nil {
		t.Fatalf("build-image: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "fota", "upload", "--version", version, img); err != nil || !strings.Contains(out, version) {
		t.Fatalf("upload: %v\n%s", err, out)
	}
}

type fotaDeviceDoc struct {
	ID              string `json:"id"`
	Online          bool   `json:"online"`
	FirmwareVersion string `json:"firmware_version"`
	FOTA            *struct {
		Target   string `json:"target"`
		Active   bool   `json:"active"`
		Result   string `json:"result"`
		State    string `json:"state"`
		Reason   string `json:"reason"`
		Received int    `json:"chunk_received"`
		Total    int    `json:"total_chunks"`
	} `json:"fota"`
}

func getDevice(t *testing.T, s *testServer, id string) fotaDeviceDoc {
	t.Helper()
	var d fotaDeviceDoc
	if code := s.api(t, "GET", "/api/v1/devices/"+id, nil, &d); code != 200 {
		t.Fatalf("GET device %s: %d", id, code)
	}
	return d
}

func getRollout(t *testing.T, s *testServer, rid string) backendfota.Rollout {
	t.Helper()
	var r backendfota.Rollout
	if code := s.api(t, "GET", "/api/v1/rollouts/"+rid, nil, &r); code != 200 {
		t.Fatalf("GET rollout %s: %d", rid, code)
	}
	return r
}

// startRollout starts a rollout through the CLI and returns its ID.
func startRollout(t *testing.T, s *testServer, args ...string) string {
	t.Helper()
	out, err := s.cli(t, append([]string{"fota", "rollout"}, args...)...)
	if err != nil {
		t.Fatalf("fota rollout: %v\n%s", err, out)
	}
	f := strings.Fields(out)
	if len(f) < 2 || !strings.HasPrefix(f[1], "ro-") {
		t.Fatalf("fota rollout printed %q", out)
	}
	return f[1]
}

func metric(t *testing.T, s *testServer, name string) string {
	t.Helper()
	resp, err := http.Get(s.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return ""
}

// TestFOTARollout10Devices: a 1 MiB image rolled out to 10 devices (canary
// 2, then a batch of 8) succeeds on all of them; then a manual rollback
// returns one device to its previous firmware.
func TestFOTARollout10Devices(t *testing.T) {
	s := startServer(t, fotaArgs...)
	keys := s.provision(t, "fw", 10)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.4", "1MiB", false)
	waitOnline(t, s, 10)

	rid := startRollout(t, s, "--version", "1.0.4", "--all", "--canary", "2", "--batch-size", "8", "--max-failure-percent", "10")
	eventually(t, 3*time.Minute, "rollout completed", func() (bool, string) {
		r := getRollout(t, s, rid)
		return r.State == "completed", fmt.Sprintf("%s %v %v", r.State, r.Counts, r.DeviceStates)
	})
	r := getRollout(t, s, rid)
	if r.Counts["succeeded"] != 10 || r.Counts["failed"] != 0 || len(r.Batches) != 2 || !r.Batches[0].Canary {
		t.Fatalf("rollout %+v", r)
	}
	// The rollout is a firmware job of the job engine, batches in series.
	j := getJob(t, s, strings.TrimPrefix(rid, jobs.RolloutPrefix))
	if j.Kind != jobs.KindFirmware || j.State != jobs.StateCompleted || !j.Spec.SerialBatches || j.Spec.Canary != 2 ||
		j.Spec.BatchSize != 8 || j.Spec.Abort == nil || !j.Spec.Abort.CountInProgress || j.Counts[jobs.DevSucceeded] != 10 {
		t.Fatalf("rollout %s as a job: %+v", rid, j)
	}
	for id := range keys {
		if d := getDevice(t, s, id); d.FOTA == nil || d.FOTA.Target != "1.0.4" {
			t.Fatalf("%s: %+v", id, d.FOTA)
		}
		if st := ff.stats(id); st.Downloads != 1 {
			t.Errorf("%s: %d downloads, want 1 (one engine issued its update once)", id, st.Downloads)
		}
	}
	eventually(t, 30*time.Second, "all devices report 1.0.4", func() (bool, string) {
		for id := range keys {
			d := getDevice(t, s, id)
			if d.FirmwareVersion != "1.0.4" || d.FOTA == nil || d.FOTA.Result != "succeeded" || d.FOTA.Total != 64 {
				return false, fmt.Sprintf("%s: %s %+v", id, d.FirmwareVersion, d.FOTA)
			}
		}
		return true, ""
	})
	for id := range keys {
		if st := ff.stats(id); st.Running != "1.0.4" || st.Written != 64 {
			t.Errorf("%s: device side %+v", id, st)
		}
	}
	if n, _ := strconv.ParseFloat(metric(t, s, "ecowatt_fota_chunks_sent_total"), 64); n < 640 {
		t.Errorf("ecowatt_fota_chunks_sent_total %v, want >= 640", n)
	}
	if n := metric(t, s, `ecowatt_fota_updates_total{result="succeeded"}`); n != "10" {
		t.Errorf("updates_total{succeeded} %q", n)
	}
	out, err := s.cli(t, "fota", "status", rid)
	if err != nil || !strings.Contains(out, "COMPLETED") || !strings.Contains(out, "[######") {
		t.Fatalf("fota status: %v\n%s", err, out)
	}

	// Manual rollback of one device to its previous slot.
	if out, err := s.cli(t, "fota", "rollback", "fw-0003", "--reason", "operator test"); err != nil {
		t.Fatalf("fota rollback: %v\n%s", err, out)
	}
	eventually(t, 60*time.Second, "fw-0003 rolled back to 1.0.0", func() (bool, string) {
		d := getDevice(t, s, "fw-0003")
		ok := d.FirmwareVersion == "1.0.0" && d.FOTA != nil && d.FOTA.State == "rolled_back" && d.FOTA.Reason == fota.ReasonManual
		return ok, fmt.Sprintf("%s %+v", d.FirmwareVersion, d.FOTA)
	})
	if d := getDevice(t, s, "fw-0004"); d.FirmwareVersion != "1.0.4" {
		t.Fatalf("fw-0004 changed too: %s", d.FirmwareVersion)
	}
}

// TestFOTARolloutAbortsOnFailBoot: a fail-boot image rolled out to 20
// devices rolls the canary devices back, the rollout aborts above its
// threshold, and the 18 devices it never reached stay on 1.0.0 untouched.
func TestFOTARolloutAbortsOnFailBoot(t *testing.T) {
	s := startServer(t, fotaArgs...)
	keys := s.provision(t, "bad", 20)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.5", "64KiB", true)
	waitOnline(t, s, 20)

	rid := startRollout(t, s, "--version", "1.0.5", "--all", "--canary", "2", "--batch-size", "5", "--max-failure-percent", "10")
	eventually(t, 3*time.Minute, "rollout aborted", func() (bool, string) {
		r := getRollout(t, s, rid)
		return r.State == "aborted", fmt.Sprintf("%s %v %v", r.State, r.Counts, r.DeviceStates)
	})
	r := getRollout(t, s, rid)
	if r.Counts["cancelled"] != 18 || r.CurrentBatch != 0 || !strings.Contains(r.Reason, "failure rate") {
		t.Fatalf("rollout %s: %v, batch %d, reason %q", r.State, r.Counts, r.CurrentBatch, r.Reason)
	}
	eventually(t, 60*time.Second, "canary devices rolled back", func() (bool, string) {
		r := getRollout(t, s, rid)
		return r.Counts["failed"] == 2 && r.Counts["updating"] == 0, fmt.Sprint(r.Counts)
	})
	for _, d := range getRollout(t, s, rid).Devices {
		doc := getDevice(t, s, d.ID)
		switch d.Batch {
		case 0:
			if d.State != "failed" || !strings.Contains(d.Reason, "rolled_back") || doc.FirmwareVersion != "1.0.0" {
				t.Errorf("canary %s: %s %q, running %s", d.ID, d.State, d.Reason, doc.FirmwareVersion)
			}
		default:
			if d.State != "cancelled" || doc.FirmwareVersion != "1.0.0" || doc.FOTA != nil {
				t.Errorf("untouched %s: %s, running %s, fota %+v", d.ID, d.State, doc.FirmwareVersion, doc.FOTA)
			}
			if st := ff.stats(d.ID); st.Downloads != 0 || st.Running != "1.0.0" {
				t.Errorf("untouched %s: device side %+v", d.ID, st)
			}
		}
	}
	// A rollout is a firmware job: its end is counted with the jobs'.
	if n := metric(t, s, `ecowatt_jobs_finished_total{state="aborted"}`); n != "1" {
		t.Errorf("jobs_finished_total{aborted} %q", n)
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestFOTARolloutSurvivesRestart: the backend restarts in the middle of a
// rollout (on the same MQTT address, so the devices reconnect as they
// would in the field); the new process picks the rollout up from Redis,
// the devices resume their downloads, and it completes.
func TestFOTARolloutSurvivesRestart(t *testing.T) {
	s := startServer(t, append(fotaArgs, "--mqtt-addr", freeAddr(t))...)
	keys := s.provision(t, "rs", 6)
	ff := newFOTAFleet(t, s)
	startFleet(t, s, keys, "", ff.setup)
	buildAndUpload(t, s, "1.0.6", "1MiB", false)
	waitOnline(t, s, 6)

	rid := startRollout(t, s, "--version", "1.0.6", "--all", "--canary", "1", "--batch-size", "2")
	eventually(t, 2*time.Minute, "a batch after the canary started", func() (bool, string) {
		r := getRollout(t, s, rid)
		return r.CurrentBatch >= 1, fmt.Sprintf("batch %d %v", r.CurrentBatch, r.Counts)
	})
	if r := getRollout(t, s, rid); r.State != "running" {
		t.Fatalf("rollout %s before the restart", r.State)
	}
	s.restart(t)
	eventually(t, 2*time.Minute, "rollout completed after the restart", func() (bool, string) {
		r := getRollout(t, s, rid)
		return r.State == "completed", fmt.Sprintf("%s batch %d %v %v %+v", r.State, r.CurrentBatch, r.Counts, r.DeviceStates, r.Devices)
	})
	if r := getRollout(t, s, rid); r.Counts["succeeded"] != 6 {
		t.Fatalf("after restart: %v", r.Counts)
	}
	eventually(t, 30*time.Second, "all devices report 1.0.6", func() (bool, string) {
		for id := range keys {
			if d := getDevice(t, s, id); d.FirmwareVersion != "1.0.6" {
				return false, id + " runs " + d.FirmwareVersion
			}
		}
		return true, ""
	})
}

// TestFOTAUploadBadInputHTTP: bad uploads and rollouts through the CLI and
// HTTP API get a clear 4xx and store nothing.
func TestFOTAUploadBadInputHTTP(t *testing.T) {
	s := startServer(t, fotaArgs...)
	s.provision(t, "x", 1)
	dir := t.TempDir()
	img := filepath.Join(dir, "fw.bin")
	if out, err := s.cli(t, "fota", "build-image", "--version", "1.0.4", "--size", "4096", "-o", img); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"version mismatch", []string{"fota", "upload", "--version", "1.0.5", img}, "version mismatch"},
		{"chunk size", []string{"fota", "upload", "--version", "1.0.4", "--chunk-size", "100", img}, "chunk size 100 outside"},
		{"rollout unknown version", []string{"fota", "rollout", "--version", "9.9.9", "--all"}, "no firmware"},
		{"rollback unknown device", []string{"fota", "rollback", "ghost"}, "404"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := s.cli(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v (want %q)\n%s", err, tc.want, out)
			}
		})
	}
	var l struct {
		Firmware []any `json:"firmware"`
	}
	if code := s.api(t, "GET", "/api/v1/firmware", nil, &l); code != 200 || len(l.Firmware) != 0 {
		t.Fatalf("firmware after refusals: %d %v", code, l.Firmware)
	}
	var rl struct {
		Rollouts []any `json:"rollouts"`
	}
	if code := s.api(t, "GET", "/api/v1/rollouts", nil, &rl); code != 200 || len(rl.Rollouts) != 0 {
		t.Fatalf("rollouts after refusals: %d %v", code, rl.Rollouts)
	}
	// A manifest signed offline with another key is refused.
	keyDir := filepath.Join(dir, "keys")
	if out, err := s.cli(t, "keys", "gen", "--out", keyDir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	man := filepath.Join(dir, "fw.manifest.json")
	if out, err := s.cli(t, "fota", "sign", "--key", filepath.Join(keyDir, fota.PrivateKeyFile), "--version", "1.0.4", "-o", man, img); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := s.cli(t, "fota", "upload", "--version", "1.0.4", "--manifest", man, img); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("foreign-key manifest: %v\n%s", err, out)
	}
	// Signed offline with the server's own key: accepted.
	if out, err := s.cli(t, "fota", "sign", "--key", filepath.Join(s.DataDir, fota.PrivateKeyFile), "--version", "1.0.4", "-o", man, img); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := s.cli(t, "fota", "upload", "--version", "1.0.4", "--manifest", man, img); err != nil || !strings.Contains(out, "offline") {
		t.Fatalf("server-key manifest: %v\n%s", err, out)
	}
	if out, err := s.cli(t, "fota", "rollout", "--version", "1.0.4", "--devices", "x-0001,ghost"); err == nil || !strings.Contains(err.Error(), "unknown devices: ghost") {
		t.Fatalf("rollout to an unknown device: %v\n%s", err, out)
	}
}
