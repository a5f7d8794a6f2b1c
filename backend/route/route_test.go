package route

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/backend/store"
	"github.com/ecowatt/ecowatt/broker"
	"github.com/ecowatt/ecowatt/topics"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, f := range []frame{
		{kind: kindDown, qos: 1, origin: "r1", topic: "ecowatt/v1/dev/d1/down/command", payload: []byte(`{"x":1}`)},
		{kind: kindDown, qos: 1, origin: "r1", topic: "ecowatt/v1/dev/d1/down/fota_chunk", payload: []byte{0, 1, 2, 0xff}},
		{kind: kindEvent, qos: 1, origin: "", topic: "ecowatt/v1/events/d1/presence", payload: nil},
		{kind: kindClose, origin: "r2", topic: "d1", payload: []byte{0, 0, 0, 0, 0, 0, 0, 7}},
		{kind: kindForget, origin: "r2", topic: "d1"},
		{kind: kindForget, origin: "r2", topic: "d1", payload: []byte("device decommissioned")},
	} {
		got, err := decode(encode(f))
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if got.kind != f.kind || got.qos != f.qos || got.origin != f.origin || got.topic != f.topic || !bytes.Equal(got.payload, f.payload) {
			t.Fatalf("round trip %+v -> %+v", f, got)
		}
	}
}

