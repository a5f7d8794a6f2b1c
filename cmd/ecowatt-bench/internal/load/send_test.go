package load

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// dyingClient is a fault: its connection dies during publish number
// stallAt, which paho holds for stall (as when a broker drops the client
// between paho's connected check and the hand-off to the dead connection)
// before failing it; later publishes fail at once, as paho's do.
type dyingClient struct {
	paho.Client // not called
	stallAt     int
	stall       time.Duration

	mu    sync.Mutex
	calls int
	down  bool
}

func (c *dyingClient) IsConnected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.down
}

func (c *dyingClient) Publish(string, byte, bool, any) paho.Token {
	c.mu.Lock()
	n := c.calls
	c.calls++
	if n >= c.stallAt {
		c.down = true
	}
	c.mu.Unlock()
	switch {
	case n == c.stallAt:
		time.Sleep(c.stall)
		return doneToken{errors.New("publish was broken by timeout")}
	case n > c.stallAt:
		return doneToken{paho.ErrNotConnected}
	}
	return doneToken{}
}

type doneToken struct{ err error }

func (t doneToken) Wait() bool                     { return true }
func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Error() error                   { return t.err }
func (t doneToken) Done() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

// TestPublishConnectionLost: a publisher whose connection dies issues the
// rest of its schedule as failed publishes, however long paho held the
// publish in flight: the same count, loss and errors with or without the
// stall, never a send phase cut short by it.
func TestPublishConnectionLost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rate     float64
		count    int
		sent     int64 // publishes issued
		complete bool
	}{
		{"unpaced", 0, 5, 5, true},
		// 100/s for 200 ms: slots 0..19 fall in the send phase.
		{"paced", 100, 1000, 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{URL: "tcp://127.0.0.1:1", Publishers: []Publisher{{Topic: "t"}}, QoS: 1,
				Size: HeaderSize, Rate: tc.rate, Count: tc.count, Duration: 200 * time.Millisecond}
			if err := cfg.defaults(); err != nil {
				t.Fatal(err)
			}
			c := &dyingClient{stallAt: 2, stall: 500 * time.Millisecond} // stalls past the deadline
			r := &run{cfg: cfg, sent: make([]atomic.Int64, 1), pubs: []paho.Client{c}}
			start := time.Now()
			complete := r.publish(context.Background(), 0, "t", start, start.Add(cfg.Duration), time.Second)
			if got := r.sent[0].Load(); got != tc.sent || complete != tc.complete {
				t.Errorf("sent %d complete %t, want %d %t", got, complete, tc.sent, tc.complete)
			}
			if got, want := r.pubErrs.Load(), tc.sent-2; got != want {
				t.Errorf("%d publish errors, want %d (all but the 2 before the loss)", got, want)
			}
			if c.calls != 3 {
				t.Errorf("%d publishes handed to paho, want 3: none after the connection is known lost", c.calls)
			}
		})
	}
}

func TestRemaining(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		seq, count               int
		offset, interval, window time.Duration
		n                        int64
		all                      bool
	}{
		{0, 5, 0, 0, time.Second, 5, true},
		{3, 5, 0, 0, time.Second, 2, true},
		{0, 100, 0, 10 * ms, 100 * ms, 10, false}, // slots 0..9
		{0, 100, 5 * ms, 10 * ms, 100 * ms, 10, false},
		{0, 100, 0, 10 * ms, 101 * ms, 11, false},
		{12, 100, 0, 10 * ms, 100 * ms, 0, false},
		{0, 5, 0, 10 * ms, 100 * ms, 5, true},
		{0, 5, 200 * ms, 10 * ms, 100 * ms, 0, false},
	} {
		n, all := remaining(tc.seq, tc.count, tc.offset, tc.interval, tc.window)
		if n != tc.n || all != tc.all {
			t.Errorf("remaining(%d, %d, %s, %s, %s) = %d, %t; want %d, %t",
				tc.seq, tc.count, tc.offset, tc.interval, tc.window, n, all, tc.n, tc.all)
		}
	}
}
