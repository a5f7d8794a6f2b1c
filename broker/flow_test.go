package broker

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ecowatt/ecowatt/topics"
)

// flowMode selects which parts of flow.go a fan-in run uses.
type flowMode int

const (
	fullFlow     flowMode = iota // admission and fallback
	fallbackOnly                 // every full queue goes through redeliver
	bareMochi                    // mochi's own behaviour: drop
)

// fanInResult is what one fan-in run measured.
type fanInResult struct {
	sent, got  int           // distinct messages published and received
	reordered  int           // messages that arrived before an earlier one from the same publisher
	elapsed    time.Duration // first publish to last receipt
	redeliver  float64       // ecowatt_broker_redeliveries_total
	waits      float64       // ecowatt_broker_backpressure_waits_total
	mochiDrops int64         // mochi's own count of queue-full drops
}

func (r fanInResult) lossPct() float64 { return 100 * float64(r.sent-r.got) / float64(r.sent) }

// fanIn has pubs paho devices publish msgs QoS 1 messages of size bytes each
// on their up/telemetry topic; the in-process backend relays each one to
// ecowatt/v1/events/{id}/presence at QoS 1, and one paho operator
// subscribed to ecowatt/v1/events/# (ACL-checked) receives them. Every hop
// is the production path, and the operator's queue is the bottleneck.
func fanIn(t testing.TB, mode flowMode, pending, pubs, msgs, size int) fanInResult {
	t.Helper()
	ids := make([]string, pubs)
	for i := range ids {
		ids[i] = fmt.Sprintf("pub%02d", i)
	}
	tb := startBroker(t, func(c *Config) { c.ClientWritesPending = pending }, ids...)
	// Read only by hooks; no client is connected yet.
	tb.noBackpressure, tb.noAdmission = mode == bareMochi, mode == fallbackOnly

	ctx := context.Background()
	if err := tb.Subscribe(topics.FilterAllUp, func(m Message) {
		_ = tb.Publish(ctx, topics.Event(m.Username, topics.EventPresence), m.Payload, 1)
	}); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex // guards seen, last, reordered, lastAt
		seen      = make(map[[2]uint32]bool, pubs*msgs)
		last      = make([]int64, pubs)
		reordered int
		lastAt    time.Time
	)
	for i := range last {
		last[i] = -1
	}
	sub := mustConnect(t, tb.clientOpts("fan-in-sub", "admin", "admin-pw"))
	code := subscribeCode(t, sub, topics.FilterAllEvents, func(_ paho.Client, m paho.Message) {
		p := m.Payload()
		k := [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])}
		mu.Lock()
		defer mu.Unlock()
		if !seen[k] {
			seen[k] = true
			if int64(k[1]) < last[k[0]] {
				reordered++
			}
			last[k[0]] = max(last[k[0]], int64(k[1]))
			lastAt = time.Now()
		}
	})
	if code != 1 {
		t.Fatalf("subscribe: code %#x", code)
	}

	clients := make([]paho.Client, pubs)
	for i, id := range ids {
		clients[i] = tb.device(t, id)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			topic := topics.DeviceUp(ids[i], topics.KindTelemetry)
			toks := make([]paho.Token, 0, msgs)
			for seq := range msgs {
				p := make([]byte, size)
				binary.BigEndian.PutUint32(p, uint32(i))
				binary.BigEndian.PutUint32(p[4:], uint32(seq))
				toks = append(toks, c.Publish(topic, 1, false, p))
			}
			for _, tok := range toks {
				if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
					t.Errorf("%s: publish: %v", ids[i], tok.Error())
					return
				}
			}
		})
	}
	wg.Wait()

	total := pubs * msgs
	idle := time.Now()
	prev := -1
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == total {
			break
		}
		if n != prev {
			prev, idle = n, time.Now()
		} else if time.Since(idle) > 3*time.Second {
			break // nothing more is coming
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	return fanInResult{
		sent: total, got: len(seen), reordered: reordered, elapsed: lastAt.Sub(start),
		redeliver:  testutil.ToFloat64(tb.m.redeliveries),
		waits:      testutil.ToFloat64(tb.m.backpressure),
		mochiDrops: tb.mochi.Info.MessagesDropped,
	}
}

// TestQoS1NoLoss is DESIGN §7's bar: 20 publishers x 500 QoS 1 messages of
// 256 B into one subscriber, all delivered.
func TestQoS1NoLoss(t *testing.T) {
	for _, mode := range []struct {
		name    string
		mode    flowMode
		pending int
	}{
		{"backpressure", fullFlow, 0},
		{"backpressure tiny queue", fullFlow, 4},
		{"redelivery alone", fallbackOnly, 4},
	} {
		t.Run(mode.name, func(t *testing.T) {
			r := fanIn(t, mode.mode, mode.pending, 20, 500, 256)
			t.Logf("%s: %d/%d delivered (%.2f%% lost), %d reordered, %.0f msg/s, %.0f backpressure waits, %.0f redeliveries, %d mochi drops",
				mode.name, r.got, r.sent, r.lossPct(), r.reordered, float64(r.got)/r.elapsed.Seconds(), r.waits, r.redeliver, r.mochiDrops)
			if r.got != r.sent {
				t.Fatalf("lost %d of %d QoS 1 messages", r.sent-r.got, r.sent)
			}
			if r.reordered != 0 {
				t.Errorf("%d messages overtook an earlier one from the same publisher", r.reordered)
			}
			if mode.mode == fallbackOnly && r.redeliver == 0 {
				t.Error("the run never exercised redeliver")
			}
		})
	}
}

// TestQoS1BareMochi measures what the same run loses without our flow
// control; it documents the gap and fails only if mochi stops dropping,
// which would mean flow.go can go. Set ECOWATT_BARE=1 to run it.
func TestQoS1BareMochi(t *testing.T) {
	if os.Getenv("ECOWATT_BARE") == "" {
		t.Skip("set ECOWATT_BARE=1 to measure bare mochi")
	}
	r := fanIn(t, bareMochi, 0, 20, 500, 256)
	t.Logf("bare mochi: %d/%d delivered (%.2f%% lost), %d mochi drops", r.got, r.sent, r.lossPct(), r.mochiDrops)
}

// BenchmarkFanIn reports delivery rate and loss for 20 publishers into one
// subscriber, with our flow control and with bare mochi. Each b.N runs
// 20 x 500 messages.
func BenchmarkFanIn(b *testing.B) {
	for _, bc := range []struct {
		name string
		mode flowMode
	}{{"ecowatt", fullFlow}, {"redelivery_only", fallbackOnly}, {"bare_mochi", bareMochi}} {
		b.Run(bc.name, func(b *testing.B) {
			var got, sent int
			var elapsed time.Duration
			for b.Loop() {
				r := fanIn(b, bc.mode, 0, 20, 500, 256)
				got, sent, elapsed = got+r.got, sent+r.sent, elapsed+r.elapsed
			}
			b.ReportMetric(float64(got)/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(100*float64(sent-got)/float64(sent), "%lost")
		})
	}
}
