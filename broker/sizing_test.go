package broker

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/envelope"
)

// The per-connection defaults (DefaultClientReadBuffer,
// DefaultClientWritesPending) are sized for a device that sends a few
// hundred bytes every 15 s (issue 14); the one large path, FOTA, must
// still work with them: a full window of 16 KiB chunks (plus envelope)
// down, in order, and a large packet up through the small read buffer.
func TestDefaultsCarryFOTAChunks(t *testing.T) {
	const dev, window, chunk = "fota-dev", 2 * 8, 16<<10 + 512 // twice fota.MaxWindow
	tb := startBroker(t, nil, dev)
	c := tb.device(t, dev)
	var mu sync.Mutex
	var got [][]byte
	if code := subscribeCode(t, c, "ecowatt/v1/dev/"+dev+"/down/#", func(_ paho.Client, m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m.Payload())
	}); code != 1 {
		t.Fatalf("suback %d", code)
	}
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, chunk) }
	for i := range window {
		if err := tb.Publish(context.Background(), topics.DeviceDown(dev, topics.KindFOTAChunk), payload(i), 1); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == window || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	if len(got) != window {
		t.Fatalf("device got %d of %d chunks", len(got), window)
	}
	for i, p := range got {
		if !bytes.Equal(p, payload(i)) {
			t.Fatalf("chunk %d: %d bytes, not the chunk sent %d-th", i, len(p), i)
		}
	}
	mu.Unlock()

	in := tb.inbox(t, "ecowatt/v1/dev/+/up/#")
	up := bytes.Repeat([]byte("u"), 40<<10) // 80 reads of the 512-byte buffer
	if err := waitToken(t, c.Publish(topics.DeviceUp(dev, topics.KindTelemetry), 1, false, up)); err != nil {
		t.Fatal(err)
	}
	if m := in.wait(t, topics.DeviceUp(dev, topics.KindTelemetry)); !bytes.Equal(m.Payload, up) {
		t.Fatalf("uplink: %d bytes arrived, %d sent", len(m.Payload), len(up))
	}
}

// deepAuth is fakeAuth behind a lookup that uses about depth KiB of stack,
// as the backend's does (Redis client, key vault decrypt, logging).
type deepAuth struct {
	*fakeAuth
	depth int
}

//go:noinline
func burnStack(kib int) byte {
	var frame [1000]byte
	frame[kib%len(frame)] = byte(kib)
	if kib <= 1 {
		return frame[0]
	}
	return burnStack(kib-1) + frame[kib%len(frame)]
}

func (a deepAuth) DeviceKeys(ctx context.Context, id string) (*envelope.Keys, error) {
	burnStack(a.depth)
	return a.fakeAuth.DeviceKeys(ctx, id)
}

// stackPerConn connects n idle devices to a broker whose auth uses depth
// KiB of stack and returns the goroutine stack in use per connection.
func stackPerConn(t *testing.T, n, depth int) float64 {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("stk-%04d", i)
	}
	tb := startBroker(t, nil, ids...)
	tb.cfg.Devices = deepAuth{tb.auth, depth} // before any client connects
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, id := range ids {
		if _, code := rawConnect(t, tb.Addr().String(), 4, id, id, tb.auth.token(id)); code != 0 {
			t.Fatalf("%s: connack %d", id, code)
		}
	}
	// No collection here: an idle fleet collects rarely, and a stack only
	// shrinks, by half, at a collection.
	runtime.ReadMemStats(&after)
	return float64(after.StackInuse-before.StackInuse) / float64(n)
}

// An idle connection holds two goroutines, mochi's read loop and write
// loop. Their parked frames decide their stacks (issue 14,
// docs/BENCHMARKS.md; TestIdleConnectionStackShrinks for the fork that
// made them small). The CONNECT's auth
// must not add to that however deep it goes: it runs on a connect worker
// (connectwork.go). On the read loop, a 32 KiB-deep auth left 68 KiB of
// stack per connection, against 20 KiB, until collections shrank it.
func TestConnectionStackAfterDeepAuth(t *testing.T) {
	const n = 300
	shallow := stackPerConn(t, n, 0)
	deep := stackPerConn(t, n, 32)
	t.Logf("stack per idle connection: %.0f B with a shallow auth, %.0f B with a 32 KiB one", shallow, deep)
	// The two runs differ by a few KiB from run to run (which stacks a
	// collection during the connects happened to shrink); the failure this
	// guards against is the whole auth depth kept, +32 KiB or more.
	if deep > shallow+8192 {
		t.Errorf("a 32 KiB-deep auth leaves %.0f B of stack per connection, a shallow one %.0f B", deep, shallow)
	}
	limit := 24.0 * 1024 // 16 KiB + 8 KiB
	if raceEnabled {
		limit = 32 * 1024
	}
	if deep > limit {
		t.Errorf("%.0f B of stack per idle connection, want <= %.0f", deep, limit)
	}
}
