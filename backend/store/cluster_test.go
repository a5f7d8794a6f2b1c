package store_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/backend/telemetry"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
	wire "github.com/ecowatt/ecowatt/topics/telemetry"
)

// EnvClusterURL names a Redis Cluster (redis+cluster://h1,h2,h3); set by
// scripts/test-scale.sh.
const EnvClusterURL = "ECOWATT_TEST_REDIS_CLUSTER_URL"

// clusterClient opens the test cluster through store.Open (so the URL form
// is tested too). Skipped when the variable is unset, except when the
// scale script runs the tests (ECOWATT_TEST_SCALE=1) under CI=true.
func clusterClient(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	raw := os.Getenv(EnvClusterURL)
	if raw == "" {
		if os.Getenv("CI") == "true" && os.Getenv("ECOWATT_TEST_SCALE") == "1" {
			t.Fatalf("%s is not set under scripts/test-scale.sh", EnvClusterURL)
		}
		t.Skipf("%s not set; run scripts/test-scale.sh (make test-scale)", EnvClusterURL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, closer, err := store.Open(ctx, raw, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("%s opened a %T, want a cluster client", raw, rdb)
	}
	prefix := redistest.Prefix(t)
	t.Cleanup(func() {
		redistest.Clean(t, rdb, prefix)
		closer()
	})
	return rdb, prefix
}

// captureBus records the backend's subscriptions so the test can inject
// uplinks, and its publications.
type captureBus struct {
	mu   sync.Mutex // guards subs and sent
	subs map[string]func(backend.Message)
	sent []string
}

func (b *captureBus) Publish(_ context.Context, topic string, _ []byte, _ byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = append(b.sent, topic)
	return nil
}

func (b *captureBus) Subscribe(filter string, h func(backend.Message)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[string]func(backend.Message){}
	}
	b.subs[filter] = h
	return nil
}

func (b *captureBus) deliver(t *testing.T, topic string, payload []byte) {
	t.Helper()
	b.mu.Lock()
	h := b.subs[topics.FilterAllUp]
	b.mu.Unlock()
	if h == nil {
		t.Fatal("backend did not subscribe to uplinks")
	}
	h(backend.Message{Topic: topic, Payload: payload})
}

// TestClusterDevicePaths runs the device paths that use multi-key Lua and
// MULTI against a 3-master cluster, with devices spread over its slots:
// provisioning, the uplink replay window (accept, replay, stale), birth
// and presence, audit events, downlink nonces and telemetry ingest. A
// script touching keys of two slots fails there with CROSSSLOT.
func TestClusterDevicePaths(t *testing.T) {
	rdb, prefix := clusterClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	master := make([]byte, 32)
	rand.Read(master)
	vault, err := keyvault.New(master, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	bus := &captureBus{}
	svc, err := backend.New(backend.Config{Redis: rdb, Prefix: prefix, Vault: vault, Bus: bus,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel), Registerer: reg, BcryptCost: 4})
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := store.NewKeys(prefix)
	tm, err := telemetry.New(telemetry.Config{Redis: rdb, Keys: keys, Registerer: reg, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	svc.Handle(topics.KindTelemetry, tm.Ingest)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(rctx) }()
	defer func() { stop(); <-done }()
	if err := svc.EnsureOperator(ctx, "ops-admin", "pw", topics.RoleAdmin); err != nil {
		t.Fatal(err)
	}

	const n = 12 // enough to land on all three masters
	devKeys := map[string]*envelope.Keys{}
	slots := map[int64]bool{}
	for i := range n {
		id := fmt.Sprintf("cl-%02d", i)
		psk, err := svc.Provision(ctx, id)
		if err != nil {
			t.Fatalf("provision %s: %v", id, err)
		}
		k, err := envelope.DeriveKeys(psk)
		if err != nil {
			t.Fatal(err)
		}
		devKeys[id] = &k
		slot, err := rdb.ClusterKeySlot(ctx, keys.Device(id)).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot] = true
	}
	if len(slots) < 2 {
		t.Fatalf("devices landed on %d slot(s); the test needs several", len(slots))
	}

	now := time.Now()
	seal := func(id, kind string, nonce uint64, body any) []byte {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		env, err := envelope.Seal(devKeys[id], topics.DeviceUp(id, kind), nonce, now, raw, false, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	for id := range devKeys {
		birth := seal(id, topics.KindBirth, 10, topics.Birth{Online: true, FirmwareVersion: "1.0.0"})
		bus.deliver(t, topics.DeviceUp(id, topics.KindBirth), birth)
		b := wire.Batch{Seq: 1, Interval: 5 * time.Second, Registers: []uint8{wire.CodeVoltage, wire.CodeOutputPower}}
		for s := range 4 {
			b.Samples = append(b.Samples, wire.Sample{Time: now.Add(time.Duration(s-4) * 5 * time.Second).UnixMilli(), Values: []uint16{2301, 1200}})
		}
		m, err := wire.NewMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		tel := seal(id, topics.KindTelemetry, 11, wire.Body{Telemetry: &m})
		bus.deliver(t, topics.DeviceUp(id, topics.KindTelemetry), tel)
		bus.deliver(t, topics.DeviceUp(id, topics.KindTelemetry), tel) // a replay: rejected
		// Out of order but inside the window: accepted.
		bus.deliver(t, topics.DeviceUp(id, topics.KindBirth), seal(id, topics.KindBirth, 1, topics.Birth{Online: true}))
		if err := svc.Send(ctx, id, topics.KindCommand, map[string]any{"ping": true}); err != nil {
			t.Fatalf("send %s: %v", id, err)
		}
		if err := svc.Emit(ctx, id, topics.KindConfig, map[string]string{"x": "y"}); err != nil {
			t.Fatalf("emit %s: %v", id, err)
		}
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		devs, err := svc.Devices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		online, withTelemetry := 0, 0
		for _, d := range devs {
			if d.Online {
				online++
			}
			if l, err := tm.Latest(ctx, d.ID); err == nil && l.Counters.Batches == 1 {
				withTelemetry++
			}
		}
		replays := counter(t, reg, "ecowatt_security_rejections_total", "reason", backend.ReasonReplay)
		if len(devs) == n && online == n && withTelemetry == n && replays == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: %d devices, %d online, %d with one batch, %v replays rejected; want %d each",
				len(devs), online, withTelemetry, replays, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := counter(t, reg, "ecowatt_uplink_handler_errors_total", "", ""); got != 0 {
		t.Errorf("%v uplink handler errors (CROSSSLOT?)", got)
	}
	for id := range devKeys {
		evs, err := svc.Events(ctx, id, 10)
		if err != nil || len(evs) == 0 {
			t.Errorf("events of %s: %d, %v", id, len(evs), err)
		}
	}
}

// counter sums the samples of metric name whose label has value (any when
// label is "").
func counter(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || labelIs(m, label, value) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