func TestFrameBad(t *testing.T) {
	good := encode(frame{kind: kindDown, qos: 1, origin: "r1", topic: "t", payload: []byte("p")})
	for name, b := range map[string][]byte{
		"empty":      nil,
		"short":      good[:3],
		"version":    append([]byte{2}, good[1:]...),
		"kind":       append([]byte{1, 'x'}, good[2:]...),
		"qos":        append([]byte{1, kindDown, 3}, good[3:]...),
		"origin":     {1, kindDown, 1, 9, 'r'},
		"topic len":  {1, kindDown, 1, 0, 9, 't'},
		"no topic":   {1, kindDown, 1, 0, 0},
		"close size": encode(frame{kind: kindClose, topic: "d1", payload: []byte{1}}),
	} {
		if _, err := decode(b); !errors.Is(err, errFrame) {
			t.Errorf("%s: %v, want errFrame", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode(frame{kind: kindDown, qos: 1, origin: "r1", topic: "ecowatt/v1/dev/d1/down/config", payload: []byte("{}")}))
	f.Add(encode(frame{kind: kindClose, origin: "r1", topic: "d1", payload: make([]byte, 8)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := decode(b)
		if err != nil {
			return
		}
		again, err := decode(encode(fr))
		if err != nil || again.topic != fr.topic || again.origin != fr.origin || !bytes.Equal(again.payload, fr.payload) {
			t.Fatalf("re-encode of %+v: %+v %v", fr, again, err)
		}
	})
}

// replica is one Router on a real broker, with what reached that broker.
type replica struct {
	r      *Router
	bus    *backendtest.TestBus[backend.Message]
	mu     sync.Mutex // guards got, events, closes
	got    []backend.Message
	at     []time.Time
	events [][]byte
	closes []string
}

func (rp *replica) CloseDevice(id string, gen uint64) int {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	rp.closes = append(rp.closes, fmt.Sprintf("%s@%d", id, gen))
	return 1
}

func (rp *replica) received() []backend.Message {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return slices.Clone(rp.got)
}

func startReplicas(t testing.TB, rdb redis.UniversalClient, prefix string, names ...string) []*replica {
	t.Helper()
	keys, err := store.NewKeys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []*replica
	for _, name := range names {
		rp := &replica{bus: backendtest.Bus[backend.Message](t)}
		err := rp.bus.Server().Subscribe("ecowatt/v1/#", func(m broker.Message) {
			rp.mu.Lock()
			rp.got = append(rp.got, backend.Message{Topic: m.Topic, Payload: bytes.Clone(m.Payload)})
			rp.at = append(rp.at, time.Now())
			rp.mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		rp.r, err = New(Config{Local: rp.bus, Sessions: rp, Redis: rdb, Keys: keys, Replica: name, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		rp.r.HandleEvents(func(p []byte) error {
			rp.mu.Lock()
			defer rp.mu.Unlock()
			rp.events = append(rp.events, bytes.Clone(p))
			return nil
		})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- rp.r.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run %s: %v", name, err)
			}
		})
		deadline := time.Now().Add(10 * time.Second)
		for rp.r.Ready() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("%s not subscribed", name)
			}
			time.Sleep(5 * time.Millisecond)
		}
		out = append(out, rp)
	}
	return out
}

// hold records dev's connection gen on replica (conn_down below it: open).
func hold(t testing.TB, rdb redis.UniversalClient, prefix, dev, replica string, gen, down int) {
	t.Helper()
	keys, _ := store.NewKeys(prefix)
	if err := rdb.HSet(context.Background(), keys.Device(dev), "replica", replica, "conn_gen", gen, "conn_down", down).Err(); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDownlinkRouting: a downlink goes to the broker of the replica that
// holds the device's open connection, and only there; with no open
// connection it stays local; with a holder that is not subscribed it is
// counted as lost.
func TestDownlinkRouting(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1")
	ctx := context.Background()
	hold(t, rdb, prefix, "d1", "r1", 3, 2)
	hold(t, rdb, prefix, "d0", "r0", 1, 0)
	hold(t, rdb, prefix, "dx", "r1", 4, 4) // its last connection ended
	hold(t, rdb, prefix, "dg", "gone", 2, 1)

	for i, dev := range []string{"d1", "d0", "dx", "dg"} {
		if err := rs[0].r.Publish(ctx, topics.DeviceDown(dev, topics.KindCommand), []byte{byte(i)}, 1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "d1's downlink on r1", func() bool { return len(rs[1].received()) == 1 })
	if got := rs[1].received()[0]; got.Topic != topics.DeviceDown("d1", topics.KindCommand) || !bytes.Equal(got.Payload, []byte{0}) {
		t.Fatalf("r1 got %+v", got)
	}
	var local []string
	for _, m := range rs[0].received() {
		local = append(local, m.Topic)
	}
	if want := []string{topics.DeviceDown("d0", topics.KindCommand), topics.DeviceDown("dx", topics.KindCommand)}; !slices.Equal(local, want) {
		t.Fatalf("r0 published locally %v, want %v", local, want)
	}
	m := rs[0].r.m.downlinks
	if r, l, n := testutil.ToFloat64(m.WithLabelValues("routed")), testutil.ToFloat64(m.WithLabelValues("local")), testutil.ToFloat64(m.WithLabelValues("no_holder")); r != 1 || l != 2 || n != 1 {
		t.Fatalf("routed %v local %v no_holder %v, want 1 2 1", r, l, n)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(rs[1].received()); n != 1 {
		t.Fatalf("r1 got %d messages, want 1", n)
	}
}

// TestDownlinkOrder: the chunks of one device routed to another replica
// arrive in the order they were published.
func TestDownlinkOrder(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1")
	hold(t, rdb, prefix, "d1", "r1", 1, 0)
	const n = 200
	for i := range n {
		if err := rs[0].r.Publish(context.Background(), topics.DeviceDown("d1", topics.KindFOTAChunk), []byte(fmt.Sprint(i)), 1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all chunks", func() bool { return len(rs[1].received()) == n })
	for i, m := range rs[1].received() {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("chunk %d is %q", i, m.Payload)
		}
	}
}

// TestEventFanout: an event published on one replica reaches every
// replica's broker and event handler once, and the origin's only locally.
func TestEventFanout(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1", "r2")
	topic := topics.Event("d1", topics.EventPresence)
	if err := rs[1].r.Publish(context.Background(), topic, []byte(`{"kind":"presence","device":"d1"}`), 1); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		waitFor(t, fmt.Sprintf("event on r%d", i), func() bool {
			rs[i].mu.Lock()
			defer rs[i].mu.Unlock()
			return len(rs[i].events) == 1 && len(rs[i].got) == 1
		})
	}
	time.Sleep(100 * time.Millisecond)
	for i, rp := range rs {
		rp.mu.Lock()
		got, evs := len(rp.got), len(rp.events)
		rp.mu.Unlock()
		wantEvs := 1
		if i == 1 {
			wantEvs = 0 // the origin's own SSE subscribers get it from the backend directly
		}
		if got != 1 || evs != wantEvs {
			t.Errorf("r%d: %d on the broker, %d to the handler; want 1 and %d", i, got, evs, wantEvs)
		}
	}
}

// TestTakeoverClose: a takeover reported on r1 closes the device's older
// connections on r0, the previous holder, and nowhere else.
func TestTakeoverClose(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1", "r2")
	rs[1].r.Takeover("d1", "r0", 9)
	waitFor(t, "close on r0", func() bool {
		rs[0].mu.Lock()
		defer rs[0].mu.Unlock()
		return len(rs[0].closes) == 1
	})
	time.Sleep(100 * time.Millisecond)
	rs[0].mu.Lock()
	defer rs[0].mu.Unlock()
	if rs[0].closes[0] != "d1@9" {
		t.Fatalf("r0 closed %v", rs[0].closes)
	}
	for _, i := range []int{1, 2} {
		rs[i].mu.Lock()
		if len(rs[i].closes) != 0 {
			t.Errorf("r%d closed %v", i, rs[i].closes)
		}
		rs[i].mu.Unlock()
	}
}

// TestDownlinkLatency measures the time from Publish to the holder's
// broker for a device on the same replica and one on another, in the same
// run (BENCHMARKS.md, "Replica mode").
func TestDownlinkLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1")
	hold(t, rdb, prefix, "dl", "r0", 1, 0)
	hold(t, rdb, prefix, "dr", "r1", 1, 0)
	const n = 1000
	measure := func(dev string, dst *replica) []time.Duration {
		var lat []time.Duration
		for i := range n {
			before := len(dst.received())
			start := time.Now()
			if err := rs[0].r.Publish(context.Background(), topics.DeviceDown(dev, topics.KindCommand), []byte("x"), 1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, fmt.Sprintf("message %d", i), func() bool { return len(dst.received()) > before })
			dst.mu.Lock()
			lat = append(lat, dst.at[len(dst.at)-1].Sub(start))
			dst.mu.Unlock()
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return lat
	}
	same, cross := measure("dl", rs[0]), measure("dr", rs[1])
	q := func(l []time.Duration, p float64) time.Duration { return l[int(float64(len(l)-1)*p)] }
	t.Logf("downlink Publish -> holder's broker, %d each: same replica p50 %v p99 %v; cross replica p50 %v p99 %v",
		n, q(same, .5), q(same, .99), q(cross, .5), q(cross, .99))
}

// TestForgetFanout: an invalidation (Invalidate, CloseSession) made on r1
// reaches every other replica's forget handler once, and not r1's own.
func TestForgetFanout(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	rs := startReplicas(t, rdb, prefix, "r0", "r1", "r2")
	var mu sync.Mutex
	forgot := map[int][]string{}
	for i, rp := range rs {
		rp.r.HandleForget(func(id string) {
			mu.Lock()
			defer mu.Unlock()
			forgot[i] = append(forgot[i], id)
		}, func() {})
	}
	rs[1].r.Invalidate("d1")
	rs[1].r.CloseSession("d2", "device decommissioned")
	waitFor(t, "forgets on r0 and r2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(forgot[0]) == 2 && len(forgot[2]) == 2
	})
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for _, i := range []int{0, 2} {
		if !slices.Equal(forgot[i], []string{"d1", "d2"}) {
			t.Errorf("r%d forgot %v, want [d1 d2]", i, forgot[i])
		}
	}
	if len(forgot[1]) != 0 {
		t.Errorf("r1 forgot its own %v", forgot[1])
	}
	if n := testutil.ToFloat64(rs[0].r.m.received.WithLabelValues("forget")); n != 2 {
		t.Errorf("r0 counted %v forgets, want 2", n)
	}
}
