package devicesim

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// featureT0 is aligned to every interval the tests use.
var featureT0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// rig is one device with all features on a fake clock and a real broker.
// Boots on the same state directory are power cycles: new Device, new
// Features (and a new inverter), same flash.
type rig struct {
	t     *testing.T
	b     *testBroker
	id    string
	psk   []byte
	keys  *envelope.Keys
	dir   string
	clk   *clock.Fake
	nonce uint64 // last downlink nonce used

	d *Device
	f *Features
	r *running
}

func newRig(t *testing.T, id string, seed byte) *rig {
	psk := testKey(seed)
	return &rig{t: t, b: startBroker(t, "127.0.0.1:0"), id: id, psk: psk, keys: mustKeys(t, psk),
		dir: t.TempDir(), clk: clock.NewFake(featureT0)}
}

// boot powers the device on (fl: a pre-opened flash, or nil) and waits
// until its birth for this boot is out.
func (g *rig) boot(fl *flash.Store) {
	t := g.t
	t.Helper()
	births := len(g.b.signedBirths(g.id, g.keys))
	d, err := New(Config{
		ID: g.id, Key: g.psk, Broker: g.b.url(), StateDir: g.dir, Flash: fl, Clock: g.clk,
		Log: testLogger(t), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second, PublishTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := AttachFeatures(d, FeatureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g.d, g.f, g.r = d, f, start(t, d)
	eventually(t, "birth", func() bool { return len(g.b.signedBirths(g.id, g.keys)) > births })
}

// send seals body for down/kind and injects it through the broker.
func (g *rig) send(kind string, body any) {
	g.t.Helper()
	raw, ok := body.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			g.t.Fatal(err)
		}
	}
	g.nonce++
	topic := topics.DeviceDown(g.id, kind)
	sealed, err := envelope.Seal(g.keys, topic, g.nonce, g.clk.Now(), raw, false, nil)
	if err != nil {
		g.t.Fatal(err)
	}
	g.b.publish(topic, sealed)
}

// bodies returns the verified bodies of every uplink of kind so far.
func (g *rig) bodies(kind string) [][]byte {
	g.t.Helper()
	topic := topics.DeviceUp(g.id, kind)
	g.b.mu.Lock()
	msgs := slices.Clone(g.b.msgs)
	g.b.mu.Unlock()
	var out [][]byte
	for _, m := range msgs {
		if m.topic != topic {
			continue
		}
		msg, err := envelope.Open(g.keys, topic, m.payload)
		if err != nil {
			g.t.Fatalf("%s envelope: %v", kind, err)
		}
		if kind == topics.KindCommandResult && isReceipt(msg.Body) {
			continue // receipts are checked in TestCommandReceipt
		}
		out = append(out, msg.Body)
	}
	return out
}

// ack waits for the n-th config ack (from 1) and returns it with its JSON.
func (g *rig) ack(n int) (topics.ConfigAck, string) {
	g.t.Helper()
	eventually(g.t, "config ack", func() bool { return len(g.bodies(topics.KindConfigAck)) >= n })
	raw := g.bodies(topics.KindConfigAck)[n-1]
	var body topics.ConfigAckBody
	if err := json.Unmarshal(raw, &body); err != nil || body.ConfigAck == nil {
		g.t.Fatalf("config ack %s: %v", raw, err)
	}
	return *body.ConfigAck, string(raw)
}

// result waits for the n-th command result (from 1).
func (g *rig) result(n int) topics.CommandResult {
	g.t.Helper()
	eventually(g.t, "command result", func() bool { return len(g.bodies(topics.KindCommandResult)) >= n })
	raw := g.bodies(topics.KindCommandResult)[n-1]
	var body topics.CommandResultBody
	if err := json.Unmarshal(raw, &body); err != nil || body.CommandResult == nil {
		g.t.Fatalf("command result %s: %v", raw, err)
	}
	return *body.CommandResult
}

// batches decodes every telemetry batch so far.
func (g *rig) batches() []telemetry.Batch {
	g.t.Helper()
	var out []telemetry.Batch
	for _, raw := range g.bodies(topics.KindTelemetry) {
		var body telemetry.Body
		if err := json.Unmarshal(raw, &body); err != nil || body.Telemetry == nil {
			g.t.Fatalf("telemetry body %s: %v", raw, err)
		}
		b, err := body.Telemetry.Batch(telemetry.Limits{})
		if err != nil {
			g.t.Fatalf("telemetry batch: %v", err)
		}
		out = append(out, b)
	}
	return out
}

// stepUntil advances the fake clock one timer at a time, each time once
// the scheduler is parked in Sleep, until cond holds.
func (g *rig) stepUntil(what string, cond func() bool) {
	g.t.Helper()
	for range 400 {
		if cond() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok := g.clk.BlockUntil(ctx, 1)
		cancel()
		if !ok {
			g.t.Fatalf("waiting for %s: scheduler never slept", what)
		}
		g.clk.AdvanceToNext()
	}
	eventually(g.t, what, cond)
}

// batchWith reports whether some batch from index from on has the interval
// and register codes.
func batchWith(bs []telemetry.Batch, from int, interval time.Duration, codes ...uint8) int {
	for i := from; i < len(bs); i++ {
		if bs[i].Interval == interval && slices.Equal(bs[i].Registers, codes) && len(bs[i].Samples) > 0 {
			return i
		}
	}
	return -1
}

func acceptedParams(a topics.ConfigAck) []string {
	var out []string
	for _, f := range a.Accepted {
		out = append(out, f.Parameter)
	}
	return out
}

func rejectedParams(a topics.ConfigAck) []string {
	var out []string
	for _, f := range a.Rejected {
		out = append(out, f.Parameter)
	}
	return out
}

// TestRemoteConfig: a new config is applied at the next upload boundary
// without a reboot, redelivery repeats the ack, invalid and stale
// versions change nothing, and the config survives a power cycle.
func TestRemoteConfig(t *testing.T) {
	g := newRig(t, "cfg-1", 21)
	g.boot(nil)
	if b := g.b.signedBirths(g.id, g.keys)[0]; b.ConfigVersion != 0 || b.Config == nil || !b.Config.Equal(topics.DefaultConfig()) {
		t.Fatalf("first birth = %+v", b)
	}
	allCodes := []uint8{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	g.stepUntil("a default batch", func() bool { return batchWith(g.batches(), 0, 5*time.Second, allCodes...) >= 0 })

	// Version 1: every field changes.
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":1,"sampling_interval":10,"upload_interval":30,"registers":["voltage","current"]}}`))
	ack1, raw1 := g.ack(1)
	if ack1.Version != 1 || !slices.Equal(acceptedParams(ack1), topics.ConfigParams) || len(ack1.Rejected) != 0 {
		t.Fatalf("ack 1 = %s", raw1)
	}
	if !bytes.Contains([]byte(raw1), []byte(`{"parameter":"sampling_interval","old":5,"new":10}`)) {
		t.Errorf("ack 1 lacks old/new values: %s", raw1)
	}
	n := len(g.batches())
	g.stepUntil("a batch with the new config", func() bool { return batchWith(g.batches(), n, 10*time.Second, 0, 1) >= 0 })
	bs := g.batches()
	first := batchWith(bs, n, 10*time.Second, 0, 1)
	for i, b := range bs[n:first] {
		if b.Interval != 5*time.Second {
			t.Errorf("batch %d before the switch has interval %v", n+i, b.Interval)
		}
	}
	if s := g.d.Stats(); s.BootCount != 1 || len(g.b.signedBirths(g.id, g.keys)) != 1 {
		t.Fatalf("config change rebooted the device: %+v", s)
	}

	// The same version again: the same ack, nothing written.
	before, err := os.ReadFile(filepath.Join(g.dir, RecordConfig+".json"))
	if err != nil {
		t.Fatal(err)
	}
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":1,"sampling_interval":10,"upload_interval":30,"registers":["voltage","current"]}}`))
	if _, raw := g.ack(2); raw != raw1 {
		t.Errorf("redelivered ack differs:\n%s\n%s", raw, raw1)
	}
	after, _ := os.ReadFile(filepath.Join(g.dir, RecordConfig+".json"))
	if !bytes.Equal(before, after) {
		t.Error("redelivery rewrote the config record")
	}

	// Version 2, correctly signed but invalid in every field: rejected
	// field by field, the old config kept.
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":2,"sampling_interval":0,"upload_interval":7,"registers":["voltage","voltage"],"mode":"fast"}}`))
	ack2, raw2 := g.ack(3)
	want := []string{topics.ParamSamplingInterval, topics.ParamUploadInterval, topics.ParamRegisters, "mode"}
	if ack2.Version != 2 || len(ack2.Accepted) != 0 || !slices.Equal(rejectedParams(ack2), want) {
		t.Fatalf("ack 2 = %s", raw2)
	}
	// Version 3: a wrong type is rejected, the valid field applied.
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":3,"sampling_interval":"15","registers":["frequency"]}}`))
	ack3, raw3 := g.ack(4)
	if !slices.Equal(acceptedParams(ack3), []string{topics.ParamRegisters}) || !slices.Equal(rejectedParams(ack3), []string{topics.ParamSamplingInterval}) {
		t.Fatalf("ack 3 = %s", raw3)
	}
	// An older version: every field it gives is rejected as stale.
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":1,"sampling_interval":20,"upload_interval":60}}`))
	ack4, raw4 := g.ack(5)
	if ack4.Version != 1 || len(ack4.Accepted) != 0 || len(ack4.Rejected) != 2 {
		t.Fatalf("stale ack = %s", raw4)
	}
	wantCfg := topics.Config{SamplingInterval: 10, UploadInterval: 30, Registers: []string{"frequency"}}
	if v, c := g.f.Config.Current(); v != 3 || !c.Equal(wantCfg) {
		t.Fatalf("current = v%d %+v", v, c)
	}
	if s := g.f.Config.Stats(); s.Versions != 3 || s.Duplicates != 1 || s.Stale != 1 || s.Changed != 2 {
		t.Errorf("config stats = %+v", s)
	}
	n = len(g.batches())
	g.stepUntil("a batch with registers [frequency]", func() bool { return batchWith(g.batches(), n, 10*time.Second, 2) >= 0 })

	// Power cycle: the persisted config and version come back.
	g.r.stop(t)
	g.boot(nil)
	births := g.b.signedBirths(g.id, g.keys)
	last := births[len(births)-1]
	if last.BootCount != 2 || last.ConfigVersion != 3 || last.Config == nil || !last.Config.Equal(wantCfg) {
		t.Fatalf("birth after power cycle = %+v", last)
	}
	n = len(g.batches())
	g.stepUntil("a batch after the power cycle", func() bool { return len(g.batches()) > n })
	if b := g.batches()[n]; b.Interval != 10*time.Second || !slices.Equal(b.Registers, []uint8{2}) {
		t.Errorf("first batch after power cycle: interval %v registers %v", b.Interval, b.Registers)
	}
	// The redelivered version 3 still gets its stored ack after the cycle.
	g.send(topics.KindConfig, []byte(`{"config_update":{"version":3,"sampling_interval":"15","registers":["frequency"]}}`))
	if _, raw := g.ack(6); raw != raw3 {
		t.Errorf("ack after power cycle differs:\n%s\n%s", raw, raw3)
	}
	g.r.stop(t)
	checkNoLeak(t)
}

// TestConfigNotAckedWhenNotPersisted: a version that cannot reach flash
// is not acknowledged and not applied; the backend's redelivery succeeds
// once the flash works again.
func TestConfigNotAckedWhenNotPersisted(t *testing.T) {
	g := newRig(t, "cfg-2", 22)
	fl, err := flash.Open(g.dir)
	if err != nil {
		t.Fatal(err)
	}
	g.boot(fl)
	var fail atomic.Bool
	fail.Store(true)
	fl.SetFault(func(op flash.Op) error {
		if fail.Load() && op.File == RecordConfig+".json" {
			return os.ErrPermission
		}
		return nil
	})
	body := []byte(`{"config_update":{"version":5,"sampling_interval":15,"upload_interval":45}}`)
	g.send(topics.KindConfig, body)
	eventually(t, "handler error", func() bool { return g.d.Stats().HandlerErrors == 1 })
	if v, c := g.f.Config.Current(); v != 0 || c.SamplingInterval != 5 || len(g.bodies(topics.KindConfigAck)) != 0 {
		t.Fatalf("unpersisted version applied or acked: v%d %+v", v, c)
	}
	fail.Store(false)
	g.send(topics.KindConfig, body)
	if a, raw := g.ack(1); a.Version != 5 || len(a.Accepted) != 2 {
		t.Fatalf("ack = %s", raw)
	}
}
